"""The warm half of ``cli.py serve``: every artifact loaded once, and the queries answered from memory.

:class:`Engine` holds the index and feature ids (a :class:`retrieval.search.Searcher`), the text encoder,
the backbone for query images and the genre model. Query vectors come from text, a stored id or an
uploaded image; :meth:`Engine.search` combines weighted terms (``[(vector, w)]``, each term normalised
first on a cosine index, as rclip's query arithmetic) and returns ranked hits. Requests run on several
threads at once, so nothing here writes shared state per request (the Searcher's own ``timings`` dict is
not used), and faiss is kept on one thread per request.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from extract.core.errors import UserError
from retrieval.serve.config import ServeConfig
from retrieval.serve.images import ImageStore
from retrieval.serve.uploads import (
    SUFFIXES,
    RequestError,
    check_image,
)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Match:
    """One result row: 1-based rank over the whole ranking, stored id, score, index row."""

    rank: int
    id: str
    score: float
    row: int


def _fingerprint_file(path: str | os.PathLike) -> str:
    from extract.core.hashing import sha256_file

    return "sha256:" + sha256_file(path)[:16]


class Engine:
    """Everything ``serve`` answers from, loaded once (see :meth:`load`)."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.artifacts: dict[str, dict] = {}
        self.encoder = None
        self.genre_model = None
        self._embedders: dict[str, object] = {}
        self.image_queries_off: str | None = None
        self._h5, self._h5_lock = None, threading.Lock()
        self._tmp = tempfile.TemporaryDirectory(prefix="buscador-serve-")

    # ---- loading -------------------------------------------------------------------------------
    def load(self) -> Engine:
        """Load the index + ids, the text encoder, the query-image backbone and the genre model."""
        import faiss

        from retrieval.search import Searcher

        cfg = self.config
        t0 = time.perf_counter()
        self.searcher = Searcher(cfg.index_dir, cfg.features)
        # one thread per request, in faiss and in numpy's BLAS: concurrency comes from the requests, and on a
        # busy machine a multi-threaded BLAS makes a 5 ms sentence encoding take 80 ms
        faiss.omp_set_num_threads(1)
        from threadpoolctl import threadpool_limits

        self._blas = threadpool_limits(limits=1)
        meta, feats = self.searcher.meta, self.searcher.features
        self.ids = feats.ids
        self.resolver = self.searcher.resolver
        self.images = ImageStore(self.resolver.row_of, feats.ids, feats.config, cfg)
        self._note("index", {"path": str(self.searcher.loaded.path), "kind": meta["factory"], "metric": meta["metric"],
                             "n": int(meta["n"]), "d": int(meta["d"]),
                             "fingerprint": meta["features"]["fingerprint"]}, t0)
        self._note("features", {"path": str(feats.path), "n": len(feats), "model": feats.config.get("model"),
                                "fingerprint": feats.fingerprint}, t0)
        if cfg.model is not None:
            self._load_text_model(cfg.model)
        if cfg.image_queries is not False:
            self._load_image_queries()
        else:
            self.image_queries_off = "turned off (--no-image-queries)"
        if cfg.genres is not None:
            self._load_genres(cfg.genres)
        self.query_cpu_ms = self._probe_query_cost()
        import gc

        gc.collect()
        gc.freeze()  # what was loaded lives as long as the server: keep the cyclic GC from rescanning it per request
        return self

    def _probe_query_cost(self, repeats: int = 5) -> float:
        """CPU milliseconds (median of ``repeats``) of the costlier of a warm text query and an id query."""
        import statistics

        probes = [lambda: self.id_vector(self.ids[0])] if len(self.ids) else []
        if self.encoder is not None:
            probes.append(lambda: self.text_vector("una persona en bicicleta"))
        cost = 0.0
        for vector in probes:
            times = []
            try:
                for _ in range(repeats):
                    c0 = time.thread_time()
                    self.search(vector(), 10)
                    times.append(time.thread_time() - c0)
            except RequestError:  # e.g. a text model that knows none of the probe's words: cost unknown
                return float("inf")
            cost = max(cost, statistics.median(times) * 1000)
        return cost

    def _note(self, name: str, info: dict, t0: float) -> None:
        info = dict(info, load_ms=round((time.perf_counter() - t0) * 1000, 1))
        self.artifacts[name] = info
        log.info("loaded %s %s (%s) in %.0f ms", name, info.get("path", ""), info.get("fingerprint", "-"), info["load_ms"])

    def _load_text_model(self, path: str) -> None:
        from retrieval import search as orchestration

        if not Path(path).is_file():
            raise UserError(f"text model {path} does not exist; train one with `cli.py train` or pass --model CKPT")
        t0 = time.perf_counter()
        encoder = orchestration.load_text_model(path)
        self.searcher.check_encoder(dict(encoder.config), getattr(encoder, "dim", None), "the text model")
        encoder.encode(["una persona en bicicleta"])  # warm-up: sentence encoders finish loading on first use
        self.encoder = encoder
        ec = dict(encoder.config)
        self._note("text_model", {"path": str(path), "fingerprint": _fingerprint_file(path),
                                  "descriptor": ec.get("descriptor"), "regressor": ec.get("regressor"),
                                  "features_fingerprint": ec.get("features_fingerprint")}, t0)

    def _embedder(self, config: dict):
        """A warm ``paths -> ((n, D) float32, failed)`` for the backbone recorded in ``config`` (shared by key)."""
        import json

        from extract.features import MATCH_KEYS, backbone_from_config, embed_images

        key = json.dumps({k: config.get(k) for k in MATCH_KEYS}, sort_keys=True, default=str)
        if key not in self._embedders:

            backbone = backbone_from_config(config, self.config.device)
            self._embedders[key] = embed = lambda paths: embed_images(paths, backbone)
            self._warm_up(embed)
        return self._embedders[key]

    def _warm_up(self, embed) -> None:
        """One small image through a new backbone, so the first real query does not pay the first-run costs."""
        from PIL import Image

        fd, tmp = tempfile.mkstemp(suffix=".png", dir=self._tmp.name)
        os.close(fd)
        try:
            Image.new("RGB", (64, 64), (128, 128, 128)).save(tmp)
            embed([tmp])
        finally:
            os.unlink(tmp)

    def _load_image_queries(self) -> None:
        t0 = time.perf_counter()
        config = self.searcher.features.config
        try:
            self.embed = self._embedder(config)
        except UserError as exc:
            if self.config.image_queries:
                raise
            self.image_queries_off = str(exc)
            log.warning("image queries are off: %s", exc)
            return
        self._note("image_model", {"path": f"{config.get('model')} ({config.get('weights')} weights)", "model": config.get("model"), "weights": config.get("weights"),
                                   "fingerprint": str(config.get("weights_sha256", ""))[:16] or "-"}, t0)

    def _load_genres(self, path: str) -> None:
        from retrieval.genre.checkpoint import load_classifier

        t0 = time.perf_counter()
        clf = load_classifier(path)
        self.genre_embed = None
        if clf.uses_poster:
            config = (clf.features or {}).get("config", {})
            try:
                self.genre_embed = self._embedder(config)
            except UserError as exc:
                log.warning("genre posters are off (%s); overview-only requests still fail for a %s model", exc, clf.cfg.model)
        self.genre_model = clf
        self._note("genres", {"path": str(path), "fingerprint": _fingerprint_file(path), "model": clf.cfg.model,
                              "genres": list(clf.genres)}, t0)

    def close(self) -> None:
        if getattr(self, "_blas", None) is not None:
            self._blas.restore_original_limits()
            self._blas = None
        if getattr(self, "_h5", None) is not None:
            self._h5.close()
            self._h5 = None
        import gc

        gc.unfreeze()
        self._tmp.cleanup()

    # ---- facts ---------------------------------------------------------------------------------
    def info(self) -> dict:
        """Index kind, N, d, the loaded models and their fingerprints, and what disagrees (staleness)."""
        feats = self.searcher.features
        stale = [self.searcher.stale] if self.searcher.stale else []  # the index layer's own staleness check
        text_fp = self.artifacts.get("text_model", {}).get("features_fingerprint")
        if text_fp and text_fp != feats.fingerprint:
            stale.append(f"the text model was trained on features {text_fp}, the index holds {feats.fingerprint}")
        cfg = self.config
        return {
            "artifacts": self.artifacts, "stale": stale,
            "text_queries": self.encoder is not None,
            "image_queries": self.image_queries_off is None, "image_queries_off": self.image_queries_off,
            "genres": self.genre_model is not None,
            "limits": {"max_upload_bytes": cfg.max_upload, "max_query_chars": cfg.max_query_chars, "max_k": cfg.max_k,
                       "max_offset": cfg.max_offset, "max_terms": cfg.max_terms, "max_batch": cfg.max_batch},
        }

    # ---- query vectors -------------------------------------------------------------------------
    def text_vector(self, text: str) -> np.ndarray:
        """``(d,) float32`` for a Spanish query; unknown-only or empty text is a 400."""
        from retrieval.search import encode_texts

        if self.encoder is None:
            raise RequestError("text queries are off: the server was started without a text model (--model CKPT)", 409)
        if len(text) > self.config.max_query_chars:
            raise RequestError(f"query is {len(text)} characters, over the {self.config.max_query_chars} limit", 422)
        xq, _ = encode_texts(self.encoder, [text])
        return xq[0]

    def row_of(self, text: str) -> int:
        """The row of an indexed image given by id, unique file name or stem; otherwise a 404."""
        if len(text) > 4096:
            raise RequestError("id is too long", 422)
        try:
            return self.resolver.row(text, "the index")
        except UserError as exc:
            raise RequestError(str(exc), 404) from None

    def id_vector(self, text: str) -> np.ndarray:
        """The stored vector ``(d,) float32`` of an indexed image (the feature file stays open between calls)."""
        row = self.row_of(text)
        with self._h5_lock:
            if self._h5 is None:
                import h5py

                self._h5 = h5py.File(self.searcher.features.path, "r")
            return np.asarray(self._h5["features"][row], np.float32)

    def _embed_upload(self, embed, data: bytes, what: str) -> np.ndarray:
        fmt = check_image(data, self.config.max_upload, self.config.max_pixels, what)
        fd, tmp = tempfile.mkstemp(suffix=SUFFIXES[fmt], dir=self._tmp.name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            xq, failed = embed([tmp])
        finally:
            os.unlink(tmp)
        if failed or len(xq) != 1:
            raise RequestError(f"{what} cannot be used ({failed[0][1] if failed else 'no vector'})", 415)
        return np.asarray(xq[0], np.float32)

    def image_vector(self, data: bytes) -> np.ndarray:
        """``(d,) float32`` for an uploaded image, embedded like the indexed images."""
        if self.image_queries_off is not None:
            raise RequestError(f"image queries are off: {self.image_queries_off}", 409)
        return self._embed_upload(self.embed, data, "image upload")

    # ---- search --------------------------------------------------------------------------------
    def check_paging(self, k: int, offset: int) -> None:
        cfg = self.config
        if not 1 <= k <= cfg.max_k:
            raise RequestError(f"k must be between 1 and {cfg.max_k}; got {k}", 422)
        if not 0 <= offset <= cfg.max_offset:
            raise RequestError(f"offset must be between 0 and {cfg.max_offset}; got {offset}", 422)

    def combine(self, terms: Sequence[tuple[np.ndarray, float]]) -> np.ndarray:
        """Weighted sum of query vectors, each L2-normalised first when the index compares by cosine."""
        from extract.core.arrays import normalize_rows

        xs = np.stack([np.asarray(v, np.float32) for v, _ in terms])
        if self.searcher.meta["normalize"]:
            normalize_rows(xs)
        w = np.asarray([w for _, w in terms], np.float32)
        return (w[:, None] * xs).sum(axis=0)

    def search(self, xq: np.ndarray, k: int = 10, offset: int = 0, min_score: float | None = None) -> list[Match]:
        """Ranks ``offset+1 .. offset+k`` for one query vector ``(d,) float32``, scores >= ``min_score``."""
        import faiss

        from extract.core.arrays import normalize_rows
        from indexes.search import search

        self.check_paging(k, offset)
        meta = self.searcher.meta
        if min_score is not None and meta["metric"] == "l2":
            raise RequestError("min_score needs a cosine or inner-product index (this one ranks by l2 distance)", 422)
        xq = np.array(xq, dtype=np.float32, copy=True, ndmin=2)
        if meta["normalize"]:
            normalize_rows(xq)
        want = min(k + offset, self.searcher.index.ntotal)
        if want <= offset:
            return []
        # OpenMP's thread count is per thread: the one set at load time holds only on the thread that loaded,
        # and a request thread would otherwise start (and spin) a team of its own for a one-query search
        faiss.omp_set_num_threads(1)
        D, I = search(self.searcher.index, xq, want)
        out = []
        for rank, (score, row) in enumerate(zip(D[0], I[0]), 1):
            if rank <= offset or row < 0:
                continue
            if min_score is not None and score < min_score:
                break
            out.append(Match(rank, self.ids[row], float(score), int(row)))
        return out

    # ---- images --------------------------------------------------------------------------------
    def image(self, image_id: str, size: int | None) -> tuple[bytes, str]:
        """``(bytes, media type)`` of an indexed image or its cached JPEG thumbnail (see :class:`ImageStore`)."""
        return self.images.get(image_id, size)

    # ---- genres --------------------------------------------------------------------------------
    def genres(self, overview: str | None, poster: bytes | None, top: int = 3) -> list[dict]:
        """Most probable genres ``[{"genre", "probability", "threshold", "predicted"}]`` for one movie."""
        clf = self.genre_model
        if clf is None:
            raise RequestError("no genre model is loaded; start the server with --genres CKPT", 409)
        if overview is not None and len(overview) > 20 * self.config.max_query_chars:
            raise RequestError(f"overview is over the {20 * self.config.max_query_chars}-character limit", 422)
        feats = None
        if clf.uses_poster:
            if poster is None:
                raise RequestError(f"this {clf.cfg.model} genre model needs a poster image", 422)
            if self.genre_embed is None:
                raise RequestError("poster features cannot be computed on this server (no backbone loaded)", 409)
            feats = self._embed_upload(self.genre_embed, poster, "poster")[None, :]
        if clf.uses_text and not (overview or "").strip():
            raise RequestError(f"this {clf.cfg.model} genre model needs an overview text", 422)
        probs = clf.predict_proba(feats, [overview or ""], device="cpu")[0]
        order = np.argsort(-probs, kind="stable")[: max(1, min(top, len(clf.genres)))]
        return [{"genre": clf.genres[j], "probability": float(probs[j]), "threshold": float(clf.thresholds[j]),
                 "predicted": bool(probs[j] >= clf.thresholds[j])} for j in order]
