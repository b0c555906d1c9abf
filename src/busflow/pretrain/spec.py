"""The settings of one contrastive pretraining run (:func:`busflow.pretrain.pretrain`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_BATCH = 2  # the loss needs at least one other image of the batch as a negative
MIN_VIEW_SIZE = 16


@dataclass(frozen=True)
class PretrainSpec:
    """What one pretraining run learns, with defaults for a CPU and a few thousand 64-256 px images.

    Attributes:
        epochs: Passes over the images.
        batch_size: Images per step (each gives two views); capped at the number of images.
        lr: Peak learning rate of AdamW, reached after ``warmup_epochs`` and then decayed to 0 along a cosine.
        weight_decay: AdamW's decoupled decay of the weight matrices (biases and norm layers are not decayed).
        warmup_epochs: Epochs of linear learning-rate warm-up (steadies the first steps, transformers above all).
        temperature: NT-Xent temperature; 0.5 suits moderate batches (lower values need more negatives).
        projection_dim: Output width of the projection MLP the loss compares.
        crop_scale: Smallest crop area as a fraction of the image (the largest is 1).
        brightness: Gain jitter, a factor in 1 ± brightness.
        contrast: Contrast jitter about the image mean, a factor in 1 ± contrast.
        gamma: Gamma jitter, an exponent in [1 / gamma, gamma] (>= 1; 1 switches it off).
        speckle: Largest standard deviation of the multiplicative speckle noise.
        blur_sigma: Largest Gaussian blur sigma as a fraction of the image side (0 switches it off).
        view_size: Side in pixels of the views the encoder sees (``None``: the images' own side). A random
            crop covers at least ``crop_scale`` of the image, so half-side views keep most of a crop's detail
            and cost a CNN about a quarter of the compute; CNN features carry over to the full size the
            classifier is then trained at (a transformer needs ``img_size`` equal to it in ``options``).
    """

    epochs: int = 150
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 2
    temperature: float = 0.5
    projection_dim: int = 128
    crop_scale: float = 0.3
    brightness: float = 0.3
    contrast: float = 0.3
    gamma: float = 1.4
    speckle: float = 0.2
    blur_sigma: float = 0.015
    view_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "warmup_epochs", "projection_dim"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise TypeError(f"pretraining {name} must be an integer, got {value!r}")
        checks = (
            ("epochs", self.epochs >= 1, "an integer >= 1"),
            ("batch_size", self.batch_size >= MIN_BATCH, f"an integer >= {MIN_BATCH} (the loss needs other images as negatives)"),
            ("lr", self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup_epochs", 0 <= self.warmup_epochs, "an integer >= 0"),
            ("temperature", self.temperature > 0, "> 0"),
            ("projection_dim", self.projection_dim >= 1, "an integer >= 1"),
            ("crop_scale", 0 < self.crop_scale <= 1, "in (0, 1]"),
            ("brightness", 0 <= self.brightness < 1, "in [0, 1)"),
            ("contrast", 0 <= self.contrast < 1, "in [0, 1)"),
            ("gamma", self.gamma >= 1, ">= 1"),
            ("speckle", self.speckle >= 0, ">= 0"),
            ("blur_sigma", 0 <= self.blur_sigma <= 0.25, "in [0, 0.25]"),
        )
        for name, valid, requirement in checks:
            if not valid:
                raise ValueError(f"pretraining {name} must be {requirement}, got {getattr(self, name)!r}")
        if self.view_size is not None and (not isinstance(self.view_size, (int, np.integer)) or isinstance(self.view_size, bool)
                                           or self.view_size < MIN_VIEW_SIZE):
            raise ValueError(f"pretraining view_size must be null or an integer >= {MIN_VIEW_SIZE}, got {self.view_size!r}")
