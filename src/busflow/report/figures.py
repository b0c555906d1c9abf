"""Report figures (matplotlib Agg + seaborn). Each ``plot_*`` function writes one PNG atomically.

A figure whose section does not apply is still written, as a small panel that says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import auc, roc_curve  # noqa: E402

from ..io import atomic_path  # noqa: E402
from .loading import RunResults  # noqa: E402
from .tables import model_classes, one_vs_rest_auc, pooled_per_image, pooled_predictions  # noqa: E402

DPI = 110
BAR_CLS_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_macro")
BAR_SEG_METRICS: tuple[str, ...] = ("dice", "iou_tumour", "dice_lesion_images")
NO_CLS = "no classification models in this run"
NO_SEG = "no segmentation models in this run"


def save_figure(fig: Figure, target: Path) -> None:
    """Write ``fig`` as PNG through an atomic temp file, then close it."""
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    finally:
        plt.close(fig)


def placeholder_figure(text: str) -> Figure:
    """A small figure that only carries a message."""
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, wrap=True)
    ax.set_axis_off()
    return fig


def _grid(n: int, ncols: int, size: tuple[float, float]) -> tuple[Figure, list[plt.Axes]]:
    """``n`` panels in a grid of at most ``ncols`` columns; unused axes are hidden."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_axis_off()
    return fig, flat[:n]


# --------------------------------------------------------------------------- ROC


def plot_roc(run: RunResults, target: Path) -> None:
    """One-vs-rest ROC curves per class, one panel per classification model, pooled over folds."""
    models = run.cls_models
    if not models:
        return save_figure(placeholder_figure(NO_CLS), target)
    fig, axes = _grid(len(models), 3, (4.6, 4.2))
    for ax, model in zip(axes, models):
        _roc_panel(ax, run, model)
    fig.tight_layout()
    save_figure(fig, target)


def _roc_panel(ax: plt.Axes, run: RunResults, model: str) -> None:
    preds = pooled_predictions(run, model)
    classes = model_classes(run.of_model(model)[0], run.classes)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    if preds.empty or "y_true" not in preds:
        ax.text(0.5, 0.5, "no predictions", ha="center", va="center")
    else:
        y_true = preds["y_true"].to_numpy(int)
        for i, name in enumerate(classes):
            _roc_curve_line(ax, (y_true == i).astype(int), preds.get(f"prob_{name}"), name)
        ax.legend(loc="lower right", fontsize=8)
    ax.set(title=f"{model} (pooled over folds)", xlabel="false positive rate", ylabel="true positive rate",
           xlim=(0, 1), ylim=(0, 1.02), aspect="equal")


def _roc_curve_line(ax: plt.Axes, positives: np.ndarray, scores: pd.Series | None, name: str) -> None:
    if scores is None:
        ax.plot([], [], label=f"{name} (no probabilities)")
        return
    area = one_vs_rest_auc(positives, scores.to_numpy(float))
    if math.isnan(area):
        ax.plot([], [], label=f"{name} (AUC n/a)")
        return
    fpr, tpr, _ = roc_curve(positives, scores.to_numpy(float))
    ax.plot(fpr, tpr, linewidth=1.6, label=f"{name} (AUC {auc(fpr, tpr):.3f})")


# --------------------------------------------------------------------------- metric bars


def plot_metrics_bar(cls_table: pd.DataFrame, seg_table: pd.DataFrame, models: Sequence[str], target: Path) -> None:
    """Mean over folds per model and key metric, sd error bars; one panel per task."""
    panels = [(t, m, title) for t, m, title in ((cls_table, BAR_CLS_METRICS, "classification"),
                                                (seg_table, BAR_SEG_METRICS, "segmentation")) if not t.empty]
    if not panels:
        return save_figure(placeholder_figure("no metrics in this run"), target)
    fig, axes = _grid(len(panels), 2, (7.2, 4.2))
    palette = dict(zip(models, sns.color_palette("tab10", n_colors=max(len(models), 1))))
    for ax, (table, metrics, title) in zip(axes, panels):
        _bar_panel(ax, table, metrics, title, palette)
    fig.tight_layout()
    save_figure(fig, target)


