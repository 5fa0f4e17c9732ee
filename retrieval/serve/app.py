"""The FastAPI app of ``cli.py serve``: JSON API, web page, metrics; artifacts loaded once in the lifespan.

Routes (all ``/api`` ones and ``/metrics`` ask for the bearer token when the server has one):

- ``GET /api/search?q=|id=&k=&offset=&min_score=``, ``POST /api/search`` (JSON or multipart with an
  ``image`` file; ``terms`` for weighted query arithmetic), ``POST /api/search/batch``;
- ``GET /api/images/{id}?size=`` (only ids of the feature file; thumbnails cached), ``POST /api/genres``;
- ``GET /api/info``, ``GET /healthz``, ``GET /metrics`` (Prometheus), ``GET /docs`` (OpenAPI page);
- ``GET /``: the search page (``static/``, no external resources).

Every error is a JSON ``{"error": message}`` with a 4xx status; an unexpected fault is a logged 500.

The routes are ``async``: parsing, checks and JSON run on the event loop, and the query itself (encoding,
index search, genres) goes to a pool of query threads, one hand-off per request; text and id searches are
answered on the event loop itself when a warm one is short (``ServeConfig.inline_ms``). Answers are plain dicts
sent as JSON as they are; their schemas (``models.SearchAnswer``...) are documented, and the tests check the
answers against them.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.util
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import unquote

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from extract.core.errors import UserError
from retrieval.serve.answers import genres as answer_genres
from retrieval.serve.answers import search as answer_search
from retrieval.serve.config import ServeConfig, check_exposure
from retrieval.serve.engine import Engine
from retrieval.serve.metrics import Metrics, MetricsMiddleware
from retrieval.serve.models import (
    BatchAnswer,
    BatchBody,
    GenreAnswer,
    GenreBody,
    SearchAnswer,
    SearchBody,
)
from retrieval.serve.uploads import RequestError, read_body

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
TOKEN_COOKIE = "buscador_token"
_PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'",
                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
_MULTIPART_DOC = {"requestBody": {"content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/SearchBody"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "q": {"type": "string"}, "id": {"type": "string"}, "image": {"type": "string", "format": "binary"},
        "terms": {"type": "string", "description": "JSON list of terms; an image term's value is the upload's index"},
        "k": {"type": "integer"}, "offset": {"type": "integer"}, "min_score": {"type": "number"}}}}}}}
_GENRE_DOC = {"requestBody": {"content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/GenreBody"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "overview": {"type": "string"}, "poster": {"type": "string", "format": "binary"}, "top": {"type": "integer"}}}}}}}


_GET_SEARCH = (("q", "string", None, "Spanish text"), ("id", "string", None, "indexed image id, file name or stem"),
               ("k", "integer", 10, "results (1..{max_k})"), ("offset", "integer", 0, "results to skip (0..{max_offset})"),
               ("min_score", "number", None, "drop results scoring below"))


def _get_search_doc(config: ServeConfig) -> dict:
    """The OpenAPI parameters of ``GET /api/search`` (read by the route itself, not by FastAPI)."""
    return {"parameters": [
        {"name": name, "in": "query", "required": False,
         "description": text.format(max_k=config.max_k, max_offset=config.max_offset),
         "schema": {"type": kind, **({} if default is None else {"default": default})}}
        for name, kind, default, text in _GET_SEARCH]}


def _answers(model, text: str = "the answer") -> dict:
    return {200: {"model": model, "description": text}}


def _query_threads(config: ServeConfig) -> int:
    """``config.query_threads``, else the concurrent.futures default: the CPUs this process may use, plus 4, at most 32."""
    if config.query_threads is not None:
        return max(1, config.query_threads)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(32, cpus + 4)


def _finite_ms(ms: float) -> float | None:
    return round(ms, 2) if math.isfinite(ms) else None


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _validation_message(errors) -> str:
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
    return f"{loc + ': ' if loc else ''}{first.get('msg', 'invalid value')}"


def create_app(config: ServeConfig, engine: Engine | None = None) -> FastAPI:
    """The app; ``engine`` (already loaded) is used as is, otherwise one is loaded at start-up."""
    metrics = Metrics()
    holder: dict = {}  # engine, pool, threads, inline (set in the lifespan)
    body_limit = (config.max_upload * 4) // 3 + 1024 * 1024  # a base64 image in JSON plus the other fields

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        own = engine is None
        holder["engine"] = Engine(config).load() if own else engine
        threads = _query_threads(config)
        holder["pool"] = ThreadPoolExecutor(threads, thread_name_prefix="buscador-query")
        holder["threads"] = threads
        cost = holder["engine"].query_cpu_ms
        holder["inline"] = config.inline_ms > 0 and cost <= config.inline_ms
        log.info("ready: %d images, %d query thread(s); text and id queries on the %s (a warm one costs %.1f ms of CPU, "
                 "limit %g ms)", len(holder["engine"].ids), threads, "event loop" if holder["inline"] else "query threads",
                 cost, config.inline_ms)
        try:
            yield
        finally:
            holder.pop("pool").shutdown(wait=True, cancel_futures=True)
            if own:
                holder["engine"].close()

    app = FastAPI(title="buscador", summary="Search images by a Spanish description; classify movies by genre.",
                  version="1", lifespan=lifespan, docs_url=None, redoc_url=None)

    async def require_token(request: Request) -> None:  # async: a sync dependency would cost a thread hop
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else unquote(request.cookies.get(TOKEN_COOKIE, ""))
        if not hmac.compare_digest(given.encode("utf-8", "replace"), config.token.encode("utf-8")):
            raise RequestError("missing or wrong token; send `Authorization: Bearer TOKEN`", 401)

    def eng() -> Engine:
        return holder["engine"]

    async def offload(fn, *args):
        """``fn(*args)`` on a query thread (the event loop keeps serving other requests meanwhile)."""
        return await asyncio.get_running_loop().run_in_executor(holder["pool"], fn, *args)

    async def search_answer(body: SearchBody, uploads: list[bytes] = ()):
        """A search on the event loop when it is a short one (one text or id term, see ServeConfig.inline_ms)."""
        short = not uploads and body.image is None and len(body.terms or ()) <= 1 and all(
            t.image is None for t in body.terms or ())
        if holder["inline"] and short:
            return answer_search(eng(), body)
        return await offload(answer_search, eng(), body, uploads)

    async def payload(request: Request, files: str) -> tuple[dict, list[bytes]]:
        """The fields of a JSON or multipart body, and the bytes of its ``files`` parts."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await read_body(request, body_limit)
        if ctype == "application/json":
            try:
                data = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise RequestError(f"malformed JSON body: {exc}") from None
            if not isinstance(data, dict):
                raise RequestError("the JSON body must be an object, e.g. {\"q\": \"una persona en bicicleta\"}")
            return data, []
        if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
            form = await request.form(max_files=config.max_terms, max_fields=32, max_part_size=256 * 1024)
            data, uploads = {}, []
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key != files:
                        raise RequestError(f"unexpected file part {key!r}; send the image as {files!r}", 422)
                    uploads.append(await value.read())
                elif key == "terms":
                    try:
                        data[key] = json.loads(value)
                    except ValueError as exc:
                        raise RequestError(f"terms is not valid JSON: {exc}") from None
                elif value != "":
                    data[key] = value
            return data, uploads
        raise RequestError("send the body as application/json or multipart/form-data", 415)

    def finish(doc: dict, stages: dict) -> JSONResponse:
        """The answer as JSON, straight (the documents are plain dicts: no re-encoding pass needed)."""
        metrics.observe_stages(stages)
        return JSONResponse(doc)

    guard = [Depends(require_token)] if config.token is not None else []  # no token: nothing to check per request
    api = APIRouter(prefix="/api", dependencies=guard)

    @api.get("/search", summary="Search by text or by an indexed image", openapi_extra=_get_search_doc(config),
             responses=_answers(SearchAnswer))
    async def search_get(request: Request) -> JSONResponse:
        # the parameters are read here and checked by SearchBody (documented above): the same checks and
        # messages as FastAPI's per-parameter parsing, at a third of its cost on this, the hottest route
        params = request.query_params
        body = SearchBody.model_validate({name: params[name] for name, *_ in _GET_SEARCH if name in params})
        return finish(*await search_answer(body))

    @api.post("/search", summary="Search by text, indexed image, uploaded image or weighted terms",
              openapi_extra=_MULTIPART_DOC, responses=_answers(SearchAnswer))
    async def search_post(request: Request) -> JSONResponse:
        data, uploads = await payload(request, "image")
        body = SearchBody.model_validate(data)
        return finish(*await search_answer(body, uploads))

    @api.post("/search/batch", summary="Many searches at once (JSON; images as base64)",
              responses=_answers(BatchAnswer, "one answer per query, in order"))
    async def search_batch(batch: BatchBody) -> JSONResponse:
        if not 1 <= len(batch.queries) <= config.max_batch:
            raise RequestError(f"queries must hold 1 to {config.max_batch} searches; got {len(batch.queries)}", 422)

        def run() -> JSONResponse:
            out = []
            for i, body in enumerate(batch.queries):
                try:
                    doc, stages = answer_search(eng(), body)
                except RequestError as exc:
                    raise RequestError(f"queries[{i}]: {exc}", exc.status) from None
                metrics.observe_stages(stages)
                out.append(doc)
            return JSONResponse({"answers": out})

        return await offload(run)

    @api.get("/images/{image_id:path}", summary="An indexed image, or its JPEG thumbnail (longest side `size`)",
             responses={200: {"content": {"image/jpeg": {}}}})
    def image(image_id: str, size: int | None = Query(None, description="thumbnail size in pixels")) -> Response:
        data, media = eng().image(image_id, size)
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600",
                                                         "X-Content-Type-Options": "nosniff"})

    @api.post("/genres", summary="Top genres of a movie from its overview and/or poster", openapi_extra=_GENRE_DOC,
              responses=_answers(GenreAnswer))
    async def genres(request: Request) -> JSONResponse:
        data, uploads = await payload(request, "poster")
        body = GenreBody.model_validate(data)
        if len(uploads) > 1:
            raise RequestError("send at most one poster", 422)
        return finish(*await offload(answer_genres, eng(), body, uploads[0] if uploads else None))

    @api.get("/info", summary="Index kind, N, d, loaded models with fingerprints, staleness, limits")
    async def info() -> JSONResponse:
        loop = type(asyncio.get_running_loop())
        server = {"event_loop": f"{loop.__module__}.{loop.__qualname__}", "query_threads": holder["threads"],
                  "queries_on_event_loop": holder["inline"], "warm_query_cpu_ms": _finite_ms(eng().query_cpu_ms)}
        return JSONResponse({**await offload(eng().info), "server": server})

    app.include_router(api)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok", "images": len(eng().ids)}

    @app.get("/metrics", include_in_schema=False, dependencies=guard)
    def metrics_route() -> Response:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _docs(app)
    _errors(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if config.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    return app


def _docs(app: FastAPI) -> None:
    """``/docs`` from the swagger-ui files that the ``fastapi-offline`` package ships (no CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        import fastapi_offline

        assets = Path(fastapi_offline.__file__).parent / "static"
    except ImportError:
        assets = None
    if assets is not None and (assets / "swagger-ui-bundle.js").is_file():
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")
    else:
        assets = None

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if assets is None:
            return HTMLResponse("<!doctype html><title>buscador API</title><p>Install <code>fastapi-offline</code> "
                                "for this page; the API description is at <a href='/openapi.json'>/openapi.json</a>.")
        return get_swagger_ui_html(openapi_url="/openapi.json", title="buscador API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon.png")


def _errors(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        return _error(exc.status, str(exc))

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return _error(400, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return _error(422, _validation_message(exc.errors()))

    @app.exception_handler(ValidationError)
    async def body_error(request: Request, exc: ValidationError):
        return _error(422, _validation_message(exc.errors()))

    @app.exception_handler(Exception)
    async def fault(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, "internal server error; the server log has the details")


def run(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False,
        no_auth: bool = False) -> None:
    """Check the exposure rules, load everything, then serve on ``host:port`` until interrupted (uvicorn)."""
    import uvicorn

    check_exposure(host, config.token, no_auth)
    # uvloop and httptools when installed (the `serve` extra): uvicorn's "auto" picks them too, named here so
    # the log says which serve
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    engine = Engine(config).load()  # before binding: a bad artifact is an error, not a half-started server
    log.info("serving http://%s:%d/ (API docs at /docs; %s loop, %s parser)", f"[{host}]" if ":" in host else host, port,
             loop, http)
    try:
        # keep-alive longer than uvicorn's 5 s: on a starved event loop a shorter timer can close a connection
        # that a client is already reusing
        # no proxy headers: nothing uses the client's address, so no X-Forwarded-For is trusted either
        uvicorn.run(create_app(config, engine), host=host, port=port, access_log=access_log, log_level="info",
                    timeout_keep_alive=30, loop=loop, http=http, proxy_headers=False)
    finally:
        engine.close()
