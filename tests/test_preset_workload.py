"""benchmarks/preset_workload.py: a preset's planned jobs and its training workload in image passes."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from preset_workload import planned_jobs, preset_passes


def test_p002_plans_its_three_cascades_and_its_ablation_grid() -> None:
    jobs = planned_jobs(REPO / "config" / "presets" / "p002.yaml")
    assert jobs["cascade"] == 3 and jobs["evaluate_cascade"] == 3 and jobs["train"] == 1
    assert jobs["train_ablation"] == 9  # 3 learning rates x 3 filter ranges, one partition


def test_image_passes_count_every_training_job() -> None:
    """P002 on BUSI's benign and malignant images (647), 5 folds' share, 15 % validation at a third of a step:
    the U-Net (100 epochs), its 9 ablation cells (100 epochs each) and 3 cascade classifiers (50 epochs each)."""
    pool = 647 * 4 / 5
    per_epoch = pool * 0.85 + pool * 0.15 / 3
    expected = (100 + 9 * 100 + 3 * 50) * per_epoch  # one partition: train.folds is [0]
    assert preset_passes(REPO / "config" / "presets" / "p002.yaml") == pytest.approx(expected)
