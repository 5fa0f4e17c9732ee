"""`cli.py benchmark serve` on the small serve collection: every query answered, the same ranking both ways."""

from __future__ import annotations

import math

from serve_fakes import collection

from retrieval.bench.serve import format_report, run


def test_load_test_answers_everything_the_same_in_process_and_over_http(tmp_path_factory):
    coll = collection(tmp_path_factory)
    texts = ["una persona en bicicleta", "un perro en el parque", "un barco en el mar"]
    r = run(str(coll["index"]), str(coll["model"]), texts, clients=4, n_text=24, n_id=8, n_single=20, rounds=4,
            time_limit=120)
    assert r["disagree"] == 0  # the server's rankings are the in-process ones, query by query
    assert r["text"]["n"] + r["id"]["n"] == 20
    ld = r["load"]
    assert (ld["answered"], ld["errors"], ld["unsent"], ld["timed_out"]) == (32, {}, 0, False)
    for kind in ("text", "id"):
        for part in ("in_process", "http"):
            assert math.isfinite(r[kind][part]["p50_ms"]) and r[kind][part]["cpu_p50_ms"] > 0
        assert math.isfinite(r[kind]["overhead_ms"]["in_server"])
    assert math.isfinite(r["healthz_round_trip_ms"]["p50"]) and r["server"]["event_loop"]
    assert "overhead" in format_report(r)
