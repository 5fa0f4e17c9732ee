"""Cross-fitted genre ensembles (``--folds K``): K members over train+val, the rule chosen on out-of-fold
probabilities, predictions the members' mean probability; saved and loaded like any genre model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_genre_models import write_movies

from cli import cli


@pytest.fixture(scope="module")
def folded(tmp_path_factory):
    from retrieval.genre.train import GenreConfig, fit, prepare

    folder = tmp_path_factory.mktemp("folds")
    labels, _, _ = write_movies(folder, n=300)
    prep = prepare(labels, seed=0)
    cfg = GenreConfig(model="text", folds=3, epochs=12, hidden=16, batch_size=64, lr=3e-3, seed=0)
    return folder, labels, prep, fit(prep, cfg, device="cpu")


def _member_probs(member, clf, texts):
    x = torch.from_numpy(clf.descriptor.transform(texts))
    member.eval()
    with torch.no_grad():
        return torch.sigmoid(member(None, x)).numpy()


def test_prediction_is_the_mean_of_the_members_probabilities(folded):
    _, _, prep, clf = folded
    texts = [prep.labels.texts[i] for i in prep.rows("test")]
    members = list(clf.net.members)
    assert len(members) == 3
    per = [_member_probs(m, clf, texts) for m in members]
    assert not np.allclose(per[0], per[1])  # trained on different movies
    np.testing.assert_allclose(clf.predict_proba(None, texts), np.mean(per, axis=0), atol=1e-5)


def test_rule_is_chosen_on_out_of_fold_probabilities_of_train_and_val(folded):
    from retrieval.genre.decision import choose_rule

    _, _, prep, clf = folded
    pool = np.flatnonzero(prep.codes != 2)  # train + val; the test split is left out
    fold = np.random.default_rng(0).permutation(len(pool)) % 3
    oof = np.zeros((len(pool), len(clf.genres)))
    for k, member in enumerate(clf.net.members):
        held = fold == k
        oof[held] = _member_probs(member, clf, [prep.labels.texts[i] for i in pool[held]])
    ref = choose_rule(oof, prep.labels.Y[pool], clf.cfg.min_support, seed=0)
    assert clf.decision.rule == ref.rule and clf.decision.k == ref.k
    np.testing.assert_allclose(clf.decision.thresholds, ref.thresholds, atol=1e-6)
    assert clf.decision.val_micro_f1 == pytest.approx(ref.val_micro_f1)


def test_cli_trains_saves_and_loads_a_folded_model(folded, tmp_path):
    from retrieval.genre.checkpoint import load_classifier

    _, labels, prep, _ = folded
    out = tmp_path / "f.pt"
    runner = CliRunner()
    res = runner.invoke(cli, ["genres", "train", "--labels", str(labels), "--model", "text", "--folds", "2", "--epochs", "5",
                              "--hidden", "16", "--out", str(out), "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "test: n=" in res.output and "val: n=" not in res.output  # val is in training
    clf = load_classifier(out)
    assert clf.cfg.folds == 2 and len(clf.net.members) == 2
    texts = [prep.labels.texts[i] for i in prep.rows("test")[:5]]
    np.testing.assert_allclose(clf.predict_proba(None, texts), np.mean([_member_probs(m, clf, texts) for m in clf.net.members], 0),
                               atol=1e-5)
    res = runner.invoke(cli, ["genres", "train", "--labels", str(labels), "--model", "text", "--folds", "1", "--out",
                              str(tmp_path / "x.pt")])
    assert res.exit_code == 1 and "--folds 1" in res.output
