"""P002 (Macrì, Bruno, Dodaro) networks as the paper describes them: the SegNet classifier's blocks (two conv +
ReLU, max-pool and Dropout 0.5 at the end, no batch norm, unpooling with the encoder's indices) and the U-Net's
mirror padding ("context extrapolation ... at the image edges"), with parameter counts derived by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from busflow.models import build_model, model_options
from busflow.models.cascade import ScatterMaxUnpool2d, SegNetClassifier, SegNetDecoderBlock, SegNetEncoderBlock
from busflow.models.registry import get_entry
from busflow.models.unets import MirrorConv2d, UNetP002, mirror_pad

pytestmark = pytest.mark.usefixtures("seeded_torch")

NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)
SEGNET_PRESET = {"filters": [16, 32, 48, 64], "dropout": 0.5}  # config/presets/p002.yaml


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _conv(cin: int, cout: int, k: int = 3) -> int:
    """Weights and bias of a k x k convolution."""
    return k * k * cin * cout + cout


# SegNet at 16-32-48-64, 1 channel, 2 classes. Encoder block: conv(in->f), conv(f->f); decoder block at width f
# narrowing to f': conv(f->f), conv(f->f'); head Linear(16, 2).
SEGNET_ENCODER = _conv(1, 16) + _conv(16, 16) + _conv(16, 32) + _conv(32, 32) + _conv(32, 48) + _conv(48, 48) \
    + _conv(48, 64) + _conv(64, 64)
SEGNET_DECODER = _conv(64, 64) + _conv(64, 48) + _conv(48, 48) + _conv(48, 32) + _conv(32, 32) + _conv(32, 16) \
    + _conv(16, 16) + _conv(16, 16)
SEGNET_P002 = SEGNET_ENCODER + SEGNET_DECODER + 16 * 2 + 2  # 115,664 + 117,776 + 34 = 233,474
# U-Net at 64..512 + 1024 bottleneck, 1 channel: double convs, 2x2 transposed convs, 1x1 head.
_WIDTHS = (64, 128, 256, 512)
UNET_P002 = (
    sum(_conv(cin, f) + _conv(f, f) for cin, f in zip((1, *_WIDTHS[:-1]), _WIDTHS))  # encoder
    + _conv(512, 1024) + _conv(1024, 1024)  # bottleneck
    + sum(_conv(cin, f, 2) for cin, f in zip((1024, 512, 256, 128), reversed(_WIDTHS)))  # up-convolutions
    + sum(_conv(2 * f, f) + _conv(f, f) for f in _WIDTHS)  # decoder (skip concatenated)
    + _conv(64, 1, 1)
)  # 31,030,593


def _segnet(**options) -> SegNetClassifier:
    return build_model("segnet_classifier_p002", in_channels=1, n_classes=2, options={**SEGNET_PRESET, **options})


def _unet(**options) -> UNetP002:
    return build_model("unet_p002", in_channels=1, n_classes=2, options={"filters": [8, 16, 32, 64], "bottleneck": 128, **options})


# --------------------------------------------------------------------------- SegNet classifier


def test_segnet_blocks_follow_the_paper() -> None:
    model = _segnet()
    assert len(model.encoders) == len(model.decoders) == 4
    for block in model.encoders:
        assert isinstance(block, SegNetEncoderBlock)
        # Two conv + ReLU, then "at the end of each block, ... a Max Pooling layer and a Dropout with a rate of 0.5".
        assert [type(m) for m in block.convs] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU]
        assert isinstance(block.pool, nn.MaxPool2d) and block.pool.return_indices
        assert list(block.children())[-1] is block.dropout
    for block in model.decoders:
        assert isinstance(block, SegNetDecoderBlock) and isinstance(block.unpool, ScatterMaxUnpool2d)
        assert [type(m) for m in block.convs] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU]
        assert list(block.children())[-1] is block.dropout
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 8 and all(d.p == 0.5 for d in dropouts)
    assert not any(isinstance(m, NORMS) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 16 and all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is not None for c in convs)
    assert [b.convs[2].out_channels for b in model.encoders] == [16, 32, 48, 64]
    assert [b.convs[2].out_channels for b in model.decoders] == [48, 32, 16, 16]
    assert isinstance(model.head, nn.Linear) and (model.head.in_features, model.head.out_features) == (16, 2)


def test_segnet_dropout_closes_every_block_in_training_only() -> None:
    """Each block returns its dropout's output: in training zeros where units fell and 2x the rest, in eval unchanged."""
    model, x = _segnet(), torch.rand(2, 1, 32, 32)
    dropped: list[tuple[torch.Tensor, torch.Tensor]] = []
    returned: list[torch.Tensor] = []
    for block in [*model.encoders, *model.decoders]:
        block.dropout.register_forward_hook(lambda _m, args, out: dropped.append((args[0], out)))
        block.register_forward_hook(lambda _m, _args, out: returned.append(out[0] if isinstance(out, tuple) else out))
    model.train()(x)
    assert len(dropped) == len(returned) == 8
    for (before, after), out in zip(dropped, returned):
        assert out is after
        kept = after != 0
        torch.testing.assert_close(after[kept], 2 * before[kept])
        assert (before[~kept] != 0).any()  # some live units were dropped
    dropped.clear()
    model.eval()(x)
    assert all(torch.equal(before, after) for before, after in dropped)


