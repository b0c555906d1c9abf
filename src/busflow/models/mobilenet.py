"""MobileNet family (task ``cls``).

* ``mobilenet_v2``     P004 comparator MobileNetV2 (Sandler et al., 2018), own torch modules.
"""

from __future__ import annotations

import torch
from torch import nn

from busflow.models.blocks import check_dropout
from busflow.models.layouts import MOBILENET_V2
from busflow.models.registry import register


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
        self.classifier = nn.Sequential(nn.Dropout(check_dropout("dropout", dropout)), nn.Linear(last, n_classes))
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


@register("mobilenet_v2", tasks={"cls"}, description="P004 comparator MobileNetV2 classifier (inverted residuals)",
          encoder=MOBILENET_V2)
def build_mobilenet_v2(*, in_channels: int, n_classes: int, width_mult: float = 1.0, dropout: float = 0.2) -> nn.Module:
    """Build MobileNetV2 (Sandler et al., 2018) for P004's comparison; ``width_mult`` scales channel counts
    (rounded to multiples of 8), ``dropout`` precedes the linear head."""
    return MobileNetV2(in_channels, n_classes, width_mult=width_mult, dropout=dropout)
