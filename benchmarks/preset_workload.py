"""Each paper preset's size before anything runs: the jobs of its Snakemake plan and its training workload.

    python benchmarks/preset_workload.py [--csv docs/benchmarks/preset_workload.csv] [--check DEVICE_CHECK_JSON]

Per preset: the jobs of a dry run (`snakemake -n --configfile <preset>` in a scratch copy of the workflow),
in all and per rule, and the training workload in image passes: every training job's (models, cascade
classifiers, leaky-split twins, ablation cells) epochs x folds x the images of one training epoch plus a forward-only validation pass per epoch
at a third of a training step per image, on BUSI's published class counts (an upper bound: early stopping
ends some runs sooner). Hours on a GPU follow from that workload only with measured images/s: pass the
``device_check.json`` of ``benchmarks/device_check.sh`` and the hours of ``zoo_estimate.py`` are added;
without one they are reported as not measured, never guessed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import pandas as pd
from pipeline_walltime import scratch_project, snakemake_plan
from zoo_estimate import BUSI_IMAGES, PRESETS, image_passes, trained_networks, zoo_table

from busflow.config import load_params


def planned_jobs(preset: Path) -> Counter[str]:
    """Jobs per rule of the preset's dry run."""
    with tempfile.TemporaryDirectory(prefix="busflow-plan-") as root:
        project = scratch_project(preset, Path(root))
        return Counter(job.split("[")[0] for job in snakemake_plan(project))


def preset_passes(preset: Path) -> float:
    """Image passes of every training job: networks, their leaky-split twins and the ablation grid's cells."""
    params = load_params(preset)
    passes = sum(image_passes(params, spec, BUSI_IMAGES) for spec in trained_networks(params).values())
    draws = len(params["leakage"]["seeds"])  # every leakage model trains on each draw of the image-level split
    passes += draws * sum(image_passes(params, params["models"][name], BUSI_IMAGES) for name in params["leakage"]["models"])
    ablation = params["ablation"]
    if ablation["model"] is not None:
        cells = len(ablation["lr"]) * len(ablation["options"])
        passes += cells * image_passes(params, params["models"][ablation["model"]], BUSI_IMAGES)
    return passes


def workload_table(presets: list[Path]) -> pd.DataFrame:
    rows = []
    for preset in presets:
        jobs = planned_jobs(preset)
        rows.append({"preset": preset.stem, "jobs": sum(jobs.values()), "training_jobs": sum(n for rule, n in jobs.items() if rule.startswith("train") or rule == "cascade"),
                     "pretrain_jobs": jobs["pretrain"], "image_passes_millions": round(preset_passes(preset) / 1e6, 2),
                     "rules": ", ".join(f"{rule} {count}" for rule, count in sorted(jobs.items()))})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, help="also write the table here")
    parser.add_argument("--check", type=Path, help="device_check.json with measured images/s: adds GPU hours")
    args = parser.parse_args()
    table = workload_table(PRESETS)
    if args.check:
        hours = zoo_table(json.loads(args.check.read_text())).groupby("preset")["hours"].sum(min_count=1)
        table["gpu_hours"] = table["preset"].map(hours).round(2)
    else:
        table["gpu_hours"] = "not measured (no device_check.json)"
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 120):
        print(table.to_string(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"{args.csv}: written")


if __name__ == "__main__":
    main()
