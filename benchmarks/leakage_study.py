"""The leakage study on real BUSI at a CPU-feasible size: the leakage models trained on the grouped
(near-duplicate-aware) folds and on image-level folds drawn with each seed, compared on the same test images.

    python benchmarks/leakage_study.py --workdir DIR [--root ../shared/datasets/busi/Dataset_BUSI_with_GT]
        [--size 128] [--folds 3] [--seeds 1 2] [--csv docs/results/busi_leakage.csv]

Starts from config/presets/busi.yaml with the default run's CPU-sized networks and schedules (params.yaml, as
``preset_results.py --cpu-models``), trains only the preset's leakage models (no cascade, no ensemble), runs
``snakemake --cores all`` in ``--workdir`` (an existing project resumes) and prints the report's paired table
(``tables/leakage_paired.csv``: image-level minus grouped score per test image and seed, with group-bootstrap
intervals) and the fold-mean table beside it (``tables/leakage.csv``). ``--csv`` keeps the paired table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pipeline_walltime import REPO, run, scratch_project
from preset_results import preset_params

from busflow.config import load_params


def study_params(root: Path, size: int, folds: int, seeds: list[int]) -> dict[str, Any]:
    """The BUSI preset reduced to its leakage study: the leakage models on ``folds`` grouped folds and on
    image-level folds drawn with each of ``seeds``."""
    params = preset_params("busi", root, size, None, with_leakage=True, cpu_models=True)
    models = params["leakage"]["models"]
    params["split"]["n_folds"] = folds
    params["train"] = {"models": list(models), "folds": list(range(folds))}
    params["leakage"] = {"models": models, "seeds": seeds}
    params["models"] = {name: params["models"][name] for name in models}
    params["ensembles"], params["cascades"] = {}, []
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="seeds of the image-level splits")
    parser.add_argument("--workdir", type=Path, required=True, help="the project (an existing one resumes)")
    parser.add_argument("--csv", type=Path, help="write the paired table here (e.g. docs/results/busi_leakage.csv)")
    args = parser.parse_args()

    if not (args.workdir / "Snakefile").exists():
        args.workdir.mkdir(parents=True, exist_ok=True)
        params_file = args.workdir / "study.yaml"
        params_file.write_text(yaml.safe_dump(study_params(args.root, args.size, args.folds, args.seeds), sort_keys=False),
                               encoding="utf-8")
        scratch_project(params_file, args.workdir)
    started = time.perf_counter()
    run(["snakemake", "--cores", "all", "--rerun-incomplete"], args.workdir)
    elapsed = time.perf_counter() - started

    params = load_params(args.workdir / "params.yaml")
    tables = args.workdir / "results" / params["run"] / "report" / "tables"
    print(f"BUSI at {params['preprocess']['size']} px, {params['split']['n_folds']} folds, image-level seeds "
          f"{params['leakage']['seeds']}: pipeline {elapsed / 60:.1f} min ({args.workdir})")
    paired = pd.read_csv(tables / "leakage_paired.csv")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(paired.to_string(index=False))
        print(pd.read_csv(tables / "leakage.csv").to_string(index=False))
    if args.csv:
        paired.to_csv(args.csv, index=False)
        print(f"{args.csv}: written")


if __name__ == "__main__":
    main()
