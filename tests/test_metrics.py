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


def test_weighted_and_pr_auc_agree_with_scikit_learn() -> None:
    from sklearn.metrics import average_precision_score, f1_score, precision_score

    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 3, 40)
    probs = rng.dirichlet(np.ones(3), 40)
    metrics = classification_metrics(y_true, probs, CLASSES)
    assert metrics["f1_weighted"] == pytest.approx(f1_score(y_true, probs.argmax(1), average="weighted"))
    assert metrics["precision_weighted"] == pytest.approx(precision_score(y_true, probs.argmax(1), average="weighted"))
    assert metrics["per_class"]["benign"]["pr_auc"] == pytest.approx(average_precision_score(y_true == 1, probs[:, 1]))
    assert metrics["per_class"]["malignant"]["fpr"] == pytest.approx(1 - metrics["per_class"]["malignant"]["specificity"])


def test_single_class_test_set_leaves_undefined_metrics_undefined() -> None:
    metrics = classification_metrics(np.array([2, 2, 2]), np.eye(3)[[2, 1, 2]], CLASSES)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    malignant = metrics["per_class"]["malignant"]
    assert malignant["roc_auc"] is None and malignant["specificity"] is None and malignant["recall"] == pytest.approx(2 / 3)
    assert metrics["roc_auc_macro"] is None  # no class has both sides
    assert metrics["f1_weighted"] == pytest.approx(0.8)  # only malignant is present: F1 = 2·(1·2/3)/(1 + 2/3)


def test_operating_threshold_youden_and_target_sensitivity() -> None:
    from busflow.evaluate.metrics import operating_threshold

    is_positive = np.array([False, False, False, True, True, True])
    scores = np.array([0.1, 0.3, 0.6, 0.4, 0.7, 0.9])
    # Youden's J: 0.7 gives (2/3, 1) -> J 2/3; 0.4 gives (1, 2/3) -> J 2/3; ties go to the higher threshold.
    assert operating_threshold(is_positive, scores, "youden") == pytest.approx(0.7)
    assert operating_threshold(is_positive, scores, "sensitivity", target_sensitivity=1.0) == pytest.approx(0.4)
    assert operating_threshold(is_positive, scores, "sensitivity", target_sensitivity=0.3) == pytest.approx(0.9)
    assert operating_threshold(np.ones(3, bool), scores[:3], "youden") is None


def test_operating_point_is_chosen_on_validation_and_applied_to_test() -> None:
    from busflow.evaluate.metrics import operating_point

    y_val = np.array([1, 1, 2, 2])
    probs_val = np.array([[0, 0.8, 0.2], [0, 0.7, 0.3], [0, 0.4, 0.6], [0, 0.3, 0.7]])
    y_test = np.array([1, 2, 2])
    probs_test = np.array([[0, 0.35, 0.65], [0, 0.4, 0.6], [0, 0.9, 0.1]])
    point = operating_point(y_val, probs_val, y_test, probs_test, positive=2, rule="youden", target_sensitivity=0.9)
    assert point["threshold"] == pytest.approx(0.6) and point["chosen_on"] == "validation"
    test = point["test"]
    assert (test["tp"], test["fp"], test["fn"], test["tn"]) == (1, 1, 1, 0)
    assert test["sensitivity"] == pytest.approx(0.5) and test["specificity"] == pytest.approx(0.0)


def test_pixel_precision_recall_and_hd95_by_hand() -> None:
    from busflow.evaluate.metrics import hausdorff95, pixel_precision_recall

    predicted, truth = _masks()
    precision, recall = pixel_precision_recall(predicted, truth)
    assert precision[0] == pytest.approx(1.0) and recall[0] == pytest.approx(0.5)
    assert np.isnan(precision[1]) and np.isnan(recall[1]) and precision[2] == 0.0 and np.isnan(recall[2])
    square, shifted = np.zeros((16, 16), bool), np.zeros((16, 16), bool)
    square[4:8, 4:8] = True
    shifted[4:8, 7:11] = True  # the same square three pixels to the right
    assert hausdorff95(square, shifted) == pytest.approx(3.0)
    assert np.isnan(hausdorff95(square, np.zeros_like(square)))
    summary, _ = segmentation_metrics(predicted, truth, convention="match")
    assert summary["pixel_precision"] == pytest.approx(0.5)  # images 0 (1.0) and 2 (0.0) predict a lesion
    assert summary["pixel_recall"] == pytest.approx(0.5) and summary["n_hd95_images"] == 1


def test_hd95_equals_monai() -> None:
    import torch
    from monai.metrics import compute_hausdorff_distance

    from busflow.evaluate.metrics import hausdorff95

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:48, :48]
    for _ in range(12):
        cy, cx, r = rng.integers(8, 40, 2).tolist() + [int(rng.integers(3, 12))]
        truth = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        predicted = ((yy - cy - rng.integers(-4, 5)) ** 2 / 1.5 + (xx - cx) ** 2 < r**2) | (rng.random((48, 48)) > 0.995)
        expected = compute_hausdorff_distance(torch.from_numpy(predicted[None, None]), torch.from_numpy(truth[None, None]),
                                              include_background=True, percentile=95)
        assert hausdorff95(predicted, truth) == pytest.approx(float(expected), rel=1e-5)
