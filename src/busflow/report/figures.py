"""Report figures (matplotlib Agg + seaborn). Each ``plot_*`` function writes one PNG atomically.

A figure whose section does not apply is still written, as a small panel that says why.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve  # noqa: E402

from busflow.evaluate.catalogue import CLASSIFICATION, SEGMENTATION, names  # noqa: E402
from busflow.io import atomic_dir, atomic_path, write_csv  # noqa: E402
from busflow.report.cross_dataset import metric_label, tested_datasets  # noqa: E402
from busflow.report.loading import RunResults  # noqa: E402
from busflow.report.tables import DuplicateCluster, card_name, model_classes, one_vs_rest_auc, pooled_per_image, pooled_predictions  # noqa: E402

DPI = 110
BAR_CLS_METRICS = names("bar", CLASSIFICATION)
BAR_SEG_METRICS = names("bar", SEGMENTATION)
NO_CLS = "no classification models in this run"
NO_SEG = "no segmentation models in this run"
NO_LEAKAGE = "no leakage study configured (leakage.models is empty)"
NO_EXTERNAL = "no external dataset configured (external.datasets is empty)"
REPORT_WIDTH = 10.4  # inches the HTML report shows at 100 % (its 1150 px column at DPI)
# Contact sheets: every image scaled to a common height, at most TILES_PER_ROW side by side (sizes in pixels).
TILE_HEIGHT, TILES_PER_ROW, SHEET_GAP, TILE_TITLE, SHEET_HEADER, SHEET_MIN_WIDTH = 200, 6, 12, 40, 56, 480
CONFLICT_COLOR = "#b00000"
# Colour-blind-safe colours (Okabe and Ito): lesion contours readable on gray ultrasound, and one colour per
# model kept in every figure.
TRUTH_COLOR, PREDICTION_COLOR = "#56B4E9", "#E69F00"  # sky blue, orange
GROUPED_COLOR, LEAKY_COLOR = "#0072B2", "#D55E00"  # blue, vermillion
SUBSET_COLOURS = {"with a leaked sibling": LEAKY_COLOR, "without a leaked sibling": GROUPED_COLOR}  # others: dark grey


def model_colours(models: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per model, in the run's model order, from seaborn's colour-blind palette."""
    palette = sns.color_palette("colorblind", n_colors=10)
    return {model: palette[i % len(palette)] for i, model in enumerate(models)}


def save_figure(fig: Figure, target: Path, tight: bool = True) -> None:
    """Write ``fig`` as PNG through an atomic temp file, then close it.

    ``tight`` crops to the drawn content, at the cost of drawing the figure twice; a figure laid out in
    pixels (a contact sheet) needs no cropping.
    """
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight" if tight else None, metadata={"Software": None})
    finally:
        plt.close(fig)


def message_figure(text: str) -> Figure:
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
    _class_curves(run, target, "roc")


def plot_pr(run: RunResults, target: Path) -> None:
    """One-vs-rest precision-recall curves per class, one panel per classification model, pooled over folds."""
    _class_curves(run, target, "pr")


def _class_curves(run: RunResults, target: Path, kind: str) -> None:
    models = run.cls_models
    if not models:
        return save_figure(message_figure(NO_CLS), target)
    fig, axes = _grid(len(models), 3, (4.6, 4.2))
    for ax, model in zip(axes, models):
        _curve_panel(ax, run, model, kind)
    fig.tight_layout()
    save_figure(fig, target)


def _curve_panel(ax: plt.Axes, run: RunResults, model: str, kind: str) -> None:
    preds = pooled_predictions(run, model)
    classes = model_classes(run.of_model(model)[0], run.classes)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    if preds.empty or "y_true" not in preds:
        ax.text(0.5, 0.5, "no predictions", ha="center", va="center")
    else:
        y_true = preds["y_true"].to_numpy(int)
        for i, name in enumerate(classes):
            _class_curve_line(ax, (y_true == i).astype(int), preds.get(f"prob_{name}"), name, kind)
        ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
    labels = (("false positive rate", "true positive rate") if kind == "roc" else ("recall", "precision"))
    ax.set(title=f"{model} (pooled over folds)", xlabel=labels[0], ylabel=labels[1], xlim=(0, 1), ylim=(0, 1.02),
           aspect="equal")


