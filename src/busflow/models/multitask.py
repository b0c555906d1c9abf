"""Multi-task network: one shared encoder feeding a segmentation decoder and a classification head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import ResNet
from monai.networks.nets.basic_unet import UpCat
from torch import nn

from busflow.models.classifiers import make_resnet50
from busflow.models.registry import register


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


class MultiTaskResNetUNet(nn.Module):
    """Joint lesion segmentation + classification with a shared ResNet-50 encoder (hard parameter sharing MTL).

    The U-Net decoder and the pooled-feature classifier both back-propagate into ``encoder``.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        widen_factor: float = 1.0,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(make_resnet50(in_channels, widen_factor, feed_forward=False))
        self.decoder = UNetDecoder(self.encoder.out_channels, decoder_channels)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),  # output size 1 lowers to mean(): deterministic backward on CUDA
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(self.encoder.out_channels[-1], n_classes),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B, n_classes), "seg": (B, 1, H, W)}``."""
        features = self.encoder(x)
        return {"logits": self.classifier(features[-1]), "seg": self.decoder(features)}


@register(
    "mtl_resnet50",
    tasks={"cls", "seg"},
    description="Multi-task ResNet-50 encoder + U-Net decoder (seg) + pooled linear head (cls)",
)
def build_mtl_resnet50(
    *,
    in_channels: int,
    n_classes: int,
    widen_factor: float = 1.0,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    dropout: float = 0.2,
) -> nn.Module:
    """Build the multi-task network (options: widen_factor, decoder_channels, dropout)."""
    return MultiTaskResNetUNet(
        in_channels, n_classes, widen_factor=widen_factor, decoder_channels=decoder_channels, dropout=dropout
    )
