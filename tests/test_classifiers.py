"""Tests for the classifiers of busflow.models (cnn, vgg, efficientnet, densenet, vit, swin, mobilenet):
the source papers' classifiers as registry entries."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from busflow.models import available_architectures, build_model, model_options, model_tasks

# Small-but-faithful options so the forward/backward matrix runs in seconds on one CPU thread.
# Stochastic depth is switched off so that every parameter is guaranteed a non-zero gradient.
FAST_OPTIONS: dict[str, dict] = {
    "custom_cnn": {"channels": [8, 16, 16], "dense_units": 16},
    "vgg16": {"width_factor": 1 / 16, "classifier_width": 32},
    "vgg19": {"width_factor": 1 / 16, "classifier_width": 32, "batch_norm": True},
    "efficientnet_b0": {"drop_connect_rate": 0.0},
    "densenet121": {},
    "densenet201": {"dropout_prob": 0.1},
    "vit": {"img_size": 64, "hidden_size": 32, "mlp_dim": 64, "num_layers": 2, "num_heads": 2},
    "swin_tiny": {"embed_dim": 12, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4], "drop_path_rate": 0.0},
    "mobilenet_v2": {"width_mult": 0.5},
}
ARCHS = sorted(FAST_OPTIONS)


def _head_params(width: int, n_classes: int) -> int:
    """Parameters of a linear head (weights + bias)."""
    return width * n_classes + n_classes


# Reference parameter counts at default options, 1 input channel, 2 classes, derived from the published
# 3-channel / 1000-class totals (torchvision == the papers' reference implementations):
#   total(1ch, 2cls) = total(3ch, 1000cls) - 2 * (first-conv weights per input channel) - head(1000) + head(2)
REFERENCE_PARAMS: dict[str, int] = {
    # VGG-16: 138,357,544; first conv 3x3x64 per input channel = 576; head Linear(4096, .)
    #   138,357,544 - 2*576 - 4,097,000 + 8,194 = 134,267,586
    "vgg16": 138_357_544 - 2 * 64 * 9 - _head_params(4096, 1000) + _head_params(4096, 2),
    # VGG-19: 143,667,240 - 1,152 - 4,097,000 + 8,194 = 139,577,282
    "vgg19": 143_667_240 - 2 * 64 * 9 - _head_params(4096, 1000) + _head_params(4096, 2),
    # EfficientNet-B0: 5,288,548; stem conv 3x3x32 = 288 per channel; head Linear(1280, .)
    #   5,288,548 - 576 - 1,281,000 + 2,562 = 4,009,534
    "efficientnet_b0": 5_288_548 - 2 * 32 * 9 - _head_params(1280, 1000) + _head_params(1280, 2),
    # DenseNet-121: 7,978,856 with its 1000-class head (6.95 M without it); conv0 7x7x64 = 3,136 per
    # channel; head Linear(1024, .):  7,978,856 - 6,272 - 1,025,000 + 2,050 = 6,949,634
    "densenet121": 7_978_856 - 2 * 64 * 49 - _head_params(1024, 1000) + _head_params(1024, 2),
    # DenseNet-201: 20,013,928; head Linear(1920, .):  20,013,928 - 6,272 - 1,921,000 + 3,842 = 18,090,498
    "densenet201": 20_013_928 - 2 * 64 * 49 - _head_params(1920, 1000) + _head_params(1920, 2),
    # ViT-B/16 at 224^2: 86,567,656; patch conv 16x16x768 = 196,608 per channel; head Linear(768, .)
    #   86,567,656 - 393,216 - 769,000 + 1,538 = 85,406,978
    #   (MONAI's position embedding omits the class-token slot: 768 fewer, 85,406,210, well within 1 %)
    "vit": 86_567_656 - 2 * 768 * 256 - _head_params(768, 1000) + _head_params(768, 2),
    # Swin-T: 28,288,354; patch conv 4x4x96 = 1,536 per channel; head Linear(768, .)
    #   28,288,354 - 3,072 - 769,000 + 1,538 = 27,517,820
    "swin_tiny": 28_288_354 - 2 * 96 * 16 - _head_params(768, 1000) + _head_params(768, 2),
    # MobileNetV2 (1.0): 3,504,872; stem conv 3x3x32 = 288 per channel; head Linear(1280, .)
    #   3,504,872 - 576 - 1,281,000 + 2,562 = 2,225,858
    "mobilenet_v2": 3_504_872 - 2 * 32 * 9 - _head_params(1280, 1000) + _head_params(1280, 2),
}


pytestmark = pytest.mark.usefixtures("seeded_torch")


def _build(arch: str, n_classes: int = 2, **overrides) -> nn.Module:
    return build_model(arch, in_channels=1, n_classes=n_classes, options={**FAST_OPTIONS[arch], **overrides})


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registered_as_classifiers() -> None:
    assert set(ARCHS) <= set(available_architectures())
    for arch in ARCHS:
        assert model_tasks(arch) == frozenset({"cls"}), arch
    assert model_options("vgg16") == model_options("vgg19") == {
        "batch_norm": False,
        "width_factor": 1.0,
        "classifier_width": 4096,
        "dropout": 0.5,
    }
    assert model_options("vit")["img_size"] == 224 and model_options("vit")["hidden_size"] == 768
    swin = model_options("swin_tiny")
    assert (swin["embed_dim"], tuple(swin["depths"]), tuple(swin["num_heads"]), swin["window_size"]) == (
        96, (2, 2, 6, 2), (3, 6, 12, 24), 7,
    )


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward(arch: str, n_classes: int) -> None:
    model = _build(arch, n_classes).train()
    x = torch.randn(2, 1, 64, 64)
    out = model(x)
    assert set(out) == {"logits"}
    assert out["logits"].shape == (2, n_classes)
    # Random weights avoid the degenerate zero gradients a plain sum gives through BatchNorm.
    (out["logits"] * torch.randn_like(out["logits"])).sum().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{arch}: no gradient for {name} (unused parameter?)"
            assert torch.isfinite(p.grad).all(), f"{arch}: non-finite gradient for {name}"
            assert p.grad.abs().sum() > 0, f"{arch}: zero gradient for {name}"

    model.eval()
    with torch.no_grad():
        first, again = model(x)["logits"], model(x)["logits"]
    assert torch.isfinite(first).all()
    assert torch.equal(first, again), "eval mode must be deterministic (no active dropout)"


@pytest.mark.parametrize("arch", sorted(REFERENCE_PARAMS))
def test_parameter_count_matches_published_architecture(arch: str) -> None:
    # Counting needs no storage: build on the meta device where the builder allows it (MONAI's Swin
    # calls .item() while building, so it is built for real; 28 M parameters is cheap).
    device = "cpu" if arch == "swin_tiny" else "meta"
    with torch.device(device):
        model = build_model(arch, in_channels=1, n_classes=2)
    n_params, reference = _n_params(model), REFERENCE_PARAMS[arch]
    assert abs(n_params - reference) / reference < 0.01, f"{arch}: {n_params:,} vs reference {reference:,}"
    if arch in ("vgg16", "vgg19", "mobilenet_v2"):  # our own modules reproduce torchvision exactly
        assert n_params == reference


def test_vgg_depths_and_options() -> None:
    with torch.device("meta"):
        vgg16, vgg19 = (build_model(a, in_channels=1, n_classes=2) for a in ("vgg16", "vgg19"))
        vgg16_bn = build_model("vgg16", in_channels=1, n_classes=2, options={"batch_norm": True})
    convs = [sum(isinstance(m, nn.Conv2d) for m in net.modules()) for net in (vgg16, vgg19)]
    assert convs == [13, 16]
    # Batch norm adds weight + bias per conv channel: 2 * (2*64 + 2*128 + 3*256 + 6*512) = 8,448,
    # the difference between torchvision's vgg16_bn (138,365,992) and vgg16 (138,357,544).
    assert _n_params(vgg16_bn) - _n_params(vgg16) == 8_448
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.5 for m in vgg16.modules()) == 2
    small = _build("vgg16")
    assert [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)][::3] == [4, 8, 16, 32, 32]
    assert small.classifier[0].in_features == 32 * 7 * 7 and small.classifier[3].out_features == 32


def test_vit_wrong_input_size_is_a_clear_error() -> None:
    model = _build("vit").eval()
    with pytest.raises(ValueError, match=r"64x64.*img_size=64.*got 96x96"):
        model(torch.randn(1, 1, 96, 96))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_model("vit", in_channels=1, n_classes=2, options={**FAST_OPTIONS["vit"], "img_size": 72})
    # Raw logits: MONAI's default Tanh post-activation must be gone.
    assert not any(isinstance(m, nn.Tanh) for m in model.modules())


def test_swin_wrong_input_size_is_a_clear_error() -> None:
    model = _build("swin_tiny").eval()
    with pytest.raises(ValueError, match=r"divisible by 32.*got 80x80"):
        model(torch.randn(1, 1, 80, 80))
    with pytest.raises(ValueError, match="4 values"):
        _build("swin_tiny", depths=[2, 2, 2])


def test_swin_tiny_stage_layout() -> None:
    """Swin-T merges patches between stages only: last stage at stride 32 with 8 * embed_dim channels."""
    model = _build("swin_tiny").eval()
    assert model.backbone.layers4[0].downsample is None
    assert model.backbone.layers3[0].downsample is not None
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 1, 64, 64), normalize=False)[-1]
    assert feats.shape == (1, 12 * 8, 2, 2)
    assert model.norm.normalized_shape == (96,) and model.head[-1].in_features == 96


def test_efficientnet_options() -> None:
    model = build_model("efficientnet_b0", in_channels=1, n_classes=2, options={"dropout": 0.35})
    assert model.net._dropout.p == 0.35
    rates = [m.drop_connect_rate for m in model.modules() if type(m).__name__ == "MBConvBlock"]
    assert len(rates) == 16 and max(rates) == pytest.approx(0.2 * 15 / 16)
    with pytest.raises(ValueError, match="efficientnet-b0"):
        build_model("efficientnet_b0", in_channels=1, n_classes=2, options={"model_name": "efficientnet-l2"})


def test_custom_cnn_blocks_follow_channels() -> None:
    model = _build("custom_cnn", dropout=0.3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 16]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())


def test_densenet_dropout_option_reaches_dense_layers() -> None:
    with torch.device("meta"):
        model = build_model("densenet121", in_channels=1, n_classes=2, options={"dropout_prob": 0.2})
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout2d)]  # MONAI: channel dropout
    assert len(dropouts) == 6 + 12 + 24 + 16 and all(m.p == 0.2 for m in dropouts)
