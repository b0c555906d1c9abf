"""Segmentation and multi-task networks of the source papers (P001-P004), as registry entries.

Every segmenter returns ``{"seg": (B, 1, H, W) lesion logits}`` at the input resolution; the
multi-task networks add ``"logits": (B, n_classes)``. Inputs are (B, C, H, W) tensors; each network
checks the channel count and the divisibility its down-sampling path needs and raises a ValueError
naming the architecture otherwise.

Paper mapping:

* ``unet_p002``        P002 Macrì et al.: plain 4-level U-Net (two 3x3 conv + ReLU per block).
* ``unet_vgg19``       P001: modified U-Net, VGG-19 encoder, transposed-conv decoder with Leaky ReLU.
* ``unetplusplus``     UNet++ (Zhou et al., 2018), MONAI ``BasicUNetPlusPlus``.
* ``deeplabv3``        P001: DeepLabV3-ResNet101 (Chen et al., 2017), ASPP on a dilated ResNet.
* ``deeplabv3plus``    DeepLabV3+ (Chen et al., 2018): DeepLabV3 + low-level-feature decoder.
* ``fpn``              P004 comparator: FPN (Lin et al., 2017) decoder on ResNet-50, merged at 1/4.
* ``unet_resnet50``    P003: U-Net with a ResNet-50 encoder (``mtl_resnet50`` without its class head).
* ``swin_unet``        P003: Swin-U-Net, realised as MONAI ``SwinUNETR`` (Hatamizadeh et al., 2022) in 2-D.
* ``attention_unet``   Attention U-Net (Oktay et al., 2018), MONAI ``AttentionUnet``.
* ``mtl_resunet_p004`` P004: residual U-Net multi-task network (seg + cls from encoder/bridge/decoder).
* ``mtl_swin``         P003: Swin multi-task network (shared SwinUNETR encoder, pooled linear class head).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import AttentionUnet, BasicUNetPlusPlus, ResNet, SwinUNETR, resnet50, resnet101
from torch import nn

from busflow.models.classifiers import make_resnet50
from busflow.models.multitask import ResNetEncoder, UNetDecoder
from busflow.models.registry import register


# --------------------------------------------------------------------------- helpers


def check_input(x: torch.Tensor, in_channels: int, multiple: int, arch: str) -> None:
    """Raise a ValueError unless ``x`` is (B, in_channels, H, W) with H and W multiples of ``multiple``."""
    if x.ndim != 4:
        raise ValueError(f"{arch}: expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(f"{arch}: expected {in_channels} input channel(s), got {x.shape[1]} (shape {tuple(x.shape)})")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h % multiple or w % multiple:
        raise ValueError(
            f"{arch}: input height and width must be multiples of {multiple} "
            f"(its down-sampling path halves them {multiple.bit_length() - 1} times), got {h}x{w}"
        )


def _scaled(channels: int, factor: float) -> int:
    """``channels * factor`` rounded, at least 1."""
    return max(1, int(round(channels * factor)))


def _check_factor(name: str, value: float, base: int) -> None:
    if not value > 0 or base * value < 1:
        raise ValueError(f"{name} must be > 0 and leave at least one channel (>= 1/{base}), got {value}")


def _positive_ints(name: str, values: Sequence[int], length: int | None = None) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    if (length is not None and len(out) != length) or not out or min(out) < 1:
        want = f"{length} positive integers" if length is not None else "positive integers"
        raise ValueError(f"{name} needs {want}, got {list(values)}")
    return out


def conv_bn_act(
    in_ch: int, out_ch: int, *, batch_norm: bool = True, act: nn.Module | None = None, dilation: int = 1
) -> nn.Sequential:
    """3x3 'same' convolution (bias only without BN), optional BatchNorm, activation (ReLU by default)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(act if act is not None else nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def make_resnet(depth: int, in_channels: int, width_factor: float = 1.0) -> ResNet:
    """MONAI 2-D bottleneck ResNet-50/101 with the standard stride-2 7x7 stem, no classifier.

    Same settings as ``classifiers.make_resnet50`` (bias-free projection shortcuts), so depth 50
    here and there have identical parameter counts.
    """
    factories = {50: resnet50, 101: resnet101}
    if depth not in factories:
        raise ValueError(f"backbone_depth must be 50 or 101, got {depth}")
    _check_factor("width_factor", width_factor, 64)
    return factories[depth](
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_stride=2,
        widen_factor=float(width_factor),
        bias_downsample=False,
        feed_forward=False,
    )


# --------------------------------------------------------------------------- P002: plain U-Net


class DoubleConv(nn.Sequential):
    """Two 3x3 'same' convolutions, each followed by (optional BN and) ReLU."""

    def __init__(self, in_ch: int, out_ch: int, batch_norm: bool = False) -> None:
        super().__init__(conv_bn_act(in_ch, out_ch, batch_norm=batch_norm), conv_bn_act(out_ch, out_ch, batch_norm=batch_norm))


class UNetP002(nn.Module):
    """U-Net of P002 (Macrì et al.): 4 encoder blocks, a bottleneck, 4 decoder blocks.

    Encoder block: two 3x3 conv + ReLU ('same' padding), then 2x2 max-pool. Bottleneck: two 3x3 conv
    at ``bottleneck`` filters (1024 = twice the last encoder width, as in Ronneberger et al.; the
    paper lists only the 64..512 encoder filters). Decoder block: 2x2 stride-2 transposed conv to the
    mirrored encoder width, concatenation with the skip, two 3x3 conv + ReLU. A 1x1 conv gives the
    lesion logit. No batch norm unless ``batch_norm``.
    """

    def __init__(
        self,
        in_channels: int,
        filters: Sequence[int] = (64, 128, 256, 512),
        bottleneck: int = 1024,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        filters = _positive_ints("unet_p002 'filters'", filters, 4)
        bottleneck = _positive_ints("unet_p002 'bottleneck'", [bottleneck])[0]
        self.in_channels = in_channels
        self.down = nn.ModuleList()
        ch = in_channels
        for f in filters:
            self.down.append(DoubleConv(ch, f, batch_norm))
            ch = f
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(ch, bottleneck, batch_norm)
        ch = bottleneck
        self.up, self.dec = nn.ModuleList(), nn.ModuleList()
        for f in reversed(filters):
            self.up.append(nn.ConvTranspose2d(ch, f, kernel_size=2, stride=2))
            self.dec.append(DoubleConv(2 * f, f, batch_norm))
            ch = f
        self.head = nn.Conv2d(ch, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"seg": (B, 1, H, W)}``; H and W must be multiples of 16."""
        check_input(x, self.in_channels, 16, "unet_p002")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return {"seg": self.head(x)}


@register("unet_p002", tasks={"seg"}, description="P002 Macrì et al. U-Net: 4+4 blocks of two 3x3 conv+ReLU, 64..512 (+1024 bottleneck)")
def build_unet_p002(
    *,
    in_channels: int,
    n_classes: int,  # unused: the lesion mask is binary
    filters: Sequence[int] = (64, 128, 256, 512),
    bottleneck: int = 1024,
    batch_norm: bool = False,
) -> nn.Module:
    """Build P002's U-Net (options: filters (4 encoder widths), bottleneck width, batch_norm)."""
    return UNetP002(in_channels, filters=filters, bottleneck=bottleneck, batch_norm=batch_norm)


# --------------------------------------------------------------------------- P001: VGG-19 U-Net

# VGG-19 ("configuration E", Simonyan & Zisserman 2015) conv widths per block; a 2x2 max-pool follows each.
VGG19_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)


class VGG19Encoder(nn.Module):
    """VGG-19 convolutional trunk: five blocks of 3x3 conv + (BN +) ReLU, 2x2 max-pool between blocks.

    The fifth max-pool is dropped: block 5 (all 16 conv layers are kept) is the U-Net bridge at 1/16.
    Returns the five block outputs (strides 1, 2, 4, 8, 16).
    """

    def __init__(self, in_channels: int, width_factor: float = 1.0, batch_norm: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.out_channels: list[int] = []
        ch = in_channels
        for widths in VGG19_BLOCKS:
            layers = []
            for w in widths:
                out = _scaled(w, width_factor)
                layers.append(conv_bn_act(ch, out, batch_norm=batch_norm))
                ch = out
            self.blocks.append(nn.Sequential(*layers))
            self.out_channels.append(ch)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else self.pool(x))
            feats.append(x)
        return feats


class UNetVGG19(nn.Module):
    """P001's modified U-Net: VGG-19 encoder, transposed-conv decoder with skips, Leaky ReLU in the decoder.

    Decoder stage: 2x2 stride-2 transposed conv to the skip's width, concatenation with the VGG block
    output at that scale, two 3x3 conv + (BN +) LeakyReLU. Four stages back to full resolution
    (skips from VGG blocks 4, 3, 2, 1), then a 1x1 conv to the lesion logit.
    """

    def __init__(
        self, in_channels: int, width_factor: float = 1.0, batch_norm: bool = True, negative_slope: float = 0.01
    ) -> None:
        super().__init__()
        _check_factor("width_factor", width_factor, 64)
        self.in_channels = in_channels
        self.encoder = VGG19Encoder(in_channels, width_factor, batch_norm)
        enc = self.encoder.out_channels
        self.up, self.dec = nn.ModuleList(), nn.ModuleList()
        ch = enc[-1]
        for skip_ch in reversed(enc[:-1]):
            self.up.append(nn.ConvTranspose2d(ch, skip_ch, kernel_size=2, stride=2))
            self.dec.append(
                nn.Sequential(
                    conv_bn_act(2 * skip_ch, skip_ch, batch_norm=batch_norm, act=nn.LeakyReLU(negative_slope, inplace=True)),
                    conv_bn_act(skip_ch, skip_ch, batch_norm=batch_norm, act=nn.LeakyReLU(negative_slope, inplace=True)),
                )
            )
            ch = skip_ch
        self.head = nn.Conv2d(ch, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"seg": (B, 1, H, W)}``; H and W must be multiples of 16."""
        check_input(x, self.in_channels, 16, "unet_vgg19")
        feats = self.encoder(x)
        x = feats[-1]
        for up, dec, skip in zip(self.up, self.dec, reversed(feats[:-1])):
            x = dec(torch.cat([up(x), skip], dim=1))
        return {"seg": self.head(x)}


@register("unet_vgg19", tasks={"seg"}, description="P001 modified U-Net: VGG-19 encoder, transposed-conv + LeakyReLU decoder")
def build_unet_vgg19(
    *,
    in_channels: int,
    n_classes: int,  # unused: the lesion mask is binary
    width_factor: float = 1.0,
    batch_norm: bool = True,
    negative_slope: float = 0.01,
) -> nn.Module:
    """Build the VGG-19 U-Net (options: width_factor, batch_norm (VGG-19-BN style), decoder LeakyReLU negative_slope)."""
    return UNetVGG19(in_channels, width_factor=width_factor, batch_norm=batch_norm, negative_slope=negative_slope)


# --------------------------------------------------------------------------- UNet++


class UNetPlusPlus(nn.Module):
    """UNet++ (Zhou et al., 2018): nested, densely connected skip pathways (MONAI ``BasicUNetPlusPlus``).

    ``deep_supervision=False`` returns the X^{0,4} head and drops the three unused nested heads
    (they would receive no gradient). ``deep_supervision=True`` returns the mean of the four nested
    heads' logits (the paper's "accurate mode" ensemble), since the ``{"seg": tensor}`` contract
    carries one output; per-head losses would need a training-loop change.
    """

    def __init__(
        self, in_channels: int, features: Sequence[int] = (32, 32, 64, 128, 256, 32), deep_supervision: bool = False
    ) -> None:
        super().__init__()
        features = _positive_ints("unetplusplus 'features'", features, 6)
        self.in_channels = in_channels
        self.deep_supervision = bool(deep_supervision)
        self.net = BasicUNetPlusPlus(
            spatial_dims=2, in_channels=in_channels, out_channels=1, features=features,
            deep_supervision=self.deep_supervision,
        )
        if not self.deep_supervision:
            for name in ("final_conv_0_1", "final_conv_0_2", "final_conv_0_3"):
                setattr(self.net, name, nn.Identity())  # computed-and-discarded in MONAI's forward

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"seg": (B, 1, H, W)}``; H and W must be multiples of 16."""
        check_input(x, self.in_channels, 16, "unetplusplus")
        outputs = self.net(x)
        seg = torch.stack(outputs).mean(0) if self.deep_supervision else outputs[-1]
        return {"seg": seg}


