"""DeepLab family: atrous spatial pyramid pooling on a dilated bottleneck ResNet (task ``seg``).

* ``deeplabv3``        P001: DeepLabV3-ResNet101 (Chen et al., 2017), ASPP on a dilated ResNet.
* ``deeplabv3plus``    DeepLabV3+ (Chen et al., 2018): DeepLabV3 + low-level-feature decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from busflow.models.blocks import check_input, conv_bn_act, scaled
from busflow.models.layouts import resnet_encoder_layout
from busflow.models.registry import register
from busflow.models.resnet import ResNetEncoder, make_resnet


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
        head_ch = scaled(256, width_factor)
        rates = tuple(r * 16 // int(output_stride) for r in (6, 12, 18))
        self.aspp = ASPP(self.encoder.out_channels[-1], head_ch, rates)
        if plus:
            low_ch = scaled(48, width_factor)
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


@register("deeplabv3", tasks={"seg"}, description="P001 DeepLabV3: ASPP (6/12/18 + pooling) on a dilated ResNet-101 (OS 16)",
          encoder=resnet_encoder_layout("encoder"))
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


@register("deeplabv3plus", tasks={"seg"}, description="DeepLabV3+: DeepLabV3 ResNet-101 + stride-4 low-level-feature decoder",
          encoder=resnet_encoder_layout("encoder"))
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
