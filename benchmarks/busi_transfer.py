"""BUSI benign vs malignant: the ResNet-50 classifier and the ResNet-50 multi-task network from scratch and
started from an in-domain SimCLR encoder, side by side in one pipeline run on 5 grouped folds.

    python benchmarks/busi_transfer.py [--root ../shared/datasets/busi/Dataset_BUSI_with_GT] [--size 128]
        [--epochs 20] [--pretrain-epochs 150] [--view-size 64] [--folds 5] [--workdir DIR]

Starts from config/presets/busi.yaml (data read in place), trains four models on the same folds:
``resnet50`` and ``mtl_resnet50`` from scratch, ``resnet50_simclr`` and ``mtl_resnet50_simclr`` from the
fold's own SimCLR encoder (a widen-0.5 ResNet-50 pretrained on that fold's training and validation images,
no labels, views of ``--view-size`` px). The cascade segments with the multi-task network. Prints per model
the ROC AUC over folds (mean ± sd), pooled with its 95 % group-bootstrap interval, the pooled Dice, the paired
differences (pretrained minus scratch on the same test images, paired group bootstrap) and the wall times of
the pretraining and training jobs. ``--workdir`` keeps the project there and resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from pipeline_walltime import REPO, run, scratch_project

from busflow.report.loading import load_results
from busflow.report.uncertainty import bootstrap_settings, comparison_table

PAIRS = {"resnet50_simclr": "resnet50", "mtl_resnet50_simclr": "mtl_resnet50"}  # pretrained -> scratch
ENCODER = "simclr"
LEADERBOARD = ["model", "roc_auc_macro_mean", "roc_auc_macro_sd", "roc_auc_macro_pooled", "roc_auc_macro_ci_low",
               "roc_auc_macro_ci_high", "dice_mean", "dice_sd", "dice_pooled", "dice_ci_low", "dice_ci_high"]
COMPARED = {"classification.roc_auc_macro", "classification.balanced_accuracy", "segmentation.dice"}


def benchmark_params(root: Path, size: int, epochs: int, pretrain_epochs: int, view_size: int, folds: int) -> dict:
    params = yaml.safe_load((REPO / "config" / "presets" / "busi.yaml").read_text())
    params["data"]["busi"]["path"] = str(root.resolve())
    params["preprocess"]["size"] = size
    params["split"]["n_folds"] = folds
    models = [name for pair in PAIRS.items() for name in reversed(pair)]
    params["train"] = {"models": models, "folds": list(range(folds))}
    params["leakage"] = {"models": []}
    scratch = {name: {**params["models"][name], "epochs": epochs} for name in PAIRS.values()}
    started = {pretrained: {**scratch[base], "options": dict(scratch[base]["options"]), "init": {"pretrain": ENCODER}}
               for pretrained, base in PAIRS.items()}
    params["models"] = {name: {**scratch, **started}[name] for name in models}
    params["pretrain"] = {ENCODER: {"arch": "resnet50", "options": dict(scratch["resnet50"]["options"]),
                                    "epochs": pretrain_epochs, "view_size": view_size}}
    params["cascade"]["segmenter"] = "mtl_resnet50"
    params["cascade"]["classifier"]["epochs"] = epochs
    return params


def paired_differences_and_job_times(project: Path, params: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pretrained minus scratch per pair and metric (paired group bootstrap), and the pretraining and
    training jobs' wall times in minutes."""
    results = project / "results" / params["run"]
    run_results = load_results(results, params["train"]["models"], params["train"]["folds"], ("benign", "malignant"))
    settings = bootstrap_settings(params)
    tables = [comparison_table(run_results, scratch, settings).query("model == @pretrained")
              for pretrained, scratch in PAIRS.items()]
    table = pd.concat(tables, ignore_index=True)
    times = run_results.job_times().query("stage in ('pretrain', 'train')")
    times = times.assign(minutes=(times["seconds"] / 60).round(2)).drop(columns="seconds")
    return table[table["metric"].isin(COMPARED)].round(4), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs of every model")
    parser.add_argument("--pretrain-epochs", type=int, default=150)
    parser.add_argument("--view-size", type=int, default=64, help="side of the SimCLR views in px")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, help="keep the project here (an existing one resumes)")
    args = parser.parse_args()

    project = args.workdir or Path(tempfile.mkdtemp(prefix="busflow-busi-transfer-"))
    params = benchmark_params(args.root, args.size, args.epochs, args.pretrain_epochs, args.view_size, args.folds)
    if not (project / "Snakefile").exists():
        project.mkdir(parents=True, exist_ok=True)
        (project / "benchmark.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        scratch_project(project / "benchmark.yaml", project)
    started = time.perf_counter()
    run(["snakemake", "--cores", "all", "--rerun-incomplete"], project)  # a resumed run redoes killed jobs
    print(f"BUSI at {args.size} px, {args.folds} grouped folds, {args.epochs} epochs; SimCLR {args.pretrain_epochs} epochs "
          f"on {args.view_size} px views: pipeline wall time {(time.perf_counter() - started) / 60:.1f} min ({project})")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        board = pd.read_csv(project / "results" / params["run"] / "report" / "tables" / "leaderboard.csv")
        print(board[[c for c in LEADERBOARD if c in board]].round(3).to_string(index=False))
        differences, times = paired_differences_and_job_times(project, params)
        print(differences.to_string(index=False))
        print(times.to_string(index=False))


if __name__ == "__main__":
    main()
