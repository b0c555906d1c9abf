"""Classifiers used by the source papers, as registry entries (task ``cls``).

Every network maps a ``(B, C, H, W)`` image batch to ``{"logits": (B, n_classes)}``. Weights are
randomly initialised (no pretrained downloads). Paper-specific architectures:

* ``custom_cnn``    - P000 (Jimenez & Xu) single-task CNN: conv-BN-ReLU-maxpool stack + dense head.
* ``vgg16/vgg19``   - VGG (Simonyan & Zisserman, 2015), configs "D"/"E", own torch modules.
* ``efficientnet_b0`` - EfficientNet (Tan & Le, 2019), MONAI ``EfficientNetBN``.
* ``densenet121/201`` - DenseNet (Huang et al., 2017), MONAI ``DenseNet121``/``DenseNet201``.
* ``vit``           - ViT-B/16 (Dosovitskiy et al., 2021), MONAI ``ViT``.
* ``swin_tiny``     - P003's Swin-T (Liu et al., 2021), MONAI ``SwinTransformer`` + LN/GAP/linear head.
* ``mobilenet_v2``  - P004 comparator MobileNetV2 (Sandler et al., 2018), own torch modules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.networks.nets import DenseNet121, DenseNet201, EfficientNetBN, ViT
from monai.networks.nets.efficientnet import MBConvBlock
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

from busflow.models.registry import register


class LogitsClassifier(nn.Module):
    """Wrap a network returning a ``(B, n_classes)`` tensor so that forward returns ``{"logits": ...}``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B, n_classes)}``."""
        return {"logits": self.net(x)}


def _check_dropout(name: str, p: float) -> float:
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p}")
    return float(p)


# --------------------------------------------------------------------------- P000 custom CNN


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
            nn.Dropout(_check_dropout("dropout", dropout)),
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


# --------------------------------------------------------------------------- VGG

# Simonyan & Zisserman (2015) Table 1: ints are 3x3 conv output channels, "M" is a 2x2 max-pool.
VGG_CONFIGS: dict[str, list[int | str]] = {
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG network: 3x3 conv(-BN)-ReLU stacks with max-pools, adaptive average pool to 7x7, and the classic
    ``Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear`` classifier (torchvision layout and initialisation)."""

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        config: Sequence[int | str],
        batch_norm: bool = False,
        width_factor: float = 1.0,
        classifier_width: int = 4096,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if not float(width_factor) > 0:
            raise ValueError(f"width_factor must be > 0, got {width_factor}")
        if int(classifier_width) < 1:
            raise ValueError(f"classifier_width must be >= 1, got {classifier_width}")
        dropout = _check_dropout("dropout", dropout)
        layers: list[nn.Module] = []
        prev = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            c = max(1, round(int(v) * float(width_factor)))
            layers.append(nn.Conv2d(prev, c, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.ReLU(inplace=True))
            prev = c
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        width = int(classifier_width)
        self.classifier = nn.Sequential(
            nn.Linear(prev * 7 * 7, width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(width, width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(width, n_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B, n_classes)}``."""
        return {"logits": self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))}


def _vgg_builder(config: str) -> Callable[..., nn.Module]:
    """A builder of VGG config ``config`` ("D" = VGG-16, "E" = VGG-19, Simonyan & Zisserman, 2015)."""

    def build(
        *,
        in_channels: int,
        n_classes: int,
        batch_norm: bool = False,
        width_factor: float = 1.0,
        classifier_width: int = 4096,
        dropout: float = 0.5,
    ) -> nn.Module:
        """``width_factor`` scales every conv width (1.0 = 64..512), ``classifier_width`` the two hidden dense
        layers (4096); ``batch_norm`` adds BN after every conv."""
        return VGG(in_channels, n_classes, VGG_CONFIGS[config], batch_norm=bool(batch_norm), width_factor=width_factor,
                   classifier_width=classifier_width, dropout=dropout)

    return build


register("vgg16", tasks={"cls"}, description="VGG-16 (config D) classifier, optional batch norm")(_vgg_builder("D"))
register("vgg19", tasks={"cls"}, description="VGG-19 (config E) classifier, optional batch norm")(_vgg_builder("E"))


# --------------------------------------------------------------------------- EfficientNet

EFFICIENTNET_VARIANTS = tuple(f"efficientnet-b{i}" for i in range(8))


@register("efficientnet_b0", tasks={"cls"}, description="EfficientNet-B0 classifier (MONAI EfficientNetBN, no pretraining)")
def build_efficientnet_b0(
    *,
    in_channels: int,
    n_classes: int,
    model_name: str = "efficientnet-b0",
    dropout: float = 0.2,
    drop_connect_rate: float = 0.2,
) -> nn.Module:
    """Build EfficientNet (Tan & Le, 2019) via MONAI ``EfficientNetBN``, randomly initialised.

    ``model_name`` picks the compound-scaled variant (``efficientnet-b0`` .. ``-b7``); ``dropout`` is the
    rate before the final linear layer (B0 uses 0.2; MONAI's per-variant value is overridden) and
    ``drop_connect_rate`` the stochastic-depth rate of the last MBConv block (linearly scaled per block).
    """
    if model_name not in EFFICIENTNET_VARIANTS:
        raise ValueError(f"efficientnet model_name must be one of {', '.join(EFFICIENTNET_VARIANTS)}, got {model_name!r}")
    drop_connect_rate = _check_dropout("drop_connect_rate", drop_connect_rate)
    net = EfficientNetBN(model_name, pretrained=False, spatial_dims=2, in_channels=in_channels, num_classes=n_classes)
    net._dropout.p = _check_dropout("dropout", dropout)
    # MONAI gives block i the rate base * i / n_blocks with base = net.drop_connect_rate; rescale to ours.
    base = float(net.drop_connect_rate)
    for m in net.modules():
        if isinstance(m, MBConvBlock) and m.drop_connect_rate:
            m.drop_connect_rate = m.drop_connect_rate * drop_connect_rate / base
    net.drop_connect_rate = drop_connect_rate
    return LogitsClassifier(net)


# --------------------------------------------------------------------------- DenseNet


def _build_densenet(net_cls: type[nn.Module], *, in_channels: int, n_classes: int, dropout_prob: float) -> nn.Module:
    net = net_cls(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=n_classes,
        dropout_prob=_check_dropout("dropout_prob", dropout_prob),
    )
    return LogitsClassifier(net)


@register("densenet121", tasks={"cls"}, description="DenseNet-121 classifier (MONAI DenseNet121)")
def build_densenet121(*, in_channels: int, n_classes: int, dropout_prob: float = 0.0) -> nn.Module:
    """Build DenseNet-121 (Huang et al., 2017; blocks 6-12-24-16, growth 32); ``dropout_prob`` is applied
    after every dense layer (MONAI uses channel-wise ``Dropout2d`` there)."""
    return _build_densenet(DenseNet121, in_channels=in_channels, n_classes=n_classes, dropout_prob=dropout_prob)


@register("densenet201", tasks={"cls"}, description="DenseNet-201 classifier (MONAI DenseNet201)")
def build_densenet201(*, in_channels: int, n_classes: int, dropout_prob: float = 0.0) -> nn.Module:
    """Build DenseNet-201 (Huang et al., 2017; blocks 6-12-48-32, growth 32); options as for ``densenet121``."""
    return _build_densenet(DenseNet201, in_channels=in_channels, n_classes=n_classes, dropout_prob=dropout_prob)


# --------------------------------------------------------------------------- ViT


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
            dropout_rate=_check_dropout("dropout_rate", dropout_rate),
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


@register("vit", tasks={"cls"}, description="Vision Transformer classifier, patch 16, ViT-Base defaults (MONAI ViT)")
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


# --------------------------------------------------------------------------- Swin


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
            drop_path_rate=_check_dropout("drop_path_rate", drop_path_rate),
            patch_norm=True,  # Swin-T normalises the patch embedding
            spatial_dims=2,
        )
        # MONAI merges patches after every stage (built for SwinUNETR's extra bottleneck); Swin-T does not
        # merge after the last one.
        self.backbone.layers4[0].downsample = None
        num_features = int(embed_dim) * 2 ** (len(depths) - 1)
        self.stride = self.patch_size * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(num_features)
        self.head = nn.Sequential(nn.Dropout(_check_dropout("dropout", dropout)), nn.Linear(num_features, n_classes))

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


@register("swin_tiny", tasks={"cls"}, description="P003 Swin-Tiny classifier (MONAI SwinTransformer + LN/GAP/linear)")
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


# --------------------------------------------------------------------------- MobileNetV2


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without going below 90 % of ``v`` (MobileNet rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv_bn_relu6(in_c: int, out_c: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_c, out_c, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_c),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion, 3x3 depthwise, linear 1x1 projection; identity skip when shapes match."""

    def __init__(self, in_c: int, out_c: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_c * expand_ratio))
        self.use_residual = stride == 1 and in_c == out_c
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(in_c, hidden, kernel=1))
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_c, 1, bias=False),
            nn.BatchNorm2d(out_c),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al., 2018; torchvision layout and initialisation), a P004 comparator."""

    # (expansion t, output channels c, repeats n, first stride s), Table 2 of the paper.
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, in_channels: int, n_classes: int, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        if not float(width_mult) > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        prev = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn_relu6(in_channels, prev, stride=2)]
        for t, c, n, s in self.SETTINGS:
            out = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(prev, out, s if i == 0 else 1, t))
                prev = out
        layers.append(_conv_bn_relu6(prev, last, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(_check_dropout("dropout", dropout)), nn.Linear(last, n_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B, n_classes)}``."""
        return {"logits": self.classifier(self.features(x).mean(dim=(2, 3)))}


@register("mobilenet_v2", tasks={"cls"}, description="P004 comparator MobileNetV2 classifier (inverted residuals)")
def build_mobilenet_v2(*, in_channels: int, n_classes: int, width_mult: float = 1.0, dropout: float = 0.2) -> nn.Module:
    """Build MobileNetV2 (Sandler et al., 2018) for P004's comparison; ``width_mult`` scales channel counts
    (rounded to multiples of 8), ``dropout`` precedes the linear head."""
    return MobileNetV2(in_channels, n_classes, width_mult=width_mult, dropout=dropout)
