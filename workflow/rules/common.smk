# Config validation and the path helpers every rule file uses.
from pathlib import Path

from snakemake.utils import validate

from busflow.config import check_consistency
from busflow.layout import EVALUATE_OUTPUTS, REPORT_FILES, TRAIN_OUTPUTS, fold_dir, results_root

# Commands re-read this file, so Snakemake must be driven by it too (edit params.yaml, not --config).
PARAMS_FILE = "params.yaml"

validate(config, "../schemas/params.schema.yaml")
check_consistency(config, PARAMS_FILE)

DATASET = config["dataset"]
RESULTS = results_root(DATASET)
MODELS = config["train"]["models"]
FOLDS = config["train"]["folds"]
CASCADE = config["cascade"]["name"]
SEGMENTER = config["cascade"]["segmenter"]


wildcard_constraints:
    fold=r"\d+",


def model_files(model, fold, names):
    return [f"{fold_dir(DATASET, model, fold)}/{name}" for name in names]


def model_params(wildcards):
    return config["models"][wildcards.model]


def report_outputs():
    return [f"{RESULTS}/report/{name}" for name in REPORT_FILES]


def report_inputs(wildcards):
    models = [*MODELS, CASCADE]
    files = [rules.preprocess.output.index, rules.preprocess.output.arrays, *rules.split.output]
    for model in models:
        for fold in FOLDS:
            files += model_files(model, fold, (*TRAIN_OUTPUTS, *EVALUATE_OUTPUTS))
    return files


FIGURE_CAPTIONS = {
    "figures/roc.png": "roc.rst",
    "figures/metrics_bar.png": "metrics_bar.rst",
    "figures/overlays.png": "overlays.rst",
    "figures/training_curves.png": "training_curves.rst",
    "figures/confusion.png": "confusion.rst",
}


def report_file(name):
    path = f"{RESULTS}/report/{name}"
    if name in FIGURE_CAPTIONS:
        return report(path, caption=f"../report/{FIGURE_CAPTIONS[name]}", category="Figures")
    return path
