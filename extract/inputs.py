"""The inputs of an extraction: a folder, a list file, a COCO JSON, or a table (Parquet/CSV) of paths.

A table is for collections too big to list twice: list them once (``find``, a database export, a LAION
metadata slice) into a Parquet or CSV file with a ``path`` column (or ``file_name``, or a single column),
and every run reads that file instead of walking the storage again. Ids are POSIX paths relative to
the image root, exactly as :func:`extract.images.list_images` makes them; duplicates are dropped and
counted.
"""

from __future__ import annotations

import logging
import os
import posixpath
from pathlib import Path

from extract.core.errors import UserError
from extract.images import ImageList, list_images, unique_image_list

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".parquet", ".csv")
PATH_COLUMNS = ("path", "file_name", "filepath", "image_path")


def list_inputs(source: str | os.PathLike, root: str | os.PathLike | None = None) -> ImageList:
    """:func:`~extract.images.list_images`, plus Parquet/CSV tables of paths."""
    src = Path(source)
    if src.is_file() and src.suffix.lower() in TABLE_SUFFIXES:
        return _list_table(src, Path(root) if root is not None else src.parent)
    return list_images(source, root)


def _read_column(src: Path) -> list[str]:
    try:
        import pyarrow as pa
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"reading {src} needs pyarrow (installed with buscador[ray])") from None
    try:
        table = pq.read_table(src) if src.suffix.lower() == ".parquet" else pcsv.read_csv(src)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise UserError(f"cannot read {src} as a {src.suffix.lstrip('.')} table ({exc.__class__.__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    names = table.column_names
    column = next((c for c in PATH_COLUMNS if c in names), names[0] if len(names) == 1 else None)
    if column is None:
        raise UserError(f"{src} has columns {names}; name the image path column one of {', '.join(PATH_COLUMNS)}")
    return [str(v) for v in table.column(column).to_pylist() if v is not None and str(v).strip()]


def _list_table(src: Path, base: Path) -> ImageList:
    entries = _read_column(src)
    if not entries:
        raise UserError(f"{src} lists no images; put one image path per row in its path column")
    abs_base = os.path.abspath(base)

    def to_id(entry: str) -> str:
        # a plain relative POSIX path is its own id (normalised); only the others pay for abspath/relpath
        i = posixpath.normpath(entry) if not (entry.startswith(("/", "..")) or "\\" in entry) else None
        if i is None or i.startswith(".."):
            full = entry if os.path.isabs(entry) else os.path.join(abs_base, entry)
            i = Path(os.path.relpath(os.path.abspath(full), abs_base)).as_posix()
        return i

    return unique_image_list(base, map(to_id, entries), src)
