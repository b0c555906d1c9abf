"""The default phantom run with its classifier also started from in-domain self-supervised pretraining.

    python benchmarks/phantom_transfer.py [--params params.yaml] [--pretrain-epochs 100] [--view-size 48] [--workdir DIR]

Runs the whole default pipeline (``params.yaml``) in a scratch copy of the workflow with one model more:
``resnet50_simclr``, the default ``resnet50`` with every setting the same but its encoder started from the fold's
own SimCLR encoder (pretrained on that fold's training and validation images, no labels). Prints, side by side
from that one run: ROC AUC and balanced accuracy of both per fold (mean ± sd) and pooled with the 95 %
group-bootstrap interval, the paired difference (pretrained minus scratch on the same test images), the wall
time of the whole run, and the pretraining throughput (images per second and seconds per 1,000 images).
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from busi_transfer import job_minutes, paired_differences, per_model_table
from pipeline_walltime import REPO, run, scratch_project

from busflow.report.loading import load_results
from busflow.report.uncertainty import bootstrap_settings

SCRATCH, PRETRAINED, ENCODER = "resnet50", "resnet50_simclr", "simclr"
POOL = re.compile(r"pretraining pool of (\d+) images")


def benchmark_params(params_file: Path, pretrain_epochs: int, view_size: int) -> dict:
    """The default parameters with a SimCLR encoder of the default classifier's shape and its pretrained twin."""
    params = yaml.safe_load(params_file.read_text())
    scratch = params["models"][SCRATCH]
    params["pretrain"] = {ENCODER: {"arch": scratch["arch"], "options": dict(scratch.get("options", {})),
                                    "epochs": pretrain_epochs, "view_size": view_size}}
    params["models"][PRETRAINED] = {**scratch, "init": {"pretrain": ENCODER}}
    params["train"]["models"] = [*params["train"]["models"], PRETRAINED]
    return params


def pretraining_throughput(results_dir: Path, epochs: int, times: pd.DataFrame) -> tuple[int, float]:
    """Images seen per fold (pool size × epochs, summed over folds) and the pretraining jobs' seconds."""
    images = 0
    for log in sorted((results_dir / "logs" / "pretrain").glob("fold*.log")):
        match = POOL.search(log.read_text())
        images += int(match.group(1)) * epochs if match else 0
    seconds = float(times.loc[times["stage"] == "pretrain", "minutes"].sum() * 60)
    return images, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--pretrain-epochs", type=int, default=100)
    parser.add_argument("--view-size", type=int, default=48, help="side of the SimCLR views in px")
    parser.add_argument("--workdir", type=Path, help="keep the project here (an existing one resumes)")
    args = parser.parse_args()

    project = args.workdir or Path(tempfile.mkdtemp(prefix="busflow-phantom-transfer-"))
    params = benchmark_params(args.params, args.pretrain_epochs, args.view_size)
    if not (project / "Snakefile").exists():
        project.mkdir(parents=True, exist_ok=True)
        (project / "benchmark.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        scratch_project(project / "benchmark.yaml", project)
    started = time.perf_counter()
    run(["snakemake", "--cores", "all", "--rerun-incomplete"], project)
    wall = time.perf_counter() - started
    results_dir = project / "results" / params["run"]
    classes = list(params["data"]["synthetic"]["class_mix"])
    results = load_results(results_dir, [SCRATCH, PRETRAINED], params["train"]["folds"], classes)
    settings = bootstrap_settings(params)
    times = job_minutes(results, [SCRATCH, PRETRAINED])
    images, seconds = pretraining_throughput(results_dir, args.pretrain_epochs, times)
    print(f"default phantom run + {PRETRAINED} (SimCLR {args.pretrain_epochs} epochs on {args.view_size} px views): "
          f"wall time {wall / 60:.1f} min for the whole pipeline ({project})")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(per_model_table(results, settings).query("metric != 'dice'").to_string(index=False))
        print(paired_differences(results, settings, [(SCRATCH, PRETRAINED)]).to_string(index=False))
        print(times.to_string(index=False))
    if seconds:
        print(f"pretraining: {images} images seen in {seconds:.0f} s of pretraining jobs = {images / seconds:.0f} images/s, "
              f"{1000 * seconds / images:.1f} s per 1,000 images")


if __name__ == "__main__":
    main()
