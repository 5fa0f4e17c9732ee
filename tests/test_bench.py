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
    pipe, fwd = r["pipeline_rounds_images_per_s"], r["forward_rounds_images_per_s"]
    assert len(pipe) == 2 and len(fwd) == 3  # forward before the first round and after each round
    expected = [pipe[k] / ((fwd[k] + fwd[k + 1]) / 2) for k in range(2)]
    assert all(abs(a - b) < 0.01 for a, b in zip(r["ratio_rounds"], expected, strict=True))
    assert abs(r["ratio"] - sum(expected) / 2) < 0.01  # median of two rounds = their mean
    untuned = r["forward_default_allocator_images_per_s"]
    assert r["allocator_tuned"] is True and len(untuned) == 2 and all(v > 0 for v in untuned)
    assert 0 <= r["forward_kernel_share"] <= 1 and len(r["forward_default_allocator_kernel_share"]) == 2
    assert abs(r["allocator_gain"] - sorted(fwd)[1] / (sum(untuned) / 2)) < 0.01


def test_benchmark_extract_without_allocator_baseline():
    result = CliRunner().invoke(cli, ["benchmark", "extract", "--model", "resnet18", "--weights", "none",
                                      "--image-size", "32", "--batch-size", "4", "--images", "4", "--rounds", "1",
                                      "--workers", "0", "--threads", "1", "--no-allocator-baseline", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["forward_default_allocator_images_per_s"] == [] and r["allocator_gain"] is None
