"""U-Net family: plain, nested and attention-gated U-Nets (task ``seg``, one lesion-logit channel).

* ``unet``             Classic U-Net (Ronneberger et al., 2015), MONAI ``BasicUNet``.
* ``unet_p002``        P002 Macrì et al.: plain 4-level U-Net (two mirror-padded 3x3 conv + ReLU per block).
* ``unetplusplus``     UNet++ (Zhou et al., 2018), MONAI ``BasicUNetPlusPlus``.
* ``attention_unet``   Attention U-Net (Oktay et al., 2018), MONAI ``AttentionUnet``.

U-Nets on a classifier's backbone live with that backbone's family: ``unet_vgg19`` in ``vgg``,
``unet_resnet50`` in ``resnet``, ``swin_unet`` in ``swin``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import AttentionUnet, BasicUNet, BasicUNetPlusPlus
from torch import nn

from busflow.models.blocks import check_input, positive_ints
from busflow.models.registry import register

# --------------------------------------------------------------------------- U-Net (MONAI BasicUNet)


def norm_arg(norm: str | Sequence | None) -> str | tuple | None:
    """Normalise a config norm spec for MONAI (``"none"``/None -> None, YAML list -> tuple)."""
    if norm is None or (isinstance(norm, str) and norm.lower() == "none"):
        return None
    return norm if isinstance(norm, str) else tuple(norm)


class UNet(nn.Module):
    """Classic 2-D U-Net (Ronneberger et al., 2015): contracting/expanding paths joined by skip concatenation.

    Wraps MONAI ``BasicUNet``: five levels of two 3x3 conv blocks, 2x2 max-pool down,
    upsample + skip concat up, 1x1 conv to one lesion-logit channel.
    """

    def __init__(
        self,
        in_channels: int,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        dropout: float = 0.0,
        norm: str | Sequence | None = "batch",
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        if len(features) != 6:
            raise ValueError(f"unet 'features' needs 6 values (5 encoder levels + last decoder), got {list(features)}")
        norm = norm_arg(norm)
        self.net = BasicUNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=1,
            features=tuple(int(f) for f in features),
            act="relu",  # the original U-Net uses ReLU (MONAI's default is LeakyReLU)
            norm=norm,
            bias=norm is None,  # a bias right before a normalisation layer is redundant
            dropout=dropout,
            upsample=upsample,
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"seg": (B, 1, H, W) raw lesion logits}``."""
        return {"seg": self.net(x)}


@register("unet", tasks={"seg"}, description="Classic U-Net (MONAI BasicUNet), 1-channel lesion logits")
def build_unet(
    *,
    in_channels: int,
    n_classes: int,  # unused: the lesion mask is binary
    features: Sequence[int] = (32, 32, 64, 128, 256, 32),
    dropout: float = 0.0,
    norm: str | Sequence | None = "batch",
    upsample: str = "deconv",
) -> nn.Module:
    """Build the U-Net segmenter (options: features, dropout, norm, upsample)."""
    return UNet(in_channels, features=features, dropout=dropout, norm=norm, upsample=upsample)


# --------------------------------------------------------------------------- P002: plain U-Net


