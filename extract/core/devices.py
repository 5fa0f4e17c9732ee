"""Device resolution shared by extraction and training: ``auto`` picks CUDA when present."""

from __future__ import annotations

from extract.core.errors import UserError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device="auto"):
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is a :class:`UserError`.

    Returns a ``torch.device`` (torch is imported here, not at module import).
    """
    import torch

    if isinstance(device, torch.device):
        return device
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} was asked for but no CUDA GPU is available; pass --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"unknown device {device!r}; pass one of {', '.join(DEVICES)}")
    return torch.device(device)
