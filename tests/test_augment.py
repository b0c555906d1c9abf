"""Augmentation: image and mask move together; vertical flips only when asked for (P004)."""

from __future__ import annotations

import numpy as np

from busflow.train.augment import augment_batch, build_augmentation
from busflow.train.spec import AugmentSpec


def _batch() -> tuple[np.ndarray, np.ndarray]:
    images = np.zeros((16, 16, 16), np.float32)
    images[:, :4, :] = 1.0  # a bright band at the top (the skin line)
    return images, images.copy()


def _top_band_moved(settings: AugmentSpec) -> bool:
    images, masks = _batch()
    out_images, out_masks = augment_batch(build_augmentation(settings, 16, seed=0), images, masks)
    assert (out_images.numpy() == out_masks.numpy()).all()  # the mask follows the image exactly
    return bool((out_images[:, 0, :4, :].mean(dim=(1, 2)) < 0.5).any())


def test_horizontal_flips_keep_the_skin_line_on_top() -> None:
    assert not _top_band_moved(AugmentSpec(flip=True, rotate_deg=0, zoom=0, shift=0))


def test_vertical_flips_when_asked() -> None:
    assert _top_band_moved(AugmentSpec(flip=False, vertical_flip=True, rotate_deg=0, zoom=0, shift=0))


def test_nothing_switched_on_means_no_transform() -> None:
    assert build_augmentation(AugmentSpec(flip=False, rotate_deg=0, zoom=0, shift=0), 16, seed=0) is None
