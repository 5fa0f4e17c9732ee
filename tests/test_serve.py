"""`cli.py serve`'s API through FastAPI's TestClient: answers against brute force, and every attack a 4xx JSON.

The collection (tests/serve_fakes.py) is 30 drawn images with a real text model trained on captions
naming each image's concept, and a real text-only genre model; query images are embedded by colour.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from indexes_fakes import concept_vector
from serve_fakes import brute_force, collection, install_fake_backbone, png_bytes

from cli import cli
from extract.core.errors import UserError
from retrieval.query import load_text_encoder
from retrieval.serve import Engine, ServeConfig, check_exposure, create_app
from retrieval.serve.uploads import RequestError

BIKE = "una persona en bicicleta"


@pytest.fixture(scope="module")
def coll(tmp_path_factory):
    return collection(tmp_path_factory)


@pytest.fixture(scope="module")
def fake_backbone():
    with pytest.MonkeyPatch.context() as mp:
        install_fake_backbone(mp)
        yield


def _config(coll, **kw) -> ServeConfig:
    return ServeConfig(index_dir=str(coll["index"]), model=str(coll["model"]), genres=str(coll["genres"]), **kw)


@pytest.fixture(scope="module")
def client(coll, fake_backbone):
    with TestClient(create_app(_config(coll)), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def encoder(coll):
    return load_text_encoder(coll["model"])


def _json_error(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    return r.json()["error"]


def _ids(doc) -> list[str]:
    return [h["id"] for h in doc["results"]]


def test_text_search_is_the_brute_force_ranking(client, coll, encoder):
    r = client.get("/api/search", params={"q": BIKE, "k": 5})
    assert r.status_code == 200, r.text
    doc = r.json()
    rows, scores = brute_force(coll["xb"], encoder.encode([BIKE])[0], 5)
    assert _ids(doc) == [coll["ids"][i] for i in rows]
    assert all(int(i[4:8]) % 3 == 0 for i in _ids(doc))  # the planted concept
    assert [h["score"] for h in doc["results"]] == pytest.approx(scores.tolist(), abs=1e-5)
    assert [h["rank"] for h in doc["results"]] == [1, 2, 3, 4, 5] and doc["query"] == BIKE
    assert doc["results"][0]["thumbnail"] == f"/api/images/{rows and coll['ids'][rows[0]]}?size=256"
    assert {"encode", "search", "total"} <= set(doc["timings"])


def test_offset_and_min_score(client, coll, encoder):
    rows, scores = brute_force(coll["xb"], encoder.encode([BIKE])[0], 10)
    doc = client.get("/api/search", params={"q": BIKE, "k": 5, "offset": 5}).json()
    assert _ids(doc) == [coll["ids"][i] for i in rows[5:10]] and doc["results"][0]["rank"] == 6
    cut = float((scores[2] + scores[3]) / 2)
    doc = client.get("/api/search", params={"q": BIKE, "k": 10, "min_score": cut}).json()
    assert _ids(doc) == [coll["ids"][i] for i in rows[:3]]
    assert len(client.get("/api/search", params={"q": BIKE, "k": 100}).json()["results"]) == 30


def test_id_search_by_id_and_stem(client, coll):
    rows, _ = brute_force(coll["xb"], coll["xb"][4], 4)
    for given in ("img/0004.png", "0004.png", "0004"):
        doc = client.get("/api/search", params={"id": given, "k": 4}).json()
        assert _ids(doc) == [coll["ids"][i] for i in rows] and doc["results"][0]["id"] == "img/0004.png"
    err = _json_error(client.get("/api/search", params={"id": "img/0404.png"}), 404)
    assert "not in the index" in err and "img/0404.png" in err


def test_image_upload_and_query_arithmetic(client, coll, encoder):
    r = client.post("/api/search", data={"k": "6"}, files={"image": ("q.jpg", png_bytes((0, 0, 250)), "image/jpeg")})
    assert r.status_code == 200, r.text
    rows, _ = brute_force(coll["xb"], concept_vector(2), 6)
    assert _ids(r.json()) == [coll["ids"][i] for i in rows]

    def unit(v):
        return v / np.linalg.norm(v)

    terms = [{"q": BIKE, "w": 1}, {"id": "img/0003.png", "w": -0.5}, {"image": 0, "w": 0.25}]
    r = client.post("/api/search", data={"terms": json.dumps(terms), "k": "8"},
                    files={"image": ("x.png", png_bytes((0, 200, 0)), "image/png")})
    assert r.status_code == 200, r.text
    q = unit(encoder.encode([BIKE])[0]) - 0.5 * unit(coll["xb"][3]) + 0.25 * unit(concept_vector(1))
    rows, _ = brute_force(coll["xb"], q, 8)
    assert _ids(r.json()) == [coll["ids"][i] for i in rows]
    import base64

    r = client.post("/api/search", json={"terms": [{"q": BIKE}, {"image": base64.b64encode(png_bytes((0, 200, 0))).decode(),
                                                                 "w": 0.25}, {"id": "0003", "w": -0.5}], "k": 8})
    assert _ids(r.json()) == [coll["ids"][i] for i in rows]


def test_batch_equals_single_answers(client):
    queries = [{"q": BIKE, "k": 3}, {"id": "img/0007.png", "k": 2}, {"q": "un barco", "k": 4, "offset": 1}]
    r = client.post("/api/search/batch", json={"queries": queries})
    assert r.status_code == 200, r.text
    got = [_ids(a) for a in r.json()["answers"]]
    assert got == [_ids(client.post("/api/search", json=q).json()) for q in queries]
    err = _json_error(client.post("/api/search/batch", json={"queries": [{"q": BIKE}, {"k": 3}]}), 422)
    assert err.startswith("queries[1]: give exactly one of")
    assert "1 to 64" in _json_error(client.post("/api/search/batch", json={"queries": [{"q": "x"}] * 65}), 422)


def test_images_and_cached_thumbnails(client, coll):
    r = client.get("/api/images/img/0000.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (coll["root"] / "images" / "img" / "0000.png").read_bytes()
    t1 = client.get("/api/images/img/0001.png", params={"size": 16})
    assert t1.headers["content-type"] == "image/jpeg" and t1.content[:3] == b"\xff\xd8\xff"
    import io

    from PIL import Image

    with Image.open(io.BytesIO(t1.content)) as im:
        assert im.size == (16, 16) and max(abs(a - b) for a, b in zip(im.getpixel((8, 8)), (30, 160, 30))) < 12
    assert client.get("/api/images/img/0001.png", params={"size": 16}).content == t1.content
    assert "size must be between" in _json_error(client.get("/api/images/img/0001.png", params={"size": 5000}), 422)


@pytest.mark.parametrize("raw", ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "%2e%2e/%2e%2e/etc/passwd",
                                 "img/..%2F..%2Ffeatures.h5", "img%2F0000.png%00", "..%5C..%5Cfeatures.h5", "%252e%252e%252f"])
def test_path_traversal_in_image_ids_is_a_404(client, raw):
    r = client.get("/api/images/" + raw)
    assert 400 <= r.status_code < 500 and "error" in r.json()
    assert b"root:" not in r.content and b"HDF" not in r.content


def test_engine_serves_only_stored_ids(coll):
    engine = Engine(ServeConfig(index_dir=str(coll["index"]), image_queries=False)).load()
    absolute = str(coll["root"] / "images" / "img" / "0000.png")
    try:
        for bad in ("../../etc/passwd", "/etc/passwd", absolute, "img/../img/0000.png", "./img/0000.png", "features.h5", ""):
            with pytest.raises(RequestError) as exc:
                engine.image(bad, None)
            assert exc.value.status == 404
        assert engine.image("img/0000.png", None)[1] == "image/png"
    finally:
        engine.close()


def test_uploads_are_checked_by_bytes_size_and_pixels(coll, fake_backbone):
    app = create_app(_config(coll, max_upload=4096, max_pixels=50 * 50))
    with TestClient(app, raise_server_exceptions=False) as c:
        def post(data, name="q.png"):
            return c.post("/api/search", files={"image": (name, data, "image/png")})

        assert post(png_bytes((0, 0, 250))).status_code == 200
        assert "not a JPEG, PNG" in _json_error(post(b"<?php echo 1; ?>" * 10, "evil.png"), 415)
        assert "cannot be decoded" in _json_error(post(png_bytes((1, 2, 3))[:40]), 415)
        assert "possible decompression bomb" in _json_error(post(png_bytes((0, 0, 250), (60, 60))), 413)
        noise = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, format="PNG")
        assert "over the 4096-byte limit" in _json_error(post(buf.getvalue()), 413)
        huge = b"\x89PNG\r\n\x1a\n" + bytes(8 * 1024 * 1024)
        assert "over the" in _json_error(post(huge), 413)
        assert "empty" in _json_error(post(b""), 400)


def test_token_is_required_on_api_routes(coll, fake_backbone):
    token = "s3cret-token-123"
    with TestClient(create_app(_config(coll, token=token))) as c:
        assert "missing or wrong token" in _json_error(c.get("/api/search", params={"q": BIKE}), 401)
        assert _json_error(c.get("/api/search", params={"q": BIKE}, headers={"Authorization": "Bearer nope"}), 401)
        assert _json_error(c.get("/api/images/img/0000.png"), 401)
        assert _json_error(c.post("/api/genres", json={"overview": "x"}), 401)
        assert c.get("/metrics").status_code == 401
        assert c.get("/api/search", params={"q": BIKE}, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        c.cookies.set("buscador_token", token)
        assert c.get("/api/images/img/0000.png").status_code == 200
        assert c.get("/healthz").json() == {"status": "ok", "images": 30}
        assert c.get("/").status_code == 200  # the page loads and then asks for the token


def test_exposure_rules():
    with pytest.raises(UserError, match="reachable from other machines"):
        check_exposure("0.0.0.0", None, False)
    check_exposure("0.0.0.0", "long-enough-token", False)
    check_exposure("192.168.1.5", None, True)
    for host in ("127.0.0.1", "::1", "localhost", "127.8.9.1"):
        check_exposure(host, None, False)
    with pytest.raises(UserError, match="at least 8"):
        check_exposure("127.0.0.1", "short", False)
    r = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--index", "nowhere"])
    assert r.exit_code == 1 and r.output.startswith("Error: --host 0.0.0.0 is reachable")


@pytest.mark.parametrize("kwargs,status,needle", [
    ({"content": b"{bad json", "headers": {"content-type": "application/json"}}, 400, "malformed JSON"),
    ({"content": b"[1, 2]", "headers": {"content-type": "application/json"}}, 400, "must be an object"),
    ({"content": b"\xff\xfe", "headers": {"content-type": "application/json"}}, 400, "malformed JSON"),
    ({"json": {"q": BIKE, "kk": 3}}, 422, "kk: Extra inputs are not permitted"),
    ({"json": {"q": BIKE, "k": "many"}}, 422, "k: Input should be a valid integer"),
    ({"json": {"terms": [{"q": "a", "id": "b"}]}}, 422, "exactly one of q, id, image"),
    ({"json": {"terms": [{"q": BIKE, "w": 1e9}]}}, 422, "finite number"),
    ({"json": {"q": BIKE, "id": "img/0000.png"}}, 422, "give exactly one of"),
    ({"json": {"image": "%%%notbase64"}}, 400, "not valid base64"),
    ({"content": b"q=1", "headers": {"content-type": "text/plain"}}, 415, "application/json or multipart"),
    ({"data": {"terms": "[{"}}, 400, "terms is not valid JSON"),
])
def test_malformed_bodies_are_4xx_json(client, kwargs, status, needle):
    assert needle in _json_error(client.post("/api/search", **kwargs), status)


@pytest.mark.parametrize("params,status,needle", [
    ({"q": BIKE, "k": 0}, 422, "k must be between 1 and 100"),
    ({"q": BIKE, "k": 101}, 422, "k must be between 1 and 100"),
    ({"q": BIKE, "k": -5}, 422, "k must be between"),
    ({"q": BIKE, "k": "ten"}, 422, "k: Input should be a valid integer"),
    ({"q": BIKE, "min_score": "high"}, 422, "min_score: Input should be a valid number"),
    ({"terms": '[{"q": "x"}]'}, 422, "give exactly one of q, id, image or terms"),  # GET takes q or id only
    ({"q": BIKE, "offset": -1}, 422, "offset must be between 0 and 1000"),
    ({"q": BIKE, "offset": 10**6}, 422, "offset must be between"),
    ({"q": "x" * 501}, 422, "over the 500 limit"),
    ({"q": "   "}, 400, "empty query"),
    ({"q": "zzzz qqqq"}, 400, "no known words"),
    ({}, 422, "give exactly one of q, id, image or terms"),
])
def test_bad_search_parameters_are_4xx_json(client, params, status, needle):
    assert needle in _json_error(client.get("/api/search", params=params), status)


def test_answers_are_the_documented_schemas(client):
    """Answers are sent as ready-made JSON: each must be exactly its documented model (extra fields forbidden)."""
    from retrieval.serve.models import BatchAnswer, GenreAnswer, SearchAnswer

    for r in (client.get("/api/search", params={"q": BIKE, "k": 3, "_": "1"}),  # unknown parameters are ignored
              client.get("/api/search", params={"id": "0004", "min_score": "-1"}),
              client.post("/api/search", json={"terms": [{"q": BIKE}, {"id": "0003", "w": -0.5}]})):
        assert r.status_code == 200, r.text
        SearchAnswer.model_validate(r.json())
    BatchAnswer.model_validate(client.post("/api/search/batch", json={"queries": [{"q": BIKE}, {"id": "0003"}]}).json())
    GenreAnswer.model_validate(client.post("/api/genres", json={"overview": "terroruno terrordos"}).json())
    paths = client.get("/openapi.json").json()["paths"]
    documented = {(path, method): paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
                  for path, method in (("/api/search", "get"), ("/api/search", "post"), ("/api/search/batch", "post"),
                                       ("/api/genres", "post"))}
    assert [ref.rsplit("/", 1)[1] for ref in documented.values()] == ["SearchAnswer", "SearchAnswer", "BatchAnswer",
                                                                        "GenreAnswer"]
    params = {p["name"]: p["schema"] for p in paths["/api/search"]["get"]["parameters"]}
    assert set(params) == {"q", "id", "k", "offset", "min_score"} and params["k"] == {"type": "integer", "default": 10}


def test_query_threads_answer_like_the_event_loop(coll, fake_backbone):
    """With inline_ms=0 every search goes to the query threads: same answers, and info says so."""
    params = [{"q": BIKE, "k": 5}, {"id": "0004", "k": 4}, {"q": "un barco", "k": 3, "offset": 2}]
    answers = {}
    for inline_ms in (20.0, 0.0):
        with TestClient(create_app(_config(coll, inline_ms=inline_ms))) as c:
            assert c.get("/api/info").json()["server"]["queries_on_event_loop"] is (inline_ms > 0)
            answers[inline_ms] = [_ids(c.get("/api/search", params=p).json()) for p in params]
            answers[inline_ms].append(_ids(c.post("/api/search", json={"terms": [{"q": BIKE}, {"id": "0003", "w": -0.5}]}).json()))
    assert answers[0.0] == answers[20.0] and all(answers[0.0])


def test_a_text_model_that_cannot_be_probed_keeps_queries_on_threads(coll, fake_backbone, monkeypatch):
    def unknown_words(self, text):
        raise RequestError("no known words", 400)

    monkeypatch.setattr(Engine, "text_vector", unknown_words)
    with TestClient(create_app(_config(coll))) as c:
        server = c.get("/api/info").json()["server"]
    assert server["queries_on_event_loop"] is False and server["warm_query_cpu_ms"] is None


def test_requests_run_faiss_on_one_thread(coll):
    """OpenMP's thread count is per thread: a search on a new (request) thread must still use one."""
    import threading

    import faiss

    engine = Engine(ServeConfig(index_dir=str(coll["index"]), image_queries=False)).load()
    seen = []

    def request():
        faiss.omp_set_num_threads(4)  # what a fresh thread may start with on a 4-core machine
        engine.search(coll["xb"][0], 3)
        seen.append(faiss.omp_get_max_threads())

    try:
        t = threading.Thread(target=request)
        t.start()
        t.join()
    finally:
        engine.close()
    assert seen == [1]


