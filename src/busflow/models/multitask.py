"""Multi-task networks: one shared encoder feeding a segmentation decoder and a classification head.

Each returns ``{"logits": (B, n_classes), "seg": (B, 1, H, W) lesion logits}``.

* ``mtl_resnet50``     ResNet-50 encoder + U-Net decoder (seg) + pooled linear head (cls); hard parameter sharing.
                       With ``upsampling="deconv"`` it is P003's ResNet-50 multi-task network (``unet_resnet50`` + head).
* ``mtl_resunet_p004`` P004: residual U-Net multi-task network (seg + cls from encoder/bridge/decoder); its
                       residual units concatenate input and body (``merge="concat"``), as the paper's.
* ``mtl_swin``         P003: Swin-T multi-task network (``swin_unet`` + ``swin_tiny``'s head on the shared encoder).

Parameter counts in the descriptions are at 1 input channel and 2 classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import nn

from busflow.models.blocks import check_dropout, check_input, conv_bn_act, positive_ints
from busflow.models.layouts import SWIN, resnet_encoder_layout
from busflow.models.registry import register
from busflow.models.resnet import ResNetEncoder, UNetDecoder, Upsampling, make_resnet50
from busflow.models.swin import DECODER_CHANNELS, DEPTHS, EMBED_DIM, NUM_HEADS, WINDOW_SIZE, SwinUNet

# --------------------------------------------------------------------------- ResNet-50 multi-task U-Net


class MultiTaskResNetUNet(nn.Module):
    """Joint lesion segmentation + classification with a shared ResNet-50 encoder (hard parameter sharing MTL).

    The U-Net decoder and the pooled-feature classifier both back-propagate into ``encoder``. P003's network
    (Fig. 3) "share[s] the convolutional blocks and go[es] into two branches after the last convolutional
    block": the segmentation branch is its U-Net's decoder (``upsampling="deconv"``), the classification branch
    its classifier's pooling and linear layer.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        widen_factor: float = 1.0,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        dropout: float = 0.2,
        upsampling: Upsampling = "nearest",
    ) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(make_resnet50(in_channels, widen_factor, feed_forward=False))
        self.decoder = UNetDecoder(self.encoder.out_channels, decoder_channels, upsampling)
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
    description="Multi-task ResNet-50 encoder + U-Net decoder (seg) + pooled linear head (cls); 32.5 M parameters, "
                "30.5 M with P003's deconvolution blocks (upsampling: deconv)",
    encoder=resnet_encoder_layout("encoder"),
)
def build_mtl_resnet50(
    *,
    in_channels: int,
    n_classes: int,
    widen_factor: float = 1.0,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    dropout: float = 0.2,
    upsampling: Upsampling = "nearest",
) -> nn.Module:
    """Build the multi-task network (options: widen_factor, decoder_channels, dropout, and upsampling: ``"nearest"``
    (x2 nearest + two convs per decoder block) or ``"deconv"`` (P003's deconvolution blocks, as unet_resnet50))."""
    return MultiTaskResNetUNet(
        in_channels, n_classes, widen_factor=widen_factor, decoder_channels=decoder_channels, dropout=dropout,
        upsampling=upsampling,
    )


# --------------------------------------------------------------------------- P004: residual multi-task U-Net


Merge = Literal["add", "concat"]
MERGES: tuple[str, ...] = get_args(Merge)


class ResidualUnit(nn.Module):
    """Residual unit of P004 (Materials and Methods, Fig. 1(b)), merging its input with its body by ``merge``.

    ``"concat"`` (the paper's: "three convolutions, three batch-normalization, three ReLU, and one concatenation
    layer"): three 3x3 conv + BN + ReLU, and the unit's input concatenated with their output, so the unit
    outputs ``in_ch + out_ch`` channels. Figure 1(b) and equation (1), which place the concatenation, were lost;
    joining the shortcut (the unit's input) to the body's output is busflow's reading.
    ``"add"``: conv + BN + ReLU twice, conv + BN, plus the shortcut (the identity, or a 1x1 conv + BN projection
    when the width changes), ReLU after the addition; ``out_ch`` channels.
    """

    def __init__(self, in_ch: int, out_ch: int, merge: Merge = "add") -> None:
        super().__init__()
        if merge not in MERGES:
            raise ValueError(f"merge must be one of {', '.join(MERGES)}, got {merge!r}")
        self.merge = merge
        self.out_channels = in_ch + out_ch if merge == "concat" else out_ch
        last: list[nn.Module] = (
            [conv_bn_act(out_ch, out_ch)] if merge == "concat"
            else [nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch)]
        )
        self.body = nn.Sequential(conv_bn_act(in_ch, out_ch), conv_bn_act(out_ch, out_ch), *last)
        if merge == "add":
            self.shortcut = (
                nn.Identity() if in_ch == out_ch
                else nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
            )
            self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merge == "concat":
            return torch.cat([x, self.body(x)], dim=1)
        return self.act(self.body(x) + self.shortcut(x))