@pytest.mark.parametrize(("side", "n_classes"), [(32, 2), (64, 3)])
def test_segnet_output_and_intermediate_shapes(side: int, n_classes: int) -> None:
    model = build_model("segnet_classifier_p002", in_channels=1, n_classes=n_classes, options=SEGNET_PRESET).eval()
    x = torch.rand(3, 1, side, side)
    with torch.no_grad():
        code, indices, sizes = model.encode(x)
        assert code.shape == (3, 64, side // 16, side // 16)
        assert [tuple(s[-3:]) for s in sizes] == [(f, side >> i, side >> i) for i, f in enumerate((16, 32, 48, 64))]
        assert model.decode(code, indices, sizes).shape == (3, 16, side, side)  # back to full resolution
        assert model(x)["logits"].shape == (3, n_classes)


def test_segnet_parameter_count_at_the_preset() -> None:
    assert SEGNET_P002 == 233_474
    assert abs(_n_params(_segnet()) - SEGNET_P002) / SEGNET_P002 < 0.01
    assert _n_params(_segnet()) == SEGNET_P002  # same layers as derived, so in fact exact
    assert "233,474" in get_entry("segnet_classifier_p002").description


def test_segnet_options_keep_their_defaults_and_validate() -> None:
    assert model_options("segnet_classifier_p002") == {"filters": (16, 32, 48, 64), "dropout": 0.5}
    assert {m.p for m in _segnet(dropout=0.2).modules() if isinstance(m, nn.Dropout)} == {0.2}
    with pytest.raises(ValueError, match="4 positive integers"):
        _segnet(filters=[8, 16, 32])
    with pytest.raises(ValueError, match=r"'dropout' must be in \[0, 1\)"):
        _segnet(dropout=1.0)


def test_segnet_convs_start_he_normal_with_zero_bias() -> None:
    model = _segnet(filters=[32, 64, 128, 256])  # Table 2's widest setting; enough weights for a tight std
    conv = model.encoders[3].convs[2]
    assert torch.count_nonzero(conv.bias) == 0
    expected = (2 / (9 * 256)) ** 0.5
    assert abs(conv.weight.std().item() - expected) / expected < 0.02


# --------------------------------------------------------------------------- U-Net mirror padding


def test_mirror_pad_equals_reflect_padding() -> None:
    x = torch.randn(2, 3, 5, 7)
    for pad in (1, 2):
        assert torch.equal(mirror_pad(x, pad), F.pad(x, (pad,) * 4, mode="reflect"))
    assert torch.equal(mirror_pad(torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 3, 4), 1)[0, 0, 0], torch.tensor([1.0, 0, 1, 2, 3, 2]))


def test_unet_p002_convolutions_are_mirror_padded() -> None:
    model = _unet()
    convs3 = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs3) == 18  # 4 encoder + bottleneck + 4 decoder double convs
    assert all(isinstance(c, MirrorConv2d) and c.padding_mode == "reflect" and c.padding == (1, 1) for c in convs3)
    conv = convs3[0]
    x = torch.randn(1, 1, 6, 6)
    reference = nn.Conv2d(1, 8, 3, padding=1, padding_mode="reflect")
    reference.load_state_dict(conv.state_dict())
    zeros = nn.Conv2d(1, 8, 3, padding=1)
    zeros.load_state_dict(conv.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(conv(x), reference(x))
        assert not torch.allclose(conv(x)[..., 0, :], zeros(x)[..., 0, :])  # the border is where they differ
        torch.testing.assert_close(conv(x)[..., 1:-1, 1:-1], zeros(x)[..., 1:-1, 1:-1])


def test_unet_p002_sees_no_black_frame() -> None:
    """A constant image stays constant through mirror-padded convs: border outputs equal the centre's, where
    zero padding would change them (a frame of zeros enters every edge pixel's sum)."""
    model = _unet().eval()
    x = torch.full((1, 1, 32, 32), 0.7)
    with torch.no_grad():
        features = model.down[0](x)
        conv = model.down[0][0][0]
        zero_padded = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert torch.allclose(features, features[..., 16:17, 16:17].expand_as(features), atol=1e-6)
    assert not torch.allclose(zero_padded, zero_padded[..., 16:17, 16:17].expand_as(zero_padded))


def test_unet_p002_output_shape_and_minimum_size() -> None:
    model = _unet().eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 32, 64))["seg"].shape == (2, 1, 32, 64)
    with pytest.raises(ValueError, match=r"unet_p002: .*at least 32.*16x32"):
        model(torch.rand(1, 1, 16, 32))


def test_unet_p002_deterministic_backward() -> None:
    model = _unet()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        out = model(torch.randn(2, 1, 32, 32))["seg"]
        (out * torch.randn_like(out)).sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)
    assert model.down[0][0][0].weight.grad.abs().sum() > 0


def test_unet_p002_parameter_count_at_the_preset() -> None:
    assert UNET_P002 == 31_030_593
    n = _n_params(build_model("unet_p002", in_channels=1, n_classes=2))  # preset = default options
    assert abs(n - UNET_P002) / UNET_P002 < 0.01 and n == UNET_P002
    assert "31,030,593" in get_entry("unet_p002").description