def _class_curve_line(ax: plt.Axes, positives: np.ndarray, scores: pd.Series | None, name: str, kind: str) -> None:
    area_name = "AUC" if kind == "roc" else "AP"
    if scores is None:
        ax.plot([], [], label=f"{name} (no probabilities)")
        return
    values = scores.to_numpy(float)
    if math.isnan(one_vs_rest_auc(positives, values)):
        ax.plot([], [], label=f"{name} ({area_name} n/a)")
        return
    if kind == "roc":
        x, y, _ = roc_curve(positives, values)
        area = auc(x, y)
    else:
        y, x, _ = precision_recall_curve(positives, values)
        area = average_precision_score(positives, values)
    ax.plot(x, y, linewidth=1.6, label=f"{name} ({area_name} {area:.3f})", drawstyle="steps-post" if kind == "pr" else "default")


# --------------------------------------------------------------------------- failure gallery


def plot_failures(failures: pd.DataFrame, arrays_path: Path, target: Path) -> None:
    """The most confident misclassifications of each classifier (tables/failures.csv), one row per model."""
    if failures.empty:
        return save_figure(message_figure("no misclassified test images (or no classification models)"), target)
    images, _, row_of = _load_arrays(arrays_path)
    models = list(dict.fromkeys(failures["model"]))
    columns = int(failures.groupby("model").size().max())
    fig, axes = plt.subplots(len(models), columns, figsize=(2.8 * columns, 3.1 * len(models)), squeeze=False)
    for row, model in zip(axes, models):
        picks = failures[failures["model"] == model].reset_index(drop=True)
        for k, ax in enumerate(row):
            ax.set_axis_off()
            if k >= len(picks):
                continue
            pick = picks.iloc[k]
            if str(pick["image_id"]) in row_of:
                ax.imshow(images[row_of[str(pick["image_id"])]], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(f"{model} · fold {pick['fold']}\n{pick['image_id']}\ntrue {pick['label']} → "
                         f"{pick['predicted']} ({pick['confidence']:.2f})", fontsize=8)
    fig.tight_layout()
    save_figure(fig, target)


# --------------------------------------------------------------------------- ablation


def plot_ablation(ablation: pd.DataFrame, target: Path) -> None:
    """Heat map of the ablation grid: learning rate (rows) × option set (columns), headline metric mean over folds."""
    metric = next((m for m in ("dice", "balanced_accuracy", "accuracy") if m in set(ablation.get("metric", ()))), None)
    if metric is None:
        return save_figure(message_figure("no ablation grid in this run (ablation.model is null)"), target)
    cells = ablation[ablation["metric"] == metric]
    means = cells.pivot(index="lr", columns="options", values="mean")
    labels = cells.assign(text=[f"{m:.3f}\n± {s:.3f}" if not math.isnan(s) else f"{m:.3f}" for m, s in zip(cells["mean"], cells["sd"])]
                          ).pivot(index="lr", columns="options", values="text")
    fig, ax = plt.subplots(figsize=(1.8 * means.shape[1] + 2.5, 1.0 * means.shape[0] + 1.8))
    sns.heatmap(means, annot=labels.loc[means.index, means.columns].to_numpy(), fmt="", cmap="viridis", ax=ax,
                cbar_kws={"label": f"{metric} (mean over folds)"})
    ax.set(title=f"Ablation of {cells['model'].iloc[0]}: {metric}", xlabel="option set", ylabel="learning rate")
    ax.set_yticklabels([f"{v:g}" for v in means.index], rotation=0)
    fig.tight_layout()
    save_figure(fig, target)


# --------------------------------------------------------------------------- cross-dataset matrix


def plot_cross_dataset(table: pd.DataFrame, target: Path) -> None:
    """Heat map of tables/cross_dataset.csv, one panel per model and metric: trained on (rows) × tested on
    (columns), coloured by the pooled value on a fixed 0-1 scale and labelled with its bootstrap interval; the
    in-domain cells (own test folds) outlined."""
    if table.empty:
        return save_figure(message_figure(NO_EXTERNAL), target)
    trained, tested = list(dict.fromkeys(table["trained_on"])), tested_datasets(table)
    panels = list(dict.fromkeys(zip(table["model"], table["metric"])))
    size = (1.75 * len(tested) + 2.6, 0.7 * len(trained) + 1.7)
    fig, axes = _grid(len(panels), 2 if 2 * size[0] <= REPORT_WIDTH else 1, size)
    for ax, (model, metric) in zip(axes, panels):
        cells = table[(table["model"] == model) & (table["metric"] == metric)]
        _cross_panel(ax, cells, trained, tested, f"{model}: {metric_label(metric)}")
    fig.tight_layout()
    save_figure(fig, target)


def _cross_panel(ax: plt.Axes, cells: pd.DataFrame, trained: list[str], tested: list[str], title: str) -> None:
    def grid(values: pd.Series) -> pd.DataFrame:
        frame = cells.assign(value=values.to_numpy()).pivot(index="trained_on", columns="tested_on", values="value")
        return frame.reindex(index=trained, columns=tested)

    text = pd.Series([_cell_text(e, lo, hi) for e, lo, hi in zip(cells["estimate"], cells["ci_low"], cells["ci_high"])])
    values = grid(cells["estimate"].astype(float)).astype(float)
    sns.heatmap(values, annot=grid(text).fillna("").to_numpy(), fmt="", cmap="viridis", vmin=0, vmax=1, ax=ax,
                linewidths=1, linecolor="white", annot_kws={"fontsize": 10}, cbar_kws={"label": "pooled value"})
    _mark_cells(ax, values, set(zip(cells["trained_on"], cells["tested_on"])))
    ax.set(title=title, xlabel="tested on (outlined: in-domain test folds)", ylabel="trained on")
    ax.set_yticklabels(trained, rotation=0)
    ax.set_xticklabels(tested, rotation=0)


def _mark_cells(ax: plt.Axes, values: pd.DataFrame, tested_pairs: set[tuple[str, str]]) -> None:
    """Outline the in-domain cells; name the empty ones (a pair no run tested, or an undefined statistic)."""
    ax.set_facecolor("0.88")
    for row, source in enumerate(values.index):
        for column, dataset in enumerate(values.columns):
            if math.isnan(values.loc[source, dataset]):
                ax.text(column + 0.5, row + 0.5, "n/a" if (source, dataset) in tested_pairs else "not tested",
                        ha="center", va="center", fontsize=10, color="0.3")
            elif source == dataset:
                ax.add_patch(Rectangle((column, row), 1, 1, fill=False, edgecolor="white", linewidth=4))
                ax.add_patch(Rectangle((column, row), 1, 1, fill=False, edgecolor="black", linewidth=1.5))


def _cell_text(estimate: float, low: float, high: float) -> str:
    """``0.81 [0.75, 0.86]``; the estimate alone without an interval."""
    return f"{estimate:.2f}" if math.isnan(low) or math.isnan(high) else f"{estimate:.2f} [{low:.2f}, {high:.2f}]"


# --------------------------------------------------------------------------- calibration


def plot_calibration(calibration: pd.DataFrame, intervals: pd.DataFrame, models: Sequence[str], target: Path) -> None:
    """Reliability diagram: accuracy against mean confidence per confidence bin, one line per classifier."""
    if calibration.empty:
        return save_figure(message_figure(NO_CLS), target)
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="perfect calibration")
    ece = {r.model: r.estimate for r in intervals.itertuples() if r.metric == "classification.ece"}
    colours = model_colours(models)
    for model, bins in calibration.groupby("model", sort=False):
        filled = bins[bins["n"] > 0]
        label = f"{model} (ECE {ece[model]:.3f})" if model in ece and not math.isnan(ece[model]) else model
        ax.plot(filled["confidence"], filled["accuracy"], marker="o", linewidth=1.4, label=label, color=colours.get(model))
    ax.set(title="Reliability (pooled over folds)", xlabel="mean top-class confidence in bin",
           ylabel="accuracy in bin", xlim=(0, 1), ylim=(0, 1.02), aspect="equal")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, target)


