"""The extraction benchmark runs the real pipeline and reports consistent figures (no timing asserted)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cli import cli


def test_benchmark_extract_json_is_consistent():
    result = CliRunner().invoke(cli, ["benchmark", "extract", "--model", "resnet18", "--weights", "none",
                                      "--image-size", "32", "--batch-size", "4", "--images", "10", "--rounds", "2",
                                      "--workers", "1", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert (r["images"], r["dim"], r["weights"], r["rounds"]) == (8, 512, "none", 2)  # whole batches only
    assert len(r["pipeline_rounds_images_per_s"]) == len(r["forward_rounds_images_per_s"]) == 2
    assert r["pipeline_images_per_s"] == max(r["pipeline_rounds_images_per_s"])
    assert abs(r["ratio"] - r["pipeline_images_per_s"] / r["forward_images_per_s"]) < 0.01
