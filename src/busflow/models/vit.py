"""Vision Transformer (task ``cls``).

* ``vit``              ViT-B/16 (Dosovitskiy et al., 2021), MONAI ``ViT``.
"""

from __future__ import annotations

import torch
from monai.networks.nets import ViT
from torch import nn

from busflow.models.blocks import check_dropout
from busflow.models.layouts import VIT
from busflow.models.registry import register


class ViTClassifier(nn.Module):
    """Vision Transformer (Dosovitskiy et al., 2021) via MONAI ``ViT(classification=True)``: 16x16 patch
    embedding with learnable position embeddings, class token, pre-norm transformer encoder and a linear
    head on the class token (no Tanh post-activation, so the outputs are raw logits)."""

    patch_size = 16

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        img_size: int,
        hidden_size: int,
        mlp_dim: int,
        num_layers: int,
        num_heads: int,
        dropout_rate: float,
    ) -> None:
        super().__init__()
        img_size = int(img_size)
        if img_size < self.patch_size or img_size % self.patch_size:
            raise ValueError(f"vit img_size must be a positive multiple of the patch size {self.patch_size}, got {img_size}")
        if int(hidden_size) % int(num_heads):
            raise ValueError(f"vit hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        self.img_size = img_size
        self.net = ViT(
            in_channels=in_channels,
            img_size=img_size,
            patch_size=self.patch_size,
            hidden_size=int(hidden_size),
            mlp_dim=int(mlp_dim),
            num_layers=int(num_layers),
            num_heads=int(num_heads),
            proj_type="conv",
            pos_embed_type="learnable",
            classification=True,
            num_classes=n_classes,
            dropout_rate=check_dropout("dropout_rate", dropout_rate),
            spatial_dims=2,
            post_activation=None,  # MONAI's default Tanh would squash the logits
            qkv_bias=True,  # as in the original ViT
        )
        # MONAI builds a LayerNorm for cross-attention even without it; drop the unused (never-trained)
        # parameters so the optimiser, parameter counts and gradient checks see only the real ViT.
        for block in self.net.blocks:
            if not block.with_cross_attention:
                block.norm_cross_attn = nn.Identity()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B, n_classes)}``; the input must be ``img_size`` x ``img_size``."""
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(
                f"vit was built for {self.img_size}x{self.img_size} inputs (option img_size={self.img_size}) "
                f"but got {x.shape[-2]}x{x.shape[-1]}; resize the images or set img_size to the input size"
            )
        logits, _hidden_states = self.net(x)
        return {"logits": logits}


@register("vit", tasks={"cls"}, description="Vision Transformer classifier, patch 16, ViT-Base defaults (MONAI ViT)", encoder=VIT)
def build_vit(
    *,
    in_channels: int,
    n_classes: int,
    img_size: int = 224,
    hidden_size: int = 768,
    mlp_dim: int = 3072,
    num_layers: int = 12,
    num_heads: int = 12,
    dropout_rate: float = 0.1,
) -> nn.Module:
    """Build ViT-B/16 by default (Dosovitskiy et al., 2021). ``img_size`` fixes the square input size
    (multiple of 16; forward rejects other sizes); ``dropout_rate`` (0.1 as in the paper's from-scratch
    ImageNet training) applies to embeddings, attention output and MLP."""
    return ViTClassifier(in_channels, n_classes, img_size, hidden_size, mlp_dim, num_layers, num_heads, dropout_rate)
