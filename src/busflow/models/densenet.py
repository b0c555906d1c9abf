"""DenseNet family (task ``cls``), randomly initialised.

* ``densenet121/201``  DenseNet (Huang et al., 2017), MONAI ``DenseNet121``/``DenseNet201``.
"""

from __future__ import annotations

from monai.networks.nets import DenseNet121, DenseNet201
from torch import nn

from busflow.models.blocks import LogitsClassifier, check_dropout
from busflow.models.layouts import DENSENET
from busflow.models.registry import register


def _build_densenet(net_cls: type[nn.Module], *, in_channels: int, n_classes: int, dropout_prob: float) -> nn.Module:
    net = net_cls(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=n_classes,
        dropout_prob=check_dropout("dropout_prob", dropout_prob),
    )
    return LogitsClassifier(net)


@register("densenet121", tasks={"cls"}, description="DenseNet-121 classifier (MONAI DenseNet121)", encoder=DENSENET)
def build_densenet121(*, in_channels: int, n_classes: int, dropout_prob: float = 0.0) -> nn.Module:
    """Build DenseNet-121 (Huang et al., 2017; blocks 6-12-24-16, growth 32); ``dropout_prob`` is applied
    after every dense layer (MONAI uses channel-wise ``Dropout2d`` there)."""
    return _build_densenet(DenseNet121, in_channels=in_channels, n_classes=n_classes, dropout_prob=dropout_prob)


@register("densenet201", tasks={"cls"}, description="DenseNet-201 classifier (MONAI DenseNet201)", encoder=DENSENET)
def build_densenet201(*, in_channels: int, n_classes: int, dropout_prob: float = 0.0) -> nn.Module:
    """Build DenseNet-201 (Huang et al., 2017; blocks 6-12-48-32, growth 32); options as for ``densenet121``."""
    return _build_densenet(DenseNet201, in_channels=in_channels, n_classes=n_classes, dropout_prob=dropout_prob)
