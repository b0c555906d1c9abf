"""A dataset preset run end to end on real data on this machine, turned into rows of the README's real-data table.

    python benchmarks/preset_results.py busbra --root ../shared/datasets/busbra-subset/BUSBRA \\
        --workdir /tmp/busbra --results-csv docs/results/busbra_official.csv
    python benchmarks/preset_results.py busi --root ../shared/datasets/busi/Dataset_BUSI_with_GT \\
        --workdir /tmp/busi --results-csv docs/results/busi_3class.csv

Copies the workflow and ``config/presets/<preset>.yaml`` into ``--workdir`` (the dataset is read in place) and runs
the whole pipeline with Snakemake, report included; a second call resumes the same project. ``--size`` and
``--epochs`` override the preset's, ``--folds`` trains fewer folds and ``--external`` tests on the datasets given
instead of the preset's (``cross`` with ``--external busbra=PATH`` is BUSI -> BUS-BRA; ``--cross-csv`` keeps the run's
cross-dataset table); the leakage study is left out unless ``--with-leakage`` (the rows do not use it). The rows are read from the run's own ``report/tables``: ``leaderboard.csv`` (fold mean ± sd, pooled value and
its 95 % group-bootstrap interval), ``intervals.csv`` (test images and groups) and ``jobs.csv`` (the minutes of a
model's training jobs; an ensemble's are its members'). ``benchmarks/readme_results.py --write`` puts them into the
README.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pipeline_walltime import REPO, run, scratch_project

from busflow.config import load_params

DATASET_LABELS = {"busi": "BUSI", "busbra": "BUS-BRA", "breast_lesions": "BrEaST-Lesions", "synthetic": "phantoms"}
PROTOCOL_LABELS = {"kfold": "grouped {n}-fold", "official": "official {n}-fold"}
METRICS = {"balanced_accuracy": "classification", "roc_auc_macro": "classification", "dice": "segmentation"}


def preset_params(preset: str, root: Path, size: int | None, epochs: int | None, with_leakage: bool,
                  cpu_models: bool = False, external: Mapping[str, Path] | None = None,
                  folds: int | None = None) -> dict[str, Any]:
    """The preset's params reading its dataset at ``root``, with the overrides. ``external`` (dataset -> its folder)
    replaces the preset's external datasets by those given, read in place; ``folds`` trains that many folds."""
    params = yaml.safe_load((REPO / "config" / "presets" / f"{preset}.yaml").read_text(encoding="utf-8"))
    params["data"][params["dataset"]]["path"] = str(root.resolve())
    if external is not None:
        params["external"]["datasets"] = list(external)
        for name, folder in external.items():
            params["data"].setdefault(name, {})["path"] = str(folder.resolve())
    if folds is not None:
        params["split"]["n_folds"] = folds
        params["train"]["folds"] = list(range(folds))
    if cpu_models:
        params = with_cpu_models(params)
    if size is not None:
        params["preprocess"]["size"] = size
    if epochs is not None:
        for spec in params["models"].values():
            spec["epochs"] = epochs
        for cascade in params["cascades"]:
            cascade["classifier"]["epochs"] = epochs
    if not with_leakage:
        params["leakage"]["models"] = []
    return params


