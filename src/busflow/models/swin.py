"""Swin Transformer family: the Swin-T classifier and the Swin U-Net.

* ``swin_tiny``        P003's Swin-T (Liu et al., 2021), MONAI ``SwinTransformer`` + LN/GAP/linear head (task ``cls``).
* ``swin_unet``        P003: Swin-U-Net, realised as MONAI ``SwinUNETR`` (Hatamizadeh et al., 2022) in 2-D (task ``seg``).

``swin_unetr`` also builds the shared network of ``multitask``'s ``mtl_swin``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

from busflow.models.blocks import check_dropout, check_input, positive_ints
from busflow.models.layouts import SWIN
from busflow.models.registry import register

# --------------------------------------------------------------------------- P003: Swin-Tiny classifier


class SwinClassifier(nn.Module):
    """Swin Transformer classifier (Liu et al., 2021) for P003's Swin-Tiny.

    MONAI's ``SwinTransformer`` (2-D, 4x4 patch embedding with LayerNorm, shifted-window stages) with
    its extra patch merging after the last stage removed, so the stages are at strides 4/8/16/32 with
    ``embed_dim * 2**i`` channels as in Swin-T; then LayerNorm, global average pooling and a linear head.
    """

    patch_size = 4

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        embed_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        window_size: int,
        drop_path_rate: float,
        dropout: float,
    ) -> None:
        super().__init__()
        depths, num_heads = tuple(int(d) for d in depths), tuple(int(h) for h in num_heads)
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"swin 'depths' and 'num_heads' need 4 values (MONAI has 4 stages), got {depths}, {num_heads}")
        for i, heads in enumerate(num_heads):
            if (int(embed_dim) * 2**i) % heads:
                raise ValueError(f"swin stage {i}: width embed_dim*2**{i}={int(embed_dim) * 2**i} not divisible by {heads} heads")
        self.backbone = SwinTransformer(
            in_chans=in_channels,
            embed_dim=int(embed_dim),
            window_size=(int(window_size),) * 2,
            patch_size=(self.patch_size,) * 2,
            depths=depths,
            num_heads=num_heads,
            mlp_ratio=4.0,
            qkv_bias=True,
            drop_path_rate=check_dropout("drop_path_rate", drop_path_rate),
            patch_norm=True,  # Swin-T normalises the patch embedding
            spatial_dims=2,
        )
        # MONAI merges patches after every stage (built for SwinUNETR's extra bottleneck); Swin-T does not
        # merge after the last one.
        self.backbone.layers4[0].downsample = None
        num_features = int(embed_dim) * 2 ** (len(depths) - 1)
        self.stride = self.patch_size * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(num_features)
        self.head = nn.Sequential(nn.Dropout(check_dropout("dropout", dropout)), nn.Linear(num_features, n_classes))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B, n_classes)}``; H and W must be divisible by 32 (total stride)."""
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"swin_tiny needs input height and width divisible by {self.stride} (patch 4 x 3 patch mergings), "
                f"got {h}x{w}; resize or pad the images (e.g. 224x224 or 256x256)"
            )
        feats = self.backbone(x, normalize=False)[-1]  # (B, C, H/32, W/32)
        feats = self.norm(feats.flatten(2).transpose(1, 2))  # (B, HW, C)
        return {"logits": self.head(feats.mean(dim=1))}


@register("swin_tiny", tasks={"cls"}, description="P003 Swin-Tiny classifier (MONAI SwinTransformer + LN/GAP/linear)",
          encoder=SWIN)
def build_swin_tiny(
    *,
    in_channels: int,
    n_classes: int,
    embed_dim: int = 96,
    depths: Sequence[int] = (2, 2, 6, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int = 7,
    drop_path_rate: float = 0.2,
    dropout: float = 0.0,
) -> nn.Module:
    """Build P003's Swin-T (Liu et al., 2021): ``embed_dim`` 96, ``depths`` (2,2,6,2), ``num_heads`` (3,6,12,24),
    window 7, patch 4; ``drop_path_rate`` is the stochastic-depth rate (0.2 for Swin-T), ``dropout`` the
    rate before the linear head. Inputs must have sides divisible by 32."""
    return SwinClassifier(in_channels, n_classes, embed_dim, depths, num_heads, window_size, drop_path_rate, dropout)


# --------------------------------------------------------------------------- P003: Swin U-Net


def swin_unetr(
    in_channels: int, feature_size: int, depths: Sequence[int], num_heads: Sequence[int], window_size: int,
    drop_path_rate: float,
) -> SwinUNETR:
    if int(feature_size) < 12 or int(feature_size) % 12:
        raise ValueError(f"feature_size must be a positive multiple of 12 (SwinUNETR), got {feature_size}")
    depths = positive_ints("depths", depths, 4)
    num_heads = positive_ints("num_heads", num_heads, 4)
    return SwinUNETR(
        in_channels=in_channels, out_channels=1, feature_size=int(feature_size), depths=depths,
        num_heads=num_heads, window_size=int(window_size), dropout_path_rate=float(drop_path_rate), spatial_dims=2,
    )


class SwinUNet(nn.Module):
    """P003's Swin-U-Net, realised as MONAI ``SwinUNETR`` in 2-D (Hatamizadeh et al., 2022).

    A Swin-Transformer encoder (patch 2, four stages of shifted-window attention, patch merging)
    feeding a convolutional U-shaped decoder with skips; input sides must be multiples of 32.
    """

    def __init__(
        self, in_channels: int, feature_size: int = 48, depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.net = swin_unetr(in_channels, feature_size, depths, num_heads, window_size, drop_path_rate)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"seg": (B, 1, H, W)}``; H and W must be multiples of 32."""
        check_input(x, self.in_channels, 32, "swin_unet")
        return {"seg": self.net(x)}


@register("swin_unet", tasks={"seg"}, description="P003 Swin-U-Net (MONAI SwinUNETR, 2-D, feature size 48)")
def build_swin_unet(
    *,
    in_channels: int,
    n_classes: int,  # unused: the lesion mask is binary
    feature_size: int = 48,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int = 7,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """Build the Swin U-Net (options: feature_size (multiple of 12), depths, num_heads, window_size, drop_path_rate)."""
    return SwinUNet(in_channels, feature_size, depths, num_heads, window_size, drop_path_rate)