@register("unetplusplus", tasks={"seg"}, description="UNet++ nested U-Net (MONAI BasicUNetPlusPlus), final output")
def build_unetplusplus(
    *,
    in_channels: int,
    n_classes: int,  # unused: the lesion mask is binary
    features: Sequence[int] = (32, 32, 64, 128, 256, 32),
    deep_supervision: bool = False,
) -> nn.Module:
    """Build UNet++ (options: features (6 values as MONAI), deep_supervision (mean of the nested heads))."""
    return UNetPlusPlus(in_channels, features=features, deep_supervision=deep_supervision)


# --------------------------------------------------------------------------- DeepLabV3 / V3+


def dilate_layer(layer: nn.Sequential, dilation: int, previous_dilation: int) -> None:
    """Turn a strided MONAI bottleneck stage into a dilated one (torchvision ``replace_stride_with_dilation``).

    The stage's stride-2 becomes stride 1; its first block keeps the previous dilation, the others
    use ``dilation``. Parameter shapes are unchanged.
    """
    for i, block in enumerate(layer):
        d = previous_dilation if i == 0 else dilation
        block.conv2.stride, block.conv2.dilation, block.conv2.padding = (1, 1), (d, d), (d, d)
        block.stride = 1
        if isinstance(block.downsample, nn.Sequential):
            block.downsample[0].stride = (1, 1)


