"""P003's six networks (Loja, Mendez, Huang): ResNet-50 and Swin-T, each as classifier, U-Net and multi-task
network. The three networks of a backbone hold the same encoder; the U-Nets and multi-task networks decode
through the paper's "5 deconvolution blocks"; the documented parameter counts are the measured ones."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
import torch
from torch import nn

from busflow.config import load_params
from busflow.models import build_model
from busflow.models.pretrained import encoder_layout
from busflow.models.registry import get_entry

PRESET = Path(__file__).resolve().parents[1] / "config" / "presets" / "p003.yaml"
# What the preset trains: model name -> (arch, options).
P003 = {name: (entry["arch"], entry.get("options", {})) for name, entry in load_params(PRESET)["models"].items()}

# Reference counts at 1 input channel and 2 classes.
# torchvision ResNet-50 25,557,032 less its fc (2,049,000) and two of its three stem input channels (2 * 3,136).
RESNET50_BACKBONE_1CH = 25_557_032 - 2_049_000 - 6_272
# torchvision Swin-T 28,288,354 less its head (769,000) and two of its three patch-embedding input channels (2 * 1,536).
SWIN_T_1CH = 28_288_354 - 769_000 - 3_072
DECODER = (256, 128, 64, 32, 16)
RESNET50_SKIPS = (1024, 512, 256, 64, 0)  # layer3, layer2, layer1, stem, none
SWIN_T_SKIPS = (384, 192, 96, 0, 0)  # stage 2, stage 1 (after merging), patch embedding, none, none


def deconv_decoder_params(deepest: int, skips: tuple[int, ...], widths: tuple[int, ...]) -> int:
    """Parameters of the decoder: per block a 2x2 transposed conv with bias, two bias-free 3x3 convs with
    BatchNorm; then the 1x1 conv to one lesion logit."""
    total, in_ch = 0, deepest
    for skip, out in zip(skips, widths):
        total += in_ch * out * 4 + out + 9 * (out + skip) * out + 2 * out + 9 * out * out + 2 * out
        in_ch = out
    return total + in_ch + 1


UNET_RESNET50 = RESNET50_BACKBONE_1CH + deconv_decoder_params(2048, RESNET50_SKIPS, DECODER)
SWIN_UNET = SWIN_T_1CH + deconv_decoder_params(768, SWIN_T_SKIPS, DECODER)
# model name -> (exact count, the count as its registry description states it)
COUNTS = {
    "resnet50": (RESNET50_BACKBONE_1CH + 2048 * 2 + 2, "23.5 M parameters"),
    "unet_resnet50": (UNET_RESNET50, "30.5 M parameters"),
    "mtl_resnet50": (UNET_RESNET50 + 2048 * 2 + 2, "30.5 M with P003's deconvolution blocks"),
    "swin_tiny": (SWIN_T_1CH + 768 * 2 + 2, "27.5 M parameters"),
    "swin_unet": (SWIN_UNET, "31.2 M parameters"),
    "mtl_swin": (SWIN_UNET + 768 * 2 + 2, "31.2 M parameters"),
}
SWIN_NETWORKS = ("swin_tiny", "swin_unet", "mtl_swin")
# Narrow versions for forward passes: the full topology (Swin-T depths, window 7, patch 4), fewer channels.
NARROW = {
    "resnet50": {"widen_factor": 0.125},
    "unet_resnet50": {"widen_factor": 0.125, "decoder_channels": [32, 16, 16, 8, 8]},
    "mtl_resnet50": {"widen_factor": 0.125, "decoder_channels": [32, 16, 16, 8, 8]},
    **{arch: {"embed_dim": 12, "num_heads": [1, 2, 2, 4]} for arch in SWIN_NETWORKS},
}

pytestmark = pytest.mark.usefixtures("seeded_torch")


def build_full_size(name: str) -> nn.Module:
    """The preset's network at full size; ResNets on the meta device (MONAI's Swin needs real tensors to build)."""
    arch, options = P003[name]
    with torch.device("cpu" if arch in SWIN_NETWORKS else "meta"):
        return build_model(arch, in_channels=1, n_classes=2, options=options)


@pytest.fixture(scope="module")
def full_size() -> Callable[[str], nn.Module]:
    """Each full-size network built once for this module (about 125 MB per Swin network), freed after it."""
    return cache(build_full_size)


def narrow(name: str) -> nn.Module:
    arch, options = P003[name]
    return build_model(arch, in_channels=1, n_classes=2, options={**options, **NARROW[name]}).eval()


def shapes(model: nn.Module, prefixes: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(t.shape) for key, t in model.state_dict().items() if key.startswith(prefixes)}


def canonical_shapes(name: str, model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The encoder's tensor shapes under torchvision's names (the network's pretrained-encoder layout)."""
    state = shapes(model, ("",))
    return {canonical: state[key] for key, canonical in encoder_layout(name).canonical_names(state).items()}