# --------------------------------------------------------------------------- metric bars


def plot_metrics_bar(intervals: pd.DataFrame, models: Sequence[str], target: Path) -> None:
    """Per model and key metric the value pooled over all test images, error bars its bootstrap interval; one
    panel per task."""
    panels = [(block, metrics, title) for block, metrics, title in ((CLASSIFICATION, BAR_CLS_METRICS, "classification"),
                                                                  (SEGMENTATION, BAR_SEG_METRICS, "segmentation"))
              if not intervals.empty and intervals["metric"].isin([f"{block}.{m}" for m in metrics]).any()]
    if not panels:
        return save_figure(message_figure("no metrics in this run"), target)
    fig, axes = _grid(len(panels), 2, (7.2, 4.2))
    colours = model_colours(models)
    for ax, (block, metrics, title) in zip(axes, panels):
        _bar_panel(ax, intervals, block, metrics, title, colours)
    fig.tight_layout()
    save_figure(fig, target)


def _bar_panel(ax: plt.Axes, intervals: pd.DataFrame, block: str, metrics: Sequence[str], title: str,
               colours: dict[str, tuple[float, float, float]]) -> None:
    rows = intervals.set_index(["model", "metric"])
    shown = [m for m in colours if any((m, f"{block}.{metric}") in rows.index for metric in metrics)]
    width = 0.8 / max(len(shown), 1)
    for number, model in enumerate(shown):
        cells = [rows.loc[(model, f"{block}.{metric}")] if (model, f"{block}.{metric}") in rows.index else None for metric in metrics]
        estimate = np.array([np.nan if c is None else c["estimate"] for c in cells], dtype=float)
        low = np.array([np.nan if c is None else c["ci_low"] for c in cells], dtype=float)
        high = np.array([np.nan if c is None else c["ci_high"] for c in cells], dtype=float)
        x = np.arange(len(metrics)) - 0.4 + width * (number + 0.5)
        errors = np.nan_to_num(np.vstack([estimate - low, high - estimate]))
        ax.bar(x, np.nan_to_num(estimate), width, yerr=errors, capsize=2, color=colours[model], label=model,
               error_kw={"linewidth": 1})
    ax.set_xticks(np.arange(len(metrics)), list(metrics), rotation=15)
    ax.set(title=f"{title} (pooled, 95 % interval)", xlabel="", ylabel="score", ylim=(0, 1.05))
    ax.legend(title="model", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


# --------------------------------------------------------------------------- paired comparisons


def plot_comparisons(comparisons: pd.DataFrame, models: Sequence[str], target: Path) -> None:
    """Forest plot: each model minus the reference per key metric, with its paired bootstrap interval; a
    filled marker where the interval excludes 0."""
    keys = [f"{CLASSIFICATION}.{m}" for m in BAR_CLS_METRICS] + [f"{SEGMENTATION}.{m}" for m in BAR_SEG_METRICS]
    shown = comparisons[comparisons["metric"].isin(keys)].dropna(subset=["difference"]) if not comparisons.empty else comparisons
    if shown.empty:
        return save_figure(message_figure("no paired comparison in this run (one model, or no shared test images)"), target)
    colours = model_colours(models)
    fig, ax = plt.subplots(figsize=(7.5, max(2.4, 0.9 + 0.32 * len(shown))))
    _forest(ax, shown, [f"{r.model}: {r.metric.split('.')[-1]}" for r in shown.itertuples()],
            [colours.get(model, "0.3") for model in shown["model"]])
    ax.set(title=f"Paired difference with {shown['reference'].iloc[0]} (95 % interval; filled: excludes 0)",
           xlabel="model minus reference")
    fig.tight_layout()
    save_figure(fig, target)


def _forest(ax: Axes, rows: pd.DataFrame, labels: Sequence[str], colours: Sequence[str]) -> None:
    """Differences (``difference``, ``ci_low``, ``ci_high``) with their intervals, the first row at the top and a
    filled marker where the interval excludes 0."""
    for y, (row, colour) in enumerate(zip(rows.iloc[::-1].itertuples(), list(colours)[::-1])):
        significant = row.ci_low > 0 or row.ci_high < 0
        ax.errorbar(row.difference, y, xerr=[[row.difference - row.ci_low], [row.ci_high - row.difference]], fmt="o",
                    color=colour, markerfacecolor=colour if significant else "white", capsize=3, linewidth=1.3)
    ax.axvline(0, color="0.4", linewidth=1, linestyle="--")
    ax.set_yticks(range(len(rows)), list(labels)[::-1], fontsize=9)


# --------------------------------------------------------------------------- overlays


def plot_overlays(run: RunResults, target: Path) -> None:
    """Best, median and worst test image by Dice for each segmentation model."""
    models = run.seg_models
    if not models:
        return save_figure(message_figure(NO_SEG), target)
    images, masks, row_of = _load_arrays(run.arrays_path)
    fig, axes = plt.subplots(len(models), 3, figsize=(10.5, 3.7 * len(models)), squeeze=False)
    cache: dict[Path, tuple[np.ndarray, dict[str, int]]] = {}
    for row, model in zip(axes, models):
        picks = pick_best_median_worst(pooled_per_image(run, model))
        for ax, (kind, pick) in zip(row, picks):
            _overlay_panel(ax, run, model, kind, pick, (images, masks, row_of), cache)
    fig.legend(handles=[Line2D([], [], color=TRUTH_COLOR, label="ground truth"),
                        Line2D([], [], color=PREDICTION_COLOR, label="prediction (p ≥ 0.5)")],
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
    _contour(ax, truth, image.shape, TRUTH_COLOR)
    if pred is not None:
        _contour(ax, pred, image.shape, PREDICTION_COLOR)
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
        return save_figure(message_figure("no models in this run"), target)
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
        return save_figure(message_figure(NO_CLS), target)
    fig, axes = _grid(len(models), 3, (4.4, 3.9))
    for ax, model in zip(axes, models):
        _confusion_panel(ax, run, model)
    fig.tight_layout()
    save_figure(fig, target)


def _confusion_panel(ax: plt.Axes, run: RunResults, model: str) -> None:
    matrix, classes = summed_confusion(run, model)
    if matrix is None:
        ax.text(0.5, 0.5, "no confusion matrix", ha="center", va="center")
        ax.set_axis_off()
        return
    sns.heatmap(matrix, annot=True, fmt="d", cmap="Blues", cbar=False, square=True,
                xticklabels=classes, yticklabels=classes, ax=ax)
    ax.set(title=f"{model} (sum over folds)", xlabel="predicted", ylabel="true")


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


# --------------------------------------------------------------------------- leakage study


def plot_leakage(leakage: pd.DataFrame, paired: pd.DataFrame, target: Path) -> None:
    """Left: paired bars per leakage model x metric, grouped vs image-level mean over folds with sd error bars.
    Right: the differences on the same test images (tables/leakage_paired.csv) with their intervals."""
    paired = paired.dropna(subset=["difference", "ci_low", "ci_high"]) if not paired.empty else paired
    panels = [name for name, table in (("folds", leakage), ("paired", paired)) if not table.empty]
    if not panels:
        return save_figure(message_figure(NO_LEAKAGE), target)
    width = {"folds": max(6.0, 1.2 * len(leakage) + 2.5), "paired": 7.0}
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(width[p] for p in panels), max(4.4, 0.9 + 0.32 * len(paired))),
                             squeeze=False, gridspec_kw={"width_ratios": [width[p] for p in panels]})
    for ax, panel in zip(axes[0], panels):
        if panel == "folds":
            _fold_mean_bars(ax, leakage)
        else:
            _forest(ax, paired, [f"{r.model} {r.score}: {r.subset}" for r in paired.itertuples()],
                    [SUBSET_COLOURS.get(subset, "0.2") for subset in paired["subset"]])
            ax.set(title="Same test images: image-level − grouped\n(95 % group-bootstrap interval; filled: excludes 0)",
                   xlabel="paired difference")
    fig.tight_layout()
    save_figure(fig, target)


