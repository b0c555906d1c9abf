"""The default run's leakage study on both kinds of phantom views, side by side: a patient's images as
neighbouring frames of one sweep (``data.synthetic.acquisition: sweep``, the default) and as independent
placements of the probe (``repositioned``).

    python benchmarks/phantom_leakage.py --workdir DIR [--csv docs/results/leakage/phantoms.csv]

Each acquisition gets its own project under ``DIR/<acquisition>`` (an existing one resumes): params.yaml with
only ``leakage.models`` trained (no other model, cascade or ensemble), on grouped folds and on the image-level
folds of every seed of ``leakage.seeds``. Prints the two reports' paired tables (``tables/leakage_paired.csv``)
one under the other; ``--csv`` keeps them with an ``acquisition`` column.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pipeline_walltime import REPO, run, scratch_project

ACQUISITIONS = ("sweep", "repositioned")
SHOWN = ["acquisition", "model", "score", "subset", "n_pairs", "grouped_mean", "image_level_mean", "difference",
         "ci_low", "ci_high", "p_value"]


def leakage_params(acquisition: str) -> dict[str, Any]:
    """params.yaml reduced to its leakage models, on phantoms acquired as ``acquisition``."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    models = params["leakage"]["models"]
    params["data"]["synthetic"]["acquisition"] = acquisition
    params["train"]["models"] = list(models)
    params["models"] = {name: params["models"][name] for name in models}
    params["ensembles"], params["cascades"] = {}, []
    return params


def study(acquisition: str, workdir: Path) -> pd.DataFrame:
    project = workdir / acquisition
    if not (project / "Snakefile").exists():
        project.mkdir(parents=True, exist_ok=True)
        (project / "study.yaml").write_text(yaml.safe_dump(leakage_params(acquisition), sort_keys=False), encoding="utf-8")
        scratch_project(project / "study.yaml", project)
    started = time.perf_counter()
    run(["snakemake", "--cores", "all", "--rerun-incomplete"], project)
    print(f"{acquisition}: pipeline {(time.perf_counter() - started) / 60:.1f} min ({project})")
    return pd.read_csv(project / "results" / "synthetic" / "report" / "tables" / "leakage_paired.csv").assign(acquisition=acquisition)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="one project per acquisition below it (resumed)")
    parser.add_argument("--csv", type=Path, help="keep both paired tables here")
    args = parser.parse_args()
    paired = pd.concat([study(acquisition, args.workdir) for acquisition in ACQUISITIONS], ignore_index=True)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        print(paired[SHOWN].to_string(index=False))
    if args.csv:
        paired[[*SHOWN, *(c for c in paired.columns if c not in SHOWN)]].to_csv(args.csv, index=False)
        print(f"{args.csv}: written")


if __name__ == "__main__":
    main()
