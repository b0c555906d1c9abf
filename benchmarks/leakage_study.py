"""The leakage study on real BUSI at a CPU-feasible size: the same models on grouped (near-duplicate-aware)
folds and on image-level folds, through the real pipeline, and the inflation the leaky split reports.

    python benchmarks/leakage_study.py [--root ../shared/datasets/busi/Dataset_BUSI_with_GT] [--size 128]
                                       [--epochs 12] [--folds 3] [--keep]

Starts from config/presets/busi.yaml, points data.busi.path at --root (read in place), shrinks the networks
for 2 CPU cores, runs `snakemake --cores all` in a scratch copy and prints report/tables/leakage.csv.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from pipeline_walltime import REPO, keep_or_remove, run, scratch_project

CPU_NETWORKS = {
    "unet": {"features": [16, 16, 32, 64, 128, 16]},
    "resnet50": {"widen_factor": 0.25},
}


def study_params(root: Path, size: int, epochs: int, folds: int) -> dict:
    params = yaml.safe_load((REPO / "config" / "presets" / "busi.yaml").read_text())
    params["data"]["busi"]["path"] = str(root.resolve())
    params["preprocess"]["size"] = size
    params["split"]["n_folds"] = folds
    params["train"] = {"models": list(CPU_NETWORKS), "folds": list(range(folds))}
    params["leakage"] = {"models": list(CPU_NETWORKS)}
    params["models"] = {name: {**params["models"][name], "options": options, "epochs": epochs, "patience": 4, "lr": 1.0e-3}
                        for name, options in CPU_NETWORKS.items()}
    for cascade in params["cascades"]:
        cascade["crop_size"] = 64
        cascade["classifier"].update(epochs=epochs, patience=4, lr=1.0e-3)
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the scratch project and print its path")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="busflow-leakage-"))
    params_file = scratch / "study.yaml"
    params_file.write_text(yaml.safe_dump(study_params(args.root, args.size, args.epochs, args.folds), sort_keys=False))
    project = scratch_project(params_file, scratch)
    started = time.perf_counter()
    run(["snakemake", "--cores", "all"], project)
    elapsed = time.perf_counter() - started

    report = project / "results" / "busi" / "report"
    audit = pd.read_csv(project / "results" / "busi" / "split" / "split_counts.csv")
    excluded = audit[(audit["split"] == "main") & (audit["column"] == "fold0") & (audit["role"] == "excluded")]
    print(f"BUSI at {args.size} px, {args.folds} folds, up to {args.epochs} epochs: pipeline wall time {elapsed / 60:.1f} min")
    print(f"images excluded as label conflicts: {int(excluded['images'].sum()) if len(excluded) else 0}")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(pd.read_csv(report / "tables" / "leakage.csv").to_string(index=False))
    keep_or_remove(scratch, args.keep)


if __name__ == "__main__":
    main()
