"""The image-feature commands through click: one-line errors, summaries, import-vectors."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from PIL import Image

from cli import cli
from extract.store import open_features


def _one_line_error(result) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    return lines[0]


def test_missing_and_empty_folder(tmp_path):
    runner = CliRunner()
    line = _one_line_error(runner.invoke(cli, ["extract", str(tmp_path / "nope"), str(tmp_path / "f.h5")]))
    assert "does not exist" in line
    (tmp_path / "empty").mkdir()
    line = _one_line_error(runner.invoke(cli, ["extract", str(tmp_path / "empty"), str(tmp_path / "f.h5")]))
    assert "no images" in line


def test_bad_option_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["extract", str(tmp_path), str(tmp_path / "f.h5"), "--batch-size", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output and "--batch-size" in result.output


def test_unknown_model_and_missing_weights(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    runner = CliRunner()
    line = _one_line_error(runner.invoke(cli, ["extract", str(tmp_path), str(tmp_path / "f.h5"), "--model", "nonet"]))
    assert "unknown model 'nonet'" in line
    line = _one_line_error(runner.invoke(cli, ["extract", str(tmp_path), str(tmp_path / "f.h5"), "--weights",
                                               str(tmp_path / "w.pth")]))
    assert "w.pth does not exist" in line


def test_extract_prints_summary(tmp_path):
    for k in range(3):
        Image.new("RGB", (30, 40), (k * 80, 0, 0)).save(tmp_path / f"{k}.jpg")
    (tmp_path / "bad.jpg").write_text("nope")
    result = CliRunner().invoke(cli, ["extract", str(tmp_path), str(tmp_path / "out" / "f.h5"), "--model", "resnet18",
                                      "--weights", "none", "--image-size", "32", "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "3 new, 0 changed (extracted again), 0 unchanged, 1 failed" in result.output
    assert "bad.jpg: not a recognised image" in result.output
    assert open_features(tmp_path / "out" / "f.h5").ids == ["0.jpg", "1.jpg", "2.jpg"]


def test_import_vectors_command(tmp_path):
    xb = np.arange(12, dtype=np.float32).reshape(3, 4)
    (tmp_path / "n.txt").write_text("a.jpg\nb.jpg\nc.jpg\n")
    xb.tofile(tmp_path / "v.bin")
    runner = CliRunner()
    ok = runner.invoke(cli, ["import-vectors", str(tmp_path / "n.txt"), str(tmp_path / "v.bin"), str(tmp_path / "f.h5"),
                             "--dim", "4"])
    assert ok.exit_code == 0 and "3 images x 4-d" in ok.output
    assert open_features(tmp_path / "f.h5").load().tobytes() == xb.tobytes()
    bad = runner.invoke(cli, ["import-vectors", str(tmp_path / "n.txt"), str(tmp_path / "v.bin"), str(tmp_path / "g.h5")])
    assert "48 bytes but 3 names x 2048 dims" in _one_line_error(bad)
