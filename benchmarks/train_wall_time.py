"""Wall time of one paper-faithful training job, through the pipeline's own commands.

    python benchmarks/train_wall_time.py [--preset config/presets/p003.yaml] [--model mtl_resnet50] [--fold 0]
        [--size 256] [--epochs N] [--busi PATH] [--device auto] [--fast-path auto|true|false] [--compile]

Default: P003's ResNet-50 multi-task network (Adam 1e-4, batch 16, 70 epochs without early stopping, flips,
rotation and shift) on BUSI at 256², fold 0 of its five grouped folds. The preset's params are written to a
scratch project with the BUSI path and the input size set; ``busflow download``, ``preprocess``, ``group``
and ``split`` prepare the data (not timed), then ``busflow train`` runs as the pipeline would run it and is
timed from start to exit: data loading, every epoch with its validation pass, the test and validation
predictions and the written outputs. ``--epochs`` shortens the run (e.g. one epoch on a CPU); the total is
then also extrapolated to the preset's epochs from the mean epoch time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_BUSI = REPO.parent / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT"


def _busflow(project: Path, *args: str) -> None:
    command = [str(Path(sys.executable).parent / "busflow"), *args]
    result = subprocess.run(command, cwd=project, capture_output=True, text=True, env=dict(os.environ, DVC_NO_ANALYTICS="1"))
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def _params(preset: Path, args: argparse.Namespace) -> dict:
    params = yaml.safe_load(preset.read_text(encoding="utf-8"))
    params["data"]["busi"]["path"] = str(args.busi)
    params["preprocess"]["size"] = args.size
    params["device"] = args.device
    params["accelerator"] = {**params.get("accelerator", {}), "fast_path": args.fast_path, "compile": args.compile}
    if args.model not in params["models"]:
        sys.exit(f"{preset}: no model '{args.model}' (defined: {sorted(params['models'])})")
    if args.epochs:
        params["models"][args.model]["epochs"] = args.epochs
    return params


def _fast_path_setting(text: str) -> str | bool:
    return text if text == "auto" else text == "true"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", type=Path, default=REPO / "config" / "presets" / "p003.yaml")
    parser.add_argument("--model", default="mtl_resnet50")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=None, help="train this many epochs instead of the preset's")
    parser.add_argument("--busi", type=Path, default=SHARED_BUSI, help="an extracted BUSI (Dataset_BUSI_with_GT)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fast-path", type=_fast_path_setting, default="auto", help="auto | true | false")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    if not args.busi.is_dir():
        sys.exit(f"{args.busi}: no BUSI folder here; pass --busi <path to Dataset_BUSI_with_GT>")
    preset_epochs = yaml.safe_load(args.preset.read_text(encoding="utf-8"))["models"][args.model]["epochs"]
    params = _params(args.preset, args)
    project = Path(tempfile.mkdtemp(prefix="busflow-wall-time-"))
    try:
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        started = time.perf_counter()
        _busflow(project, "download", "--params", "params.yaml", "--out", "raw", "--log", "logs/download.log")
        _busflow(project, "preprocess", "--params", "params.yaml", "--raw", "raw", "--index", "data/index.csv",
                 "--arrays", "data/arrays.npz", "--skipped", "data/skipped.csv", "--log", "logs/preprocess.log")
        _busflow(project, "group", "--params", "params.yaml", "--index", "data/index.csv", "--groups", "split/groups.csv",
                 "--links", "split/links.csv", "--log", "logs/group.log")
        _busflow(project, "split", "--params", "params.yaml", "--index", "data/index.csv", "--groups", "split/groups.csv",
                 "--folds", "split/folds.csv", "--conflicts", "split/conflicts.csv",
                 "--log", "logs/split.log")
        prepared = time.perf_counter() - started
        out = project / "model"
        started = time.perf_counter()
        _busflow(project, "train", "--params", "params.yaml", "--model", args.model, "--fold", str(args.fold),
                 "--arrays", "data/arrays.npz", "--folds", "split/folds.csv", "--out", str(out), "--log", "logs/train.log")
        wall = time.perf_counter() - started
        history = pd.read_csv(out / "history.csv")
        trained_on = json.loads((out / "model.json").read_text())["trained_on"]
        split = pd.read_csv(project / "split" / "folds.csv")
        print(f"{args.preset.stem} {args.model} fold {args.fold}, BUSI at {args.size}², {len(history)} epochs, "
              f"device {trained_on['device']} ({trained_on['device_name']}), fast path {trained_on.get('fast_path')}, "
              f"compiled {trained_on.get('compiled')}; {len(split)} images split (data prepared in {prepared:.0f} s)")
        mean_epoch = history["seconds"].mean()
        print(f"busflow train wall time: {wall:.1f} s ({wall / 60:.2f} min); epoch mean {mean_epoch:.2f} s, "
              f"first {history['seconds'].iloc[0]:.2f} s")
        if len(history) < preset_epochs:
            overhead = wall - history["seconds"].sum()
            estimate = overhead + mean_epoch * preset_epochs
            print(f"extrapolated to the preset's {preset_epochs} epochs: {estimate:.0f} s ({estimate / 60:.1f} min)")
    finally:
        shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
