"""ResNet family: bottleneck ResNet backbones, the ResNet-50 classifier, the ResNet-50 U-Net and FCN.

* ``resnet50``         ResNet-50 classifier (He et al., 2016), MONAI ``ResNet`` (Bottleneck, layers [3, 4, 6, 3]).
* ``unet_resnet50``    P003: U-Net with a ResNet-50 encoder and 5 deconvolution blocks (``mtl_resnet50`` with
                       ``upsampling="deconv"``, without its class head). With ``upsampling="nearest"`` it is
                       ``mtl_resnet50``'s segmentation branch alone: P000's single-task UResNet.
* ``fcn_resnet50``     P000: single-task FCN, FCN-8s (Long et al., 2015) on the same ResNet-50 encoder.

``make_resnet50``/``make_resnet`` (ResNet-50/101), ``ResNetEncoder`` and ``UNetDecoder`` are also the
backbone and decoder of ``deeplab``, ``fpn``, the ``multitask`` networks and (the decoder) ``swin_unet``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
from monai.networks.nets import ResNet, resnet50, resnet101
from monai.networks.nets.basic_unet import UpCat
from torch import nn

from busflow.models.blocks import check_factor, check_input, conv_bn_act
from busflow.models.layouts import resnet_encoder_layout, resnet_layout
from busflow.models.registry import register

Upsampling = Literal["nearest", "deconv"]
UPSAMPLING: tuple[str, ...] = get_args(Upsampling)

# --------------------------------------------------------------------------- backbones


def make_resnet50(in_channels: int, widen_factor: float = 1.0, **kwargs: Any) -> ResNet:
    """MONAI 2-D ResNet-50 (He et al., 2016; Bottleneck, layers [3, 4, 6, 3]) with the standard stem.

    Args:
        in_channels: Input channels.
        widen_factor: Channel multiplier (1.0 = standard widths 64..2048); < 1 shrinks for CPU runs.
        **kwargs: Forwarded to ``monai.networks.nets.ResNet`` (e.g. ``num_classes``, ``feed_forward``).
    """
    if not 64 * widen_factor >= 1:
        raise ValueError(f"widen_factor must be >= 1/64, got {widen_factor}")
    return resnet50(
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_stride=2,  # MONAI defaults to 1, which quadruples the cost vs. the standard stem
        widen_factor=float(widen_factor),
        bias_downsample=False,  # standard ResNet-50 projection shortcuts have no bias
        **kwargs,
    )


def make_resnet(depth: int, in_channels: int, width_factor: float = 1.0) -> ResNet:
    """MONAI 2-D bottleneck ResNet-50/101 with the standard stride-2 7x7 stem, no classifier.

    Same settings as ``make_resnet50`` (bias-free projection shortcuts), so at depth 50 both have
    identical parameter counts.
    """
    factories = {50: resnet50, 101: resnet101}
    if depth not in factories:
        raise ValueError(f"backbone_depth must be 50 or 101, got {depth}")
    check_factor("width_factor", width_factor, 64)
    return factories[depth](
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_stride=2,
        widen_factor=float(width_factor),
        bias_downsample=False,
        feed_forward=False,
    )


class ResNetEncoder(nn.Module):
    """Stem and layer1..layer4 taken from a MONAI ResNet; returns features at strides 2, 4, 8, 16, 32."""

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.act)
        self.maxpool = resnet.maxpool
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3, self.layer4 = resnet.layer3, resnet.layer4
        layers = (self.layer1, self.layer2, self.layer3, self.layer4)
        # Channels of each returned feature map, shallow -> deep.
        self.out_channels: list[int] = [resnet.conv1.out_channels] + [
            next(m for m in reversed(list(layer.modules())) if isinstance(m, nn.Conv2d)).out_channels
            for layer in layers
        ]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return ``[stem, layer1, layer2, layer3, layer4]`` feature maps."""
        s = self.stem(x)
        f1 = self.layer1(self.maxpool(s))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [s, f1, f2, f3, self.layer4(f3)]