def _fold_mean_bars(ax: Axes, leakage: pd.DataFrame) -> None:
    x = np.arange(len(leakage))
    for offset, prefix, label, color in ((-0.2, "grouped", "grouped (leak-free)", GROUPED_COLOR),
                                         (0.2, "image_level", "image-level (leaky)", LEAKY_COLOR)):
        ax.bar(x + offset, leakage[f"{prefix}_mean"], 0.4, yerr=leakage[f"{prefix}_sd"].fillna(0), capsize=3,
               label=label, color=color)
    ticks = [f"{m}\n{k}\nΔ {d:+.3f}" for m, k, d in zip(leakage["model"], leakage["metric"], leakage["inflation"])]
    ax.set_xticks(x, [t.replace("nan", "n/a") for t in ticks], fontsize=8)
    ax.set(title="Grouped vs image-level folds (mean ± sd over folds)",
           xlabel="Δ: inflation, image-level minus grouped", ylabel="score", ylim=(0, 1.1))
    ax.legend(loc="upper left", frameon=False, fontsize=8)


# --------------------------------------------------------------------------- model cards

CARD_METRICS = ("classification.roc_auc_macro", "classification.balanced_accuracy", "classification.accuracy",
                "classification.f1_macro", "classification.ece", "segmentation.dice", "segmentation.iou_tumour",
                "segmentation.dice_lesion_images", "segmentation.empty_image_false_positive_rate")


