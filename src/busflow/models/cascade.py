"""Second stage of the segmentation -> classification cascade."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.basic_unet import TwoConv
from torch import nn

from busflow.models.blocks import check_dropout, positive_ints
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
    description="SegNet-style encoder-decoder with batch norm (max-unpooling with indices) + GAP dense classifier: "
    "busflow's general cascade classifier (segnet_classifier_p002 is P002's own)",
)
def build_segnet_classifier(
    *, in_channels: int, n_classes: int, filters: Sequence[int] = (16, 32, 48, 64), dropout: float = 0.5
) -> nn.Module:
    """Build the cascade classifier (options: filters (4 levels), dropout)."""
    return SegNetClassifier(in_channels, n_classes, filters=filters, dropout=dropout)


def conv_relu_pair(in_ch: int, mid_ch: int, out_ch: int) -> nn.Sequential:
    """Two 3x3 'same' (zero-padded, as Keras' ``padding="same"``) convolutions with bias, each followed by ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, mid_ch, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(mid_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True),
    )


class SegNetEncoderBlock(nn.Module):
    """Two 3x3 'same' conv + ReLU, then 2x2 max-pool (its indices kept for the decoder) and dropout."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float) -> None:
        super().__init__()
        self.convs = conv_relu_pair(in_ch, out_ch, out_ch)
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
        """Return the pooled, dropped-out map, the pooling indices and the pre-pool size."""
        x = self.convs(x)
        pooled, indices = self.pool(x)
        return self.dropout(pooled), indices, x.shape


class SegNetDecoderBlock(nn.Module):
    """Max-unpool with the mirrored encoder block's indices, two 3x3 'same' conv + ReLU, then dropout.

    The paper ends every block with "a Max Pooling layer and a Dropout"; pooling at the end of a decoder
    block would undo the upsampling, so here the block opens with pooling's SegNet counterpart, unpooling
    with the stored indices, and keeps the dropout at its end. As in SegNet's decoder, the last conv
    narrows to the next shallower level's width, so the next unpooling matches that level's indices.
    """

    def __init__(self, in_ch: int, out_ch: int, dropout: float) -> None:
        super().__init__()
        self.unpool = ScatterMaxUnpool2d(2, stride=2)
        self.convs = conv_relu_pair(in_ch, in_ch, out_ch)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, indices: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """Upsample ``x`` to ``size`` at the ``indices`` positions and convolve."""
        return self.dropout(self.convs(self.unpool(x, indices, output_size=size)))


class SegNetClassifierP002(nn.Module):
    """SegNet classifier of P002 (Macrì et al.), the second stage of the segment -> classify cascade.

    The paper: "four blocks in both the encoder and the decoder, and each block consists of two
    convolutional layers with ReLU activation and 'same' padding, and at the end of each block, there is
    a Max Pooling layer and a Dropout with a rate of 0.5"; the decoder restores resolution with "stored
    pooling indices from the encoder" (SegNet, Badrinarayanan et al., 2017). No batch normalisation.

    The paper does not say how the class comes out. Here, as in SegNet, the full-resolution decoded map
    (``filters[0]`` channels) meets a linear classifier: global average pooling then one dense layer,
    which equals SegNet's 1x1 classifier conv with its per-pixel scores averaged over the image; the
    softmax sits in the cross-entropy loss (two classes: the paper's binary cross-entropy).

    The paper names no initialiser. Convolutions start He-normal (fan-in, ReLU gain) with zero biases:
    without batch norm, the 16 plain convs and 4 unpoolings fade the signal under Keras' Glorot default
    (decoded map ~1e-5 of the input scale at 128 px) and the gradient under torch's default (first layer
    ~1e-7 of the head's); He keeps both within about an order of magnitude.
    """

    def __init__(
        self, in_channels: int, n_classes: int, filters: Sequence[int] = (16, 32, 48, 64), dropout: float = 0.5
    ) -> None:
        super().__init__()
        f = positive_ints("segnet_classifier_p002 'filters'", filters, 4)
        p = check_dropout("segnet_classifier_p002 'dropout'", dropout)
        self.encoders = nn.ModuleList(SegNetEncoderBlock(ci, co, p) for ci, co in zip([in_channels, *f[:-1]], f))
        # Deepest first; block i maps level i's width to level i-1's (level 0 keeps its own).
        self.decoders = nn.ModuleList(SegNetDecoderBlock(f[i], f[max(i - 1, 0)], p) for i in reversed(range(len(f))))
        self.head = nn.Linear(f[0], n_classes)
        self.apply(he_init)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Size]]:
        """Run the encoder; return the bottleneck, the pooling indices and pre-pool sizes (shallow -> deep)."""
        indices, sizes = [], []
        for block in self.encoders:
            x, idx, size = block(x)
            indices.append(idx)
            sizes.append(size)
        return x, indices, sizes

    def decode(self, x: torch.Tensor, indices: list[torch.Tensor], sizes: list[torch.Size]) -> torch.Tensor:
        """Unpool with the stored indices (deep -> shallow) and convolve back to a full-resolution map."""
        for block, idx, size in zip(self.decoders, reversed(indices), reversed(sizes)):
            x = block(x, idx, size)
        return x

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B, n_classes)}``."""
        return {"logits": self.head(self.decode(*self.encode(x)).mean(dim=(2, 3)))}


def he_init(module: nn.Module) -> None:
    """He-normal weights (fan-in, ReLU gain) and zero biases for convolutions; other modules untouched."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(module.bias)


# 233,474 parameters at the preset's filters (16, 32, 48, 64), 1 input channel, 2 classes (tests check it).
@register(
    "segnet_classifier_p002",
    tasks={"cls"},
    description="P002 SegNet classifier as the paper has it: 4+4 blocks of two 3x3 conv+ReLU, max-pool/unpool with indices, dropout "
    "0.5 per block, GAP + dense; 233,474 parameters at 16-32-48-64",
)
def build_segnet_classifier_p002(
    *, in_channels: int, n_classes: int, filters: Sequence[int] = (16, 32, 48, 64), dropout: float = 0.5
) -> nn.Module:
    """Build P002's cascade classifier (options: filters (4 block widths), dropout (rate after every block))."""
    return SegNetClassifierP002(in_channels, n_classes, filters=filters, dropout=dropout)
