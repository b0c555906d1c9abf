"""Metric definitions on hand-checked cases, including the empty-mask conventions."""

from __future__ import annotations

import numpy as np
import pytest

from busflow.evaluate.metrics import classification_metrics, segmentation_metrics

CLASSES = ["normal", "benign", "malignant"]


def test_classification_metrics_by_hand() -> None:
    y_true = np.array([0, 1, 1, 2, 2, 2])
    probs = np.eye(3)[[0, 1, 2, 2, 2, 1]] * 0.8 + 0.2 / 3
    metrics = classification_metrics(y_true, probs, CLASSES)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [0, 1, 2]]
    malignant = metrics["per_class"]["malignant"]
    assert malignant["recall"] == pytest.approx(2 / 3)
    assert malignant["precision"] == pytest.approx(2 / 3)
    assert malignant["specificity"] == pytest.approx(2 / 3)  # 2 of 3 non-malignant not called malignant
    assert metrics["per_class"]["normal"]["roc_auc"] == pytest.approx(1.0)
    assert metrics["balanced_accuracy"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)


def test_auc_undefined_when_a_class_is_absent() -> None:
    metrics = classification_metrics(np.array([1, 1, 2]), np.eye(3)[[1, 1, 2]], CLASSES)
    assert metrics["per_class"]["normal"]["roc_auc"] is None
    assert metrics["roc_auc_macro"] == pytest.approx(1.0)


def _masks() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((3, 8, 8), bool)
    truth[0, 2:6, 2:6] = True  # lesion image
    predicted = truth.copy()
    predicted[0, 2:6, 2:4] = False  # half the lesion found -> Dice 2*8/(16+8) = 2/3
    predicted[2, 0, 0] = True  # image 2: empty truth, one false-positive pixel; image 1: both empty
    return predicted, truth


def test_empty_mask_convention_match() -> None:
    summary, per_image = segmentation_metrics(*_masks(), convention="match")
    assert per_image["dice"].tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert summary["dice"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert summary["dice_lesion_images"] == pytest.approx(2 / 3)
    assert summary["iou_tumour"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert summary["empty_image_false_positive_rate"] == pytest.approx(0.5)
    assert summary["n_empty_images"] == 2 and summary["n_lesion_images"] == 1


def test_empty_mask_convention_exclude() -> None:
    summary, _ = segmentation_metrics(*_masks(), convention="exclude")
    assert summary["dice"] == pytest.approx(2 / 3)
    assert summary["empty_image_false_positive_rate"] == pytest.approx(0.5)  # still reported


def test_background_iou_and_pixel_accuracy() -> None:
    predicted, truth = _masks()
    summary, _ = segmentation_metrics(predicted, truth, convention="match")
    assert summary["pixel_accuracy"] == pytest.approx(1 - 9 / (3 * 64))
    background = [(64 - 16) / (64 - 8), 1.0, 63 / 64]
    assert summary["iou_background"] == pytest.approx(np.mean(background))


def test_overlap_equals_monai_with_ignore_empty_false() -> None:
    import torch
    from monai.metrics import DiceMetric, MeanIoU

    from busflow.evaluate.metrics import per_image_overlap

    rng = np.random.default_rng(0)
    truth = rng.random((12, 16, 16)) > 0.7
    truth[:3] = False  # empty ground truths
    predicted = rng.random((12, 16, 16)) > 0.6
    predicted[1] = False  # empty vs empty
    dice, iou, background = per_image_overlap(predicted, truth)

    def as_tensor(mask: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(mask.astype(np.float32)).unsqueeze(1)

    expected_dice = DiceMetric(reduction="none", ignore_empty=False)(as_tensor(predicted), as_tensor(truth))[:, 0]
    expected_iou = MeanIoU(reduction="none", ignore_empty=False)(as_tensor(predicted), as_tensor(truth))[:, 0]
    expected_bg = MeanIoU(reduction="none", ignore_empty=False)(as_tensor(~predicted), as_tensor(~truth))[:, 0]
    np.testing.assert_allclose(dice, expected_dice.numpy(), rtol=1e-6)
    np.testing.assert_allclose(iou, expected_iou.numpy(), rtol=1e-6)
    np.testing.assert_allclose(background, expected_bg.numpy(), rtol=1e-6)
