"""Move an index to a GPU when faiss was built with GPU support and a GPU is present; else keep it on CPU."""

from __future__ import annotations

import logging

from extract.core.errors import UserError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


def gpu_count() -> int:
    """GPUs faiss can use: 0 for a CPU-only faiss build or a machine without a GPU."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def to_device(index, device: str = "auto", fp16: bool = True):
    """Return ``index`` on the requested device: ``auto`` (GPU 0 if usable, else CPU), ``cpu`` or ``cuda``.

    On GPU, vectors are stored as float16 when ``fp16`` (halves memory, recall nearly unchanged for
    2048-d features); exact kinds stay exact up to that rounding. Logs which device is used.
    """
    import faiss

    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    n_gpu = gpu_count() if device != "cpu" else 0
    if n_gpu == 0:
        if device == "cuda":
            raise UserError("--device cuda needs a GPU build of faiss (pip install '.[gpu]') and a CUDA GPU; use --device cpu")
        log.info("searching on CPU (%s)", "requested" if device == "cpu" else "faiss has no GPU support or no GPU is present")
        return index
    res = faiss.StandardGpuResources()
    co = faiss.GpuClonerOptions()
    co.useFloat16 = fp16
    try:
        gpu_index = faiss.index_cpu_to_gpu(res, 0, index, co)
    except RuntimeError as exc:
        if device == "cuda":
            raise UserError(f"this index kind cannot run on GPU ({str(exc).strip().splitlines()[-1]}); use --device cpu") from None
        log.info("searching on CPU: this index kind has no GPU version")
        return index
    gpu_index.referenced_resources = res  # keep the resources alive as long as the index
    log.info("searching on GPU 0 of %d (fp16 storage: %s)", n_gpu, fp16)
    return gpu_index
