"""Feature pyramid network (task ``seg``).

* ``fpn``              P004 comparator: FPN (Lin et al., 2017) decoder on ResNet-50, merged at 1/4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from busflow.models.blocks import check_input, conv_bn_act
from busflow.models.layouts import resnet_encoder_layout
from busflow.models.registry import register
from busflow.models.resnet import ResNetEncoder, make_resnet50


class FPNSegmenter(nn.Module):
    """FPN (Lin et al., 2017) segmentation decoder on a ResNet-50 encoder (P004's comparator).

    Lateral 1x1 convs on C2..C5 (strides 4..32) to ``pyramid_channels``; top-down pathway adds the
    nearest-upsampled coarser level; a 3x3 conv smooths each P2..P5. Semantic head as in panoptic
    FPN (Kirillov et al., 2019): each P_k goes through 3x3 conv + BN + ReLU stages, upsampled x2 after
    each until stride 4; the four maps are summed, dropout, 1x1 conv, bilinear upsampling to the input.
    """

    def __init__(
        self,
        in_channels: int,
        widen_factor: float = 1.0,
        pyramid_channels: int = 256,
        segmentation_channels: int = 128,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.encoder = ResNetEncoder(make_resnet50(in_channels, widen_factor, feed_forward=False))
        enc = self.encoder.out_channels[1:]  # C2..C5
        pc, sc = int(pyramid_channels), int(segmentation_channels)
        self.lateral = nn.ModuleList(nn.Conv2d(c, pc, 1) for c in enc)
        self.smooth = nn.ModuleList(nn.Conv2d(pc, pc, 3, padding=1) for _ in enc)
        # Level k (0 = P2 at stride 4) needs k x2-upsamplings to reach stride 4 (P2 still gets one conv).
        self.seg_blocks = nn.ModuleList(
            nn.ModuleList(conv_bn_act(pc if j == 0 else sc, sc) for j in range(max(1, k))) for k in range(len(enc))
        )
        self.dropout = nn.Dropout2d(dropout)
        self.head = nn.Conv2d(sc, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"seg": (B, 1, H, W)}``; H and W must be multiples of 32."""
        check_input(x, self.in_channels, 32, "fpn")
        size = x.shape[-2:]
        c = self.encoder(x)[1:]
        laterals = [lat(f) for lat, f in zip(self.lateral, c)]
        for i in range(len(laterals) - 2, -1, -1):  # top-down
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], size=laterals[i].shape[-2:], mode="nearest")
        pyramid = [sm(p) for sm, p in zip(self.smooth, laterals)]
        merged = 0
        for k, (p, blocks) in enumerate(zip(pyramid, self.seg_blocks)):
            for block in blocks:
                p = block(p)
                if k > 0:
                    p = F.interpolate(p, scale_factor=2.0, mode="bilinear", align_corners=False)
            merged = merged + p
        y = self.head(self.dropout(merged))
        return {"seg": F.interpolate(y, size=size, mode="bilinear", align_corners=False)}


@register("fpn", tasks={"seg"}, description="P004 comparator: FPN decoder (top-down + 3x3 smoothing, merged at 1/4) on ResNet-50",
          encoder=resnet_encoder_layout("encoder"))
def build_fpn(
    *,
    in_channels: int,
    n_classes: int,  # unused: the lesion mask is binary
    widen_factor: float = 1.0,
    pyramid_channels: int = 256,
    segmentation_channels: int = 128,
    dropout: float = 0.2,
) -> nn.Module:
    """Build the FPN segmenter (options: widen_factor (ResNet-50), pyramid_channels, segmentation_channels, dropout)."""
    return FPNSegmenter(
        in_channels, widen_factor=widen_factor, pyramid_channels=pyramid_channels,
        segmentation_channels=segmentation_channels, dropout=dropout,
    )