def _bar_panel(ax: plt.Axes, table: pd.DataFrame, metrics: Sequence[str], title: str,
               palette: dict[str, tuple[float, float, float]]) -> None:
    long = table.melt(id_vars=["model", "fold"], value_vars=list(metrics), var_name="metric", value_name="value")
    long = long.dropna(subset=["value"])
    if long.empty:
        ax.text(0.5, 0.5, "all values n/a", ha="center", va="center")
        ax.set_axis_off()
        return
    hue_order = [m for m in palette if m in set(long["model"])]
    sns.barplot(data=long, x="metric", y="value", hue="model", hue_order=hue_order, order=list(metrics),
                errorbar="sd", capsize=0.1, palette=palette, ax=ax)
    ax.set(title=f"{title} (mean ± sd over folds)", xlabel="", ylabel="score", ylim=(0, 1.05))
    ax.tick_params(axis="x", labelrotation=15)
    ax.legend(title="model", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


# --------------------------------------------------------------------------- overlays


def plot_overlays(run: RunResults, target: Path) -> None:
    """Best, median and worst test image by Dice for each segmentation model."""
    models = run.seg_models
    if not models:
        return save_figure(placeholder_figure(NO_SEG), target)
    images, masks, row_of = _load_arrays(run.arrays_path)
    fig, axes = plt.subplots(len(models), 3, figsize=(10.5, 3.7 * len(models)), squeeze=False)
    cache: dict[Path, tuple[np.ndarray, dict[str, int]]] = {}
    for row, model in zip(axes, models):
        picks = pick_best_median_worst(pooled_per_image(run, model))
        for ax, (kind, pick) in zip(row, picks):
            _overlay_panel(ax, run, model, kind, pick, (images, masks, row_of), cache)
    fig.legend(handles=[Line2D([], [], color="lime", label="ground truth"),
                        Line2D([], [], color="red", label="prediction (p ≥ 0.5)")],
               loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_figure(fig, target)


def pick_best_median_worst(per_image: pd.DataFrame) -> list[tuple[str, pd.Series | None]]:
    """Rows with the highest, median and lowest Dice (ties broken by image id)."""
    if per_image.empty or "dice" not in per_image:
        return [(k, None) for k in ("best", "median", "worst")]
    valid = per_image.assign(dice=pd.to_numeric(per_image["dice"], errors="coerce")).dropna(subset=["dice"])
    if valid.empty:
        return [(k, None) for k in ("best", "median", "worst")]
    ordered = valid.assign(image_id=valid["image_id"].astype(str)).sort_values(
        ["dice", "image_id"], kind="mergesort").reset_index(drop=True)
    n = len(ordered)
    return [("best", ordered.iloc[n - 1]), ("median", ordered.iloc[(n - 1) // 2]), ("worst", ordered.iloc[0])]


def _load_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    with np.load(path, allow_pickle=False) as npz:
        ids = [str(i) for i in npz["image_ids"]]
        return npz["images"], npz["masks"], {i: k for k, i in enumerate(ids)}


def _predicted_mask(path: Path, image_id: str,
                    cache: dict[Path, tuple[np.ndarray, dict[str, int]]]) -> np.ndarray | None:
    if path not in cache:
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as npz:
            if "mask_probs" not in npz.files:
                return None
            cache[path] = (npz["mask_probs"], {str(i): k for k, i in enumerate(npz["image_ids"])})
    probs, row_of = cache[path]
    k = row_of.get(image_id)
    return None if k is None else probs[k].astype(np.float32) / 255.0 >= 0.5


def _overlay_panel(ax: plt.Axes, run: RunResults, model: str, kind: str, pick: pd.Series | None,
                   arrays: tuple[np.ndarray, np.ndarray, dict[str, int]],
                   cache: dict[Path, tuple[np.ndarray, dict[str, int]]]) -> None:
    ax.set_axis_off()
    images, masks, row_of = arrays
    image_id = None if pick is None else str(pick["image_id"])
    if image_id is None or image_id not in row_of:
        ax.text(0.5, 0.5, f"{model} {kind}: no image", ha="center", va="center", transform=ax.transAxes)
        return
    image, truth = images[row_of[image_id]], masks[row_of[image_id]] > 0
    pred = _predicted_mask(run.fold_result(model, int(pick["fold"])).masks_path, image_id, cache)
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    _contour(ax, truth, image.shape, "lime")
    if pred is not None:
        _contour(ax, pred, image.shape, "red")
    label = pick.get("label", "")
    ax.set_title(f"{model} · {kind}\n{image_id} · {label} · Dice {float(pick['dice']):.3f}", fontsize=9)


def _contour(ax: plt.Axes, mask: np.ndarray, shape: tuple[int, ...], color: str) -> None:
    """Draw the 0.5 iso-line of ``mask`` in the pixel coordinates of an image of ``shape``."""
    if mask.min() == mask.max():
        return
    h, w = mask.shape
    ys = (np.arange(h) + 0.5) * shape[0] / h - 0.5
    xs = (np.arange(w) + 0.5) * shape[1] / w - 0.5
    ax.contour(xs, ys, mask.astype(np.float32), levels=[0.5], colors=[color], linewidths=1.4)


# --------------------------------------------------------------------------- training curves


def plot_training_curves(run: RunResults, target: Path) -> None:
    """Train (solid) and validation (dashed) loss per epoch; one panel per model, one colour per fold."""
    models = list(run.models)
    if not models:
        return save_figure(placeholder_figure("no models in this run"), target)
    fig, axes = _grid(len(models), 3, (4.6, 3.6))
    colors = sns.color_palette("tab10", n_colors=max(len(run.folds), 1))
    for ax, model in zip(axes, models):
        _curves_panel(ax, run, model, colors)
    fig.tight_layout()
    save_figure(fig, target)


def _curves_panel(ax: plt.Axes, run: RunResults, model: str, colors: Sequence[tuple[float, ...]]) -> None:
    drawn = False
    for i, result in enumerate(run.of_model(model)):
        hist = result.history
        if hist.empty or "epoch" not in hist:
            continue
        color = colors[i % len(colors)]
        for column, style in (("train_loss", "-"), ("val_loss", "--")):
            if column in hist and hist[column].notna().any():
                ax.plot(hist["epoch"], hist[column], style, color=color, linewidth=1.3,
                        label=f"fold {result.fold} {column.split('_')[0]}")
                drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no training history", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=7, ncol=2)
    ax.set(title=model, xlabel="epoch", ylabel="loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# --------------------------------------------------------------------------- confusion matrices


def plot_confusion(run: RunResults, target: Path) -> None:
    """Confusion matrices summed over folds, one heatmap per classification model."""
    models = run.cls_models
    if not models:
        return save_figure(placeholder_figure(NO_CLS), target)
    fig, axes = _grid(len(models), 3, (4.4, 3.9))
    for ax, model in zip(axes, models):
        matrix, classes = summed_confusion(run, model)
        if matrix is None:
            ax.text(0.5, 0.5, "no confusion matrix", ha="center", va="center")
            ax.set_axis_off()
            continue
        sns.heatmap(matrix, annot=True, fmt="d", cmap="Blues", cbar=False, square=True,
                    xticklabels=classes, yticklabels=classes, ax=ax)
        ax.set(title=f"{model} (sum over folds)", xlabel="predicted", ylabel="true")
    fig.tight_layout()
    save_figure(fig, target)


def summed_confusion(run: RunResults, model: str) -> tuple[np.ndarray | None, list[str]]:
    """Sum of the per-fold confusion matrices of a model (None if none is usable)."""
    results = [r for r in run.of_model(model) if r.classification is not None]
    classes = model_classes(results[0], run.classes) if results else list(run.classes)
    total = None
    for r in results:
        cm = r.classification.get("confusion_matrix")
        if cm is None:
            continue
        cm = np.asarray(cm, dtype=np.int64)
        if cm.shape != (len(classes), len(classes)):
            continue
        total = cm if total is None else total + cm
    return total, classes