def write_model_cards(run: RunResults, intervals: pd.DataFrame, target_dir: Path) -> None:
    """One card per model in ``target_dir``, replaced as a whole: its pooled metrics with intervals, the
    confusion matrix and ROC curves of a classifier, the training curves, and the best, median and worst
    test image of a segmenter."""
    arrays = _load_arrays(run.arrays_path) if run.seg_models else None
    with atomic_dir(target_dir) as tmp:  # index.csv keeps the folder non-empty (DVC drops empty folders)
        write_csv(tmp / "index.csv", pd.DataFrame({"model": list(run.models), "card": [card_name(m) for m in run.models]}))
        for model in run.models:
            save_figure(model_card(run, intervals, model, arrays), tmp / card_name(model))


def model_card(run: RunResults, intervals: pd.DataFrame, model: str,
               arrays: tuple[np.ndarray, np.ndarray, dict[str, int]] | None) -> Figure:
    classifies, segments = run.has_classification(model), run.has_segmentation(model) and arrays is not None
    top = ["metrics", *(["confusion", "roc"] if classifies else []), "curves"]
    rows = 2 if segments else 1
    fig = plt.figure(figsize=(4.2 * max(len(top), 3), 4.0 * rows))
    grid = fig.add_gridspec(rows, max(len(top), 3))
    for column, panel in enumerate(top):
        ax = fig.add_subplot(grid[0, column])
        if panel == "metrics":
            _metrics_panel(ax, intervals, model)
        elif panel == "confusion":
            _confusion_panel(ax, run, model)
        elif panel == "roc":
            _curve_panel(ax, run, model, "roc")
        else:
            _curves_panel(ax, run, model, sns.color_palette("colorblind", n_colors=max(len(run.folds), 1)))
    if segments:
        per_image = pooled_per_image(run, model)
        cache: dict[Path, tuple[np.ndarray, dict[str, int]]] = {}
        for column, (kind, pick) in enumerate(pick_best_median_worst(per_image) if not per_image.empty else []):
            _overlay_panel(fig.add_subplot(grid[1, column]), run, model, kind, pick, arrays, cache)
        fig.legend(handles=[Line2D([], [], color=TRUTH_COLOR, label="ground truth"),
                            Line2D([], [], color=PREDICTION_COLOR, label="prediction (p ≥ 0.5)")],
                   loc="lower right", frameon=False)
    fig.suptitle(f"{model}: pooled over {len(run.of_model(model))} test fold(s)", fontsize=12, y=1.0)
    fig.tight_layout()
    return fig


