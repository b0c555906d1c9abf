"""File names of the stage contracts (DESIGN.md), shared by the CLI, the Snakefile and the tests.

Importing this module is cheap (no torch), so the Snakefile can use it to declare outputs.
"""

from __future__ import annotations

DVCLIVE_DIR = "dvclive"  # per-epoch curves logged with dvclive, beside history.csv
TRAIN_OUTPUTS: tuple[str, ...] = ("weights.pt", "model.json", "history.csv", "predictions.csv", "predictions.npz")
TRAIN_LIVE_METRICS = f"{DVCLIVE_DIR}/metrics.json"  # last epoch's values
TRAIN_PLOTS = f"{DVCLIVE_DIR}/plots/metrics"  # a folder: one .tsv per logged metric
EVALUATE_OUTPUTS: tuple[str, ...] = ("metrics.json", "per_image.csv")
REPORT_FILES: tuple[str, ...] = (
    "index.html",
    "report.md",
    "tables/leaderboard.csv",
    "tables/classification.csv",
    "tables/segmentation.csv",
    "tables/per_class.csv",
    "tables/dataset.csv",
    "tables/split.csv",
    "tables/groups.csv",
    "tables/label_conflicts.csv",
    "tables/leakage.csv",
    "tables/external.csv",
    "tables/ablation.csv",
    "tables/reproduction.csv",
    "tables/intervals.csv",
    "tables/comparisons.csv",
    "tables/calibration.csv",
    "tables/failures.csv",
    "tables/jobs.csv",
    "figures/roc.png",
    "figures/metrics_bar.png",
    "figures/overlays.png",
    "figures/training_curves.png",
    "figures/confusion.png",
    "figures/leakage.png",
    "figures/calibration.png",
    "figures/pr.png",
    "figures/failures.png",
    "figures/ablation.png",
)
# Directories the report always creates (possibly empty): one contact sheet per duplicate cluster.
REPORT_DIRS: tuple[str, ...] = ("clusters",)


def results_root(run: str) -> str:
    """Outputs of one run: ``results/<run>`` (``run`` in params; by convention the dataset or preset name)."""
    return f"results/{run}"


LEAKY_SPLIT = "random_image"  # the image-level split of the leakage study
SPLIT_FILES: dict[str, str] = {
    "groups": "split/groups.csv",
    "links": "split/duplicate_links.csv",
    "folds": "split/folds.csv",
    "leaky": f"split/folds_{LEAKY_SPLIT}.csv",
    "conflicts": "split/label_conflicts.csv",
    "audit": "split/audit.json",
    "counts": "split/split_counts.csv",
}


def fold_dir(run: str, model: str, fold: int | str, split: str = "main") -> str:
    """Outputs of one model on one test fold; runs on the leaky split live beside them under ``random_image/``."""
    leaky = f"{LEAKY_SPLIT}/" if split == LEAKY_SPLIT else ""
    return f"{results_root(run)}/models/{model}/{leaky}fold{fold}"


def ablation_cell(lr: float | str, variant: str) -> str:
    """Folder name of one cell of the ablation grid, e.g. ``lr0.0001_f16_64`` (``str`` of the float)."""
    return f"lr{lr}_{variant}"


def ablation_dir(run: str, model: str, lr: float | str, variant: str, fold: int | str) -> str:
    """Outputs of one ablation cell on one test fold, beside the model's own folds."""
    return f"{results_root(run)}/models/{model}/ablation/{ablation_cell(lr, variant)}/fold{fold}"
