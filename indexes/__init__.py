"""FAISS indexes over feature arrays: build, save/load with a sidecar, search, map rows to ids.

Model-agnostic: arrays in, rows/ids out. Importing this package is cheap (numpy and h5py only); faiss is
imported by the functions that use it. The array-level call is ``indexes.search.search(index, xq, k) -> (D, I)``.
Query encoding (text, images) sits above, in :mod:`retrieval.search`.
"""

from indexes.build import IndexConfig, auto_factory, build_index, build_index_dir
from indexes.io import load_index, read_sidecar, save_index
from indexes.search import Collection, Hit, Results

__all__ = [
    "Collection",
    "Hit",
    "IndexConfig",
    "Results",
    "auto_factory",
    "build_index",
    "build_index_dir",
    "load_index",
    "read_sidecar",
    "save_index",
]
