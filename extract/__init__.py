"""Image feature extraction: list and decode images, run a backbone, store pooled features in HDF5.

Importing this package is cheap; torch is imported only by the modules that run models.
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
