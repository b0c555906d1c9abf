"""The default phantom run from scratch and with its classifiers started from in-domain SimCLR encoders.

Runs both pipelines one after the other in scratch copies of the workflow (results/ of the checkout are
untouched) and prints, per model, the pooled ROC AUC and Dice from each run's leaderboard, and each run's
wall time:

    python benchmarks/pretrain_default_run.py [--params params.yaml] [--epochs 150] [--models resnet50 mtl_resnet50]

The pretrained run adds ``pretrain: {simclr: ...}`` with the first model's architecture and options, and
``init: {pretrain: simclr}`` on each named model (they must share that encoder).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from pipeline_walltime import run, scratch_project

COLUMNS = ["model", "roc_auc_macro_mean", "roc_auc_macro_sd", "roc_auc_macro_pooled", "roc_auc_macro_ci_low",
           "roc_auc_macro_ci_high", "dice_pooled", "dice_ci_low", "dice_ci_high"]


def pretrained_params(params: dict, models: list[str], epochs: int) -> dict:
    first = params["models"][models[0]]
    encoder = {"arch": first["arch"], "options": dict(first.get("options") or {}), "epochs": epochs}
    if first["arch"] != "resnet50":  # the multi-task network's encoder is pretrained through the ResNet-50 classifier
        encoder = {"arch": "resnet50", "options": {"widen_factor": first["options"]["widen_factor"]}, "epochs": epochs}
    changed = {**params, "pretrain": {"simclr": encoder}}
    changed["models"] = {name: ({**entry, "init": {"pretrain": "simclr"}} if name in models else entry)
                         for name, entry in params["models"].items()}
    return changed


def leaderboard(project: Path, run_name: str) -> pd.DataFrame:
    table = pd.read_csv(project / "results" / run_name / "report" / "tables" / "leaderboard.csv")
    return table[COLUMNS].round(3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path(__file__).resolve().parents[1] / "params.yaml")
    parser.add_argument("--epochs", type=int, default=150, help="pretraining epochs")
    parser.add_argument("--models", nargs="+", default=["resnet50", "mtl_resnet50"])
    args = parser.parse_args()
    params = yaml.safe_load(args.params.read_text())
    variants = {"scratch": params, "simclr": pretrained_params(params, args.models, args.epochs)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in variants.items():
            root = Path(tmp) / name
            (root / "project").mkdir(parents=True)
            (root / "params.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
            project = scratch_project(root / "params.yaml", root / "project")
            seconds, _ = run(["snakemake", "--cores", "2"], project)
            print(f"== {name}: {seconds / 60:.1f} min")
            print(leaderboard(project, params["run"]).to_string(index=False))


if __name__ == "__main__":
    main()
