"""The metric catalogue: every scalar metric the evaluate stage writes into metrics.json, its definition and
where the report shows it. The report's metric lists are derived from here, in catalogue order (the column
order of the per-fold tables), so adding a metric is one entry below.

No torch, numpy or pandas import: light processes (the report, tests) read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CLASSIFICATION, SEGMENTATION, PER_CLASS = "classification", "segmentation", "per_class"
Flag = Literal["table", "count", "headline", "leaderboard", "bar", "study", "paired"]


@dataclass(frozen=True)
class Metric:
    """One metric of a metrics.json block: ``classification.<name>``, ``segmentation.<name>`` or, per class,
    ``classification.per_class.<class>.<name>``."""

    name: str
    block: str  # CLASSIFICATION, SEGMENTATION or PER_CLASS
    definition: str
    glossary: int = 0  # position of the definition under the report's "Metric definitions" (0: not listed)
    table: bool = True  # a column of the block's per-fold table (tables/classification.csv, ...)
    count: bool = False  # an image count, shown as an integer
    headline: bool = False  # the leaderboard shown in the report
    leaderboard: bool = False  # tables/leaderboard.csv: mean and sd over folds, pooled value with its interval
    bar: bool = False  # figures/metrics_bar.png
    study: bool = False  # compared in the leakage study, the external validation and the ablation grid
    paired: bool = False  # compared with the reference model by the paired bootstrap (tables/comparisons.csv)
    per_image: str = ""  # the per_image.csv column whose mean the bootstrap pools (busflow.report.uncertainty)

    @property
    def path(self) -> str:
        """``<block>.<name>`` of a classification or segmentation metric, as tables/intervals.csv names it."""
        return f"{self.block}.{self.name}"


def _weighted(of: str) -> str:
    return f"mean of the per-class {of} weighted by each class's number of test images."


_AT_THRESHOLD = ("the positive class (malignant) against the rest at a probability threshold chosen on the fold's "
                 "validation images (Youden's J or a target sensitivity), never on test.")
_PIXEL = ("per image TP / (TP + FP) over images with a predicted lesion, and TP / (TP + FN) over images with a true "
          "lesion; averaged over those images.")
_LESION_ONLY = "Dice / IoU restricted to images whose ground truth has a lesion."
_POOLED = ("pixel-pooled over the fold's test images: TP, FP and FN summed over all images, then Dice 2TP / (2TP + FP "
           "+ FN), IoU TP / (TP + FP + FN), precision TP / (TP + FP), recall TP / (TP + FN); no empty-mask convention "
           "applies (a lesion-free image adds only its false positives).")
_KEY = {"headline": True, "leaderboard": True, "bar": True}  # the key metrics: shown wherever metrics are
_COMPARED = {"study": True, "paired": True}  # compared across splits, datasets, settings and models

CATALOGUE: tuple[Metric, ...] = (
    Metric("accuracy", CLASSIFICATION, "fraction of test images whose predicted class equals the true class.",
           glossary=1, **_KEY, **_COMPARED),
    Metric("balanced_accuracy", CLASSIFICATION, "mean per-class recall; insensitive to class imbalance (chance level "
           "= 1/number of classes).", glossary=2, **_KEY, **_COMPARED),
    Metric("precision_macro", CLASSIFICATION, "unweighted mean over classes of TP / (TP + FP).",
           glossary=3, leaderboard=True),
    Metric("recall_macro", CLASSIFICATION, "unweighted mean over classes of TP / (TP + FN) (sensitivity).",
           glossary=4, leaderboard=True),
    Metric("specificity_macro", CLASSIFICATION, "unweighted mean over classes of TN / (TN + FP), each class "
           "one-vs-rest.", glossary=5, leaderboard=True),
    Metric("f1_macro", CLASSIFICATION, "unweighted mean over classes of the harmonic mean of precision and recall.",
           glossary=6, **_KEY),
    Metric("f1_weighted", CLASSIFICATION, _weighted("F1"), glossary=8, leaderboard=True),
    Metric("roc_auc_macro", CLASSIFICATION, "mean one-vs-rest area under the ROC curve; n/a when a class is missing "
           "from the test set.", glossary=7, **_KEY, **_COMPARED),
    Metric("pr_auc_macro", CLASSIFICATION, "mean one-vs-rest area under the precision-recall curve (average "
           "precision).", glossary=9),
    Metric("ece", CLASSIFICATION, "expected calibration error: over ten equal-width bins of top-class confidence, the "
           "image-weighted mean of |accuracy − mean confidence|.", glossary=10, leaderboard=True),
    Metric("sensitivity_at_threshold", CLASSIFICATION, _AT_THRESHOLD, glossary=11, leaderboard=True),
    Metric("specificity_at_threshold", CLASSIFICATION, _AT_THRESHOLD, glossary=11, leaderboard=True),
    Metric("precision_weighted", CLASSIFICATION, _weighted("precision"), table=False),
    Metric("recall_weighted", CLASSIFICATION, _weighted("recall"), table=False),
    Metric("specificity_weighted", CLASSIFICATION, _weighted("specificity"), table=False),
    Metric("roc_auc_weighted", CLASSIFICATION, _weighted("one-vs-rest ROC AUC"), table=False),
    Metric("pr_auc_weighted", CLASSIFICATION, _weighted("average precision"), table=False),
    Metric("dice", SEGMENTATION, "2|P∩T| / (|P| + |T|) between the predicted (probability ≥ 0.5) and the true lesion "
           "mask.", glossary=12, **_KEY, **_COMPARED, per_image="dice"),
    Metric("iou_tumour", SEGMENTATION, "intersection over union |P∩T| / |P∪T| of the lesion class.",
           glossary=13, **_KEY, **_COMPARED, per_image="iou"),
    Metric("iou_background", SEGMENTATION, "intersection over union of the background class.", glossary=14),
    # no per_image: the bootstrap pools pixel accuracy after the other per-image means (tables/intervals.csv order)
    Metric("pixel_accuracy", SEGMENTATION, "fraction of pixels labelled correctly (lesion or background).",
           glossary=15, leaderboard=True),
    Metric("pixel_precision", SEGMENTATION, _PIXEL, glossary=16, leaderboard=True, per_image="pixel_precision"),
    Metric("pixel_recall", SEGMENTATION, _PIXEL, glossary=16, leaderboard=True, per_image="pixel_recall"),
    Metric("pooled_dice", SEGMENTATION, _POOLED, glossary=20),
    Metric("pooled_iou", SEGMENTATION, _POOLED, glossary=20),
    Metric("pooled_precision", SEGMENTATION, _POOLED, glossary=20),
    Metric("pooled_recall", SEGMENTATION, _POOLED, glossary=20),
    Metric("hd95", SEGMENTATION, "95th-percentile symmetric Hausdorff distance between the predicted and true lesion "
           "boundaries, in pixels of the preprocessed image; only images where both masks are non-empty.",
           glossary=17, leaderboard=True, per_image="hd95"),
    Metric("dice_lesion_images", SEGMENTATION, _LESION_ONLY, glossary=18, **_KEY),
    Metric("iou_lesion_images", SEGMENTATION, _LESION_ONLY, glossary=18, leaderboard=True),
    Metric("empty_image_false_positive_rate", SEGMENTATION, "fraction of lesion-free images on which the model "
           "predicts any lesion pixel.", glossary=19, headline=True, leaderboard=True),
    Metric("n_lesion_images", SEGMENTATION, "test images whose ground-truth mask has a lesion.", count=True),
    Metric("n_empty_images", SEGMENTATION, "test images with an empty ground-truth mask (normal images).", count=True),
    Metric("n_hd95_images", SEGMENTATION, "test images where both masks are non-empty, over which hd95 is averaged.",
           table=False, count=True),
    Metric("precision", PER_CLASS, "TP / (TP + FP), the class against the rest."),
    Metric("recall", PER_CLASS, "TP / (TP + FN) (sensitivity), the class against the rest."),
    Metric("specificity", PER_CLASS, "TN / (TN + FP), the class against the rest."),
    Metric("fpr", PER_CLASS, "false-positive rate FP / (FP + TN) = 1 − specificity."),
    Metric("f1", PER_CLASS, "harmonic mean of the class's precision and recall."),
    Metric("roc_auc", PER_CLASS, "one-vs-rest area under the ROC curve of the class's probability; n/a when the test "
           "part lacks either side."),
    Metric("pr_auc", PER_CLASS, "one-vs-rest average precision of the class's probability; n/a without a test image "
           "of the class."),
    Metric("support", PER_CLASS, "test images of the class.", count=True),
)


def selected(flag: Flag, block: str | None = None) -> tuple[Metric, ...]:
    """The metrics (of ``block``, or of all blocks) with ``flag`` set, in catalogue order."""
    return tuple(m for m in CATALOGUE if getattr(m, flag) and block in (None, m.block))


def names(flag: Flag, block: str | None = None) -> tuple[str, ...]:
    """The names of :func:`selected`."""
    return tuple(m.name for m in selected(flag, block))


def glossary() -> tuple[tuple[str, str], ...]:
    """(term, definition) in glossary order; metrics sharing a position share one definition, named together
    (``pixel_precision / pixel_recall``)."""
    positions = sorted({m.glossary for m in CATALOGUE if m.glossary})
    shared = [[m for m in CATALOGUE if m.glossary == p] for p in positions]
    return tuple((" / ".join(m.name for m in group), group[0].definition) for group in shared)
