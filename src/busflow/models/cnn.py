"""Plain convolutional classifier (task ``cls``).

* ``custom_cnn``       P000 (Jimenez & Xu) single-task CNN: conv-BN-ReLU-maxpool stack + dense head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from busflow.models.blocks import check_dropout
from busflow.models.registry import register


class CustomCNN(nn.Module):
    """Plain CNN of P000 (Jimenez & Xu): ``len(channels)`` blocks of 3x3 conv-BN-ReLU + 2x2 max-pool,
    global average pooling, a ReLU dense layer, dropout and the linear output layer."""

    def __init__(
        self, in_channels: int, n_classes: int, channels: Sequence[int], dense_units: int, dropout: float
    ) -> None:
        super().__init__()
        if len(channels) < 1 or any(int(c) < 1 for c in channels):
            raise ValueError(f"custom_cnn 'channels' needs >= 1 positive values, got {list(channels)}")
        if int(dense_units) < 1:
            raise ValueError(f"custom_cnn 'dense_units' must be >= 1, got {dense_units}")
        blocks: list[nn.Module] = []
        prev = in_channels
        for c in map(int, channels):
            blocks += [
                nn.Conv2d(prev, c, kernel_size=3, padding=1, bias=False),  # bias redundant before BN
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            prev = c
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(prev, int(dense_units)),
            nn.ReLU(inplace=True),
            nn.Dropout(check_dropout("dropout", dropout)),
            nn.Linear(int(dense_units), n_classes),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B, n_classes)}``."""
        return {"logits": self.head(self.pool(self.features(x)))}


@register("custom_cnn", tasks={"cls"}, description="P000 plain CNN: conv-BN-ReLU-maxpool blocks, GAP, dense, dropout")
def build_custom_cnn(
    *,
    in_channels: int,
    n_classes: int,
    channels: Sequence[int] = (32, 64, 128, 256),
    dense_units: int = 256,
    dropout: float = 0.5,
) -> nn.Module:
    """Build P000's (Jimenez & Xu) single-task CNN (options: per-block ``channels``, ``dense_units``, ``dropout``)."""
    return CustomCNN(in_channels, n_classes, channels, dense_units, dropout)
