"""Self-supervised, in-domain pretraining of classifier encoders on unlabelled ultrasound images (SimCLR)."""

from busflow.pretrain.contrastive import feature_extractor, pretrain
from busflow.pretrain.spec import PretrainSpec
from busflow.pretrain.views import random_view

__all__ = ["PretrainSpec", "feature_extractor", "pretrain", "random_view"]
