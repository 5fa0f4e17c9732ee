"""The web page of `cli.py serve` driven in a real browser (playwright + Debian's chromium) on a loopback port.

It types a Spanish query, checks that the grid shows the API's top results, clicks a result for "more
like this", uploads an image, fills the genre form, and checks the page at phone width. Screenshots go to
``$BUSCADOR_SCREENSHOTS`` (else the test's temporary folder). Without chromium the test is skipped with
the reason, except where ``$CI`` or ``$BUSCADOR_REQUIRE_BROWSER`` is set (``.ci/run`` installs chromium).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from serve_fakes import collection, install_fake_backbone, png_bytes

from retrieval.serve import ServeConfig, create_app

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
BIKE = "una persona en bicicleta"


def _need_browser():
    if CHROMIUM is None or not _has_playwright():
        why = "chromium is not installed (apt-get install chromium)" if CHROMIUM is None else "playwright is not installed"
        if os.environ.get("CI") or os.environ.get("BUSCADOR_REQUIRE_BROWSER"):
            pytest.fail(f"the browser test must run here but {why}")
        pytest.skip(why)


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _need_browser()
    import uvicorn

    coll = collection(tmp_path_factory)
    with pytest.MonkeyPatch.context() as mp:
        install_fake_backbone(mp)
        config = ServeConfig(index_dir=str(coll["index"]), model=str(coll["model"]), genres=str(coll["genres"]))
        port = _free_port()
        srv = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not srv.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("the test server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", coll
        srv.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path):
    folder = Path(os.environ.get("BUSCADOR_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _grid(page) -> list[str]:
    return page.eval_on_selector_all("#results figure", "els => els.map(e => e.dataset.id)")


def _wait_query(page, query: str) -> None:
    page.wait_for_function("q => document.getElementById('results').dataset.query === q", arg=query, timeout=20000)


def _images_loaded(page) -> bool:
    page.wait_for_function("() => [...document.querySelectorAll('#results img')].every(i => i.complete)", timeout=20000)
    return page.eval_on_selector_all("#results img", "els => els.every(i => i.naturalWidth > 0)")


def test_search_more_like_this_upload_and_genres(server, browser, shots, tmp_path):
    base, _ = server
    api = httpx.Client(base_url=base, timeout=30)
    errors = []
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=20000)
    assert "30 imágenes" in page.inner_text("#status")

    page.fill("#q", BIKE)
    page.press("#q", "Enter")
    _wait_query(page, BIKE)
    k = page.input_value("#k")
    top = api.get("/api/search", params={"q": BIKE, "k": k}).json()
    shown = _grid(page)
    assert shown == [h["id"] for h in top["results"]] and len(shown) == int(k)
    assert all(int(i[4:8]) % 3 == 0 for i in shown[:10])  # the planted concept leads
    assert _images_loaded(page)
    assert "ms" in page.inner_text("#timings")
    page.screenshot(path=str(shots / "serve-text.png"), full_page=True)

    page.click(f"#results figure[data-id='{shown[1]}']")
    _wait_query(page, f"id:{shown[1]}")
    similar = api.get("/api/search", params={"id": shown[1], "k": k}).json()
    assert _grid(page) == [h["id"] for h in similar["results"]] and _grid(page)[0] == shown[1]
    page.screenshot(path=str(shots / "serve-more-like-this.png"), full_page=True)

    upload = tmp_path / "barco.png"
    upload.write_bytes(png_bytes((0, 0, 240), (64, 64)))
    page.set_input_files("#image", str(upload))
    _wait_query(page, "image")
    by_image = api.post("/api/search", data={"k": k}, files={"image": ("b.png", upload.read_bytes(), "image/png")}).json()
    assert _grid(page) == [h["id"] for h in by_image["results"]]
    assert all(int(i[4:8]) % 3 == 2 for i in _grid(page)[:10])
    assert _images_loaded(page)

    page.fill("#overview", "terroruno terrordos terrortres")
    page.click("#genre-go")
    page.wait_for_selector("#genres li", timeout=20000)
    items = page.eval_on_selector_all("#genres li", "els => els.map(e => e.textContent)")
    assert len(items) == 3 and items[0].startswith("Terror")
    page.screenshot(path=str(shots / "serve-genres.png"), full_page=True)

    page.fill("#q", "zzzz")
    page.press("#q", "Enter")
    page.wait_for_selector("#error:not([hidden])", timeout=20000)
    assert "no known words" in page.inner_text("#error")
    assert errors == []

    page.goto(base + "/docs")  # the OpenAPI page, from local swagger-ui files
    page.wait_for_selector(".opblock-summary-path", timeout=30000)
    paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent.trim())")
    assert {"/api/search", "/api/search/batch", "/api/genres"} <= {p.replace("\u200b", "") for p in paths}
    page.close()


def test_phone_width(server, browser, shots):
    base, _ = server
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    page.goto(base + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=20000)
    page.fill("#q", BIKE)
    page.press("#q", "Enter")
    _wait_query(page, BIKE)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    widths = page.eval_on_selector_all("#results figure", "els => els.map(e => e.getBoundingClientRect().width)")
    assert len(widths) > 0 and all(120 <= w <= 195 for w in widths)  # two columns
    page.screenshot(path=str(shots / "serve-phone.png"), full_page=False)
    page.close()