def mirror_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect-pad H and W by ``pad`` (``F.pad(mode="reflect")``) with slices and flips only.

    ``F.pad``'s reflection kernel has no deterministic CUDA backward; slice, flip and cat backward are exact copies.
    """
    if pad == 0:
        return x
    for dim in (-2, -1):
        n = x.shape[dim]
        x = torch.cat([x.narrow(dim, 1, pad).flip(dim), x, x.narrow(dim, n - pad - 1, pad).flip(dim)], dim=dim)
    return x


class MirrorConv2d(nn.Conv2d):
    """``nn.Conv2d`` with ``padding_mode="reflect"`` whose padding runs through :func:`mirror_pad`."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, bias: bool = True) -> None:
        super().__init__(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=bias, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mirror-pad by half the kernel, then convolve without padding: same size out."""
        return F.conv2d(mirror_pad(x, self.padding[0]), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def mirror_conv_act(in_ch: int, out_ch: int, batch_norm: bool) -> nn.Sequential:
    """3x3 mirror-padded conv (bias only without BN), optional BatchNorm, ReLU."""
    layers: list[nn.Module] = [MirrorConv2d(in_ch, out_ch, 3, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_ch))
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


class DoubleConv(nn.Sequential):
    """Two 3x3 'same' convolutions with mirror padding, each followed by (optional BN and) ReLU."""

    def __init__(self, in_ch: int, out_ch: int, batch_norm: bool = False) -> None:
        super().__init__(mirror_conv_act(in_ch, out_ch, batch_norm), mirror_conv_act(out_ch, out_ch, batch_norm))


class UNetP002(nn.Module):
    """U-Net of P002 (Macrì et al.): 4 encoder blocks, a bottleneck, 4 decoder blocks.

    Encoder block: two 3x3 conv + ReLU ('same' padding), then 2x2 max-pool. Bottleneck: two 3x3 conv
    at ``bottleneck`` filters (1024 = twice the last encoder width, as in Ronneberger et al.; the
    paper lists only the 64..512 encoder filters). Decoder block: 2x2 stride-2 transposed conv to the
    mirrored encoder width, concatenation with the skip, two 3x3 conv + ReLU. A 1x1 conv gives the
    lesion logit. No batch norm unless ``batch_norm``.

    The paper "incorporated a context extrapolation mechanism, ensuring accurate segmentation even at
    the image edges"; in its U-Net reference [15] (Ronneberger et al.) the missing context at the border
    "is extrapolated by mirroring the input image". With the paper's 'same' convolutions that is mirror
    (reflect) padding in every 3x3 conv instead of zeros, so a border pixel sees a reflection of the
    image, not a black frame. Reflecting needs 2 px at the 1/16 bottleneck: inputs of at least 32 px.
    """

    def __init__(
        self,
        in_channels: int,
        filters: Sequence[int] = (64, 128, 256, 512),
        bottleneck: int = 1024,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        filters = positive_ints("unet_p002 'filters'", filters, 4)
        bottleneck = positive_ints("unet_p002 'bottleneck'", [bottleneck])[0]
        self.in_channels = in_channels
        self.down = nn.ModuleList()
        ch = in_channels
        for f in filters:
            self.down.append(DoubleConv(ch, f, batch_norm))
            ch = f
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(ch, bottleneck, batch_norm)
        ch = bottleneck
        self.up, self.dec = nn.ModuleList(), nn.ModuleList()
        for f in reversed(filters):
            self.up.append(nn.ConvTranspose2d(ch, f, kernel_size=2, stride=2))
            self.dec.append(DoubleConv(2 * f, f, batch_norm))
            ch = f
        self.head = nn.Conv2d(ch, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"seg": (B, 1, H, W)}``; H and W must be multiples of 16, at least 32."""
        check_input(x, self.in_channels, 16, "unet_p002")
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"unet_p002: input height and width must be at least 32 (mirror padding at the 1/16 "
                             f"bottleneck needs 2 px), got {x.shape[-2]}x{x.shape[-1]}")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return {"seg": self.head(x)}


# 31,030,593 parameters at the preset's filters (64, 128, 256, 512), bottleneck 1024, 1 input channel (tests check it).
@register(
    "unet_p002",
    tasks={"seg"},
    description="P002 Macrì et al. U-Net: 4+4 blocks of two mirror-padded 3x3 conv+ReLU, 64..512 (+1024 bottleneck); "
    "31,030,593 parameters",
)
def build_unet_p002(
    *,
    in_channels: int,
    n_classes: int,  # unused: the lesion mask is binary
    filters: Sequence[int] = (64, 128, 256, 512),
    bottleneck: int = 1024,
    batch_norm: bool = False,
) -> nn.Module:
    """Build P002's U-Net (options: filters (4 encoder widths), bottleneck width, batch_norm)."""
    return UNetP002(in_channels, filters=filters, bottleneck=bottleneck, batch_norm=batch_norm)


