"""Reference classifiers scored beside the neural heads: most frequent genres, one-vs-rest linear SVM on words."""

from __future__ import annotations

import warnings

import numpy as np


def most_frequent(Y_train: np.ndarray, n: int) -> np.ndarray:
    """Predict the training set's most frequent genres for every movie: ``(n, G) uint8``.

    As many genres as the mean number of genres per training movie (rounded, at least one).
    """
    k = max(1, round(float(Y_train.sum(axis=1).mean())))
    order = np.argsort(-Y_train.sum(axis=0), kind="stable")[:k]
    out = np.zeros((n, Y_train.shape[1]), np.uint8)
    out[:, order] = 1
    return out


def bag_of_words(texts_train: list[str], texts_test: list[str]):
    """Word counts over the training vocabulary: two ``(n, V) float32`` CSR matrices (train, test)."""
    from gensim.corpora import Dictionary
    from gensim.matutils import corpus2csc

    from retrieval.text import tokenize

    docs = [tokenize(t) for t in texts_train]
    vocab = Dictionary(docs)

    def counts(tokenized):
        bows = [vocab.doc2bow(d) for d in tokenized]
        return corpus2csc(bows, num_terms=len(vocab), num_docs=len(bows), dtype=np.float32).T.tocsr()

    return counts(docs), counts([tokenize(t) for t in texts_test])


def _tfidf(texts_train: list[str], texts_test: list[str]):
    from retrieval.descriptors import make_descriptor

    desc = make_descriptor("tfidf", None, ngrams=1, min_df=1, max_df=1.0, max_features=50000).fit(texts_train)
    return desc.transform(texts_train), desc.transform(texts_test)


def ovr_linear_svm(texts_train: list[str], Y_train: np.ndarray, texts_test: list[str], kind: str = "bow") -> np.ndarray:
    """One-vs-rest LinearSVC on unigram counts (``bow``) or tf-idf: ``(n_test, G) uint8`` predictions.

    A genre with no positive (or no negative) training movie is predicted constant.
    """
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import LinearSVC

    x_train, x_test = (bag_of_words if kind == "bow" else _tfidf)(texts_train, texts_test)
    out = np.zeros((len(texts_test), Y_train.shape[1]), np.uint8)
    varied = Y_train.min(axis=0) != Y_train.max(axis=0)
    out[:, ~varied] = Y_train[0, ~varied] if len(Y_train) else 0
    if varied.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = OneVsRestClassifier(LinearSVC(C=1.0, max_iter=5000)).fit(x_train, Y_train[:, varied])
        out[:, varied] = clf.predict(x_test)
    return out
