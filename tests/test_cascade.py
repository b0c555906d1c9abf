"""ROI extraction of the cascade: lesion boxes with margin, central box for empty masks."""

from __future__ import annotations

import numpy as np

from busflow.data.rois import extract_rois, lesion_box
from busflow.data.rois import largest_component


def test_box_is_square_contains_lesion_and_adds_margin() -> None:
    mask = np.zeros((64, 64), bool)
    mask[20:30, 10:40] = True  # 10 tall, 30 wide
    top, left, bottom, right = lesion_box(mask, margin=0.2, empty_fraction=0.5)
    assert bottom - top == right - left == 42  # 30 * (1 + 2 * 0.2)
    assert top <= 20 and bottom >= 30 and left <= 10 and right >= 40


def test_box_is_clipped_to_the_image() -> None:
    mask = np.zeros((32, 32), bool)
    mask[0:6, 26:32] = True
    top, left, bottom, right = lesion_box(mask, margin=1.0, empty_fraction=0.5)
    assert 0 <= top < bottom <= 32 and 0 <= left < right <= 32


def test_empty_mask_gives_central_box() -> None:
    assert lesion_box(np.zeros((40, 40), bool), margin=0.1, empty_fraction=0.5) == (10, 10, 30, 30)


def test_largest_component_wins() -> None:
    mask = np.zeros((30, 30), bool)
    mask[2:4, 2:4] = True
    mask[10:20, 10:20] = True
    kept = largest_component(mask)
    assert kept[15, 15] and not kept[3, 3]


def test_extract_rois_shapes_and_content() -> None:
    images = np.zeros((2, 32, 32), np.uint8)
    images[0, 8:16, 8:16] = 200
    masks = np.zeros((2, 32, 32), bool)
    masks[0, 8:16, 8:16] = True
    crops, boxes = extract_rois(images, masks, margin=0.0, empty_fraction=0.5, size=16)
    assert crops.shape == (2, 16, 16) and boxes.shape == (2, 4)
    assert crops[0].mean() > 150  # the crop is the bright lesion