# --------------------------------------------------------------------------- UNet++


class UNetPlusPlus(nn.Module):
    """UNet++ (Zhou et al., 2018): nested, densely connected skip pathways (MONAI ``BasicUNetPlusPlus``).

    ``deep_supervision=False`` returns the X^{0,4} head and drops the three unused nested heads
    (they would receive no gradient). ``deep_supervision=True`` returns the mean of the four nested
    heads' logits (the paper's "accurate mode" ensemble), since the ``{"seg": tensor}`` contract
    carries one output; per-head losses would need a training-loop change.
    """

    def __init__(
        self, in_channels: int, features: Sequence[int] = (32, 32, 64, 128, 256, 32), deep_supervision: bool = False
    ) -> None:
        super().__init__()
        features = positive_ints("unetplusplus 'features'", features, 6)
        self.in_channels = in_channels
        self.deep_supervision = bool(deep_supervision)
        self.net = BasicUNetPlusPlus(
            spatial_dims=2, in_channels=in_channels, out_channels=1, features=features,
            deep_supervision=self.deep_supervision,
        )
        if not self.deep_supervision:
            for name in ("final_conv_0_1", "final_conv_0_2", "final_conv_0_3"):
                setattr(self.net, name, nn.Identity())  # computed-and-discarded in MONAI's forward

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"seg": (B, 1, H, W)}``; H and W must be multiples of 16."""
        check_input(x, self.in_channels, 16, "unetplusplus")
        outputs = self.net(x)
        seg = torch.stack(outputs).mean(0) if self.deep_supervision else outputs[-1]
        return {"seg": seg}


@register("unetplusplus", tasks={"seg"}, description="UNet++ nested U-Net (MONAI BasicUNetPlusPlus), final output")
def build_unetplusplus(
    *,
    in_channels: int,
    n_classes: int,  # unused: the lesion mask is binary
    features: Sequence[int] = (32, 32, 64, 128, 256, 32),
    deep_supervision: bool = False,
) -> nn.Module:
    """Build UNet++ (options: features (6 values as MONAI), deep_supervision (mean of the nested heads))."""
    return UNetPlusPlus(in_channels, features=features, deep_supervision=deep_supervision)


# --------------------------------------------------------------------------- Attention U-Net


class AttentionUNet(nn.Module):
    """Attention U-Net (Oktay et al., 2018): additive attention gates on the skips (MONAI ``AttentionUnet``)."""

    def __init__(self, in_channels: int, channels: Sequence[int] = (64, 128, 256, 512, 1024), dropout: float = 0.0) -> None:
        super().__init__()
        channels = positive_ints("attention_unet 'channels'", channels)
        if len(channels) < 2:
            raise ValueError(f"attention_unet 'channels' needs at least 2 levels, got {list(channels)}")
        self.in_channels = in_channels
        self.multiple = 2 ** (len(channels) - 1)
        self.net = AttentionUnet(
            spatial_dims=2, in_channels=in_channels, out_channels=1, channels=channels,
            strides=(2,) * (len(channels) - 1), dropout=float(dropout),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"seg": (B, 1, H, W)}``; H and W must be multiples of 2**(levels-1)."""
        check_input(x, self.in_channels, self.multiple, "attention_unet")
        return {"seg": self.net(x)}


@register("attention_unet", tasks={"seg"}, description="Attention U-Net (MONAI AttentionUnet), attention-gated skips")
def build_attention_unet(
    *,
    in_channels: int,
    n_classes: int,  # unused: the lesion mask is binary
    channels: Sequence[int] = (64, 128, 256, 512, 1024),
    dropout: float = 0.0,
) -> nn.Module:
    """Build the Attention U-Net (options: channels per level, dropout)."""
    return AttentionUNet(in_channels, channels=channels, dropout=dropout)
