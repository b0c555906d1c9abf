"""EfficientNet family (task ``cls``), randomly initialised (no pretrained downloads).

* ``efficientnet_b0``  EfficientNet (Tan & Le, 2019), MONAI ``EfficientNetBN``.
"""

from __future__ import annotations

from monai.networks.nets import EfficientNetBN
from monai.networks.nets.efficientnet import MBConvBlock
from torch import nn

from busflow.models.blocks import LogitsClassifier, check_dropout
from busflow.models.layouts import EFFICIENTNET
from busflow.models.registry import register

EFFICIENTNET_VARIANTS = tuple(f"efficientnet-b{i}" for i in range(8))


@register("efficientnet_b0", tasks={"cls"}, description="EfficientNet-B0 classifier (MONAI EfficientNetBN)",
          encoder=EFFICIENTNET)
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
    drop_connect_rate = check_dropout("drop_connect_rate", drop_connect_rate)
    net = EfficientNetBN(model_name, pretrained=False, spatial_dims=2, in_channels=in_channels, num_classes=n_classes)
    net._dropout.p = check_dropout("dropout", dropout)
    # MONAI gives block i the rate base * i / n_blocks with base = net.drop_connect_rate; rescale to ours.
    base = float(net.drop_connect_rate)
    for m in net.modules():
        if isinstance(m, MBConvBlock) and m.drop_connect_rate:
            m.drop_connect_rate = m.drop_connect_rate * drop_connect_rate / base
    net.drop_connect_rate = drop_connect_rate
    return LogitsClassifier(net)
