"""Tests for the segmenters and multi-task networks of busflow.models (unets, vgg, deeplab, fpn, resnet,
swin, multitask): the source papers' segmenters and multi-task networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from busflow.models import build_model, model_options, model_tasks
from busflow.models.vgg import VGG19Encoder

EXPECTED_TASKS = {
    "unet_p002": {"seg"},
    "unet_vgg19": {"seg"},
    "unetplusplus": {"seg"},
    "deeplabv3": {"seg"},
    "deeplabv3plus": {"seg"},
    "fpn": {"seg"},
    "unet_resnet50": {"seg"},
    "swin_unet": {"seg"},
    "attention_unet": {"seg"},
    "mtl_resunet_p004": {"cls", "seg"},
    "mtl_swin": {"cls", "seg"},
}
# Swin-T depths, window 7 and patch 4 at 1/8 of the width, no stochastic depth (every parameter gets a gradient).
SWIN_T_NARROW = {"embed_dim": 12, "num_heads": [1, 2, 2, 4], "drop_path_rate": 0.0, "decoder_channels": [32, 16, 16, 8, 8]}
# Small-but-faithful options (same topology, narrower layers) so the matrix runs in seconds on 1 thread.
FAST_OPTIONS = {
    "unet_p002": {"filters": [8, 16, 32, 64], "bottleneck": 128},
    "unet_vgg19": {"width_factor": 0.125},
    "unetplusplus": {"features": [8, 8, 16, 32, 64, 8]},
    "deeplabv3": {"backbone_depth": 101, "width_factor": 0.125},  # the paper's depth, output stride 16
    "deeplabv3plus": {"backbone_depth": 50, "width_factor": 0.125, "output_stride": 8},
    "fpn": {"widen_factor": 0.125, "pyramid_channels": 32, "segmentation_channels": 16},
    "unet_resnet50": {"widen_factor": 0.125, "decoder_channels": [32, 16, 16, 8, 8]},
    # fcn_resnet50 is left out of EXPECTED_TASKS: its scores start at zero (Long et al., 2015), which leaves its
    # up-sampling without gradient on the first step; tests/test_paper_networks.py checks it.
    "fcn_resnet50": {"widen_factor": 0.125},
    "swin_unet": SWIN_T_NARROW,
    "attention_unet": {"channels": [8, 16, 32, 64, 128]},
    "mtl_resunet_p004": {"filters": [8, 16, 32, 64], "bridge": 128, "hidden": 32},
    "mtl_swin": SWIN_T_NARROW,
}
TASK_KEY = {"cls": "logits", "seg": "seg"}
N_CLASSES = 3


pytestmark = pytest.mark.usefixtures("seeded_torch")


def _build(arch: str, in_channels: int = 1, n_classes: int = N_CLASSES, **overrides) -> nn.Module:
    return build_model(arch, in_channels=in_channels, n_classes=n_classes, options={**FAST_OPTIONS[arch], **overrides})


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _weighted_sum(out: dict[str, torch.Tensor]) -> torch.Tensor:
    # Random weights avoid the degenerate zero gradients a plain sum gives through BatchNorm.
    return sum((v * torch.randn_like(v)).sum() for v in out.values())


# --------------------------------------------------------------------------- registry


def test_registered_with_tasks_and_paper_defaults() -> None:
    for arch, tasks in EXPECTED_TASKS.items():
        assert model_tasks(arch) == frozenset(tasks), arch
        assert set(FAST_OPTIONS[arch]) <= set(model_options(arch)), arch
    dl = model_options("deeplabv3")
    assert (dl["backbone_depth"], dl["output_stride"], dl["width_factor"]) == (101, 16, 1.0)
    p002 = model_options("unet_p002")
    assert list(p002["filters"]) == [64, 128, 256, 512] and p002["bottleneck"] == 1024 and p002["batch_norm"] is False
    p004 = model_options("mtl_resunet_p004")
    assert list(p004["filters"]) == [64, 128, 256, 512] and p004["bridge"] == 1024
    assert (p004["hidden"], p004["dropout"]) == (256, 0.5)
    for arch in ("swin_unet", "mtl_swin"):  # Swin-T, as swin_tiny
        swin = model_options(arch)
        assert (swin["embed_dim"], tuple(swin["depths"]), tuple(swin["num_heads"]), swin["window_size"]) == (
            96, (2, 2, 6, 2), (3, 6, 12, 24), 7,
        )
    assert model_options("unet_resnet50")["upsampling"] == "deconv"  # P003's deconvolution blocks
    assert model_options("mtl_resnet50")["upsampling"] == "nearest"  # the default run's network, unchanged
    assert model_options("unetplusplus")["deep_supervision"] is False


# --------------------------------------------------------------------------- forward / backward contract


@pytest.mark.parametrize("arch", sorted(EXPECTED_TASKS))
def test_forward_backward_64(arch: str) -> None:
    model = _build(arch).train()
    out = model(torch.randn(2, 1, 64, 64))
    assert set(out) == {TASK_KEY[t] for t in EXPECTED_TASKS[arch]}
    assert out["seg"].shape == (2, 1, 64, 64)
    if "logits" in out:
        assert out["logits"].shape == (2, N_CLASSES)
    _weighted_sum(out).backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    for name, p in params:
        assert p.grad is not None, f"{arch}: no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"{arch}: non-finite gradient for {name}"
        assert p.grad.abs().sum() > 0, f"{arch}: zero gradient for {name}"


@pytest.mark.parametrize("arch", sorted(EXPECTED_TASKS))
def test_forward_96_keeps_input_size(arch: str) -> None:
    model = _build(arch).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 96, 96))  # 96 = 3 * 32: not a power of two
    assert out["seg"].shape == (1, 1, 96, 96)
    assert torch.isfinite(out["seg"]).all()
    if "logits" in out:
        assert out["logits"].shape == (1, N_CLASSES)


def test_three_channel_input_and_two_classes() -> None:
    for arch in ("mtl_resunet_p004", "deeplabv3plus"):
        out = _build(arch, in_channels=3, n_classes=2).eval()(torch.randn(1, 3, 64, 64))
        assert out["seg"].shape == (1, 1, 64, 64)
        if "logits" in out:
            assert out["logits"].shape == (1, 2)


# --------------------------------------------------------------------------- parameter counts vs references

# torchvision ResNet-50: 25,557,032 parameters; its fc is 2048*1000 + 1000 = 2,049,000 and the 3-channel
# 7x7 stem 64*3*49 = 9,408 (1 channel: 3,136, i.e. 6,272 fewer). Backbone, 1 channel, no fc:
# 25,557,032 - 2,049,000 - 6,272 = 23,501,760.
RESNET50_BACKBONE_1CH = 25_557_032 - 2_049_000 - 6_272
# torchvision ResNet-101: 44,549,160 -> 44,549,160 - 2,049,000 - 6,272 = 42,493,888.
RESNET101_BACKBONE_1CH = 44_549_160 - 2_049_000 - 6_272
# torchvision DeepLabHead(2048, C) = ASPP + 3x3 conv + BN + 1x1 conv:
#   ASPP 1x1 branch 2048*256 = 524,288; three 3x3 atrous 3 * 2048*256*9 = 14,155,776; pooling 1x1 524,288;
#   projection 1280*256 = 327,680; head 3x3 256*256*9 = 589,824  -> conv weights 16,121,856 (all bias-free)
#   7 BatchNorm(256) (5 branches, projection, head) = 7 * 512 = 3,584;  classifier 256*C + C.
DEEPLAB_HEAD_NO_CLASSIFIER = 16_121_856 + 3_584
# Check of the reading against torchvision's published deeplabv3_resnet101 count (aux head, 21 classes)
# 60,996,202: backbone 42,500,160 + head 16,125,440 + 21-class classifier 5,397 + aux FCNHead(1024, 21)
# (1024*256*9 + 512 + 256*21 + 21 = 2,365,205) = 60,996,202 exactly. Without aux: 58,630,997.
# With 1 input channel and 1 output class: 58,630,997 - 6,272 - (5,397 - 257) = 58,619,585.
DEEPLABV3_R101_1IN_1OUT = RESNET101_BACKBONE_1CH + DEEPLAB_HEAD_NO_CLASSIFIER + 257
# Same check for deeplabv3_resnet50 (published 42,004,074 with aux): 42,004,074 - 2,365,205 - 6,272 - 5,140.
DEEPLABV3_R50_1IN_1OUT = 42_004_074 - 2_365_205 - 6_272 - 5_140
# VGG-19 conv trunk (torchvision vgg19 143,667,240 minus classifier 102,764,544 + 16,781,312 + 4,097,000
# = 20,024,384), with a 1-channel first conv (64*3*9 -> 64*1*9: -1,152) = 20,023,232.
VGG19_FEATURES_1CH = 143_667_240 - (102_764_544 + 16_781_312 + 4_097_000) - 1_152


def test_reference_arithmetic_is_consistent() -> None:
    # The two independent derivations of the DeepLabV3-ResNet101 count agree (published total vs parts).
    assert 60_996_202 - 2_365_205 - 6_272 - 5_140 == DEEPLABV3_R101_1IN_1OUT
    assert DEEPLABV3_R50_1IN_1OUT == RESNET50_BACKBONE_1CH + DEEPLAB_HEAD_NO_CLASSIFIER + 257


def test_deeplabv3_resnet101_matches_torchvision_count() -> None:
    model = build_model("deeplabv3", in_channels=1, n_classes=2)  # defaults: ResNet-101, full width
    assert _n_params(model.encoder) == RESNET101_BACKBONE_1CH
    total = _n_params(model)
    assert abs(total - DEEPLABV3_R101_1IN_1OUT) / DEEPLABV3_R101_1IN_1OUT < 0.01
    assert total == DEEPLABV3_R101_1IN_1OUT  # same layers as torchvision, so in fact exact


def test_deeplabv3_resnet50_and_plus_decoder_counts() -> None:
    v3 = build_model("deeplabv3", in_channels=1, n_classes=2, options={"backbone_depth": 50})
    assert _n_params(v3) == DEEPLABV3_R50_1IN_1OUT
    plus = build_model("deeplabv3plus", in_channels=1, n_classes=2, options={"backbone_depth": 50})
    # V3+ swaps the V3 head conv (589,824 + BN 512) for: 1x1 256->48 low-level conv 12,288 + BN 96,
    # 3x3 (256+48)->256 conv 700,416 + BN 512, 3x3 256->256 conv 589,824 + BN 512.
    assert _n_params(plus) - _n_params(v3) == 12_288 + 96 + 700_416 + 512


def test_resnet50_encoders_match_reference() -> None:
    unet = build_model("unet_resnet50", in_channels=1, n_classes=2)
    assert _n_params(unet.encoder) == RESNET50_BACKBONE_1CH
    assert _n_params(build_model("fpn", in_channels=1, n_classes=2).encoder) == RESNET50_BACKBONE_1CH
    # unet_resnet50 is P003's mtl_resnet50 without the classification head (2048*C + C for the linear layer).
    mtl = build_model("mtl_resnet50", in_channels=1, n_classes=2, options={"upsampling": "deconv"})
    assert _n_params(mtl) - _n_params(unet) == 2048 * 2 + 2


def test_vgg19_encoder_matches_reference() -> None:
    assert _n_params(VGG19Encoder(1, batch_norm=False)) == VGG19_FEATURES_1CH
    # With BN every conv loses its bias and gains 2 * width BN parameters (widths sum to 5,504).
    assert _n_params(VGG19Encoder(1, batch_norm=True)) == VGG19_FEATURES_1CH + 5_504


# --------------------------------------------------------------------------- architecture details


@pytest.mark.parametrize(("arch", "output_stride", "side"), [("deeplabv3", 16, 4), ("deeplabv3plus", 8, 8)])
def test_deeplab_output_stride_by_dilation(arch: str, output_stride: int, side: int) -> None:
    model = _build(arch, output_stride=output_stride).eval()
    with torch.no_grad():
        deepest = model.encoder(torch.randn(1, 1, 64, 64))[-1]
    assert deepest.shape[-2:] == (side, side)
    assert model.encoder.layer4[1].conv2.dilation == ((2, 2) if output_stride == 16 else (4, 4))


def test_unetplusplus_deep_supervision_uses_every_head() -> None:
    plain, deep = _build("unetplusplus"), _build("unetplusplus", deep_supervision=True)
    # Without deep supervision the three unused nested heads are dropped (each 1x1 conv 8 -> 1: 9 params).
    assert _n_params(deep) - _n_params(plain) == 3 * 9
    out = deep.train()(torch.randn(2, 1, 64, 64))
    assert out["seg"].shape == (2, 1, 64, 64)
    _weighted_sum(out).backward()
    assert deep.net.final_conv_0_1.weight.grad.abs().sum() > 0


def test_mtl_resunet_classifier_reads_encoder_bridge_and_decoder() -> None:
    model = _build("mtl_resunet_p004")
    first = model.classifier[0]
    # GAP(enc4) + GAP(bridge) + GAP(dec1); each residual unit concatenates its input: enc4 1+8+16+32+64 = 121,
    # bridge 121+128 = 249, dec1 (64 up + 121 skip) + 64 = 249.
    assert (first.in_features, first.out_features) == (121 + 249 + 249, 32)
    assert model.classifier[2].p == 0.5
    # Classification loss alone reaches the shared encoder but not the segmentation-only output conv.
    out = model.train()(torch.randn(2, 1, 64, 64))
    (out["logits"] * torch.randn_like(out["logits"])).sum().backward()
    assert model.down[0].body[0][0].weight.grad.abs().sum() > 0
    assert model.head.weight.grad is None


def test_mtl_swin_shares_the_swin_encoder() -> None:
    model = _build("mtl_swin")
    assert model.head[-1].in_features == 8 * 12  # the deepest Swin-T stage
    for key, other_branch in (("logits", model.decoder), ("seg", model.head)):
        model.zero_grad(set_to_none=True)
        out = model.train()(torch.randn(2, 1, 64, 64))
        (out[key] * torch.randn_like(out[key])).sum().backward()
        assert model.backbone.patch_embed.proj.weight.grad.abs().sum() > 0, f"{key} loss does not reach the encoder"
        assert all(p.grad is None for p in other_branch.parameters()), f"{key} loss leaked into the other branch"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("arch", "side", "multiple"),
    [("unet_p002", 72, 16), ("unet_vgg19", 72, 16), ("mtl_resunet_p004", 40, 16), ("unetplusplus", 72, 16),
     ("attention_unet", 72, 16), ("fpn", 80, 32), ("unet_resnet50", 80, 32), ("fcn_resnet50", 80, 32),
     ("swin_unet", 80, 32), ("mtl_swin", 48, 32)],
)
def test_indivisible_size_is_a_clear_value_error(arch: str, side: int, multiple: int) -> None:
    model = _build(arch).eval()
    with pytest.raises(ValueError, match=rf"{arch}: .*multiples of {multiple}.*{side}x{side}"):
        model(torch.randn(1, 1, side, side))


def test_wrong_channels_or_rank_is_a_clear_value_error() -> None:
    model = _build("deeplabv3plus").eval()
    with pytest.raises(ValueError, match=r"deeplabv3plus: expected 1 input channel\(s\), got 3"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(torch.randn(1, 64, 64))


@pytest.mark.parametrize(
    ("arch", "options", "match"),
    [
        ("deeplabv3", {"backbone_depth": 34}, "backbone_depth must be 50 or 101"),
        ("deeplabv3plus", {"output_stride": 32}, "output_stride must be 8 or 16"),
        ("deeplabv3", {"width_factor": 0.001}, "width_factor"),
        ("swin_unet", {"num_heads": [5, 6, 12, 24]}, "not divisible by 5 heads"),
        ("unet_resnet50", {"upsampling": "bilinear"}, "upsampling must be one of nearest, deconv"),
        ("mtl_swin", {"decoder_channels": [8, 8, 8, 8]}, "decoder_channels needs 5 values"),
        ("unet_p002", {"filters": [8, 16, 32]}, "4 positive integers"),
        ("mtl_resunet_p004", {"filters": [8, 16, 32, 0]}, "4 positive integers"),
        ("unetplusplus", {"features": [8, 8, 16]}, "6 positive integers"),
    ],
)
def test_bad_options_are_value_errors(arch: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(arch, in_channels=1, n_classes=2, options=options)