def test_the_preset_trains_the_six_networks_at_the_papers_input_size() -> None:
    assert set(P003) == set(COUNTS) and all(arch == name for name, (arch, _) in P003.items())
    assert P003["mtl_resnet50"][1] == {"upsampling": "deconv"}  # the default run's mtl_resnet50 keeps "nearest"
    assert load_params(PRESET)["preprocess"]["size"] == 256  # "we resize them to 256 x 256"


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_count_is_the_documented_one(name: str, full_size: Callable[[str], nn.Module]) -> None:
    exact, documented = COUNTS[name]
    assert documented in get_entry(P003[name][0]).description
    measured = sum(p.numel() for p in full_size(name).parameters())
    assert measured == exact
    assert abs(measured - float(documented.split(" M")[0]) * 1e6) / measured < 0.01, f"{name}: {measured:,}"


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_output_shapes_at_224_and_256(name: str) -> None:
    # At 256 px Swin-T's 64x64 tokens are no multiple of the 7x7 windows: MONAI zero-pads them.
    model, keys = narrow(name), {{"cls": "logits", "seg": "seg"}[t] for t in get_entry(P003[name][0]).tasks}
    for size in (224, 256):
        with torch.no_grad():
            out = model(torch.randn(1, 1, size, size))
        assert set(out) == keys
        assert all(torch.isfinite(v).all() for v in out.values())
        if "logits" in out:
            assert out["logits"].shape == (1, 2)
        if "seg" in out:
            assert out["seg"].shape == (1, 1, size, size)


def assert_deconvolution_decoder(decoder: nn.Module, deepest: int, skips: tuple[int, ...]) -> None:
    """Five 2x2 stride-2 transposed convolutions, each followed by a 3x3 conv over it and the encoder skip."""
    ups = [m for m in decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.kernel_size, m.stride) for m in ups] == [((2, 2), (2, 2))] * 5
    assert [(m.in_channels, m.out_channels) for m in ups] == list(zip((deepest, *DECODER[:-1]), DECODER))
    assert [block.convs[0][0].in_channels for block in decoder.blocks] == [w + s for w, s in zip(DECODER, skips)]
    assert not any(isinstance(m, nn.Upsample) for m in decoder.modules())


@pytest.mark.parametrize("name", ["unet_resnet50", "mtl_resnet50"])
def test_resnet50_u_net_decodes_through_five_deconvolution_blocks(name: str, full_size: Callable[[str], nn.Module]) -> None:
    assert_deconvolution_decoder(full_size(name).decoder, 2048, RESNET50_SKIPS)


def test_the_default_multitask_resnet50_keeps_its_nearest_upsampling() -> None:
    with torch.device("meta"):
        default = build_model("mtl_resnet50", in_channels=1, n_classes=2, options={"widen_factor": 0.25})
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in default.modules())


@pytest.mark.parametrize("name", SWIN_NETWORKS)
def test_every_swin_network_is_swin_t(name: str, full_size: Callable[[str], nn.Module]) -> None:
    backbone = full_size(name).backbone
    assert (backbone.patch_embed.proj.kernel_size, backbone.patch_embed.proj.stride) == ((4, 4), (4, 4))
    assert backbone.embed_dim == backbone.patch_embed.proj.out_channels == 96
    stages = [getattr(backbone, f"layers{i}")[0] for i in range(1, 5)]
    assert [len(stage.blocks) for stage in stages] == [2, 2, 6, 2]
    assert [stage.blocks[0].attn.num_heads for stage in stages] == [3, 6, 12, 24]
    assert {block.window_size for stage in stages for block in stage.blocks} == {(7, 7)}
    assert [stage.downsample is None for stage in stages] == [False, False, False, True]  # Swin-T merges 3 times
    if name != "swin_tiny":
        assert_deconvolution_decoder(full_size(name).decoder, 768, SWIN_T_SKIPS)


def test_classifier_and_multitask_network_share_the_encoder(full_size: Callable[[str], nn.Module]) -> None:
    swin = [shapes(full_size(name), ("backbone.", "norm.")) for name in SWIN_NETWORKS]
    assert swin[0] and swin[0] == swin[1] == swin[2]
    assert shapes(full_size("swin_tiny"), ("",)).items() <= shapes(full_size("mtl_swin"), ("",)).items()  # head too
    resnet = [shapes(full_size(name), ("encoder.",)) for name in ("unet_resnet50", "mtl_resnet50")]
    assert resnet[0] and resnet[0] == resnet[1]
    # resnet50 keeps MONAI's names (net.conv1, ...): the same tensors under torchvision's names.
    classifier, multitask = (canonical_shapes(name, full_size(name)) for name in ("resnet50", "mtl_resnet50"))
    assert classifier and classifier == multitask


def test_swin_tiny_weights_make_mtl_swin_classify_as_swin_tiny() -> None:
    classifier, multitask = narrow("swin_tiny"), narrow("mtl_swin")
    result = multitask.load_state_dict(classifier.state_dict(), strict=False)
    assert not result.unexpected_keys and all(key.startswith("decoder.") for key in result.missing_keys)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(multitask(x)["logits"], classifier(x)["logits"])
