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


def test_finetune_trains_only_the_last_blocks_and_saves_a_safe_checkpoint(tmp_path):
    from click.testing import CliRunner

    from cli import cli
    from extract.backbone import load_backbone
    from extract.store import open_features
    from retrieval.genre.finetune import backbone_blocks

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
    assert "last 2 backbone blocks fine-tuned" in res.output and "test: n=" in res.output
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


def test_finetune_refuses_other_models_and_too_many_blocks(tmp_path):
    from click.testing import CliRunner

    from cli import cli

    labels = _posters(tmp_path, n=8)
    res = CliRunner().invoke(cli, ["genres", "train", "--model", "text", "--fine-tune", "1", "--labels", str(labels)])
    assert res.exit_code != 0 and "--model poster" in res.output


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