def with_cpu_models(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` training the default run's CPU-sized networks with their schedules and CPU accelerator settings
    (params.yaml's ``models``, ``ensembles`` and ``accelerator``); data, split, size and cascade stay the preset's."""
    default = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    trained = [name for name in params["train"]["models"] if name in default["models"]]
    missing = sorted(set(params["train"]["models"]) - set(trained))
    if missing:
        raise ValueError(f"params.yaml has no CPU model for the preset's {missing}")
    params = {**params, "models": default["models"], "accelerator": default["accelerator"]}
    params["ensembles"] = {name: spec for name, spec in default["ensembles"].items() if set(spec["members"]) <= set(trained)}
    return params


def external_folder(item: str) -> tuple[str, Path]:
    """``DATASET=PATH`` of --external as (dataset, folder)."""
    name, separator, folder = item.partition("=")
    if not separator or not name or not folder:
        raise SystemExit(f"--external {item!r}: expected DATASET=PATH, e.g. busbra=../shared/datasets/busbra-subset/BUSBRA")
    return name, Path(folder)


def task_label(classes: list[str]) -> str:
    return " vs ".join(classes)


def init_label(spec: Mapping[str, Any] | None) -> str:
    init = (spec or {}).get("init", "scratch")
    if isinstance(init, Mapping) and "pretrain" in init:
        return f"{init['pretrain']} in-domain pretraining"
    if isinstance(init, Mapping) and "weights" in init:
        return f"{init.get('format', 'busflow')} weights {Path(init['weights']).name}"
    return "scratch"


def training_minutes(jobs: pd.DataFrame, model: str, params: Mapping[str, Any]) -> float:
    """A model's training jobs in minutes (cascade jobs for a cascade); an ensemble's are its members'."""
    ensemble = params.get("ensembles", {}).get(model)
    if ensemble:
        return sum(training_minutes(jobs, member, params) for member in ensemble["members"])
    own = jobs["job"].str.startswith((f"train/{model}_fold", f"cascade/{model}_fold"))
    return float(jobs.loc[own, "seconds"].sum()) / 60


def results_rows(tables: Path, params: Mapping[str, Any], classes: list[str], command: str, note: str) -> pd.DataFrame:
    """One row per model and README metric with a pooled value, from the report tables of a finished run."""
    leaderboard = pd.read_csv(tables / "leaderboard.csv")
    leaderboard = leaderboard[leaderboard["split"] == params["split"]["protocol"]]
    counts = pd.read_csv(tables / "intervals.csv").set_index(["model", "metric"])
    jobs = pd.read_csv(tables / "jobs.csv")
    rows = []
    for record in leaderboard.to_dict("records"):
        for metric, block in METRICS.items():
            if pd.isna(record.get(f"{metric}_pooled")):
                continue
            count = counts.loc[(record["model"], f"{block}.{metric}")]
            rows.append({
                "dataset": DATASET_LABELS.get(params["dataset"], params["dataset"]), "task": task_label(classes),
                "protocol": PROTOCOL_LABELS[params["split"]["protocol"]].format(n=int(record["n_folds"])),
                "size": params["preprocess"]["size"], "model": record["model"],
                "init": init_label(params["models"].get(record["model"])), "metric": metric,
                **{key: round(float(record[f"{metric}_{column}"]), 3) for key, column in
                   (("fold_mean", "mean"), ("fold_sd", "sd"), ("pooled", "pooled"), ("ci_low", "ci_low"), ("ci_high", "ci_high"))},
                "images": int(count["n_images"]), "groups": int(count["n_groups"]),
                "wall_min": round(training_minutes(jobs, record["model"], params), 1), "command": command, "note": note})
    return pd.DataFrame(rows)


def run_classes(tables: Path) -> list[str]:
    """The classes the run trained on, in its order, from the report's dataset table."""
    return [name for name in pd.read_csv(tables / "dataset.csv")["class"] if name != "all"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", help="a dataset preset of config/presets (busi, busbra, ...)")
    parser.add_argument("--root", type=Path, required=True, help="the extracted dataset (read in place)")
    parser.add_argument("--size", type=int, help="model input side (default: the preset's)")
    parser.add_argument("--epochs", type=int, help="epochs of every model (default: the preset's)")
    parser.add_argument("--folds", type=int, help="grouped folds to split into and train (default: the preset's)")
    parser.add_argument("--external", nargs="+", default=None, metavar="DATASET=PATH",
                        help="test on these external datasets (read in place) instead of the preset's")
    parser.add_argument("--with-leakage", action="store_true", help="keep the preset's leakage study")
    parser.add_argument("--cpu-models", action="store_true",
                        help="train the default run's CPU-sized networks and schedules (params.yaml) instead of the preset's")
    parser.add_argument("--workdir", type=Path, required=True, help="the project (an existing one resumes)")
    parser.add_argument("--results-csv", type=Path, help="write the README rows here (docs/results/<name>.csv)")
    parser.add_argument("--cross-csv", type=Path, help="write the run's cross-dataset table here (a run with --external)")
    parser.add_argument("--note", default="", help="a caveat printed under the README's table")
    args = parser.parse_args()

    external = dict(external_folder(item) for item in args.external) if args.external is not None else None
    params = preset_params(args.preset, args.root, args.size, args.epochs, args.with_leakage, args.cpu_models,
                           external, args.folds)
    if not (args.workdir / "Snakefile").exists():
        args.workdir.mkdir(parents=True, exist_ok=True)
        (args.workdir / "benchmark.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        scratch_project(args.workdir / "benchmark.yaml", args.workdir)
    started = time.perf_counter()
    run(["snakemake", "--cores", "all", "--rerun-incomplete"], args.workdir)
    print(f"{args.preset}: pipeline finished in {(time.perf_counter() - started) / 60:.1f} min ({args.workdir})")
    params = load_params(args.workdir / "params.yaml")  # the project's, with the schema's defaults
    run_dir = args.workdir / "results" / params["run"]
    command = " ".join(["python benchmarks/preset_results.py", args.preset, "--root ROOT",
                        *([f"--size {args.size}"] if args.size else []), *([f"--epochs {args.epochs}"] if args.epochs else []),
                        *([f"--folds {args.folds}"] if args.folds else []),
                        *(["--external", *(f"{name}=PATH" for name in external)] if external else []),
                        *(["--with-leakage"] if args.with_leakage else []),
                        *(["--cpu-models"] if args.cpu_models else []), "--workdir DIR"])
    tables = run_dir / "report" / "tables"
    rows = results_rows(tables, params, run_classes(tables), command, args.note)
    with pd.option_context("display.width", 220, "display.max_columns", 20):
        print(rows.drop(columns=["command", "note"]).to_string(index=False))
    if args.results_csv:
        rows.to_csv(args.results_csv, index=False)
        print(f"{args.results_csv}: written (python benchmarks/readme_results.py --write puts it into the README)")
    cross = pd.read_csv(tables / "cross_dataset.csv") if (tables / "cross_dataset.csv").is_file() else pd.DataFrame()
    if not cross.empty:
        with pd.option_context("display.width", 220, "display.max_columns", 20):
            print(cross.to_string(index=False))
    if args.cross_csv:
        if cross.empty:
            raise SystemExit(f"{tables / 'cross_dataset.csv'}: no cross-dataset cells (run with --external)")
        cross.to_csv(args.cross_csv, index=False)
        print(f"{args.cross_csv}: written")


if __name__ == "__main__":
    main()