def test_genres_json_and_form(client):
    r = client.post("/api/genres", json={"overview": "terroruno terrordos terrortres", "top": 3})
    assert r.status_code == 200, r.text
    doc = r.json()
    probs = [g["probability"] for g in doc["genres"]]
    assert doc["genres"][0]["genre"] == "Terror" and probs == sorted(probs, reverse=True) and len(probs) == 3
    assert doc["predicted"] == [g["genre"] for g in doc["genres"] if g["probability"] >= g["threshold"]]
    form = client.post("/api/genres", data={"overview": "terroruno terrordos terrortres", "top": "3"})
    assert form.json()["genres"] == doc["genres"]
    assert "needs an overview" in _json_error(client.post("/api/genres", json={"top": 2}), 422)
    assert _json_error(client.post("/api/genres", json={"overview": "x", "top": 0}), 422)


def test_info_metrics_docs_and_page(client, coll):
    info = client.get("/api/info").json()
    a = info["artifacts"]
    assert (a["index"]["kind"], a["index"]["n"], a["index"]["d"], a["index"]["metric"]) == ("Flat", 30, 16, "cosine")
    digest = hashlib.sha256(coll["model"].read_bytes()).hexdigest()[:16]
    assert a["text_model"]["fingerprint"] == f"sha256:{digest}" and a["genres"]["model"] == "text"
    assert info["stale"] == [] and info["text_queries"] and info["image_queries"] and info["genres"]
    assert info["server"]["query_threads"] >= 1 and info["server"]["event_loop"]
    assert info["server"]["queries_on_event_loop"] and 0 < info["server"]["warm_query_cpu_ms"] <= 20
    client.get("/api/search", params={"q": BIKE})
    text = client.get("/metrics").text
    assert 'buscador_requests_total{method="GET",route="/api/search",status="200"}' in text
    assert 'buscador_stage_seconds_count{stage="encode"}' in text
    assert 'route="/api/images/{image_id:path}"' in text  # the template, never a raw path
    docs = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert {"/api/search", "/api/search/batch", "/api/genres", "/api/info"} <= set(client.get("/openapi.json").json()["paths"])
    page = client.get("/")
    assert 'id="q"' in page.text and "http" not in page.text.split("<body>")[0].replace("http-equiv", "")
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_cors_is_off_unless_asked(coll, fake_backbone):
    origin = {"Origin": "http://elsewhere.example"}
    with TestClient(create_app(_config(coll))) as c:
        assert "access-control-allow-origin" not in c.get("/api/info", headers=origin).headers
    with TestClient(create_app(_config(coll, cors=("http://elsewhere.example",)))) as c:
        assert c.get("/api/info", headers=origin).headers["access-control-allow-origin"] == "http://elsewhere.example"


