"""The extraction benchmark runs the real pipeline; with its clocks fixed, its figures are known (no timing asserted)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cli import cli


def test_benchmark_extract_figures_from_fixed_timings(monkeypatch):
    """The real pipeline runs; its clocks are replaced by fixed figures, so every reported number is known here."""
    import dataclasses

    from extract.bench import pipeline

    forward = iter([(100.0, 0.1), (200.0, 0.2), (300.0, 0.3)])  # before round 1, after round 1, after round 2
    untuned = iter([(50.0, 0.5), (150.0, 0.7)])  # default allocator, before and after the rounds
    seconds = iter([0.1, 0.2])  # 8 images per round: 80 and 40 images/s
    real_forward, real_untuned, real_extract = (pipeline._forward_rate, pipeline._forward_rate_default_allocator,
                                                pipeline.extract_features)
    monkeypatch.setattr(pipeline, "_forward_rate", lambda *a: (real_forward(*a), next(forward))[1])
    monkeypatch.setattr(pipeline, "_forward_rate_default_allocator", lambda spec: (real_untuned(spec), next(untuned))[1])
    monkeypatch.setattr(pipeline, "extract_features",
                        lambda *a, **kw: dataclasses.replace(real_extract(*a, **kw), seconds=next(seconds)))
    result = CliRunner().invoke(cli, ["benchmark", "extract", "--model", "resnet18", "--weights", "none",
                                      "--image-size", "32", "--batch-size", "4", "--images", "10", "--rounds", "2",
                                      "--workers", "1", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert (r["images"], r["dim"], r["weights"], r["rounds"]) == (8, 512, "none", 2)  # whole batches only
    assert r["pipeline_rounds_images_per_s"] == [80.0, 40.0] and r["forward_rounds_images_per_s"] == [100.0, 200.0, 300.0]
    assert r["ratio_rounds"] == [0.533, 0.16]  # 80 / mean(100, 200), 40 / mean(200, 300)
    assert r["ratio"] == 0.347  # median of the two rounds
    assert (r["pipeline_images_per_s"], r["forward_images_per_s"], r["forward_kernel_share"]) == (60.0, 200.0, 0.2)
    assert r["allocator_tuned"] is True and r["forward_default_allocator_images_per_s"] == [50.0, 150.0]
    assert r["forward_default_allocator_kernel_share"] == [0.5, 0.7]
    assert r["allocator_gain"] == 2.0  # median forward 200 / mean default-allocator forward 100
    assert next(forward, None) is None and next(seconds, None) is None  # each clock read exactly as often as expected


def test_benchmark_extract_without_allocator_baseline():
    result = CliRunner().invoke(cli, ["benchmark", "extract", "--model", "resnet18", "--weights", "none",
                                      "--image-size", "32", "--batch-size", "4", "--images", "4", "--rounds", "1",
                                      "--workers", "0", "--threads", "1", "--no-allocator-baseline", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["forward_default_allocator_images_per_s"] == [] and r["allocator_gain"] is None


def test_benchmark_extract_both_decoders_each_between_two_forward_runs(monkeypatch):
    """--decode-in both: a threads round and a processes round each time, each against the forward runs around it."""
    import dataclasses

    from extract.bench import pipeline

    forward = iter([(100.0, 0.1), (200.0, 0.1), (300.0, 0.1), (400.0, 0.1), (500.0, 0.1)])
    seconds = iter([0.1, 0.2, 0.08, 0.16])  # 8 images: threads 80, processes 40, threads 100, processes 50 images/s
    modes = []
    real_forward, real_extract = pipeline._forward_rate, pipeline.extract_features

    def extract(*a, **kw):
        modes.append(kw["decode_in"])
        return dataclasses.replace(real_extract(*a, **kw), seconds=next(seconds))

    monkeypatch.setattr(pipeline, "_forward_rate", lambda *a: (real_forward(*a), next(forward))[1])
    monkeypatch.setattr(pipeline, "extract_features", extract)
    result = CliRunner().invoke(cli, ["benchmark", "extract", "--model", "resnet18", "--weights", "none",
                                      "--image-size", "32", "--batch-size", "4", "--images", "8", "--rounds", "2",
                                      "--workers", "1", "--threads", "1", "--decode-in", "both",
                                      "--no-allocator-baseline", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert modes == ["threads", "processes", "threads", "processes"]
    threads, processes = r["by_decode_in"]["threads"], r["by_decode_in"]["processes"]
    assert threads["ratio_rounds"] == [0.533, 0.286]  # 80 / mean(100, 200), 100 / mean(300, 400)
    assert processes["ratio_rounds"] == [0.16, 0.111]  # 40 / mean(200, 300), 50 / mean(400, 500)
    assert (threads["ratio"], processes["ratio"]) == (0.41, 0.136)
    assert (r["decode_in"], r["ratio"], r["pipeline_images_per_s"]) == ("threads", 0.41, 90.0)  # headline: threads
    assert next(forward, None) is None and next(seconds, None) is None


def test_benchmark_extract_draws_jpegs_of_the_photo_size(monkeypatch):
    from PIL import Image

    from extract.bench import pipeline

    sizes, real_draw = [], pipeline.draw_images

    def draw(folder, n, size):
        paths = real_draw(folder, n, size)
        sizes.append({Image.open(p).size for p in paths})
        return paths

    monkeypatch.setattr(pipeline, "draw_images", draw)
    args = ["benchmark", "extract", "--model", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size",
            "4", "--images", "4", "--rounds", "1", "--workers", "0", "--no-allocator-baseline"]
    result = CliRunner().invoke(cli, [*args, "--photo-size", "96x72", "--json"])
    assert result.exit_code == 0, result.output
    assert sizes == [{(96, 72)}] and json.loads(result.output)["photo_size"] == [96, 72]
    result = CliRunner().invoke(cli, [*args, "--photo-size", "96by72"])
    assert result.exit_code == 2 and "'96by72' is not WIDTHxHEIGHT" in result.output


def test_steady_rate_counts_the_images_after_the_first_output():
    from extract.bench.engines import steady_rate

    assert steady_rate([(10.0, 64), (12.0, 64), (14.0, 32)]) == 24.0  # (64 + 32) images in 4 s
    assert steady_rate([(10.0, 64)]) is None and steady_rate([]) is None
    assert steady_rate([(10.0, 64), (10.0, 64)]) is None  # no time between them