class MultiTaskResUNetP004(nn.Module):
    """P004's residual U-Net multi-task network ("Residual-U-Net": 9 levels, 4 encoder, bridge, 4 decoder units).

    Encoder: residual unit then 2x2 max-pool, body widths ``filters``; bridge: residual unit of ``bridge`` width
    (1/16); decoder: 2x2 stride-2 transposed conv to the stage's filter width, concatenation with the skip,
    residual unit; 1x1 conv to the lesion logit. Classification branch: global average pooling of encoder
    stage 4, the bridge and decoder stage 1 (the paper's stages 4, 5 and 6), concatenated -> dense ``hidden`` +
    ReLU -> dropout -> dense n_classes, whose softmax (in the loss and at prediction) is the paper's 2-unit
    softmax for benign/malignant. The paper gives no widths or kernel sizes: U-Net's 64..1024 and 3x3 here.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        filters: Sequence[int] = (64, 128, 256, 512),
        bridge: int = 1024,
        hidden: int = 256,
        dropout: float = 0.5,
        merge: Merge = "concat",
    ) -> None:
        super().__init__()
        filters = positive_ints("mtl_resunet_p004 'filters'", filters, 4)
        bridge = positive_ints("mtl_resunet_p004 'bridge'", [bridge])[0]
        hidden = positive_ints("mtl_resunet_p004 'hidden'", [hidden])[0]
        self.in_channels = in_channels
        self.down = nn.ModuleList()
        ch = in_channels
        for f in filters:
            self.down.append(ResidualUnit(ch, f, merge))
            ch = self.down[-1].out_channels
        self.pool = nn.MaxPool2d(2)
        self.bridge = ResidualUnit(ch, bridge, merge)
        ch = self.bridge.out_channels
        self.up, self.dec = nn.ModuleList(), nn.ModuleList()
        for f, skip in zip(reversed(filters), reversed([unit.out_channels for unit in self.down])):
            self.up.append(nn.ConvTranspose2d(ch, f, kernel_size=2, stride=2))
            self.dec.append(ResidualUnit(f + skip, f, merge))
            ch = self.dec[-1].out_channels
        self.head = nn.Conv2d(ch, 1, kernel_size=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        pooled = self.down[-1].out_channels + self.bridge.out_channels + self.dec[0].out_channels
        self.classifier = nn.Sequential(
            nn.Linear(pooled, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(check_dropout("dropout", dropout)),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B, n_classes), "seg": (B, 1, H, W)}``; H and W must be multiples of 16."""
        check_input(x, self.in_channels, 16, "mtl_resunet_p004")
        skips = []
        for unit in self.down:
            x = unit(x)
            skips.append(x)
            x = self.pool(x)
        bridge = self.bridge(x)
        x, decoded = bridge, []
        for up, unit, skip in zip(self.up, self.dec, reversed(skips)):
            x = unit(torch.cat([up(x), skip], dim=1))
            decoded.append(x)
        pooled = torch.cat([self.gap(t).flatten(1) for t in (skips[-1], bridge, decoded[0])], dim=1)
        return {"logits": self.classifier(pooled), "seg": self.head(x)}


@register(
    "mtl_resunet_p004",
    tasks={"cls", "seg"},
    description="P004 residual U-Net multi-task: residual units of three conv-BN-ReLU joined to their input by "
                "concatenation; seg decoder + GAP(enc4, bridge, dec1) -> dense 256 -> dropout -> cls; 59.7 M parameters",
)
def build_mtl_resunet_p004(
    *,
    in_channels: int,
    n_classes: int,
    filters: Sequence[int] = (64, 128, 256, 512),
    bridge: int = 1024,
    hidden: int = 256,
    dropout: float = 0.5,
    merge: Merge = "concat",
) -> nn.Module:
    """Build P004's multi-task residual U-Net (options: filters (4 encoder widths), bridge width, hidden dense width,
    dropout, and merge: ``"concat"`` (the paper's residual unit) or ``"add"`` (a ResNet-style addition))."""
    return MultiTaskResUNetP004(in_channels, n_classes, filters=filters, bridge=bridge, hidden=hidden, dropout=dropout,
                                merge=merge)


# --------------------------------------------------------------------------- P003: Swin multi-task


class MultiTaskSwin(SwinUNet):
    """P003's "ST Multi-Task Network": ``swin_unet`` with ``swin_tiny``'s class head on the shared Swin-T encoder.

    Segmentation: the five deconvolution blocks of ``swin_unet``. Classification, as ``mtl_resnet50`` on its
    deepest features: global average pooling of the layer-normed stage 4 (1/32) -> dropout -> linear, the
    ``head`` of ``swin_tiny`` (same names, so ``swin_tiny``'s state dict is a part of this network's).
    """

    def __init__(
        self, in_channels: int, n_classes: int, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int],
        window_size: int, drop_path_rate: float, decoder_channels: Sequence[int], dropout: float,
    ) -> None:
        super().__init__(in_channels, embed_dim, depths, num_heads, window_size, drop_path_rate, decoder_channels)
        self.head = nn.Sequential(nn.Dropout(check_dropout("dropout", dropout)), nn.Linear(self.channels[-1], n_classes))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B, n_classes), "seg": (B, 1, H, W)}``; H and W must be multiples of 32."""
        check_input(x, self.in_channels, self.stride, "mtl_swin")
        features = self.features(x)
        return {"logits": self.head(features[-1].mean(dim=(2, 3))), "seg": self.decoder(features)}


@register(
    "mtl_swin",
    tasks={"cls", "seg"},
    description="P003 Swin-T multi-task: swin_unet (seg) + swin_tiny's pooled linear head (cls) on one Swin-T "
                "encoder; 31.2 M parameters",
    encoder=SWIN,
)
def build_mtl_swin(
    *,
    in_channels: int,
    n_classes: int,
    embed_dim: int = EMBED_DIM,
    depths: Sequence[int] = DEPTHS,
    num_heads: Sequence[int] = NUM_HEADS,
    window_size: int = WINDOW_SIZE,
    drop_path_rate: float = 0.2,
    decoder_channels: Sequence[int] = DECODER_CHANNELS,
    dropout: float = 0.0,
) -> nn.Module:
    """Build the Swin-T multi-task network (options as swin_unet, plus the class head's dropout as swin_tiny)."""
    return MultiTaskSwin(in_channels, n_classes, embed_dim, depths, num_heads, window_size, drop_path_rate,
                         decoder_channels, dropout)
