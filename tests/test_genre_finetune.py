"""Fine-tuning the last backbone blocks on poster images: block listing, frozen vs trained weights, checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw


def test_resnet_blocks_are_its_stem_and_residual_blocks_in_order():
    import torchvision

    from retrieval.genre.finetune import backbone_blocks

    net = torchvision.models.resnet18(weights=None)
    net.fc = torch.nn.Identity()
    expected = [net.conv1, net.bn1] + [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
    got = backbone_blocks(net)
    assert [id(b) for b in got] == [id(b) for b in expected]


def _posters(folder, n=36, seed=0):
    rng = np.random.default_rng(seed)
    (folder / "posters").mkdir()
    rows = []
    for i in range(n):
        genre = "Acción" if i % 2 else "Drama"
        base = (200, 40, 30) if genre == "Acción" else (30, 50, 190)
        img = Image.new("RGB", (40, 56), tuple(int(np.clip(c + rng.integers(-25, 25), 0, 255)) for c in base))
        ImageDraw.Draw(img).rectangle((6, 6, 30, 30), fill=(255, 255, 255) if genre == "Acción" else (0, 0, 0))
        img.save(folder / "posters" / f"p{i}.png")
        rows.append(f"p{i},{genre}")
    labels = folder / "movies.csv"
    labels.write_text("id,genres\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return labels


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """36 seeded posters, their resnet18 features (random weights, 32 px) and a model with 2 blocks fine-tuned."""
    from click.testing import CliRunner

    from cli import cli

    tmp_path = tmp_path_factory.mktemp("finetune")
    labels = _posters(tmp_path)
    feats = tmp_path / "posters.h5"
    runner = CliRunner()
    res = runner.invoke(cli, ["extract", str(tmp_path / "posters"), str(feats), "--model", "resnet18", "--weights", "none",
                              "--image-size", "32", "--device", "cpu", "--quiet", "--workers", "0"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "ft.pt"
    res = runner.invoke(cli, ["genres", "train", "--model", "poster", "--fine-tune", "2", "--labels", str(labels),
                              "--features", str(feats), "--out", str(out), "--epochs", "3", "--hidden", "0",
                              "--batch-size", "16", "--device", "cpu", "--quiet", "--val-fraction", "0.25",
                              "--test-fraction", "0.25"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return tmp_path, labels, feats, out, res.output


def test_finetune_trains_only_the_last_blocks_and_saves_a_safe_checkpoint(tuned):
    from extract.backbone import load_backbone
    from extract.store import open_features
    from retrieval.genre.finetune import backbone_blocks

    _, _, feats, out, output = tuned
    assert "last 2 backbone blocks fine-tuned" in output and "test: n=" in output
    blob = torch.load(out, weights_only=True)
    assert blob["format"] == "buscador-genre-finetuned/1" and set(blob["genres"]) == {"Acción", "Drama"}
    # the trained blocks' weights moved away from the seeded backbone the feature file was made with (BatchNorm
    # statistics are recalibrated for random weights, so only parameters are compared); the head has 2 outputs
    config = open_features(feats).config
    fresh = backbone_blocks(load_backbone("resnet18", "none", "cpu", image_size=32, seed=config.get("seed") or 0).module)
    assert len(blob["blocks"]) == 2
    for saved, block in zip(blob["blocks"], fresh[-2:]):
        assert set(saved) == set(block.state_dict())
        params = dict(block.named_parameters())
        assert all(not torch.equal(saved[k], p.detach()) for k, p in params.items() if k.endswith("conv1.weight"))
    assert blob["head"]["1.weight"].shape == (2, 512)


def _reference_probs(blob, paths):
    """Probabilities built by hand: the feature file's backbone with the saved blocks loaded, run through the
    extraction pipeline (extract.features.embed_images), then the saved linear head as sigmoid(x W^T + b)."""
    from extract.features import backbone_from_config, embed_images
    from retrieval.genre.finetune import backbone_blocks

    bb = backbone_from_config(blob["feature_config"], "cpu")
    for block, state in zip(backbone_blocks(bb.module)[-2:], blob["blocks"]):
        block.load_state_dict(state)
    bb.module.eval()
    x, failed = embed_images(paths, bb, "cpu")
    assert not failed
    w, b = blob["head"]["1.weight"].numpy(), blob["head"]["1.bias"].numpy()
    return 1.0 / (1.0 + np.exp(-(np.asarray(x, np.float64) @ w.T + b)))


def test_evaluate_and_predict_run_the_fine_tuned_backbone_on_the_posters(tuned):
    import json

    from click.testing import CliRunner

    from cli import cli
    from retrieval.genre.decision import DecisionRule
    from retrieval.genre.metrics import multilabel_report

    folder, labels, feats, out, _ = tuned
    blob = torch.load(out, weights_only=True)
    runner = CliRunner()
    res = runner.invoke(cli, ["genres", "evaluate", str(out), "--json", "--split", "all"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    report = json.loads(res.output)
    # reference: every poster through the hand-built model, the saved decision rule, the label file's genres
    ids = [f"p{i}" for i in range(36)]
    probs = _reference_probs(blob, [str(folder / "posters" / f"{m}.png") for m in ids])
    genres = list(blob["genres"])
    Y = np.array([[int(g == ("Acción" if i % 2 else "Drama")) for g in genres] for i in range(36)], np.uint8)
    ref = multilabel_report(Y, DecisionRule.from_state(blob["decision"]).apply(probs), genres)
    assert report["n"] == 36 and report["micro_f1"] == pytest.approx(ref["micro_f1"])
    assert "fine-tuned" in report["model"]

    res = runner.invoke(cli, ["genres", "evaluate", str(out), "--labels", str(labels), "--features", str(feats)])
    assert res.exit_code == 0 and f"n={len(blob['split_ids']['test'])}" in res.output.replace(" ", "")

    res = runner.invoke(cli, ["genres", "predict", str(out), "--poster", str(folder / "posters" / "p3.png"), "--top", "2",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    got = {line.split()[0]: float(line.split()[1]) for line in res.output.strip().splitlines()}
    assert set(got) == set(genres)
    for g, p in got.items():
        assert p == pytest.approx(float(probs[3, genres.index(g)]), abs=2e-3)
    res = runner.invoke(cli, ["genres", "predict", str(out), "--overview", "sin cartel"])
    assert res.exit_code == 1 and "needs --poster" in res.output


def test_benchmark_compares_cached_features_with_fine_tuning_on_one_split(tuned):
    import json

    from click.testing import CliRunner

    from cli import cli
    from retrieval.genre.baselines import most_frequent
    from retrieval.genre.metrics import multilabel_report
    from retrieval.genre.train import GenreConfig, fit, prepare

    _, labels, feats, _, _ = tuned
    opts = ["--epochs", "2", "--hidden", "0", "--batch-size", "16", "--device", "cpu", "--val-fraction", "0.25",
            "--test-fraction", "0.25"]
    res = CliRunner().invoke(cli, ["genres", "benchmark", "--fine-tune", "1", "--labels", str(labels), "--features", str(feats),
                                   "--json", *opts])
    assert res.exit_code == 0, res.output + repr(res.exception)
    result = json.loads(res.output)
    assert [r["model"] for r in result["rows"]] == ["most-frequent", "cached features", "fine-tuned (last 1 blocks)"]
    # reference: the same split built directly, the most-frequent baseline and the cached-feature head trained on it
    prep = prepare(labels, feats, seed=0, val_fraction=0.25, test_fraction=0.25)
    test, train = prep.rows("test"), prep.rows("train")
    assert result["n"] == {"train": len(train), "val": len(prep.rows("val")), "test": len(test)}
    base = multilabel_report(prep.labels.Y[test], most_frequent(prep.labels.Y[train], len(test)), prep.labels.genres)
    assert result["rows"][0]["micro_f1"] == pytest.approx(base["micro_f1"])
    clf = fit(prep, GenreConfig(model="poster", epochs=2, hidden=0, batch_size=16, val_fraction=0.25, test_fraction=0.25),
              device="cpu")
    cached = multilabel_report(prep.labels.Y[test], clf.decide(clf.predict_proba(prep.poster[test], None)), prep.labels.genres)
    assert result["rows"][1]["micro_f1"] == pytest.approx(cached["micro_f1"])
    assert 1 <= result["rows"][2]["epochs"] <= 2


def test_finetune_refuses_other_models_and_too_many_blocks(tmp_path):
    from click.testing import CliRunner

    from cli import cli

    labels = _posters(tmp_path, n=8)
    res = CliRunner().invoke(cli, ["genres", "train", "--model", "text", "--fine-tune", "1", "--labels", str(labels)])
    assert res.exit_code != 0 and "--model poster" in res.output
    res = CliRunner().invoke(cli, ["genres", "train", "--model", "poster", "--fine-tune", "1", "--folds", "2", "--labels",
                                   str(labels)])
    assert res.exit_code == 2 and "leave --folds at 0" in res.output


@pytest.mark.parametrize("n_blocks", [99])
def test_finetune_block_count_is_checked(tmp_path, n_blocks):
    from click.testing import CliRunner

    from cli import cli

    labels = _posters(tmp_path, n=12)
    feats = tmp_path / "posters.h5"
    runner = CliRunner()
    runner.invoke(cli, ["extract", str(tmp_path / "posters"), str(feats), "--model", "resnet18", "--weights", "none",
                        "--image-size", "32", "--device", "cpu", "--quiet", "--workers", "0"])
    res = runner.invoke(cli, ["genres", "train", "--model", "poster", "--fine-tune", str(n_blocks), "--labels", str(labels),
                              "--features", str(feats), "--out", str(tmp_path / "x.pt"), "--device", "cpu", "--quiet"])
    assert res.exit_code == 1 and "has 10 blocks" in res.output


def test_serve_refuses_a_fine_tuned_model_at_load_with_advice(tuned):
    from extract.core.errors import UserError
    from retrieval.serve.engine import Engine

    out = tuned[3]
    with pytest.raises(UserError, match="fine-tuned poster model, which serve does not run"):
        Engine._load_genres(object.__new__(Engine), str(out))  # the genre step of the engine's start-up