def test_an_unexpected_fault_is_a_json_500(coll, fake_backbone, monkeypatch, caplog):
    with TestClient(create_app(_config(coll)), raise_server_exceptions=False) as c:
        monkeypatch.setattr(Engine, "search", lambda *a, **k: 1 / 0)
        r = c.get("/api/search", params={"q": BIKE})
    assert r.status_code == 500 and r.json() == {"error": "internal server error; the server log has the details"}
    assert "ZeroDivisionError" in caplog.text


def test_start_up_logs_each_artifact_and_text_only_skips_torch(coll, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="retrieval.serve")
    Engine(ServeConfig(index_dir=str(coll["index"]), model=str(coll["model"]), image_queries=False)).load().close()
    fp = hashlib.sha256(coll["model"].read_bytes()).hexdigest()[:16]
    assert f"loaded text_model {coll['model']} (sha256:{fp})" in caplog.text and "loaded index" in caplog.text
    code = ("import sys; from retrieval.serve import Engine, ServeConfig; "
            f"e = Engine(ServeConfig(index_dir={str(coll['index'])!r}, model={str(coll['model'])!r}, image_queries=False)).load(); "
            "e.text_vector('una persona en bicicleta'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_bare_serve_command_uses_the_workspace(coll, tmp_path):
    """`cli.py serve` with no options serves the workspace's index and text model on 127.0.0.1."""
    import os
    import socket
    import time

    import httpx

    ws = tmp_path / "workspace"
    ws.mkdir()
    (ws / "index").symlink_to(coll["index"])
    (ws / "text-encoder.npz").symlink_to(coll["model"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, BUSCADOR_WORKSPACE=str(ws), PYTHONPATH=str(repo))
    proc = subprocess.Popen([sys.executable, str(repo / "cli.py"), "serve", "--port", str(port), "--no-image-queries"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, r = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/search", params={"q": BIKE, "k": 3}, timeout=5)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert r is not None and r.status_code == 200, proc.stdout.read() if proc.poll() is not None else "no answer"
        assert all(int(h["id"][4:8]) % 3 == 0 for h in r.json()["results"])
        info = httpx.get(f"http://127.0.0.1:{port}/api/info").json()
        assert info["genres"] is False and info["server"]["event_loop"] == "uvloop.Loop"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert "loaded text_model" in out and "sha256:" in out and "Traceback" not in out
    assert "uvloop loop, httptools parser" in out