def _metrics_panel(ax: plt.Axes, intervals: pd.DataFrame, model: str) -> None:
    """The model's key pooled metrics with their intervals, as text."""
    ax.set_axis_off()
    rows = intervals[(intervals["model"] == model) & intervals["metric"].isin(CARD_METRICS)] if not intervals.empty else intervals
    lines = [f"{row.metric.split('.')[-1]:<32}{row.estimate:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]"
             for row in rows.dropna(subset=["estimate"]).itertuples()]
    confidence = f"{float(rows['confidence'].iloc[0]):.0%}" if len(rows) else "95 %"
    ax.text(0.0, 1.0, "\n".join([f"pooled [{confidence} interval]", "", *(lines or ["no pooled metrics"])]),
            va="top", ha="left", family="monospace", fontsize=9, transform=ax.transAxes)


# --------------------------------------------------------------------------- duplicate-cluster contact sheets


@dataclass(frozen=True)
class Tile:
    """One image of a contact sheet: scaled pixels, or ``None`` and the reason it could not be read."""

    caption: str
    pixels: np.ndarray | None = field(default=None, compare=False)
    error: str = ""

    @property
    def width(self) -> int:
        return TILE_HEIGHT if self.pixels is None else int(self.pixels.shape[1])


def write_contact_sheets(run: RunResults, clusters: Sequence[DuplicateCluster], target_dir: Path) -> list[str]:
    """One PNG per cluster in ``target_dir`` and ``index.csv`` listing them (so the folder is never empty: an
    empty folder does not survive ``dvc push``/``pull``), replaced as a whole.

    Returns ``"<image id>: <error>"`` for every image that could not be read (drawn as a tile naming the error).
    """
    index = run.index.drop_duplicates("image_id").set_index("image_id")
    problems: list[str] = []
    with atomic_dir(target_dir) as tmp:
        write_csv(tmp / "index.csv", pd.DataFrame(
            [{"cluster_id": c.cluster_id, "sheet": Path(c.sheet).name, "images": ";".join(c.image_ids),
              "labels": ";".join(c.labels), "label_conflict": c.label_conflict} for c in clusters],
            columns=["cluster_id", "sheet", "images", "labels", "label_conflict"]))
        for cluster in clusters:
            tiles = [read_tile(index, image_id) for image_id in cluster.image_ids]
            problems += [f"{i}: {t.error}" for i, t in zip(cluster.image_ids, tiles) if t.error]
            save_figure(contact_sheet(cluster, tiles), tmp / Path(cluster.sheet).name, tight=False)
    return problems


