"""Lesion size in mm: area, Feret diameter, width and depth of known shapes, the same lesion measured at the
original resolution and after resizing to the networks' input size, and the benchmark of that resizing floor."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from busflow.data.preprocess import resize_mask
from busflow.data.synthetic import generate_phantoms
from busflow.evaluate.lesion_size import lesion_size_mm, resized_pixel_mm, size_columns

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import lesion_size_resolution


def test_rectangle_with_anisotropic_pixels() -> None:
    mask = np.zeros((30, 40), bool)
    mask[5:15, 10:30] = True  # 10 rows × 20 columns
    size = lesion_size_mm(mask, (0.2, 0.1))  # pixels 0.2 mm tall, 0.1 mm wide
    assert size["lesion_area_mm2"] == pytest.approx(200 * 0.02)
    assert size["largest_lesion_width_mm"] == pytest.approx(2.0) and size["largest_lesion_depth_mm"] == pytest.approx(2.0)
    assert size["largest_lesion_diameter_mm"] == pytest.approx(math.hypot(2.0, 2.0))  # corner to corner


def test_one_pixel_is_one_pixel_wide_and_its_diagonal_long() -> None:
    mask = np.zeros((5, 5), bool)
    mask[2, 3] = True
    size = lesion_size_mm(mask, (0.3, 0.4))
    assert size["largest_lesion_width_mm"] == pytest.approx(0.4) and size["largest_lesion_depth_mm"] == pytest.approx(0.3)
    assert size["largest_lesion_diameter_mm"] == pytest.approx(0.5)


def test_disc_diameter_and_area() -> None:
    yy, xx = np.mgrid[:201, :201]
    disc = (yy - 100) ** 2 + (xx - 100) ** 2 <= 60**2
    size = lesion_size_mm(disc, (0.05, 0.05))
    assert size["lesion_area_mm2"] == pytest.approx(math.pi * 3.0**2, rel=0.01)  # radius 60 px = 3 mm
    assert size["largest_lesion_diameter_mm"] == pytest.approx(6.05, abs=0.03)  # 121 pixels across
    assert size["largest_lesion_width_mm"] == pytest.approx(6.05)


def test_area_counts_every_lesion_and_the_diameter_the_largest() -> None:
    mask = np.zeros((40, 40), bool)
    mask[2:12, 2:12] = True  # 100 px, the largest
    mask[30:33, 30:33] = True  # 9 px, separate
    size = lesion_size_mm(mask, (0.1, 0.1))
    assert size["lesion_area_mm2"] == pytest.approx(1.09)
    assert size["largest_lesion_diameter_mm"] == pytest.approx(math.hypot(1.0, 1.0))


def test_empty_mask_has_no_diameter() -> None:
    size = lesion_size_mm(np.zeros((8, 8), bool), (0.1, 0.1))
    assert size["lesion_area_mm2"] == 0.0 and math.isnan(size["largest_lesion_diameter_mm"])


def test_a_lesion_keeps_its_size_when_resized_to_the_model_input() -> None:
    """An ellipse on a 400 × 520 scan at 0.08 mm, measured again on its 128 × 128 mask: the same mm within a pixel."""
    shape, spacing = (400, 520), 0.08
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    ellipse = ((yy - 180) / 70) ** 2 + ((xx - 260) / 150) ** 2 <= 1
    original = lesion_size_mm(ellipse, (spacing, spacing))
    model_pixel = resized_pixel_mm(spacing, shape, 128)
    assert model_pixel == pytest.approx((0.25, 0.325))
    resized = lesion_size_mm(resize_mask(ellipse, 128).astype(bool), model_pixel)
    assert resized["lesion_area_mm2"] == pytest.approx(original["lesion_area_mm2"], rel=0.03)
    for key in ("largest_lesion_diameter_mm", "largest_lesion_width_mm", "largest_lesion_depth_mm"):
        assert resized[key] == pytest.approx(original[key], abs=max(model_pixel))


def test_size_columns_of_known_and_unknown_spacing() -> None:
    truth = np.zeros((3, 16, 16), bool)
    truth[:, 4:8, 4:12] = True
    predicted = truth.copy()
    predicted[1] = False  # a missed lesion
    shapes = np.array([[160, 160]] * 3)
    columns = size_columns(predicted, truth, np.array([0.1, 0.1, np.nan]), shapes)
    pixel = 0.1 * 160 / 16  # one model pixel is 1 mm
    assert columns["lesion_area_mm2_true"][:2] == pytest.approx([32 * pixel**2] * 2)
    assert columns["lesion_diameter_mm_true"][0] == pytest.approx(math.hypot(8, 4))
    assert columns["lesion_area_mm2_pred"][1] == 0.0 and math.isnan(columns["lesion_diameter_mm_pred"][1])
    assert all(math.isnan(values[2]) for values in columns.values())  # spacing unknown: no size
    assert size_columns(predicted, truth, np.full(3, np.nan), shapes) == {}


def test_the_resolution_benchmark_measures_a_floor_that_shrinks_with_the_model_size(tmp_path: Path) -> None:
    generate_phantoms(tmp_path / "raw", n_patients=8, seed=2, image_size=(120, 150),
                      class_mix={"normal": 0.0, "benign": 0.5, "malignant": 0.5}, views_per_patient=(1, 1))
    table = lesion_size_resolution.summary(lesion_size_resolution.measured(tmp_path / "raw", [24, 120]))
    assert table["lesion_images"].tolist() == [8, 8]
    coarse, fine = table.set_index("size").loc[24], table.set_index("size").loc[120]
    assert fine["diameter_mean_abs_error_mm"] < coarse["diameter_mean_abs_error_mm"]
    assert fine["area_mean_abs_relative_error"] < coarse["area_mean_abs_relative_error"]
