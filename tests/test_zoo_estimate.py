"""The whole-zoo GPU estimate is arithmetic on measured images/s, and says what it did not measure."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from busflow.config import load_params

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from zoo_estimate import PRESETS, fold_images, zoo_table

P003 = next(p for p in PRESETS if p.stem == "p003")


def test_hours_are_epochs_times_folds_times_images_over_the_measured_rate() -> None:
    check = {"architecture_steps": {"size": 256, "architectures": {
        "resnet50": {"images_per_s": 400.0, "trainable": True},
        "classical_threshold": {"trainable": False, "images_per_s": 0.0}}}}
    table = zoo_table(check, presets=[P003]).set_index("model")
    params = load_params(P003)
    train, validation = fold_images(params, {"normal": 133, "benign": 437, "malignant": 210})
    assert train + validation == pytest.approx((437 + 210) * 4 / 5)  # benign vs malignant, one fold held out
    expected = 70 * 5 * (train + validation / 3) / 400.0 / 3600
    assert table.loc["resnet50", "hours"] == pytest.approx(expected, abs=1e-3)
    assert table.loc["swin_tiny", "note"] == "not measured" and pd.isna(table.loc["swin_tiny", "hours"])


def test_a_measurement_at_another_size_or_of_other_options_is_marked() -> None:
    check = {"architecture_steps": {"size": 224, "architectures": {"resnet50": {"images_per_s": 400.0, "trainable": True}}}}
    note = zoo_table(check, presets=[P003]).set_index("model").loc["resnet50", "note"]
    assert "preset input 256 px, measured at 224" in note

