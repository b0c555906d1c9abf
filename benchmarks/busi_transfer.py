"""BUSI benign vs malignant: the ResNet-50 classifier and the ResNet-50 multi-task network from scratch and
started from an in-domain SimCLR encoder, side by side in one pipeline run on 5 grouped folds.

    python benchmarks/busi_transfer.py [--root ../shared/datasets/busi/Dataset_BUSI_with_GT] [--size 128]
        [--epochs 20] [--pretrain-epochs 150] [--view-size 64] [--folds 5] [--pairs classifier multitask] [--workdir DIR]

Starts from config/presets/busi.yaml (data read in place) and trains, on the same folds, each pair of
``--pairs``: ``resnet50`` / ``mtl_resnet50`` from scratch and ``resnet50_simclr`` / ``mtl_resnet50_simclr``
from the fold's own SimCLR encoder (a widen-0.5 ResNet-50 pretrained on that fold's training and validation
images, no labels, views of ``--view-size`` px). Only those models and their evaluation run (Snakemake
targets), not the rest of the pipeline. Prints per model and metric the value over folds (mean ± sd) and
pooled over all test images with its 95 % group-bootstrap interval, the paired differences (pretrained minus
scratch on the same test images, paired group bootstrap), and the wall times of the pretraining and training
jobs. ``--workdir`` keeps the project there; a second call resumes it (e.g. with the other pair).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pipeline_walltime import REPO, run, scratch_project

from busflow.layout import fold_dir
from busflow.report.loading import RunResults, load_results, to_float
from busflow.report.uncertainty import bootstrap_settings, comparison_table, interval_table

PAIRS = {"classifier": ("resnet50", "resnet50_simclr"), "multitask": ("mtl_resnet50", "mtl_resnet50_simclr")}  # scratch, pretrained
ENCODER = "simclr"
METRICS = ("classification.roc_auc_macro", "classification.balanced_accuracy", "segmentation.dice")


def benchmark_params(root: Path, size: int, epochs: int, pretrain_epochs: int, view_size: int, folds: int) -> dict:
    """The busi preset with both pairs (the params stay the same whichever pairs a call trains)."""
    params = yaml.safe_load((REPO / "config" / "presets" / "busi.yaml").read_text())
    params["data"]["busi"]["path"] = str(root.resolve())
    params["preprocess"]["size"] = size
    params["preprocess"]["classes"] = ["benign", "malignant"]  # the normals have no lesion to classify
    params["split"]["n_folds"] = folds
    models = [name for pair in PAIRS.values() for name in pair]
    params["train"] = {"models": models, "folds": list(range(folds))}
    params["leakage"] = {"models": []}
    scratch = {name: {**params["models"][name], "epochs": epochs} for name, _ in PAIRS.values()}
    started = {pretrained: {**scratch[base], "options": dict(scratch[base]["options"]), "init": {"pretrain": ENCODER}}
               for base, pretrained in PAIRS.values()}
    params["models"] = {name: {**scratch, **started}[name] for name in models}
    params["pretrain"] = {ENCODER: {"arch": "resnet50", "options": dict(scratch["resnet50"]["options"]),
                                    "epochs": pretrain_epochs, "view_size": view_size}}
    params["cascades"] = []  # the pairs are whole-image networks
    return params


def evaluation_targets(params: dict, models: list[str]) -> list[str]:
    return [f"{fold_dir(params['run'], model, fold)}/metrics.json" for model in models for fold in params["train"]["folds"]]


def per_model_table(results: RunResults, settings) -> pd.DataFrame:
    """Per model and metric: mean ± sd over folds, and the pooled estimate with its group-bootstrap interval."""
    pooled = interval_table(results, settings).query("metric in @METRICS").set_index(["model", "metric"])
    rows = []
    for (model, metric), interval in pooled.iterrows():
        block, name = metric.split(".")
        values = [to_float((getattr(result, block) or {}).get(name)) for result in results.of_model(model)]
        rows.append({"model": model, "metric": name, "fold_mean": np.nanmean(values), "fold_sd": np.nanstd(values, ddof=1),
                     "pooled": interval["estimate"], "ci_low": interval["ci_low"], "ci_high": interval["ci_high"],
                     "images": interval["n_images"], "groups": interval["n_groups"]})
    return pd.DataFrame(rows).round(3)


def paired_differences(results: RunResults, settings, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """Pretrained minus scratch on the same test images, per metric (paired group bootstrap)."""
    tables = [comparison_table(results, scratch, settings).query("model == @pretrained") for scratch, pretrained in pairs]
    table = pd.concat(tables, ignore_index=True)
    return table[table["metric"].isin(METRICS)].drop(columns=["n_groups"]).round(4)


def job_minutes(results: RunResults, models: list[str]) -> pd.DataFrame:
    times = results.job_times().query("stage in ('pretrain', 'train')")
    times = times[times["job"].str.startswith(("pretrain/", *(f"train/{m}_fold" for m in models)))]
    return times.assign(minutes=(times["seconds"] / 60).round(2)).drop(columns="seconds")


def results_rows(table: pd.DataFrame, times: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    """The per-model table in the README's results format (benchmarks/readme_results.py): the run minutes of
    a model are its training jobs' and, for a pretrained one, the pretraining jobs'."""
    pretraining = times.loc[times["job"].str.startswith("pretrain/"), "minutes"].sum()
    command = (f"python benchmarks/busi_transfer.py --size {args.size} --epochs {args.epochs} --pretrain-epochs "
               f"{args.pretrain_epochs} --view-size {args.view_size} --folds {args.folds} --pairs {' '.join(args.pairs)}")
    rows = []
    for row in table.itertuples():
        started = row.model.endswith(f"_{ENCODER}")
        minutes = times.loc[times["job"].str.startswith(f"train/{row.model}_fold"), "minutes"].sum() + (pretraining if started else 0)
        rows.append({"dataset": "BUSI", "task": "benign vs malignant", "protocol": f"grouped {args.folds}-fold", "size": args.size,
                     "model": row.model, "init": f"SimCLR in-domain ({args.pretrain_epochs} epochs)" if started else "scratch",
                     "metric": row.metric, "fold_mean": row.fold_mean, "fold_sd": row.fold_sd, "pooled": row.pooled,
                     "ci_low": row.ci_low, "ci_high": row.ci_high, "images": row.images, "groups": row.groups,
                     "wall_min": round(minutes, 1), "command": command, "note": args.note})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs of every model")
    parser.add_argument("--pretrain-epochs", type=int, default=150)
    parser.add_argument("--view-size", type=int, default=64, help="side of the SimCLR views in px")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=sorted(PAIRS))
    parser.add_argument("--workdir", type=Path, help="keep the project here (an existing one resumes)")
    parser.add_argument("--results-csv", type=Path, help="also write the rows of the README's real-data table here "
                                                        "(docs/results/busi_transfer.csv)")
    parser.add_argument("--note", default="", help="a caveat printed under the README's table (e.g. shared cores)")
    args = parser.parse_args()

    project = args.workdir or Path(tempfile.mkdtemp(prefix="busflow-busi-transfer-"))
    params = benchmark_params(args.root, args.size, args.epochs, args.pretrain_epochs, args.view_size, args.folds)
    if not (project / "Snakefile").exists():
        project.mkdir(parents=True, exist_ok=True)
        (project / "benchmark.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        scratch_project(project / "benchmark.yaml", project)
    pairs = [PAIRS[name] for name in args.pairs]
    models = [model for pair in pairs for model in pair]
    started = time.perf_counter()
    run(["snakemake", "--cores", "all", "--rerun-incomplete", *evaluation_targets(params, models)], project)  # resumes killed jobs
    print(f"BUSI benign vs malignant at {args.size} px, {args.folds} grouped folds, {args.epochs} epochs; SimCLR "
          f"{args.pretrain_epochs} epochs on {args.view_size} px views: wall time {(time.perf_counter() - started) / 60:.1f} min ({project})")
    results = load_results(project / "results" / params["run"], models, params["train"]["folds"], ("benign", "malignant"))
    settings = bootstrap_settings(params)
    table, times = per_model_table(results, settings), job_minutes(results, models)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False))
        print(paired_differences(results, settings, pairs).to_string(index=False))
        print(times.to_string(index=False))
    if args.results_csv:
        results_rows(table, times, args).to_csv(args.results_csv, index=False)
        print(f"{args.results_csv}: written (python benchmarks/readme_results.py --write puts it into the README)")


if __name__ == "__main__":
    main()
