"""ResNet family: bottleneck ResNet backbones, the ResNet-50 classifier and the ResNet-50 U-Net.

* ``resnet50``         ResNet-50 classifier (He et al., 2016), MONAI ``ResNet`` (Bottleneck, layers [3, 4, 6, 3]).
* ``unet_resnet50``    P003: U-Net with a ResNet-50 encoder (``mtl_resnet50`` without its class head).

``make_resnet50``/``make_resnet`` (ResNet-50/101), ``ResNetEncoder`` and ``UNetDecoder`` are also the
backbone and decoder of ``deeplab``, ``fpn`` and the ``multitask`` networks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import ResNet, resnet50, resnet101
from monai.networks.nets.basic_unet import UpCat
from torch import nn

from busflow.models.blocks import check_factor, check_input
from busflow.models.layouts import resnet_encoder_layout, resnet_layout
from busflow.models.registry import register

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


class UNetDecoder(nn.Module):
    """U-Net decoder: upsample x2, concatenate the encoder skip, two conv blocks; last stage has no skip."""

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int]) -> None:
        super().__init__()
        if len(decoder_channels) != len(encoder_channels):
            raise ValueError(
                f"decoder_channels needs {len(encoder_channels)} values, got {list(decoder_channels)}"
            )
        skips = list(encoder_channels[-2::-1]) + [0]  # layer3, layer2, layer1, stem, (full res: none)
        blocks, in_ch = [], encoder_channels[-1]
        for skip_ch, out_ch in zip(skips, decoder_channels):
            # Nearest upsampling keeps backward deterministic on CUDA (bilinear's is not) and is parameter-free.
            blocks.append(
                UpCat(2, in_ch, skip_ch, int(out_ch), act="relu", norm="batch", bias=False,
                      upsample="nontrainable", pre_conv=None, interp_mode="nearest", align_corners=None, halves=False)
            )
            in_ch = int(out_ch)
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_ch, 1, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Decode ``[stem, layer1, ..., layer4]`` to (B, 1, H, W) lesion logits."""
        x = features[-1]
        skips: list[torch.Tensor | None] = [*features[-2::-1], None]
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


@register("resnet50", tasks={"cls"}, description="ResNet-50 classifier (MONAI ResNet, Bottleneck [3,4,6,3])",
          encoder=resnet_layout("net"))
def build_resnet50(
    *, in_channels: int, n_classes: int, widen_factor: float = 1.0, dropout: float = 0.0, no_max_pool: bool = False
) -> nn.Module:
    """Build the ResNet-50 classifier (options: widen_factor, dropout before the final linear, and
    no_max_pool, which keeps twice the resolution after the stem for small inputs)."""
    return ResNet50Classifier(in_channels, n_classes, widen_factor=widen_factor, dropout=dropout, no_max_pool=no_max_pool)


# --------------------------------------------------------------------------- P003: ResNet-50 U-Net


class ResNet50UNet(nn.Module):
    """P003's U-Net with a ResNet-50 encoder: ``mtl_resnet50``'s ``ResNetEncoder`` + ``UNetDecoder``, no class head."""

    def __init__(
        self, in_channels: int, widen_factor: float = 1.0, decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.encoder = ResNetEncoder(make_resnet50(in_channels, widen_factor, feed_forward=False))
        self.decoder = UNetDecoder(self.encoder.out_channels, decoder_channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"seg": (B, 1, H, W)}``; H and W must be multiples of 32."""
        check_input(x, self.in_channels, 32, "unet_resnet50")
        return {"seg": self.decoder(self.encoder(x))}


@register("unet_resnet50", tasks={"seg"}, description="P003 U-Net with a ResNet-50 encoder (mtl_resnet50 without the class head)",
          encoder=resnet_encoder_layout("encoder"))
def build_unet_resnet50(
    *,
    in_channels: int,
    n_classes: int,  # unused: the lesion mask is binary
    widen_factor: float = 1.0,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
) -> nn.Module:
    """Build the ResNet-50 U-Net (options: widen_factor, decoder_channels, as mtl_resnet50)."""
    return ResNet50UNet(in_channels, widen_factor=widen_factor, decoder_channels=decoder_channels)