class DeconvBlock(nn.Module):
    """U-Net up-step (Ronneberger et al., 2015): 2x2 stride-2 transposed convolution to ``out_ch`` channels,
    concatenation of the encoder skip (if any), two 3x3 conv + BN + ReLU."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        self.convs = nn.Sequential(conv_bn_act(out_ch + skip_ch, out_ch), conv_bn_act(out_ch, out_ch))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        return self.convs(x if skip is None else torch.cat([x, skip], dim=1))


def _up_block(upsampling: str, in_ch: int, skip_ch: int, out_ch: int) -> nn.Module:
    if upsampling == "deconv":
        return DeconvBlock(in_ch, skip_ch, out_ch)
    # Nearest upsampling keeps backward deterministic on CUDA (bilinear's is not) and is parameter-free.
    return UpCat(2, in_ch, skip_ch, out_ch, act="relu", norm="batch", bias=False, upsample="nontrainable",
                 pre_conv=None, interp_mode="nearest", align_corners=None, halves=False)


class UNetDecoder(nn.Module):
    """U-Net decoder: each block doubles the resolution and concatenates the encoder skip of that resolution;
    the blocks below the shallowest encoder feature have no skip. A 1x1 conv gives the lesion logit.

    Args:
        encoder_channels: Channels of the encoder features, shallow -> deep, each at half the previous resolution.
        decoder_channels: Output channels of each block; one block per halving from the deepest feature to the
            input resolution (``len(encoder_channels) - 1 + log2(shallowest_stride)``).
        upsampling: ``"nearest"`` (parameter-free x2 + two convs) or ``"deconv"`` (:class:`DeconvBlock`).
        shallowest_stride: Down-sampling factor of the shallowest encoder feature (a power of two).
    """

    def __init__(
        self, encoder_channels: Sequence[int], decoder_channels: Sequence[int], upsampling: Upsampling = "nearest",
        shallowest_stride: int = 2,
    ) -> None:
        super().__init__()
        if upsampling not in UPSAMPLING:
            raise ValueError(f"upsampling must be one of {', '.join(UPSAMPLING)}, got {upsampling!r}")
        self.unskipped = int(math.log2(shallowest_stride))  # blocks below the shallowest skip
        n_blocks = len(encoder_channels) - 1 + self.unskipped
        if len(decoder_channels) != n_blocks:
            raise ValueError(f"decoder_channels needs {n_blocks} values, got {list(decoder_channels)}")
        skips = [*encoder_channels[-2::-1], *[0] * self.unskipped]  # e.g. layer3, layer2, layer1, stem, (none)
        blocks, in_ch = [], int(encoder_channels[-1])
        for skip_ch, out_ch in zip(skips, decoder_channels):
            blocks.append(_up_block(upsampling, in_ch, int(skip_ch), int(out_ch)))
            in_ch = int(out_ch)
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_ch, 1, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Decode the encoder features (shallow -> deep) to (B, 1, H, W) lesion logits."""
        x = features[-1]
        skips: list[torch.Tensor | None] = [*features[-2::-1], *[None] * self.unskipped]
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        return self.head(x)


# --------------------------------------------------------------------------- ResNet-50 classifier


class ResNet50Classifier(nn.Module):
    """ResNet-50 image classifier (He et al., 2016): residual bottleneck blocks, global pooling, linear head."""

    def __init__(self, in_channels: int, n_classes: int, widen_factor: float = 1.0, dropout: float = 0.0, no_max_pool: bool = False) -> None:
        super().__init__()
        self.net = make_resnet50(in_channels, widen_factor, num_classes=n_classes, no_max_pool=no_max_pool)
        # MONAI's ResNet has no head-dropout option, so wrap its final linear layer.
        self.net.fc = nn.Sequential(nn.Dropout(dropout), self.net.fc)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B, n_classes)}``."""
        return {"logits": self.net(x)}


@register("resnet50", tasks={"cls"}, description="ResNet-50 classifier (MONAI ResNet, Bottleneck [3,4,6,3]); 23.5 M parameters",
          encoder=resnet_layout("net"))
def build_resnet50(
    *, in_channels: int, n_classes: int, widen_factor: float = 1.0, dropout: float = 0.0, no_max_pool: bool = False
) -> nn.Module:
    """Build the ResNet-50 classifier (options: widen_factor, dropout before the final linear, and
    no_max_pool, which keeps twice the resolution after the stem for small inputs)."""
    return ResNet50Classifier(in_channels, n_classes, widen_factor=widen_factor, dropout=dropout, no_max_pool=no_max_pool)


# --------------------------------------------------------------------------- P003: ResNet-50 U-Net


class ResNet50UNet(nn.Module):
    """P003's U-Net with a ResNet-50 encoder (Fig. 2): five encoder blocks (stem, layer1..4, 1/2..1/32), five
    decoder blocks back to full resolution with skips from the stem and layer1..3, a 1x1 conv to the lesion logit.

    "it proceeds through 5 deconvolution blocks [...] until the last deconvolution block, which restores the
    feature map to the original image size"; the paper gives no kernel, so each block is U-Net's own up-step
    (:class:`DeconvBlock`). ``mtl_resnet50``'s ``ResNetEncoder`` + ``UNetDecoder``, no class head.
    """

    def __init__(
        self, in_channels: int, widen_factor: float = 1.0, decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        upsampling: Upsampling = "deconv",
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.encoder = ResNetEncoder(make_resnet50(in_channels, widen_factor, feed_forward=False))
        self.decoder = UNetDecoder(self.encoder.out_channels, decoder_channels, upsampling)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"seg": (B, 1, H, W)}``; H and W must be multiples of 32."""
        check_input(x, self.in_channels, 32, "unet_resnet50")
        return {"seg": self.decoder(self.encoder(x))}


