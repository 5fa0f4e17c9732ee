"""Shared pytest set-up: GPU tests are skipped where no CUDA device (or, for faiss GPU tests, no GPU faiss) is present."""

from __future__ import annotations

import os

import pytest

# OpenMP threads that wait passively: with busy-waiting, faiss's idle threads spin on every core between
# calls and slow a shared machine's test run several times over. Set before anything imports faiss or torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _faiss_gpus() -> int:
    """GPUs faiss can use: 0 with a CPU-only faiss build (faiss-cpu), even on a CUDA machine."""
    try:
        import faiss
    except ImportError:
        return 0
    return int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not _has_cuda():
        skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
        for item in gpu_items:
            item.add_marker(skip)
    faiss_items = [item for item in items if "faiss_gpu" in item.keywords]
    if faiss_items and _faiss_gpus() == 0:
        skip = pytest.mark.skip(reason="faiss has no GPU support here (faiss-cpu, or no GPU it can use)")
        for item in faiss_items:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _isolated_user_cache(tmp_path_factory):
    """Per-user caches (e.g. the sentence encoders' uncompressed weights) go to one folder shared by the session.

    Session-scoped, so that it is in place before module-scoped fixtures load models.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BUSCADOR_CACHE_DIR", str(tmp_path_factory.mktemp("user-cache")))
        yield


@pytest.fixture(autouse=True)
def _isolated_workspace(tmp_path_factory, monkeypatch):
    """Every test sees an empty default workspace, never the one `make demo` filled."""
    from retrieval.commands import common

    ws = tmp_path_factory.mktemp("workspace")
    monkeypatch.setattr(common, "WORKSPACE", ws)
    monkeypatch.setenv("BUSCADOR_WORKSPACE", str(ws))
