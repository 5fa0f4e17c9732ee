"""Query orchestration: encode a text, image or stored-id query, then ask the index layer.

:class:`Searcher` is an :class:`indexes.search.Collection` (index folder + feature ids) that also takes
text queries (through a text encoder) and query images (through the backbone recorded in the feature
file). :func:`answer` is what ``cli.py search`` calls.
"""

from __future__ import annotations

import difflib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from extract.core.errors import UserError
from indexes.search import Collection, Results

log = logging.getLogger(__name__)


def read_queries_file(path: str | os.PathLike) -> list[str]:
    """Non-blank lines of a UTF-8 text file, one query each; a non-UTF-8 file is a :class:`UserError`."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{path} is not UTF-8 (bad byte at line {line}); re-save it as UTF-8") from None
    queries = [q.strip() for q in text.splitlines() if q.strip()]
    if not queries:
        raise UserError(f"{path} holds no queries (one query a line)")
    return queries


def encode_texts(encoder, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
    """Encode queries with a text encoder (``.encode``, ``.unknown_words``): ``(m, D) float32`` and kept positions.

    Empty queries, queries without a word (digits and punctuation only, whatever the descriptor) and
    queries whose words are all unknown are refused (one query) or skipped with a
    warning (a batch); the message names the unknown words. Partly unknown queries are encoded with a
    warning.
    """
    from retrieval.text import tokenize

    keep, problems = [], []
    for pos, text in enumerate(texts):
        if not text.strip():
            problems.append("empty query; type some words to search for")
            continue
        if not tokenize(text):  # every descriptor, sentence encoders included: nothing to describe
            problems.append(f"no words in {text!r} (only digits, punctuation or symbols); type some words to search for")
            continue
        unknown = list(encoder.unknown_words(text))
        if unknown and len(set(unknown)) >= len(set(tokenize(text))):  # the descriptors' own tokens
            problems.append(f"no known words in {text!r} (unknown: {', '.join(unknown)}); rephrase with other words")
            continue
        if unknown:
            log.warning("unknown words ignored in %r: %s", text, ", ".join(unknown))
        keep.append(pos)
    if len(texts) == 1 and problems:
        raise UserError(problems[0])
    for p in problems:
        log.warning("skipped: %s", p)
    if not keep:
        raise UserError(f"none of the {len(texts)} queries can be answered ({problems[0]})")
    xq = np.asarray(encoder.encode([texts[i] for i in keep]), dtype=np.float32)
    return xq, keep


class IdResolver:
    """Turns what a person types for an image (stored id, file name or stem) into the stored id.

    ``poster_thumbs/tt0173716.jpg`` is found as itself, as ``tt0173716.jpg`` or as ``tt0173716`` when no
    other id has that name or stem. The name and stem tables are built on the first non-exact lookup.
    """

    def __init__(self, ids: Sequence[str]):
        self.ids = ids
        self.row_of = {i: r for r, i in enumerate(ids)}
        self._by_short: dict[str, list[int]] | None = None

    def _short(self) -> dict[str, list[int]]:
        if self._by_short is None:
            table: dict[str, list[int]] = {}
            for row, image_id in enumerate(self.ids):
                name = image_id.rsplit("/", 1)[-1]
                stem = name.rsplit(".", 1)[0] if "." in name[1:] else name
                table.setdefault(name, []).append(row)
                if stem != name:
                    table.setdefault(stem, []).append(row)
            self._by_short = table
        return self._by_short

    def row(self, text: str, where: str = "the feature file") -> int:
        """The row of ``text`` (an id, or a unique file name or stem); a :class:`UserError` names near matches."""
        row = self.row_of.get(text)
        if row is not None:
            return row
        rows = sorted(set(self._short().get(text, ())))
        if len(rows) == 1:
            return rows[0]
        if rows:
            shown = ", ".join(self.ids[r] for r in rows[:5])
            raise UserError(f"id {text!r} matches {len(rows)} images ({shown}{', ...' if len(rows) > 5 else ''}); "
                            "give the full id")
        short = self._short()
        prefixed = sorted(m for m in short if m.startswith(text))[:3] if len(text) >= 3 else []
        near = prefixed or difflib.get_close_matches(text, [*short, *self.row_of], n=3, cutoff=0.6)
        names = list(dict.fromkeys(self.ids[short[m][0]] if m in short else m for m in near))
        hint = f"; did you mean {', '.join(map(repr, names))}?" if names else "; ids are image paths relative to the image root"
        raise UserError(f"id {text!r} is not in {where}{hint}")

    def resolve(self, text: str, where: str = "the feature file") -> str:
        """The stored id that ``text`` names (see :meth:`row`)."""
        return self.ids[self.row(text, where)]


class Searcher(Collection):
    """A :class:`~indexes.search.Collection` that also answers text and image queries."""

    @property
    def resolver(self) -> IdResolver:
        """Id lookup by stored id, file name or stem (built once per searcher)."""
        if getattr(self, "_resolver", None) is None:
            self._resolver = IdResolver(self.features.ids)
        return self._resolver

    def search_ids(self, image_ids: Sequence[str], k: int) -> Results:
        """Search with the stored vectors of ids given as stored ids, unique file names or stems."""
        where = str(self.features.path)
        return super().search_ids([self.resolver.resolve(i, where) for i in image_ids], k)

    def check_encoder(self, config: dict, dim: int | None = None, what: str = "the query model") -> None:
        """Refuse a query encoder that does not match the index (dimension, image model)."""
        from indexes.io import check_query_model

        check_query_model(self.meta, config, dim, what)

    def search_texts(self, encoder, texts: Sequence[str], k: int) -> Results:
        """Encode texts with ``encoder`` (see :func:`encode_texts`) and search them."""
        self.check_encoder(dict(encoder.config), getattr(encoder, "dim", None), "the text model")
        t0 = time.perf_counter()
        xq, keep = encode_texts(encoder, texts)
        self.timings["encode"] = time.perf_counter() - t0
        return self.search_vectors(xq, k, [texts[i] for i in keep])

    def search_images(self, paths: Sequence[str | os.PathLike], k: int, device: str = "auto") -> Results:
        """Embed images with the model and preprocessing recorded in the feature file, then search."""
        from extract.features import embed_images

        t0 = time.perf_counter()
        xq, failed = embed_images([str(p) for p in paths], self.features.config, device)
        self.timings["encode"] = time.perf_counter() - t0
        bad = {str(p): why for p, why in failed}
        for p, why in bad.items():
            log.warning("query image %s cannot be used: %s", p, why)
        kept = [str(p) for p in paths if str(p) not in bad]
        if not kept:
            p, why = next(iter(bad.items()))
            raise UserError(f"query image {p} cannot be used ({why}); pass a readable JPEG/PNG")
        self.check_encoder({}, int(np.asarray(xq).shape[1]), "the image model")
        return self.search_vectors(xq, k, kept)


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``), or None where that cannot be read."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def timing_line(timings: dict[str, float], started: float) -> str:
    """``timings`` in ms plus what they leave out, so the parts add up to the wall time.

    ``started`` is the ``time.perf_counter()`` of the command's start; ``startup`` is the interpreter and
    import time before it (where the process age can be read), ``other`` the rest (printing, contact sheets).
    """
    now = time.perf_counter()
    parts = {k: v for k, v in timings.items() if k != "total"}
    age = process_age()
    if age is not None:
        parts["startup"] = max(0.0, age - (now - started))
    total = (now - started) + parts.get("startup", 0.0)
    parts["other"] = max(0.0, total - sum(parts.values()))
    parts["total"] = total
    return "timings: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in parts.items())


def load_text_model(path: str | os.PathLike):
    """The numpy-only text query encoder of a regressor checkpoint (``retrieval.query.load_text_encoder``)."""
    from retrieval.query import load_text_encoder

    return load_text_encoder(path)


def answer(
    index_dir: str | os.PathLike,
    texts: Sequence[str] = (),
    images: Sequence[str | os.PathLike] = (),
    ids: Sequence[str] = (),
    model: str | os.PathLike | None = None,
    k: int = 5,
    features: str | os.PathLike | None = None,
    device: str = "auto",
    mmap: bool = True,
) -> Results:
    """Answer one kind of query (texts, query images or stored ids) against an index folder.

    ``timings`` holds seconds for imports (faiss, h5py, and torch + torchvision for image queries),
    index_load, ids_load, model_load, encode and search.
    """
    kinds = [name for name, given in (("text", texts), ("image", images), ("id", ids)) if given]
    if len(kinds) != 1:
        raise UserError("give exactly one kind of query: text, --image PATH, --id ID or --queries-file F")
    t0 = time.perf_counter()
    import faiss  # noqa: F401  (timed here: the import is part of a cold start)
    import h5py  # noqa: F401

    imports = time.perf_counter() - t0
    searcher = Searcher(index_dir, features, mmap=mmap)
    on_disk = (searcher.loaded.meta.get("storage") or {}).get("lists") == "on_disk"
    if device != "cpu" and not (device == "auto" and on_disk):  # auto: on-disk lists are not read whole onto a GPU
        from indexes.gpu import to_device

        searcher.loaded.index = to_device(searcher.index, device)
    searcher.timings["imports"] = imports
    if texts:
        if model is None:
            raise UserError("text queries need a text model; pass --model CKPT")
        if not Path(model).is_file():
            raise UserError(f"text model {model} does not exist; train one with `cli.py train` or pass --model CKPT")
        t1 = time.perf_counter()
        encoder = load_text_model(model)
        searcher.timings["model_load"] = time.perf_counter() - t1
        return searcher.search_texts(encoder, list(texts), k)
    if images:
        t1 = time.perf_counter()
        import extract.features  # noqa: F401  (torch + torchvision: most of a cold image query)

        searcher.timings["imports"] += time.perf_counter() - t1
        return searcher.search_images(list(images), k, device)
    return searcher.search_ids(list(ids), k)
