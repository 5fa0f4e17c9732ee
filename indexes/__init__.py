"""FAISS indexes over HDF5 feature files: build, save/load with a sidecar, search."""
