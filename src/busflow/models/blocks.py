"""Building blocks and input checks shared by several network families; registers no architecture.

* ``check_input``: shape check of the segmenters and multi-task networks; the ValueError names the architecture.
* ``scaled``, ``check_factor``, ``positive_ints``, ``check_dropout``: option scaling and validation.
* ``conv_bn_act``: 3x3 'same' convolution, optional BatchNorm, activation.
* ``LogitsClassifier``: wraps a network returning a ``(B, n_classes)`` tensor into ``{"logits": ...}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


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


def scaled(channels: int, factor: float) -> int:
    """``channels * factor`` rounded, at least 1."""
    return max(1, int(round(channels * factor)))


def check_factor(name: str, value: float, base: int) -> None:
    if not value > 0 or base * value < 1:
        raise ValueError(f"{name} must be > 0 and leave at least one channel (>= 1/{base}), got {value}")


def positive_ints(name: str, values: Sequence[int], length: int | None = None) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    if (length is not None and len(out) != length) or not out or min(out) < 1:
        want = f"{length} positive integers" if length is not None else "positive integers"
        raise ValueError(f"{name} needs {want}, got {list(values)}")
    return out


def check_dropout(name: str, p: float) -> float:
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p}")
    return float(p)


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


class LogitsClassifier(nn.Module):
    """Wrap a network returning a ``(B, n_classes)`` tensor so that forward returns ``{"logits": ...}``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (B, n_classes)}``."""
        return {"logits": self.net(x)}