def read_tile(index: pd.DataFrame, image_id: str) -> Tile:
    """The original image of ``image_id`` (``image_path`` of index.csv) scaled to TILE_HEIGHT, or an error tile."""
    label = index["label"].get(image_id, "?")
    try:
        with Image.open(Path(str(index.at[image_id, "image_path"]))) as img:
            img.load()
            width, height = img.size
            pixels = np.asarray(_displayable(img).resize(
                (max(1, round(width * TILE_HEIGHT / height)), TILE_HEIGHT), Image.Resampling.LANCZOS))
    except (OSError, KeyError, ValueError, Image.DecompressionBombError) as error:  # an error tile, never a crash
        return Tile(f"{image_id} · {label}\nunreadable", error=f"{type(error).__name__}: {error}")
    return Tile(f"{image_id} · {label}\n{width}×{height} px", pixels)


def _displayable(img: Image.Image) -> Image.Image:
    """8-bit grayscale or RGB; 16-bit and float images are min-max scaled."""
    if img.mode in ("L", "RGB"):
        return img
    if img.mode.startswith(("I", "F")):
        values = np.asarray(img, dtype=np.float32)
        span = max(float(values.max() - values.min()), 1e-6)
        return Image.fromarray(((values - values.min()) / span * 255).astype(np.uint8))
    return img.convert("RGB")