@register("unet_resnet50", tasks={"seg"},
          description="P003 U-Net: ResNet-50 encoder + 5 deconvolution blocks (2x2 stride-2 transposed conv, skip, "
                      "two 3x3 conv-BN-ReLU); 30.5 M parameters",
          encoder=resnet_encoder_layout("encoder"))
def build_unet_resnet50(
    *,
    in_channels: int,
    n_classes: int,  # unused: the lesion mask is binary
    widen_factor: float = 1.0,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    upsampling: Upsampling = "deconv",
) -> nn.Module:
    """Build the ResNet-50 U-Net (options: widen_factor, decoder_channels, upsampling ``"deconv"`` (P003's
    deconvolution blocks) or ``"nearest"``, as mtl_resnet50)."""
    return ResNet50UNet(in_channels, widen_factor=widen_factor, decoder_channels=decoder_channels, upsampling=upsampling)


# --------------------------------------------------------------------------- P000: FCN on the ResNet-50 encoder


def bilinear_kernel(factor: int) -> torch.Tensor:
    """(1, 1, 2f, 2f) transposed-convolution kernel of bilinear up-sampling by ``factor`` (Long et al., 2015)."""
    size = 2 * factor
    centre = factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float32) - centre).abs() / factor
    return torch.outer(ramp, ramp)[None, None]


def _bilinear_up2() -> nn.ConvTranspose2d:
    up = nn.ConvTranspose2d(1, 1, kernel_size=4, stride=2, padding=1, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(2))
    return up


def _zero_score(in_ch: int) -> nn.Conv2d:
    score = nn.Conv2d(in_ch, 1, kernel_size=1)
    nn.init.zeros_(score.weight)
    nn.init.zeros_(score.bias)
    return score


class FCNResNet50(nn.Module):
    """FCN-8s (Long et al., 2015, Sec. 4.2) on the ResNet-50 encoder of ``unet_resnet50`` and ``mtl_resnet50``.

    P000 compares its multi-task UResNet with a single-task "FCN" and describes it no further; this is Long et
    al.'s skip architecture with ResNet-50's layer4, layer3 and layer2 (strides 32, 16, 8) in the places of
    VGG-16's fc7, pool4 and pool3. A 1x1 conv scores each (zero-initialised, Sec. 4.2-4.3); the stride-32 score
    is up-sampled x2 by a learned transposed conv (bilinear initialisation) and added to the stride-16 score,
    that sum likewise to the stride-8 score, and a fixed bilinear transposed conv up-samples x8 to the input.
    """

    def __init__(self, in_channels: int, widen_factor: float = 1.0) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.encoder = ResNetEncoder(make_resnet50(in_channels, widen_factor, feed_forward=False))
        deep, mid, shallow = self.encoder.out_channels[4], self.encoder.out_channels[3], self.encoder.out_channels[2]
        self.score = nn.ModuleList([_zero_score(deep), _zero_score(mid), _zero_score(shallow)])
        self.up2 = nn.ModuleList([_bilinear_up2(), _bilinear_up2()])
        self.register_buffer("up8", bilinear_kernel(8), persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"seg": (B, 1, H, W)}``; H and W must be multiples of 32."""
        check_input(x, self.in_channels, 32, "fcn_resnet50")
        features = self.encoder(x)
        fused = self.score[0](features[4])
        for up, score, skip in zip(self.up2, self.score[1:], (features[3], features[2])):
            fused = up(fused) + score(skip)
        return {"seg": nn.functional.conv_transpose2d(fused, self.up8, stride=8, padding=4)}


@register("fcn_resnet50", tasks={"seg"},
          description="P000 single-task FCN: FCN-8s (Long et al., 2015) skip fusion of ResNet-50 layer4/3/2 scores, "
                      "fixed bilinear x8; 23.5 M parameters",
          encoder=resnet_encoder_layout("encoder"))
def build_fcn_resnet50(
    *,
    in_channels: int,
    n_classes: int,  # unused: the lesion mask is binary
    widen_factor: float = 1.0,
) -> nn.Module:
    """Build the FCN-8s segmenter on ResNet-50 (option: widen_factor, as unet_resnet50)."""
    return FCNResNet50(in_channels, widen_factor=widen_factor)
