"""Swin Transformer family: P003's Swin-T classifier and Swin-T U-Net, on one Swin-T encoder.

* ``swin_tiny``        P003's Swin-T (Liu et al., 2021), MONAI ``SwinTransformer`` + LN/GAP/linear head (task ``cls``).
* ``swin_unet``        P003's "U-Net with ST": the Swin-T encoder + ``unet_resnet50``'s 5 deconvolution blocks (task ``seg``).

:class:`SwinTEncoder` is also the shared encoder of ``multitask``'s ``mtl_swin``: all three networks hold it under
the same parameter names (``backbone.*``, ``norm.*``), so one Swin-T checkpoint (``layouts.SWIN``) fits each.
Parameter counts in the descriptions are at 1 input channel and 2 classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

from busflow.models.blocks import check_dropout, check_input
from busflow.models.layouts import SWIN
from busflow.models.registry import register
from busflow.models.resnet import UNetDecoder

# Swin-T (Liu et al., 2021, Table 1): the defaults of every P003 Swin network.
EMBED_DIM, DEPTHS, NUM_HEADS, WINDOW_SIZE = 96, (2, 2, 6, 2), (3, 6, 12, 24), 7
DECODER_CHANNELS = (256, 128, 64, 32, 16)  # unet_resnet50's: only the encoder differs between the two U-Nets

# --------------------------------------------------------------------------- the shared Swin-T encoder


class SwinTEncoder(nn.Module):
    """Swin-T encoder (Liu et al., 2021) as MONAI's ``SwinTransformer``: 4x4 patch embedding with LayerNorm,
    four shifted-window stages with patch merging between them (strides 4/8/16/32, ``embed_dim * 2**i``
    channels; MONAI's extra merging after the last stage is removed), then LayerNorm on the deepest features.

    Subclasses (the three P003 Swin networks) add their heads beside ``backbone`` and ``norm``. Windows that
    do not tile a stage (e.g. 7 on the 64x64 tokens of a 256 px image) are zero-padded by MONAI's blocks, as in
    the reference implementation, so any side divisible by 32 works.
    """

    patch_size = 4

    def __init__(
        self, in_channels: int, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], window_size: int,
        drop_path_rate: float,
    ) -> None:
        super().__init__()
        depths, num_heads = tuple(int(d) for d in depths), tuple(int(h) for h in num_heads)
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"swin 'depths' and 'num_heads' need 4 values (MONAI has 4 stages), got {depths}, {num_heads}")
        self.channels = [int(embed_dim) * 2**i for i in range(len(depths))]
        for i, heads in enumerate(num_heads):
            if self.channels[i] % heads:
                raise ValueError(f"swin stage {i}: width embed_dim*2**{i}={self.channels[i]} not divisible by {heads} heads")
        self.in_channels = in_channels
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
        self.stride = self.patch_size * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.channels[-1])

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at strides 4, 8, 16, 32 (``self.channels``), shallow -> deep.

        The three shallow ones are the inputs of stages 1-3 (the patch embedding, then stages 1 and 2 after their
        patch merging), as Swin-Unet (Cao et al., 2022) takes its skips; the deepest is stage 4, layer-normed.
        """
        x0, x1, x2, _, x4 = self.backbone(x, normalize=False)
        deepest = self.norm(x4.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return [x0, x1, x2, deepest]


# --------------------------------------------------------------------------- P003: Swin-Tiny classifier


class SwinClassifier(SwinTEncoder):
    """P003's Swin-T classifier: :class:`SwinTEncoder`, global average pooling, dropout, linear head."""

    def __init__(
        self, in_channels: int, n_classes: int, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int],
        window_size: int, drop_path_rate: float, dropout: float,
    ) -> None:
        super().__init__(in_channels, embed_dim, depths, num_heads, window_size, drop_path_rate)
        self.head = nn.Sequential(nn.Dropout(check_dropout("dropout", dropout)), nn.Linear(self.channels[-1], n_classes))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B, n_classes)}``; H and W must be divisible by 32 (total stride)."""
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"swin_tiny needs input height and width divisible by {self.stride} (patch 4 x 3 patch mergings), "
                f"got {h}x{w}; resize or pad the images (e.g. 224x224 or 256x256)"
            )
        return {"logits": self.head(self.features(x)[-1].mean(dim=(2, 3)))}


@register("swin_tiny", tasks={"cls"},
          description="P003 Swin-T classifier (MONAI SwinTransformer + LN/GAP/linear); 27.5 M parameters", encoder=SWIN)
def build_swin_tiny(
    *,
    in_channels: int,
    n_classes: int,
    embed_dim: int = EMBED_DIM,
    depths: Sequence[int] = DEPTHS,
    num_heads: Sequence[int] = NUM_HEADS,
    window_size: int = WINDOW_SIZE,
    drop_path_rate: float = 0.2,
    dropout: float = 0.0,
) -> nn.Module:
    """Build P003's Swin-T (Liu et al., 2021): ``embed_dim`` 96, ``depths`` (2,2,6,2), ``num_heads`` (3,6,12,24),
    window 7, patch 4; ``drop_path_rate`` is the stochastic-depth rate (0.2 for Swin-T), ``dropout`` the
    rate before the linear head. Inputs must have sides divisible by 32."""
    return SwinClassifier(in_channels, n_classes, embed_dim, depths, num_heads, window_size, drop_path_rate, dropout)


# --------------------------------------------------------------------------- P003: Swin-T U-Net


class SwinUNet(SwinTEncoder):
    """P003's "U-Net with ST": "the five convolutional blocks are replaced by ST blocks" (patch embedding and the
    four Swin-T stages), the decoder stays ``unet_resnet50``'s: five deconvolution blocks from 1/32 back to full
    resolution, with skips from the patch embedding (1/4) and stages 1-2 (1/8, 1/16); the last two blocks
    (1/4 -> 1/2 -> 1) have no encoder feature to join."""

    def __init__(
        self, in_channels: int, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], window_size: int,
        drop_path_rate: float, decoder_channels: Sequence[int],
    ) -> None:
        super().__init__(in_channels, embed_dim, depths, num_heads, window_size, drop_path_rate)
        self.decoder = UNetDecoder(self.channels, decoder_channels, "deconv", shallowest_stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"seg": (B, 1, H, W)}``; H and W must be multiples of 32."""
        check_input(x, self.in_channels, self.stride, "swin_unet")
        return {"seg": self.decoder(self.features(x))}


@register("swin_unet", tasks={"seg"},
          description="P003 U-Net with Swin-T: swin_tiny's encoder + unet_resnet50's 5 deconvolution blocks; "
                      "31.2 M parameters", encoder=SWIN)
def build_swin_unet(
    *,
    in_channels: int,
    n_classes: int,  # unused: the lesion mask is binary
    embed_dim: int = EMBED_DIM,
    depths: Sequence[int] = DEPTHS,
    num_heads: Sequence[int] = NUM_HEADS,
    window_size: int = WINDOW_SIZE,
    drop_path_rate: float = 0.2,
    decoder_channels: Sequence[int] = DECODER_CHANNELS,
) -> nn.Module:
    """Build the Swin-T U-Net (options: the encoder's as swin_tiny, decoder_channels of the 5 deconvolution blocks)."""
    return SwinUNet(in_channels, embed_dim, depths, num_heads, window_size, drop_path_rate, decoder_channels)