def contact_sheet(cluster: DuplicateCluster, tiles: Sequence[Tile]) -> Figure:
    """The tiles side by side (rows of TILES_PER_ROW) under a title with the labels and link scores.

    Laid out in pixels: every tile is placed unscaled with ``figimage`` and captioned with figure text, so a
    sheet needs no axes (BUSI's report draws over a hundred of them).
    """
    rows = [list(range(k, min(k + TILES_PER_ROW, len(tiles)))) for k in range(0, len(tiles), TILES_PER_ROW)]
    row_widths = [sum(tiles[i].width + SHEET_GAP for i in row) + SHEET_GAP for row in rows]
    row_height = TILE_TITLE + TILE_HEIGHT
    height = SHEET_HEADER + row_height * len(rows) + SHEET_GAP
    fig = plt.figure(figsize=(SHEET_MIN_WIDTH / DPI, height / DPI), dpi=DPI)
    title = fig.suptitle(sheet_title(cluster), y=1 - 6 / height, va="top", fontsize=9,
                         color=CONFLICT_COLOR if cluster.label_conflict else "black")
    title_width = title.get_window_extent(renderer=fig.canvas.get_renderer()).width + 2 * SHEET_GAP
    width = math.ceil(max(SHEET_MIN_WIDTH, title_width, *row_widths))
    fig.set_size_inches(width / DPI, height / DPI)
    for r, row in enumerate(rows):
        left, bottom = (width - row_widths[r]) // 2 + SHEET_GAP, height - SHEET_HEADER - (r + 1) * row_height
        for i in row:
            _place_tile(fig, tiles[i], left, bottom)
            left += tiles[i].width + SHEET_GAP
    return fig


def _place_tile(fig: Figure, tile: Tile, left: int, bottom: int) -> None:
    """One tile with its lower left corner at pixel (``left``, ``bottom``) and its caption above it."""
    width, height = fig.bbox.width, fig.bbox.height
    pixels = tile.pixels if tile.pixels is not None else np.full((TILE_HEIGHT, TILE_HEIGHT), 225, np.uint8)
    fig.figimage(pixels, xo=left, yo=bottom, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=255,
                 origin="upper")
    centre = (left + tile.width / 2) / width
    fig.text(centre, (bottom + TILE_HEIGHT + 4) / height, tile.caption, ha="center", va="bottom", fontsize=7.5)
    if tile.pixels is None:
        fig.text(centre, (bottom + TILE_HEIGHT / 2) / height, textwrap.fill(tile.error, 30, max_lines=6),
                 ha="center", va="center", fontsize=7, color=CONFLICT_COLOR)


def sheet_title(cluster: DuplicateCluster, max_links: int = 3) -> str:
    """The cluster's caption and its strongest links with their scores."""
    links = cluster.links.sort_values("score", ascending=False, kind="stable")
    parts = [f"{a}–{b} {reason} {float(score):.3f}" for a, b, reason, score
             in links[["image_a", "image_b", "reason", "score"]].head(max_links).itertuples(index=False)]
    more = f" (+{len(links) - max_links} more)" if len(links) > max_links else ""
    return f"{cluster.caption}\nlinks: {'; '.join(parts)}{more}"
