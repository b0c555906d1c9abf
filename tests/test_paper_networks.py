"""The networks of P000, P001 and P004 as their papers describe them: P001's modified U-Net (Leaky ReLU throughout,
a decoder mirroring VGG-19), P000's single-task UResNet and FCN segmenters beside its multi-task UResNet, and
P004's residual unit (three conv-BN-ReLU and one concatenation). Shapes at 64 px, the modules at the documented
places, and parameter counts against hand derivations from the layer lists."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from busflow.config import load_params
from busflow.models import build_model, model_options, model_tasks
from busflow.models.multitask import ResidualUnit
from busflow.models.resnet import bilinear_kernel

PRESETS = Path(__file__).resolve().parents[1] / "config" / "presets"

pytestmark = pytest.mark.usefixtures("seeded_torch")


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _preset_model(preset: str, name: str) -> tuple[str, dict]:
    entry = load_params(PRESETS / f"{preset}.yaml")["models"][name]
    return entry["arch"], entry.get("options", {})


def _meta(arch: str, options: dict | None = None, n_classes: int = 2) -> nn.Module:
    """The full-size network without memory for its weights."""
    with torch.device("meta"):
        return build_model(arch, in_channels=1, n_classes=n_classes, options=options or {})


def _weighted_sum(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum((v * torch.randn_like(v)).sum() for v in out.values())


# --------------------------------------------------------------------------- P001: modified U-Net

# Hand count at 1 input channel, BatchNorm after every conv (bias-free 3x3 convs, 2 * width BN parameters).
# Encoder: torchvision vgg19 143,667,240 - classifier (102,764,544 + 16,781,312 + 4,097,000) = 20,024,384
#   conv trunk; 1 input channel: -64*2*9 = -1,152; BN: each of the 16 convs drops its bias (width) and gains
#   2 * width, +5,504 (the widths sum to 5,504)                                   -> 20,028,736.
# Decoder, one stage per VGG block 4, 3, 2, 1, mirroring its 4, 4, 2, 2 convs:
#   block 4: transposed 2x2 512->512 (512*512*4 + 512 = 1,049,088), 3x3 1024->512 (4,718,592) + BN 1,024,
#            three 3x3 512->512 (3 * (2,359,296 + 1,024) = 7,080,960)                         = 12,849,664
#   block 3: transposed 512->256 (524,544), 3x3 512->256 (1,179,648 + 512), three 256->256
#            (3 * (589,824 + 512) = 1,771,008)                                                 =  3,475,712
#   block 2: transposed 256->128 (131,200), 3x3 256->128 (294,912 + 256), 128->128 (147,456 + 256) = 574,080
#   block 1: transposed 128->64 (32,832), 3x3 128->64 (73,728 + 128), 64->64 (36,864 + 128)     =   143,680
#   1x1 conv 64->1: 65.
UNET_VGG19_ENCODER = 143_667_240 - (102_764_544 + 16_781_312 + 4_097_000) - 1_152 + 5_504
UNET_VGG19_DECODER = 12_849_664 + 3_475_712 + 574_080 + 143_680 + 65
UNET_VGG19 = UNET_VGG19_ENCODER + UNET_VGG19_DECODER  # 37,071,937
# The encoder's 16 and the decoder's 12 convs (4*512 + 4*256 + 2*128 + 2*64 = 3,456 channels) without BatchNorm:
# each keeps a bias (width) instead of 2 * width BN parameters.
UNET_VGG19_NO_BN = UNET_VGG19 - 5_504 - 3_456


def _activations(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]


def test_p001_unet_is_the_presets_network_with_leaky_relu_throughout() -> None:
    arch, options = _preset_model("p001", "unet_vgg19")
    assert arch == "unet_vgg19" and options == {"batch_norm": True, "negative_slope": 0.01}
    model = build_model(arch, in_channels=1, n_classes=3, options={**options, "width_factor": 0.125})
    for part in (model.encoder, model.dec):
        acts = _activations(part)
        assert len(acts) == (16 if part is model.encoder else 12)
        assert all(type(a) is nn.LeakyReLU and a.negative_slope == 0.01 for a in acts)
    assert not any(type(m) is nn.ReLU for m in model.modules())


def test_p001_decoder_mirrors_the_vgg19_encoder() -> None:
    model = build_model("unet_vgg19", in_channels=1, n_classes=3, options={"width_factor": 0.125})
    encoder_convs = [sum(isinstance(m, nn.Conv2d) for m in block.modules()) for block in model.encoder.blocks]
    decoder_convs = [sum(isinstance(m, nn.Conv2d) for m in stage.modules()) for stage in model.dec]
    assert encoder_convs == [2, 2, 4, 4, 4]  # block 5 is the bridge
    assert decoder_convs == [4, 4, 2, 2] == encoder_convs[3::-1]
    assert all(isinstance(up, nn.ConvTranspose2d) and up.stride == (2, 2) for up in model.up)
    assert model.head.kernel_size == (1, 1) and model.head.out_channels == 1
    out = model.train()(torch.randn(2, 1, 64, 64))
    assert out["seg"].shape == (2, 1, 64, 64)
    _weighted_sum(out).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_p001_unet_parameter_count() -> None:
    assert UNET_VGG19 == 37_071_937
    ours = _n_params(_meta("unet_vgg19"))
    assert abs(ours - UNET_VGG19) / UNET_VGG19 < 0.01
    assert ours == UNET_VGG19
    assert _n_params(_meta("unet_vgg19", {"batch_norm": False})) == UNET_VGG19_NO_BN


# --------------------------------------------------------------------------- P000: single-task segmenters

# torchvision ResNet-50 25,557,032 - fc (2,049,000) - two of the stem's three input channels (2 * 3,136).
RESNET50_BACKBONE_1CH = 25_557_032 - 2_049_000 - 6_272
# FCN-8s: 1x1 score convs with bias on layer4, layer3, layer2 (2,049 + 1,025 + 513 = 3,587) and two bias-free
# 4x4 transposed convs on the one score channel (2 * 16); the x8 bilinear up-sampling is fixed (no parameters).
FCN_RESNET50 = RESNET50_BACKBONE_1CH + 3_587 + 32  # 23,505,379
P000_SEGMENTERS = ("uresnet", "fcn")


def test_p000_preset_trains_single_task_segmenters_beside_the_multi_task_network() -> None:
    params = load_params(PRESETS / "p000.yaml")
    assert set(P000_SEGMENTERS) | {"mtl_resnet50"} <= set(params["train"]["models"])
    for name in P000_SEGMENTERS:
        entry = params["models"][name]
        assert model_tasks(entry["arch"]) == frozenset({"seg"})
        assert entry["seg_loss"] == params["models"]["mtl_resnet50"]["seg_loss"] == "bce"  # "BCEWithLogits"


def test_p000_uresnet_is_the_multi_task_networks_segmentation_branch() -> None:
    arch, options = _preset_model("p000", "uresnet")
    single = _meta(arch, options).state_dict()
    mtl_arch, mtl_options = _preset_model("p000", "mtl_resnet50")
    multi = _meta(mtl_arch, mtl_options).state_dict()
    branch = {k: v.shape for k, v in multi.items() if not k.startswith("classifier.")}
    assert {k: v.shape for k, v in single.items()} == branch
    assert len(multi) - len(branch) == 2  # the class head's linear weight and bias
    model = build_model(arch, in_channels=1, n_classes=2, options={**options, "widen_factor": 0.125,
                                                                  "decoder_channels": [32, 16, 16, 8, 8]})
    assert model(torch.randn(2, 1, 64, 64))["seg"].shape == (2, 1, 64, 64)


def test_p000_fcn_is_fcn8s_on_the_resnet50_encoder() -> None:
    arch, options = _preset_model("p000", "fcn")
    model = build_model(arch, in_channels=1, n_classes=2, options={**options, "widen_factor": 0.125})
    assert [s.in_channels for s in model.score] == model.encoder.out_channels[:1:-1]  # layer4, layer3, layer2
    assert all(s.kernel_size == (1, 1) and s.out_channels == 1 for s in model.score)
    assert all(up.stride == (2, 2) and torch.equal(up.weight, bilinear_kernel(2)) for up in model.up2)
    assert "up8" not in dict(model.named_parameters()) and model.up8.shape == (1, 1, 16, 16)
    x = torch.randn(2, 1, 64, 64)
    out = model.train()(x)
    assert out["seg"].shape == (2, 1, 64, 64)
    assert not out["seg"].any()  # scores start at zero (Long et al., Sec. 4.3)
    with torch.no_grad():
        for score in model.score:
            score.weight.normal_(std=0.1)
    _weighted_sum(model(x)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bilinear_kernel_upsamples_a_constant_to_the_constant() -> None:
    flat = torch.nn.functional.conv_transpose2d(torch.ones(1, 1, 4, 4), bilinear_kernel(8), stride=8, padding=4)
    assert flat.shape == (1, 1, 32, 32)
    assert torch.allclose(flat[..., 4:-4, 4:-4], torch.ones(1, 1, 24, 24))


def test_p000_fcn_parameter_count() -> None:
    assert FCN_RESNET50 == 23_505_379
    ours = _n_params(_meta("fcn_resnet50"))
    assert abs(ours - FCN_RESNET50) / FCN_RESNET50 < 0.01
    assert ours == FCN_RESNET50


# --------------------------------------------------------------------------- P004: residual unit with concatenation

# Concatenating unit (in -> out): three bias-free 3x3 convs with BN, 9*out*(in + 2*out) + 3 * 2*out, and an output
# of in + out channels. At 1 input channel, widths 64, 128, 256, 512, bridge 1024 (channels out in brackets):
#   enc1   1 -> 64   9*64*(1 + 128) + 384         =     74,688   [65]
#   enc2  65 -> 128  9*128*(65 + 256) + 768       =    370,560   [193]
#   enc3 193 -> 256  9*256*(193 + 512) + 1,536    =  1,625,856   [449]
#   enc4 449 -> 512  9*512*(449 + 1024) + 3,072   =  6,790,656   [961]
#   bridge 961 -> 1024  9*1024*(961 + 2048) + 6,144 = 27,737,088 [1985]
#   dec1: transposed 1985->512 (1985*512*4 + 512 = 4,065,792), unit 512+961 -> 512 (9*512*(1473 + 1024) + 3,072
#         = 11,509,248) [1985];  dec2: 1985->256 (2,032,896), 256+449 -> 256 (2,805,504) [961];
#   dec3: 961->128 (492,160), 128+193 -> 128 (665,472) [449];  dec4: 449->64 (115,008), 64+65 -> 64 (148,416) [193]
#   1x1 conv 193 -> 1: 194;  dense GAP(enc4 961 + bridge 1985 + dec1 1985 = 4,931) -> 256: 1,262,592; 256 -> 2: 514.
P004_ENCODER = 74_688 + 370_560 + 1_625_856 + 6_790_656 + 27_737_088
P004_DECODER = 4_065_792 + 11_509_248 + 2_032_896 + 2_805_504 + 492_160 + 665_472 + 115_008 + 148_416 + 194
MTL_RESUNET_P004 = P004_ENCODER + P004_DECODER + 1_262_592 + 514  # 59,696,644


def test_p004_unit_concatenates_its_input_with_three_conv_bn_relu() -> None:
    unit = ResidualUnit(6, 8, merge="concat").eval()
    counts = {kind: sum(isinstance(m, kind) for m in unit.modules()) for kind in (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)}
    assert counts == {nn.Conv2d: 3, nn.BatchNorm2d: 3, nn.ReLU: 3}
    assert all(m.kernel_size == (3, 3) for m in unit.modules() if isinstance(m, nn.Conv2d))
    x = torch.randn(2, 6, 16, 16)
    with torch.no_grad():
        y = unit(x)
        assert unit.out_channels == y.shape[1] == 6 + 8  # not x + f(x), which keeps one width
        assert torch.equal(y[:, :6], x) and torch.equal(y[:, 6:], unit.body(x))
    assert _n_params(unit) == 9 * 8 * (6 + 2 * 8) + 6 * 8


def test_p004_unit_add_keeps_the_shortcut_sum() -> None:
    unit = ResidualUnit(6, 8, merge="add").eval()
    x = torch.randn(2, 6, 16, 16)
    with torch.no_grad():
        assert unit.out_channels == unit(x).shape[1] == 8
        assert torch.equal(unit(x), torch.relu(unit.body(x) + unit.shortcut(x)))
    with pytest.raises(ValueError, match="merge must be one of add, concat"):
        ResidualUnit(6, 8, merge="sum")


def test_p004_network_uses_the_papers_unit_and_a_two_unit_head() -> None:
    assert model_options("mtl_resunet_p004")["merge"] == "concat"
    arch, options = _preset_model("p004", "mtl_resunet_p004")
    assert options["merge"] == "concat" and (options["hidden"], options["dropout"]) == (256, 0.5)
    small = {**options, "filters": [8, 16, 32, 64], "bridge": 128, "hidden": 32}
    model = build_model(arch, in_channels=1, n_classes=2, options=small)
    units = [*model.down, model.bridge, *model.dec]
    assert len(units) == 9 and all(u.merge == "concat" for u in units)  # 9 levels
    assert [u.out_channels for u in model.down] == [9, 25, 57, 121] and model.bridge.out_channels == 249
    assert model.classifier[0].in_features == 121 + 249 + 249  # GAP of stages 4, 5 and 6
    assert model.classifier[-1].out_features == 2  # softmax over 2 units in the loss and at prediction
    out = model.train()(torch.randn(2, 1, 64, 64))
    assert out["seg"].shape == (2, 1, 64, 64) and out["logits"].shape == (2, 2)
    _weighted_sum(out).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_p004_network_parameter_count() -> None:
    assert MTL_RESUNET_P004 == 59_696_644
    ours = _n_params(_meta("mtl_resunet_p004"))
    assert abs(ours - MTL_RESUNET_P004) / MTL_RESUNET_P004 < 0.01
    assert ours == MTL_RESUNET_P004
