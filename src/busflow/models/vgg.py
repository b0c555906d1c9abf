"""VGG family: VGG-16/19 classifiers and the VGG-19 U-Net.

* ``vgg16/vgg19``      VGG (Simonyan & Zisserman, 2015), configs "D"/"E", own torch modules (task ``cls``).
* ``unet_vgg19``       P001: modified U-Net, VGG-19 encoder, mirrored transposed-conv decoder, Leaky ReLU (task ``seg``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from torch import nn

from busflow.models.blocks import check_dropout, check_factor, check_input, conv_bn_act, scaled
from busflow.models.layouts import VGG19_ENCODER, VGG_CLASSIFIER
from busflow.models.registry import register

# --------------------------------------------------------------------------- VGG classifiers


# Simonyan & Zisserman (2015) Table 1: ints are 3x3 conv output channels, "M" is a 2x2 max-pool.
VGG_CONFIGS: dict[str, list[int | str]] = {
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG network: 3x3 conv(-BN)-ReLU stacks with max-pools, adaptive average pool to 7x7, and the classic
    ``Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear`` classifier (torchvision layout and initialisation)."""

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        config: Sequence[int | str],
        batch_norm: bool = False,
        width_factor: float = 1.0,
        classifier_width: int = 4096,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if not float(width_factor) > 0:
            raise ValueError(f"width_factor must be > 0, got {width_factor}")
        if int(classifier_width) < 1:
            raise ValueError(f"classifier_width must be >= 1, got {classifier_width}")
        dropout = check_dropout("dropout", dropout)
        layers: list[nn.Module] = []
        prev = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            c = max(1, round(int(v) * float(width_factor)))
            layers.append(nn.Conv2d(prev, c, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.ReLU(inplace=True))
            prev = c
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        width = int(classifier_width)
        self.classifier = nn.Sequential(
            nn.Linear(prev * 7 * 7, width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(width, width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(width, n_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B, n_classes)}``."""
        return {"logits": self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))}


def _vgg_builder(config: str) -> Callable[..., nn.Module]:
    """A builder of VGG config ``config`` ("D" = VGG-16, "E" = VGG-19, Simonyan & Zisserman, 2015)."""

    def build(
        *,
        in_channels: int,
        n_classes: int,
        batch_norm: bool = False,
        width_factor: float = 1.0,
        classifier_width: int = 4096,
        dropout: float = 0.5,
    ) -> nn.Module:
        """``width_factor`` scales every conv width (1.0 = 64..512), ``classifier_width`` the two hidden dense
        layers (4096); ``batch_norm`` adds BN after every conv."""
        return VGG(in_channels, n_classes, VGG_CONFIGS[config], batch_norm=bool(batch_norm), width_factor=width_factor,
                   classifier_width=classifier_width, dropout=dropout)

    return build


register("vgg16", tasks={"cls"}, description="VGG-16 (config D) classifier, optional batch norm", encoder=VGG_CLASSIFIER)(_vgg_builder("D"))
register("vgg19", tasks={"cls"}, description="VGG-19 (config E) classifier, optional batch norm", encoder=VGG_CLASSIFIER)(_vgg_builder("E"))


# --------------------------------------------------------------------------- P001: VGG-19 U-Net


# VGG-19 ("configuration E", Simonyan & Zisserman 2015) conv widths per block; a 2x2 max-pool follows each.
VGG19_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)


def _activation(negative_slope: float | None) -> nn.Module:
    """ReLU, or LeakyReLU(negative_slope) when a slope is given."""
    return nn.ReLU(inplace=True) if negative_slope is None else nn.LeakyReLU(float(negative_slope), inplace=True)


class VGG19Encoder(nn.Module):
    """VGG-19 convolutional trunk: five blocks of 3x3 conv + (BN +) activation, 2x2 max-pool between blocks.

    The fifth max-pool is dropped: block 5 (all 16 conv layers are kept) is the U-Net bridge at 1/16.
    Returns the five block outputs (strides 1, 2, 4, 8, 16). ``negative_slope`` swaps VGG's ReLU for a
    LeakyReLU of that slope (P001's modified U-Net); None keeps ReLU.
    """

    def __init__(
        self, in_channels: int, width_factor: float = 1.0, batch_norm: bool = True, negative_slope: float | None = None
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.out_channels: list[int] = []
        ch = in_channels
        for widths in VGG19_BLOCKS:
            layers = []
            for w in widths:
                out = scaled(w, width_factor)
                layers.append(conv_bn_act(ch, out, batch_norm=batch_norm, act=_activation(negative_slope)))
                ch = out
            self.blocks.append(nn.Sequential(*layers))
            self.out_channels.append(ch)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else self.pool(x))
            feats.append(x)
        return feats


class UNetVGG19(nn.Module):
    """P001's modified U-Net ("Modified U-Net Architecture"): VGG-19 encoder, a decoder that mirrors it with
    transposed convolutions, a final 1x1 convolution, and Leaky ReLU in place of every ReLU.

    Decoder stage, one per VGG block above the bridge (blocks 4, 3, 2, 1): 2x2 stride-2 transposed conv to the
    block's width, concatenation with the block's output, then as many 3x3 conv + (BN +) LeakyReLU as the block
    has (4, 4, 2, 2), the first halving the concatenated width. A 1x1 conv gives the lesion logit.
    """

    def __init__(
        self, in_channels: int, width_factor: float = 1.0, batch_norm: bool = True, negative_slope: float = 0.01
    ) -> None:
        super().__init__()
        check_factor("width_factor", width_factor, 64)
        self.in_channels = in_channels
        self.encoder = VGG19Encoder(in_channels, width_factor, batch_norm, negative_slope)
        enc = self.encoder.out_channels
        self.up, self.dec = nn.ModuleList(), nn.ModuleList()
        ch = enc[-1]
        for skip_ch, n_convs in zip(reversed(enc[:-1]), (len(b) for b in reversed(VGG19_BLOCKS[:-1]))):
            self.up.append(nn.ConvTranspose2d(ch, skip_ch, kernel_size=2, stride=2))
            widths = [2 * skip_ch] + [skip_ch] * n_convs
            self.dec.append(nn.Sequential(*(
                conv_bn_act(a, b, batch_norm=batch_norm, act=_activation(negative_slope)) for a, b in pairwise(widths)
            )))
            ch = skip_ch
        self.head = nn.Conv2d(ch, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"seg": (B, 1, H, W)}``; H and W must be multiples of 16."""
        check_input(x, self.in_channels, 16, "unet_vgg19")
        feats = self.encoder(x)
        x = feats[-1]
        for up, dec, skip in zip(self.up, self.dec, reversed(feats[:-1])):
            x = dec(torch.cat([up(x), skip], dim=1))
        return {"seg": self.head(x)}


@register("unet_vgg19", tasks={"seg"},
          description="P001 modified U-Net: VGG-19 encoder, mirrored transposed-conv decoder (4/4/2/2 convs), LeakyReLU "
                      "throughout; 37.1 M parameters",
          encoder=VGG19_ENCODER)
def build_unet_vgg19(
    *,
    in_channels: int,
    n_classes: int,  # unused: the lesion mask is binary
    width_factor: float = 1.0,
    batch_norm: bool = True,
    negative_slope: float = 0.01,
) -> nn.Module:
    """Build P001's VGG-19 U-Net (options: width_factor, batch_norm after every conv (VGG-19-BN style; P001 does not
    say), negative_slope of every LeakyReLU (P001 does not give it; 0.01 is PyTorch's default))."""
    return UNetVGG19(in_channels, width_factor=width_factor, batch_norm=batch_norm, negative_slope=negative_slope)
