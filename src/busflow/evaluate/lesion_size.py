"""Lesion size in millimetres from a mask and the physical size of its pixels.

A source that knows its pixel spacing (``pixel_spacing_mm`` in data/index.csv: the side of one square pixel of
the original image, in mm) lets a mask be measured as a radiologist reports a lesion: its area, its longest
diameter and its extent across (width) and down (depth) the image. A mask at the networks' input size is
anisotropic (each side of the image was resized on its own), so pixels are given as (height, width) in mm.

Sizes are measured on pixel *areas*, not pixel centres: a one-pixel lesion is one pixel wide and its diameter is
the pixel's diagonal. The diameter is the maximum Feret diameter of the largest connected lesion: the largest
distance between two corners of its pixels, found on the convex hull.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from busflow.data.rois import largest_component

PixelSize = tuple[float, float]  # (height, width) of one pixel in mm
SIZE_COLUMNS = ("lesion_area_mm2", "largest_lesion_diameter_mm", "largest_lesion_width_mm", "largest_lesion_depth_mm")


def resized_pixel_mm(spacing_mm: float, original_shape: tuple[int, int], size: int) -> PixelSize:
    """The pixel of an image of ``original_shape`` (height, width) resized to ``size`` × ``size``, in mm."""
    height, width = original_shape
    return spacing_mm * height / size, spacing_mm * width / size


def _pixel_corners(points: np.ndarray) -> np.ndarray:
    """The four corners of each pixel (x, y centres, N×2) as N·4 points."""
    offsets = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
    return (points[:, None, :] + offsets[None]).reshape(-1, 2)


def feret_diameter(lesion: np.ndarray, pixel_mm: PixelSize) -> float:
    """Largest distance (mm) between two points of the pixels of ``lesion`` (a boolean mask, not empty)."""
    contours, _ = cv2.findContours(lesion.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outline = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float64)
    corners = _pixel_corners(outline) * np.array([pixel_mm[1], pixel_mm[0]])  # x, y in mm
    hull = cv2.convexHull(corners.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    gaps = hull[:, None, :] - hull[None, :, :]
    return float(np.sqrt((gaps**2).sum(-1)).max())


def lesion_size_mm(mask: np.ndarray, pixel_mm: PixelSize) -> dict[str, float]:
    """Area of all lesion pixels (mm²) and the diameter, width and depth (mm) of the largest lesion; NaN
    diameters for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    sizes = {"lesion_area_mm2": float(mask.sum()) * pixel_mm[0] * pixel_mm[1]}
    lesion = largest_component(mask)
    if not lesion.any():
        return {**sizes, "largest_lesion_diameter_mm": math.nan, "largest_lesion_width_mm": math.nan,
                "largest_lesion_depth_mm": math.nan}
    rows, cols = np.flatnonzero(lesion.any(1)), np.flatnonzero(lesion.any(0))
    return {**sizes, "largest_lesion_diameter_mm": feret_diameter(lesion, pixel_mm),
            "largest_lesion_width_mm": float(cols[-1] - cols[0] + 1) * pixel_mm[1],
            "largest_lesion_depth_mm": float(rows[-1] - rows[0] + 1) * pixel_mm[0]}


def unknown_size() -> dict[str, float]:
    """The size columns of an image whose pixel spacing is not known."""
    return dict.fromkeys(SIZE_COLUMNS, math.nan)


def size_columns(predicted: np.ndarray, truth: np.ndarray, spacing_mm: np.ndarray,
                 original_shapes: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image columns comparing predicted with true lesion size in mm, for masks at the model's size (N×S×S)
    of images of ``original_shapes`` (N×2) and ``spacing_mm`` (N, NaN where unknown); none when no spacing is known."""
    if not np.isfinite(spacing_mm).any():
        return {}
    columns: dict[str, list[float]] = {"pixel_spacing_mm": list(spacing_mm)}
    for which, masks in (("true", truth), ("pred", predicted)):
        sizes = [lesion_size_mm(mask, resized_pixel_mm(float(s), (int(shape[0]), int(shape[1])), mask.shape[-1]))
                 if np.isfinite(s) else unknown_size() for mask, s, shape in zip(masks, spacing_mm, original_shapes)]
        columns[f"lesion_area_mm2_{which}"] = [size["lesion_area_mm2"] for size in sizes]
        columns[f"lesion_diameter_mm_{which}"] = [size["largest_lesion_diameter_mm"] for size in sizes]
    return {name: np.asarray(values, dtype=np.float64) for name, values in columns.items()}
