"""Second stage of the segmentation -> classification cascade."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.basic_unet import TwoConv
from torch import nn

from busflow.models.registry import register


class ScatterMaxUnpool2d(nn.MaxUnpool2d):
    """``nn.MaxUnpool2d`` implemented with ``scatter`` so it runs under ``torch.use_deterministic_algorithms``.

    The native kernel refuses deterministic mode on every device. Non-overlapping pooling
    windows give unique indices, so the scatter is exact and its backward (a gather) deterministic.
    """

    def forward(self, input: torch.Tensor, indices: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
        """Place ``input`` values at the flat per-channel ``indices`` of a zero map of ``output_size[-2:]``."""
        b, c = input.shape[:2]
        h, w = output_size[-2:]
        out = input.new_zeros(b, c, h * w).scatter(2, indices.flatten(2), input.flatten(2))
        return out.view(b, c, h, w)


class SegNetClassifier(nn.Module):
    """SegNet-style encoder-decoder classifier after Macrì et al. (cascade: segment, then classify).

    SegNet (Badrinarayanan et al., 2017) idea: the decoder upsamples with the encoder's max-pooling
    indices, restoring boundary detail without learned upsampling. Here the decoded full-resolution
    map is globally pooled and fed to a dense head instead of a per-pixel classifier.
    """

    def __init__(
        self, in_channels: int, n_classes: int, filters: Sequence[int] = (16, 32, 48, 64), dropout: float = 0.5
    ) -> None:
        super().__init__()
        f = [int(c) for c in filters]
        if len(f) != 4:
            raise ValueError(f"segnet_classifier 'filters' needs 4 values, got {list(filters)}")
        conv = dict(act="relu", norm="batch", bias=False)  # conv3x3 -> BN -> ReLU, twice per block
        self.encoders = nn.ModuleList(TwoConv(2, ci, co, **conv) for ci, co in zip([in_channels, *f[:-1]], f))
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        # Decoder mirrors the encoder (deepest first); each block maps level i's width to level i-1's.
        self.unpools = nn.ModuleList(ScatterMaxUnpool2d(2, stride=2) for _ in f)
        self.decoders = nn.ModuleList(TwoConv(2, f[i], f[max(i - 1, 0)], **conv) for i in reversed(range(len(f))))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Sequential(
            nn.Linear(f[0], f[-1]), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(f[-1], n_classes)
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Size]]:
        """Run the encoder; return the bottleneck, the pooling indices and pre-pool sizes (shallow -> deep)."""
        indices, sizes = [], []
        for block in self.encoders:
            x = block(x)
            sizes.append(x.shape)
            x, idx = self.pool(x)
            indices.append(idx)
        return x, indices, sizes

    def decode(self, x: torch.Tensor, indices: list[torch.Tensor], sizes: list[torch.Size]) -> torch.Tensor:
        """Unpool with the stored indices (deep -> shallow) and convolve back to a full-resolution map."""
        for unpool, block, idx, size in zip(self.unpools, self.decoders, reversed(indices), reversed(sizes)):
            x = block(unpool(x, idx, output_size=size))
        return x

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B, n_classes)}``."""
        decoded = self.dropout(self.decode(*self.encode(x)))
        return {"logits": self.head(decoded.mean(dim=(2, 3)))}  # global average pooling


@register(
    "segnet_classifier",
    tasks={"cls"},
    description="SegNet-style encoder-decoder (max-unpooling with indices) + GAP dense classifier (Macrì et al.)",
)
def build_segnet_classifier(
    *, in_channels: int, n_classes: int, filters: Sequence[int] = (16, 32, 48, 64), dropout: float = 0.5
) -> nn.Module:
    """Build the cascade classifier (options: filters (4 levels), dropout)."""
    return SegNetClassifier(in_channels, n_classes, filters=filters, dropout=dropout)
