"""Reference classifiers scored beside the neural heads: most frequent genres; one-vs-rest linear models on words.

Word features are scikit-learn's sparse ``CountVectorizer`` (bag of words) and ``TfidfVectorizer`` over the
project's tokens (:func:`retrieval.text.tokenize`), fitted on the training overviews only.
"""

from __future__ import annotations

import warnings

import numpy as np

WORD_FEATURES = ("bow", "tfidf")


def most_frequent(Y_train: np.ndarray, n: int) -> np.ndarray:
    """Predict the training set's most frequent genres for every movie: ``(n, G) uint8``.

    As many genres as the mean number of genres per training movie (rounded, at least one).
    """
    k = max(1, round(float(Y_train.sum(axis=1).mean())))
    order = np.argsort(-Y_train.sum(axis=0), kind="stable")[:k]
    out = np.zeros((n, Y_train.shape[1]), np.uint8)
    out[:, order] = 1
    return out


def word_features(texts_train: list[str], texts_test: list[str], kind: str = "bow", max_features: int | None = 50000):
    """Sparse word features fitted on the training texts: two CSR matrices ``(n, V)`` (train, test).

    ``bow``: unigram counts; ``tfidf``: l2-normalised tf-idf of unigrams and bigrams with sublinear tf.
    """
    from retrieval.tfidf import make_vectorizer

    if kind not in WORD_FEATURES:
        raise ValueError(f"unknown word features {kind!r}; use one of {WORD_FEATURES}")
    if kind == "bow":
        vec = make_vectorizer(False, max_features=max_features)
    else:
        vec = make_vectorizer(False, 2, tfidf=True, min_df=2 if len(texts_train) >= 50 else 1, sublinear_tf=True,
                              max_features=max_features)
    x_train = vec.fit_transform(texts_train)
    return x_train, vec.transform(texts_test)


def ovr_linear_svm(texts_train: list[str], Y_train: np.ndarray, texts_test: list[str], kind: str = "bow") -> np.ndarray:
    """One-vs-rest LinearSVC on unigram counts (``bow``) or tf-idf: ``(n_test, G) uint8`` predictions.

    A genre with no positive (or no negative) training movie is predicted constant.
    """
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import LinearSVC

    x_train, x_test = word_features(texts_train, texts_test, kind)
    out = np.zeros((len(texts_test), Y_train.shape[1]), np.uint8)
    varied = Y_train.min(axis=0) != Y_train.max(axis=0)
    out[:, ~varied] = Y_train[0, ~varied] if len(Y_train) else 0
    if varied.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = OneVsRestClassifier(LinearSVC(C=1.0, max_iter=5000)).fit(x_train, Y_train[:, varied])
        out[:, varied] = clf.predict(x_test)
    return out


def ovr_logistic_proba(x_train, Y_train: np.ndarray, x_other: list, C: float = 1.0) -> list[np.ndarray]:
    """One-vs-rest logistic regression: probabilities ``(n, G) float32`` for each matrix of ``x_other``.

    A genre with no positive (or no negative) training movie gets its training rate as a constant probability.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    varied = Y_train.min(axis=0) != Y_train.max(axis=0)
    rate = Y_train.mean(axis=0).astype(np.float32) if len(Y_train) else np.zeros(Y_train.shape[1], np.float32)
    outs = [np.tile(rate, (x.shape[0], 1)) for x in x_other]
    if varied.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = OneVsRestClassifier(LogisticRegression(C=C, max_iter=2000)).fit(x_train, Y_train[:, varied])
        for out, x in zip(outs, x_other):
            out[:, varied] = clf.predict_proba(x)
    return outs
