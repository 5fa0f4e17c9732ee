"""FAISS indexes over HDF5 feature files: build, save/load with a sidecar, search by text, image or id.

Importing this package is cheap (numpy and h5py only); faiss is imported by the functions that use it.
The array-level call is ``indexes.search.search(index, xq, k) -> (D, I)``.
"""

from indexes.build import IndexConfig, auto_factory, build_index, build_index_dir
from indexes.io import load_index, read_sidecar, save_index
from indexes.search import Hit, Results, Searcher, answer

__all__ = [
    "Hit",
    "IndexConfig",
    "Results",
    "Searcher",
    "answer",
    "auto_factory",
    "build_index",
    "build_index_dir",
    "load_index",
    "read_sidecar",
    "save_index",
]
