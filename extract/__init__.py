"""Image feature extraction: list and decode images, run a backbone, store pooled features in HDF5.

Importing this package is cheap; torch is imported only by the modules that run models (the
functions named in ``_LAZY`` load their module on first use).
"""

from extract.errors import UserError
from extract.store import (
    FeatureFile,
    ResumableWriter,
    atomic_path,
    fingerprint,
    open_features,
    write_features,
)

__all__ = [
    "FeatureFile",
    "ResumableWriter",
    "UserError",
    "atomic_path",
    "fingerprint",
    "open_features",
    "write_features",
]

_LAZY = {
    "list_images": "extract.images",
    "load_image": "extract.images",
    "load_backbone": "extract.backbone",
    "extract_features": "extract.features",
    "embed_images": "extract.features",
    "import_vectors": "extract.vectors_import",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'extract' has no attribute {name!r}")
