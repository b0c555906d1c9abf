"""Classification networks."""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import ResNet, resnet50
from torch import nn

from busflow.models.registry import register


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


@register("resnet50", tasks={"cls"}, description="ResNet-50 classifier (MONAI ResNet, Bottleneck [3,4,6,3])")
def build_resnet50(
    *, in_channels: int, n_classes: int, widen_factor: float = 1.0, dropout: float = 0.0, no_max_pool: bool = False
) -> nn.Module:
    """Build the ResNet-50 classifier (options: widen_factor, dropout before the final linear, and
    no_max_pool, which keeps twice the resolution after the stem for small inputs)."""
    return ResNet50Classifier(in_channels, n_classes, widen_factor=widen_factor, dropout=dropout, no_max_pool=no_max_pool)
