"""Lesion regions on boolean masks: the largest connected component, its square box, and resized crops
(NumPy, SciPy and Pillow only; shared by the cascade stage, its predictor, ``busflow predict`` and the classical segmenter)."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def largest_component(mask: np.ndarray, min_area: int = 0) -> np.ndarray:
    """The largest connected region of ``mask``; empty when there is none or it is smaller than ``min_area``."""
    labelled, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = ndimage.sum_labels(mask, labelled, index=np.arange(1, count + 1))
    best = int(np.argmax(sizes))
    return labelled == best + 1 if sizes[best] >= min_area else np.zeros(mask.shape, dtype=bool)


Box = tuple[int, int, int, int]  # top, left, bottom, right (exclusive)


def lesion_box(mask: np.ndarray, margin: float, empty_fraction: float) -> Box:
    """Bounding box of the largest lesion grown by ``margin`` × its size per side, as a square clipped to
    the image; the central box of side ``empty_fraction`` × image side when there is no lesion."""
    height, width = mask.shape
    lesion = largest_component(mask)
    if not lesion.any():
        side = max(2, round(empty_fraction * min(height, width)))
        top, left = (height - side) // 2, (width - side) // 2
        return top, left, top + side, left + side
    rows, cols = np.flatnonzero(lesion.any(1)), np.flatnonzero(lesion.any(0))
    centre_y, centre_x = (rows[0] + rows[-1] + 1) / 2, (cols[0] + cols[-1] + 1) / 2
    side = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) * (1 + 2 * margin)
    side = int(min(max(round(side), 4), height, width))
    top = int(np.clip(round(centre_y - side / 2), 0, height - side))
    left = int(np.clip(round(centre_x - side / 2), 0, width - side))
    return top, left, top + side, left + side


def crop_resize(image: np.ndarray, box: Box, size: int) -> np.ndarray:
    top, left, bottom, right = box
    crop = Image.fromarray(image[top:bottom, left:right])
    return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))


def extract_rois(images: np.ndarray, masks: np.ndarray, *, margin: float, empty_fraction: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crops (N×size×size uint8) and their boxes (N×4) for every image/mask pair."""
    boxes = np.array([lesion_box(m, margin, empty_fraction) for m in masks], dtype=np.int64).reshape(-1, 4)
    crops = np.stack([crop_resize(img, box, size) for img, box in zip(images, boxes)]) if len(images) else np.zeros((0, size, size), np.uint8)
    return crops, boxes