def dilated_resnet_encoder(depth: int, in_channels: int, width_factor: float, output_stride: int) -> ResNetEncoder:
    """ResNet-50/101 encoder with output stride 16 (layer4 dilated 2) or 8 (layer3 by 2, layer4 by 4)."""
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    resnet = make_resnet(depth, in_channels, width_factor)
    if output_stride == 16:
        dilate_layer(resnet.layer4, dilation=2, previous_dilation=1)
    else:
        dilate_layer(resnet.layer3, dilation=2, previous_dilation=1)
        dilate_layer(resnet.layer4, dilation=4, previous_dilation=2)
    return ResNetEncoder(resnet)


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average pool, 1x1 conv + BN + ReLU, broadcast back to the map size."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).expand(-1, -1, *x.shape[-2:])  # upsampling a 1x1 map is a broadcast


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3): 1x1 conv, three 3x3 atrous convs, image pooling;
    concatenated, projected by 1x1 conv + BN + ReLU, dropout 0.5 (as torchvision)."""

    def __init__(self, in_ch: int, out_ch: int = 256, rates: Sequence[int] = (6, 12, 18)) -> None:
        super().__init__()
        branches: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))
        ]
        branches += [conv_bn_act(in_ch, out_ch, dilation=int(r)) for r in rates]
        branches.append(ASPPPooling(in_ch, out_ch))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Dropout(0.5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class DeepLabV3(nn.Module):
    """DeepLabV3 (Chen et al., 2017) / DeepLabV3+ (Chen et al., 2018) on a dilated bottleneck ResNet.

    V3 head (torchvision's layout): ASPP (rates 6/12/18 at output stride 16, doubled at 8) ->
    3x3 conv + BN + ReLU -> 1x1 conv, bilinearly upsampled to the input size.
    V3+ decoder: ASPP output bilinearly upsampled to stride 4, concatenated with the layer1 features
    reduced by 1x1 conv to 48 channels, two 3x3 conv + BN + ReLU, 1x1 conv, upsampled to the input.
    ``width_factor`` scales the backbone and the head (ASPP 256, low-level 48) channels alike.
    """

    def __init__(
        self,
        in_channels: int,
        plus: bool = False,
        backbone_depth: int = 101,
        width_factor: float = 1.0,
        output_stride: int = 16,
    ) -> None:
        super().__init__()
        self.in_channels, self.plus = in_channels, plus
        self.arch = "deeplabv3plus" if plus else "deeplabv3"
        self.encoder = dilated_resnet_encoder(int(backbone_depth), in_channels, width_factor, int(output_stride))
        head_ch = _scaled(256, width_factor)
        rates = tuple(r * 16 // int(output_stride) for r in (6, 12, 18))
        self.aspp = ASPP(self.encoder.out_channels[-1], head_ch, rates)
        if plus:
            low_ch = _scaled(48, width_factor)
            self.low_level = nn.Sequential(
                nn.Conv2d(self.encoder.out_channels[1], low_ch, 1, bias=False), nn.BatchNorm2d(low_ch), nn.ReLU(inplace=True)
            )
            self.decoder = nn.Sequential(conv_bn_act(head_ch + low_ch, head_ch), conv_bn_act(head_ch, head_ch))
        else:
            self.decoder = conv_bn_act(head_ch, head_ch)
        self.head = nn.Conv2d(head_ch, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"seg": (B, 1, H, W)}`` (any H, W; logits are resized to the input)."""
        check_input(x, self.in_channels, 1, self.arch)
        size = x.shape[-2:]
        feats = self.encoder(x)
        y = self.aspp(feats[-1])
        if self.plus:
            low = self.low_level(feats[1])
            y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
            y = torch.cat([y, low], dim=1)
        y = self.head(self.decoder(y))
        return {"seg": F.interpolate(y, size=size, mode="bilinear", align_corners=False)}


@register("deeplabv3", tasks={"seg"}, description="P001 DeepLabV3: ASPP (6/12/18 + pooling) on a dilated ResNet-101 (OS 16)")
def build_deeplabv3(
    *,
    in_channels: int,
    n_classes: int,  # unused: the lesion mask is binary
    backbone_depth: int = 101,
    width_factor: float = 1.0,
    output_stride: int = 16,
) -> nn.Module:
    """Build DeepLabV3 (options: backbone_depth 50/101, width_factor, output_stride 8/16)."""
    return DeepLabV3(in_channels, plus=False, backbone_depth=backbone_depth, width_factor=width_factor, output_stride=output_stride)


@register("deeplabv3plus", tasks={"seg"}, description="DeepLabV3+: DeepLabV3 ResNet-101 + stride-4 low-level-feature decoder")
def build_deeplabv3plus(
    *,
    in_channels: int,
    n_classes: int,  # unused: the lesion mask is binary
    backbone_depth: int = 101,
    width_factor: float = 1.0,
    output_stride: int = 16,
) -> nn.Module:
    """Build DeepLabV3+ (options: backbone_depth 50/101, width_factor, output_stride 8/16)."""
    return DeepLabV3(in_channels, plus=True, backbone_depth=backbone_depth, width_factor=width_factor, output_stride=output_stride)


# --------------------------------------------------------------------------- FPN


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


@register("fpn", tasks={"seg"}, description="P004 comparator: FPN decoder (top-down + 3x3 smoothing, merged at 1/4) on ResNet-50")
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


# --------------------------------------------------------------------------- P003: ResNet-50 U-Net


class ResNet50UNet(nn.Module):
    """P003's U-Net with a ResNet-50 encoder: ``mtl_resnet50``'s ``ResNetEncoder`` + ``UNetDecoder``, no class head."""

    def __init__(
        self, in_channels: int, widen_factor: float = 1.0, decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.encoder = ResNetEncoder(make_resnet50(in_channels, widen_factor, feed_forward=False))
        self.decoder = UNetDecoder(self.encoder.out_channels, decoder_channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"seg": (B, 1, H, W)}``; H and W must be multiples of 32."""
        check_input(x, self.in_channels, 32, "unet_resnet50")
        return {"seg": self.decoder(self.encoder(x))}


@register("unet_resnet50", tasks={"seg"}, description="P003 U-Net with a ResNet-50 encoder (mtl_resnet50 without the class head)")
def build_unet_resnet50(
    *,
    in_channels: int,
    n_classes: int,  # unused: the lesion mask is binary
    widen_factor: float = 1.0,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
) -> nn.Module:
    """Build the ResNet-50 U-Net (options: widen_factor, decoder_channels, as mtl_resnet50)."""
    return ResNet50UNet(in_channels, widen_factor=widen_factor, decoder_channels=decoder_channels)


# --------------------------------------------------------------------------- P003: Swin U-Net


def _swin_unetr(
    in_channels: int, feature_size: int, depths: Sequence[int], num_heads: Sequence[int], window_size: int,
    drop_path_rate: float,
) -> SwinUNETR:
    if int(feature_size) < 12 or int(feature_size) % 12:
        raise ValueError(f"feature_size must be a positive multiple of 12 (SwinUNETR), got {feature_size}")
    depths = _positive_ints("depths", depths, 4)
    num_heads = _positive_ints("num_heads", num_heads, 4)
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
        self.net = _swin_unetr(in_channels, feature_size, depths, num_heads, window_size, drop_path_rate)

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


# --------------------------------------------------------------------------- Attention U-Net


class AttentionUNet(nn.Module):
    """Attention U-Net (Oktay et al., 2018): additive attention gates on the skips (MONAI ``AttentionUnet``)."""

    def __init__(self, in_channels: int, channels: Sequence[int] = (64, 128, 256, 512, 1024), dropout: float = 0.0) -> None:
        super().__init__()
        channels = _positive_ints("attention_unet 'channels'", channels)
        if len(channels) < 2:
            raise ValueError(f"attention_unet 'channels' needs at least 2 levels, got {list(channels)}")
        self.in_channels = in_channels
        self.multiple = 2 ** (len(channels) - 1)
        self.net = AttentionUnet(
            spatial_dims=2, in_channels=in_channels, out_channels=1, channels=channels,
            strides=(2,) * (len(channels) - 1), dropout=float(dropout),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"seg": (B, 1, H, W)}``; H and W must be multiples of 2**(levels-1)."""
        check_input(x, self.in_channels, self.multiple, "attention_unet")
        return {"seg": self.net(x)}


@register("attention_unet", tasks={"seg"}, description="Attention U-Net (MONAI AttentionUnet), attention-gated skips")
def build_attention_unet(
    *,
    in_channels: int,
    n_classes: int,  # unused: the lesion mask is binary
    channels: Sequence[int] = (64, 128, 256, 512, 1024),
    dropout: float = 0.0,
) -> nn.Module:
    """Build the Attention U-Net (options: channels per level, dropout)."""
    return AttentionUNet(in_channels, channels=channels, dropout=dropout)


# --------------------------------------------------------------------------- P004: residual multi-task U-Net


class ResidualUnit(nn.Module):
    """Residual unit of P004: three 3x3 conv + BN (+ ReLU) with a shortcut, ReLU after the addition.

    The shortcut is the identity when the width is unchanged, else a 1x1 conv + BN projection.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_act(in_ch, out_ch),
            conv_bn_act(out_ch, out_ch),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.shortcut = (
            nn.Identity() if in_ch == out_ch
            else nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class MultiTaskResUNetP004(nn.Module):
    """P004's residual U-Net multi-task network (9 levels: 4 encoder, bridge, 4 decoder residual units).

    Encoder: residual unit then 2x2 max-pool, widths ``filters``; bridge: residual unit at
    ``bridge`` width (1/16); decoder: 2x2 stride-2 transposed conv, concatenation with the skip,
    residual unit; 1x1 conv to the lesion logit. Classification branch: global average pooling of
    encoder stage 4 (the deepest skip), the bridge and decoder stage 1, concatenated ->
    dense ``hidden`` + ReLU -> dropout -> dense n_classes.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        filters: Sequence[int] = (64, 128, 256, 512),
        bridge: int = 1024,
        hidden: int = 256,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        filters = _positive_ints("mtl_resunet_p004 'filters'", filters, 4)
        bridge = _positive_ints("mtl_resunet_p004 'bridge'", [bridge])[0]
        hidden = _positive_ints("mtl_resunet_p004 'hidden'", [hidden])[0]
        self.in_channels = in_channels
        self.down = nn.ModuleList()
        ch = in_channels
        for f in filters:
            self.down.append(ResidualUnit(ch, f))
            ch = f
        self.pool = nn.MaxPool2d(2)
        self.bridge = ResidualUnit(ch, bridge)
        ch = bridge
        self.up, self.dec = nn.ModuleList(), nn.ModuleList()
        for f in reversed(filters):
            self.up.append(nn.ConvTranspose2d(ch, f, kernel_size=2, stride=2))
            self.dec.append(ResidualUnit(2 * f, f))
            ch = f
        self.head = nn.Conv2d(ch, 1, kernel_size=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(filters[-1] + bridge + filters[-1], hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
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
    description="P004 residual U-Net multi-task: seg decoder + GAP(enc4, bridge, dec1) -> dense 256 -> dropout -> cls",
)
def build_mtl_resunet_p004(
    *,
    in_channels: int,
    n_classes: int,
    filters: Sequence[int] = (64, 128, 256, 512),
    bridge: int = 1024,
    hidden: int = 256,
    dropout: float = 0.5,
) -> nn.Module:
    """Build P004's multi-task residual U-Net (options: filters (4 encoder widths), bridge width, hidden dense width, dropout)."""
    return MultiTaskResUNetP004(in_channels, n_classes, filters=filters, bridge=bridge, hidden=hidden, dropout=dropout)


# --------------------------------------------------------------------------- P003: Swin multi-task


class MultiTaskSwin(nn.Module):
    """P003's Swin multi-task network: one SwinUNETR whose Swin encoder is shared by both tasks.

    Segmentation: SwinUNETR's convolutional decoder (as ``swin_unet``). Classification: global
    average pooling of the deepest Swin stage (16 x feature_size channels at 1/32) -> dropout ->
    linear. The forward mirrors ``SwinUNETR.forward`` so the encoder runs once.
    """

    def __init__(
        self, in_channels: int, n_classes: int, feature_size: int = 48, depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, drop_path_rate: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.net = _swin_unetr(in_channels, feature_size, depths, num_heads, window_size, drop_path_rate)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(16 * int(feature_size), n_classes)
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B, n_classes), "seg": (B, 1, H, W)}``; H and W must be multiples of 32."""
        check_input(x, self.in_channels, 32, "mtl_swin")
        n = self.net
        hidden = n.swinViT(x, n.normalize)
        enc0 = n.encoder1(x)
        enc1 = n.encoder2(hidden[0])
        enc2 = n.encoder3(hidden[1])
        enc3 = n.encoder4(hidden[2])
        dec4 = n.encoder10(hidden[4])
        dec3 = n.decoder5(dec4, hidden[3])
        dec2 = n.decoder4(dec3, enc3)
        dec1 = n.decoder3(dec2, enc2)
        dec0 = n.decoder2(dec1, enc1)
        seg = n.out(n.decoder1(dec0, enc0))
        return {"logits": self.classifier(hidden[4]), "seg": seg}


@register(
    "mtl_swin",
    tasks={"cls", "seg"},
    description="P003 Swin multi-task: shared SwinUNETR encoder, its decoder (seg) + pooled deepest features -> linear (cls)",
)
def build_mtl_swin(
    *,
    in_channels: int,
    n_classes: int,
    feature_size: int = 48,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int = 7,
    drop_path_rate: float = 0.0,
    dropout: float = 0.0,
) -> nn.Module:
    """Build the Swin multi-task network (options as swin_unet, plus classifier dropout)."""
    return MultiTaskSwin(in_channels, n_classes, feature_size, depths, num_heads, window_size, drop_path_rate, dropout)
