"""Segmentation networks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from busflow.models.registry import register


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
