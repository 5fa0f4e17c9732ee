"""Contact sheets: the top-k thumbnails of each query with rank, id and score, as PNG or HTML.

Optionally each result carries a ground-truth flag (e.g. "shows a person on a bicycle"), drawn as a green
(true) or red (false) frame. Images that cannot be opened get a grey placeholder, never an error.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from extract.core.errors import UserError
from extract.core.files import atomic_path
from indexes.search import Results

log = logging.getLogger(__name__)

THUMB = 160
_LABEL_H = 34
_TITLE_H = 22
_PAD = 6


def load_truth(path: str | os.PathLike, field: str) -> dict[str, bool]:
    """``id -> bool(record[field])`` from a JSON-lines file of records with an ``"id"`` key."""
    truth = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read ground truth {path} ({exc}); pass a UTF-8 JSON-lines file") from None
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            truth[str(rec["id"])] = bool(rec[field])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}:{no}: expected a JSON object with \"id\" and {field!r}") from None
    return truth


def truth_of(truth: dict[str, bool], image_id: str) -> bool | None:
    """The flag of ``image_id``, matching also by file name or stem (ids are paths relative to a root)."""
    for key in (image_id, Path(image_id).name, Path(image_id).stem):
        if key in truth:
            return truth[key]
    return None


def _thumb(path: str):
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB, THUMB))
            return im
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("cannot open %s for the contact sheet: %s", path, exc)
        return Image.new("RGB", (THUMB, THUMB), (200, 200, 200))


def _flag(hit, truth):
    return None if truth is None else truth_of(truth, hit.id)


def write_contact_sheet(results: Results, out: str | os.PathLike, truth: dict[str, bool] | None = None) -> Path:
    """Write the top-k thumbnails of every query to ``out`` (``.png`` or ``.html``, atomically)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".html", ".htm"):
        raise UserError(f"contact sheet {out} must end in .png or .html")
    if suffix == ".png":
        image = _png(results, truth)
        with atomic_path(out) as tmp:
            image.save(tmp, format="PNG")
    else:
        with atomic_path(out) as tmp:
            tmp.write_text(_html(results, truth), encoding="utf-8")
    return out


def _png(results: Results, truth):
    from PIL import Image, ImageDraw

    cols = max((len(h) for h in results.hits), default=1) or 1
    cell_w, cell_h = THUMB + 2 * _PAD, THUMB + _LABEL_H + 2 * _PAD
    row_h = _TITLE_H + cell_h
    sheet = Image.new("RGB", (cols * cell_w, max(1, len(results.hits)) * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (query, hits) in enumerate(zip(results.queries, results.hits)):
        y0 = r * row_h
        draw.text((_PAD, y0 + 4), query[:120], fill="black")
        for c, hit in enumerate(hits):
            x, y = c * cell_w + _PAD, y0 + _TITLE_H + _PAD
            flag = _flag(hit, truth)
            if flag is not None:
                colour = (30, 160, 60) if flag else (200, 40, 40)
                draw.rectangle([x - 4, y - 4, x + THUMB + 3, y + THUMB + 3], outline=colour, width=4)
            thumb = _thumb(hit.path)
            sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
            draw.text((x, y + THUMB + 4), f"#{hit.rank}   score {hit.score:.3f}", fill="black")
            draw.text((x, y + THUMB + 18), fit_label(hit.id, lambda t: draw.textlength(t) <= THUMB), fill="black")
    return sheet


def fit_label(text: str, fits) -> str:
    """``text`` shortened until ``fits(label)``: whole, else ``…/file name``, else the name cut in the middle.

    ``poster_thumbs/tt0173716.jpg`` becomes ``…/tt0173716.jpg``, and a long name keeps its start and its
    end (``very_long…0042.jpg``), so a label never loses the part that tells images apart.
    """
    if fits(text):
        return text
    name = text.rsplit("/", 1)[-1]
    if name != text and fits("…/" + name):
        return "…/" + name
    if fits(name):
        return name
    for keep in range(len(name) - 1, 1, -1):
        head, tail = name[: keep // 2], name[len(name) - (keep + 1) // 2 :]  # the end tells names apart more
        if fits(head + "…" + tail):
            return head + "…" + tail
    return name[:1] + "…"


def _data_uri(path: str) -> str:
    buf = io.BytesIO()
    _thumb(path).save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _html(results: Results, truth) -> str:
    parts = ["<!doctype html><meta charset='utf-8'><title>buscador results</title>",
             ("<style>figure{display:inline-block;margin:4px;font:12px sans-serif;text-align:center}"
              "img{border:4px solid #fff}.yes img{border-color:#1ea03c}.no img{border-color:#c82828}</style>")]
    for query, hits in zip(results.queries, results.hits):
        parts.append(f"<h3>{html.escape(query)}</h3><div>")
        for hit in hits:
            flag = _flag(hit, truth)
            cls = "" if flag is None else (" class='yes'" if flag else " class='no'")
            parts.append(
                f"<figure{cls}><img src='{_data_uri(hit.path)}' width={THUMB} alt='{html.escape(hit.id)}'>"
                f"<figcaption>#{hit.rank} {hit.score:.3f}<br>{html.escape(hit.id)}</figcaption></figure>"
            )
        parts.append("</div>")
    return "\n".join(parts) + "\n"


def truth_flags(results: Results, truth: dict[str, bool]) -> list[list[bool | None]]:
    """Per query, per hit: the ground-truth flag (None where the id has no record)."""
    return [[truth_of(truth, h.id) for h in hits] for hits in results.hits]


def precision(flags: Sequence[bool | None]) -> float:
    """Fraction of hits flagged true (unknown counts as false)."""
    return sum(1 for f in flags if f) / len(flags) if flags else 0.0
