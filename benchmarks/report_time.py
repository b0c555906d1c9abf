"""Time to rebuild the full report of a run with 10 models × 5 folds from cache.

    python benchmarks/report_time.py [--models 10] [--folds 5] [--patients 520] [--repeats 3] [--keep]

Trains small copies of the default models (U-Net, ResNet-50, multi-task, in turn) on the synthetic phantoms
at 32 px through the real pipeline, so every report input is genuine, then reruns only the report stage
(`busflow report`, from cache) ``--repeats`` times and prints its wall time, with the share spent on the
group-bootstrap intervals and paired comparisons.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import yaml
from pipeline_walltime import REPO, keep_or_remove, run, scratch_project

from busflow.config import cascade_settings

KINDS = ("unet", "resnet50", "mtl_resnet50")


def benchmark_params(n_models: int, n_folds: int, n_patients: int) -> dict:
    params = yaml.safe_load((REPO / "tests" / "data" / "tiny_params.yaml").read_text())
    params["data"]["synthetic"]["n_patients"] = n_patients
    params["split"]["n_folds"] = n_folds
    names = [f"{KINDS[i % len(KINDS)]}_{i}" for i in range(n_models)]
    params["models"] = {name: copy.deepcopy(params["models"][name.rsplit("_", 1)[0]]) for name in names}
    params["train"] = {"models": names, "folds": list(range(n_folds))}
    params["leakage"] = {"models": []}
    params["ensembles"] = {}
    params["ablation"] = {"model": None, "lr": [], "options": {}}
    for cascade in params["cascades"]:
        cascade["segmenter"] = names[0]
    return params


def time_statistics(results: Path, params: dict) -> tuple[float, float]:
    """Seconds for the interval table and for the paired comparisons alone (in this process)."""
    from busflow.report.loading import load_results
    from busflow.report.uncertainty import bootstrap_settings, comparison_table, interval_table

    models = [*params["train"]["models"], *cascade_settings(params)]
    run_results = load_results(results, models, params["train"]["folds"], ["normal", "benign", "malignant"])
    settings = bootstrap_settings(params)
    started = time.perf_counter()
    interval_table(run_results, settings)
    intervals = time.perf_counter() - started
    started = time.perf_counter()
    comparison_table(run_results, None, settings)
    return intervals, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--patients", type=int, default=520, help="about 780 images, the size of BUSI")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the scratch project")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="busflow-report-time-"))
    params_file = scratch / "bench_params.yaml"
    params = benchmark_params(args.models, args.folds, args.patients)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    project = scratch_project(params_file, scratch)
    trained, _ = run(["snakemake", "--cores", "all", "--quiet"], project)
    print(f"pipeline: {args.models} models + cascade × {args.folds} folds trained and evaluated in {trained:.0f} s")
    results = project / "results" / params["run"]
    command = ["busflow", "report", "--params", "params.yaml", "--results", str(results), "--out", str(results / "report")]
    timings = [run(command, project)[0] for _ in range(args.repeats)]
    n_images = len((results / "data" / "index.csv").read_text().splitlines()) - 1
    print(f"report from cache ({args.models + 1} models × {args.folds} folds, {n_images} images, "
          f"{params['evaluate'].get('bootstrap', {}).get('resamples', 1000)} bootstrap resamples): "
          f"{min(timings):.1f} s best, {sum(timings) / len(timings):.1f} s mean of {args.repeats}")
    intervals, comparisons = time_statistics(results, params)
    print(f"  of which: intervals {intervals:.1f} s, paired comparisons {comparisons:.1f} s")
    keep_or_remove(scratch, args.keep)


if __name__ == "__main__":
    main()
