"""File names of the stage contracts (docs/architecture.md, "Data contracts"), shared by the CLI, the Snakefile and the tests.

Importing this module is cheap (no torch), so the Snakefile can use it to declare outputs.
"""

from __future__ import annotations

from pathlib import Path

DVCLIVE_DIR = "dvclive"  # per-epoch curves logged with dvclive, beside history.csv
TRAIN_OUTPUTS: tuple[str, ...] = ("weights.pt", "model.json", "history.csv", "predictions.csv", "predictions.npz")
TRAIN_LIVE_METRICS = f"{DVCLIVE_DIR}/metrics.json"  # last epoch's values
TRAIN_PLOTS = f"{DVCLIVE_DIR}/plots/metrics"  # a folder: one .tsv per logged metric
EVALUATE_OUTPUTS: tuple[str, ...] = ("metrics.json", "per_image.csv")
# The report's tables and figures, in the order of REPORT_FILES (each computed or drawn by busflow.report.registry).
REPORT_TABLES: tuple[str, ...] = ("leaderboard", "classification", "segmentation", "per_class", "dataset", "split",
                                  "groups", "label_conflicts", "leakage", "external", "ablation", "reproduction",
                                  "intervals", "comparisons", "calibration", "failures", "jobs", "leakage_paired",
                                  "cross_dataset", "lesion_size")
REPORT_FIGURES: tuple[str, ...] = ("roc", "metrics_bar", "overlays", "training_curves", "confusion", "leakage",
                                   "calibration", "pr", "failures", "ablation", "comparisons", "cross_dataset")


def report_table(name: str) -> str:
    """The CSV file of one report table, relative to the report directory."""
    return f"tables/{name}.csv"


def report_figure(name: str) -> str:
    """The PNG file of one report figure, relative to the report directory."""
    return f"figures/{name}.png"


REPORT_METRICS = "headline.json"  # per model the headline metrics, pooled with intervals (DVC metrics)
REPORT_FILES: tuple[str, ...] = ("index.html", "report.md", REPORT_METRICS, *map(report_table, REPORT_TABLES),
                                 *map(report_figure, REPORT_FIGURES))
# Directories the report always creates: one contact sheet per duplicate cluster (possibly none), one card per model.
REPORT_DIRS: tuple[str, ...] = ("clusters", "cards")  # and one card per model


def results_root(run: str) -> str:
    """Outputs of one run: ``results/<run>`` (``run`` in params; by convention the dataset or preset name)."""
    return f"results/{run}"


DATA_FILES: dict[str, str] = {"index": "data/index.csv", "arrays": "data/arrays.npz", "skipped": "data/skipped.csv"}
LEAKY_SPLIT = "random_image"  # the image-level split of the leakage study
SPLIT_FILES: dict[str, str] = {
    "groups": "split/groups.csv",
    "links": "split/duplicate_links.csv",
    "folds": "split/folds.csv",
    "leaky": f"split/folds_{LEAKY_SPLIT}.csv",
    "conflicts": "split/label_conflicts.csv",
    "audit": "split/audit.json",
    "counts": "split/split_counts.csv",
    "leaky_audit": f"split/audit_{LEAKY_SPLIT}.json",
    "leaky_counts": f"split/split_counts_{LEAKY_SPLIT}.csv",
}


# The pretrain stage's folder of one fold: the pool it may use, and per encoder its weight file, record, history.
PRETRAIN_POOL, PRETRAIN_ENCODER, PRETRAIN_RECORD, PRETRAIN_HISTORY = "images.csv", "encoder.safetensors", "pretrain.json", "history.csv"
INIT_DIR = "init"  # where a model's encoder starts: init.json (+ a link to the weight file), the init-weights stage


def init_dir(run: str, model: str) -> str:
    """The init folder of one model, shared by its folds, its leaky-split runs and its ablation cells."""
    return f"{results_root(run)}/models/{model}/{INIT_DIR}"


def fold_dir(run: str, model: str, fold: int | str, split: str = "main", split_seed: int | str | None = None) -> str:
    """Outputs of one model on one test fold; runs on the leaky split live beside them under
    ``random_image/seed<S>/``, one folder per seed the image-level split was drawn with."""
    return f"{results_root(run)}/models/{model}/{leaky_part(split, split_seed)}fold{fold}"


def leaky_part(split: str, split_seed: int | str | None) -> str:
    """``random_image/seed<S>/`` for a run on the leaky split, else nothing."""
    if split != LEAKY_SPLIT:
        return ""
    if split_seed is None:
        raise ValueError("a run on the image-level split needs the seed that split was drawn with")
    return f"{LEAKY_SPLIT}/seed{split_seed}/"


def ablation_cell(lr: float | str, variant: str) -> str:
    """Folder name of one cell of the ablation grid, e.g. ``lr0.0001_f16_64`` (``str`` of the float)."""
    return f"lr{lr}_{variant}"


def ablation_dir(run: str, model: str, lr: float | str, variant: str, fold: int | str) -> str:
    """Outputs of one ablation cell on one test fold, beside the model's own folds."""
    return f"{results_root(run)}/models/{model}/ablation/{ablation_cell(lr, variant)}/fold{fold}"


def run_dir_of(path: str | Path, contract_file: str) -> str:
    """``results/<run>`` from the path of one of its contract files, e.g. ``run_dir_of(".../split/folds.csv",
    SPLIT_FILES["folds"])``. Rules derive folders from their inputs rather than from the run name, so a storage
    prefix Snakemake puts before the inputs carries over (``snakemake --lint`` asks for this)."""
    text = Path(path).as_posix()
    if not text.endswith(f"/{contract_file}"):
        raise ValueError(f"{path}: not a run's {contract_file}")
    return text[: -len(contract_file) - 1]


def models_of_model_fold(fold_dir: Path) -> Path:
    """``<run>/models`` of a model's fold folder ``<run>/models/<model>/fold<k>`` (where its segmenter or peers are)."""
    return fold_dir.parent.parent


def models_of_ensemble_fold(fold_dir: Path) -> Path:
    """``<run>/models`` of an ensemble's fold folder ``<run>/ensembles/<name>/fold<k>`` (where its members are)."""
    return fold_dir.parents[2] / "models"
