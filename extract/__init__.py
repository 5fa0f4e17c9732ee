"""Image feature extraction: list and decode images, run a backbone, store pooled features in HDF5.

Importing this package loads nothing: every name below is imported from its module on first use, so
``import extract.core`` stays free of h5py and torch. It does ask OpenMP for passive waiting before
torch can load (:mod:`extract.cpu_threads`).
"""

from extract.cpu_threads import sleep_when_idle

sleep_when_idle()

_LAZY = {
    "UserError": "extract.core.errors",
    "atomic_path": "extract.core.files",
    "FeatureFile": "extract.store",
    "ResumableWriter": "extract.parts",
    "fingerprint": "extract.store",
    "FeatureIdentity": "extract.compat",
    "open_features": "extract.store",
    "write_features": "extract.store",
    "list_images": "extract.images",
    "list_inputs": "extract.inputs",
    "load_image": "extract.images",
    "load_backbone": "extract.backbone",
    "extract_features": "extract.features",
    "extract_features_ray": "extract.ray_engine",
    "embed_images": "extract.features",
    "import_vectors": "extract.vectors_import",
}

__all__ = [
    "FeatureFile",
    "FeatureIdentity",
    "ResumableWriter",
    "UserError",
    "atomic_path",
    "embed_images",
    "extract_features",
    "extract_features_ray",
    "fingerprint",
    "import_vectors",
    "list_images",
    "list_inputs",
    "load_backbone",
    "load_image",
    "open_features",
    "write_features",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'extract' has no attribute {name!r}")
