"""`busflow predict` memory: peak RSS of the command for a few images and for many — it streams, so they match.

    python benchmarks/predict_memory.py [--images 2000] [--size 256] [--model unet] [--batch-size 16] [--device cpu]

Writes phantom scans (400 × 500 px, like BUS frames) to a scratch folder — a hundred distinct ones,
copied under distinct names up to ``--images`` files — saves the network as initialised (memory does
not depend on the weights), then runs ``busflow predict`` as a child process twice, on 100 images and
on ``--images`` images, and reads each child's peak resident set size from the kernel (``ru_maxrss``,
KiB on Linux) once it has exited. Bounded memory means the two peaks differ by far less than the
extra images' pixels would take if they were all held at once.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_speed import MODELS, save_untrained, scans  # noqa: E402

DISTINCT = 100  # phantoms generated; more files are copies of these under new names
SMALL = 100  # images of the reference run
SCAN_SHAPE = (400, 500)


@dataclass
class Run:
    images: int
    seconds: float
    peak_kib: int


def scan_folder(root: Path, sources: list[Path], count: int) -> Path:
    """``count`` image files, cycling through ``sources`` under distinct names (outputs are named after them)."""
    folder = root / f"scans_{count}"
    folder.mkdir()
    for index in range(count):
        shutil.copyfile(sources[index % len(sources)], folder / f"scan{index:06d}.png")
    return folder


def predict_child(model_dir: Path, folder: Path, out_dir: Path, device: str, batch_size: int) -> Run:
    """Run ``busflow predict`` in a child process; its wall time and peak RSS (from ``wait4``'s rusage)."""
    command = [sys.executable, "-m", "busflow.cli", "predict", "--model", str(model_dir), "--input", str(folder),
               "--out", str(out_dir), "--device", device, "--batch-size", str(batch_size)]
    log_path = out_dir.with_suffix(".log")
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not the max over all children
        child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"busflow predict exited with {child.returncode}:\n{tail}")
    return Run(images=count_rows(out_dir / "predictions.csv"), seconds=seconds, peak_kib=usage.ru_maxrss)


def count_rows(csv_path: Path) -> int:
    return len(pd.read_csv(csv_path))


def checked(run: Run, expected: int) -> Run:
    if run.images != expected:
        raise SystemExit(f"predictions.csv has {run.images} rows, expected {expected}")
    return run


def report(runs: list[Run]) -> None:
    print(f"{'images':>7} {'peak RSS (MiB)':>15} {'wall (s)':>9} {'images/s':>9}")
    for run in runs:
        print(f"{run.images:>7} {run.peak_kib / 1024:>15.1f} {run.seconds:>9.1f} {run.images / run.seconds:>9.2f}")
    small, large = runs[0], runs[-1]
    held = (large.images - small.images) * SCAN_SHAPE[0] * SCAN_SHAPE[1] * 4 / 2**20  # float32 grays alone
    print(f"peak RSS grew by {(large.peak_kib - small.peak_kib) / 1024:+.1f} MiB for {large.images - small.images} more images "
          f"(holding their float32 pixels alone would take {held:.0f} MiB)")
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"getrusage(RUSAGE_CHILDREN).ru_maxrss: {children / 1024:.1f} MiB (the largest child)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", default="unet", choices=sorted(MODELS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="busflow-predict-memory-"))
    try:
        sources = sorted(scans(scratch, min(DISTINCT, args.images)).glob("*.png"))
        arch, options = MODELS[args.model]
        model_dir = scratch / "model"
        save_untrained(model_dir, arch, options, args.size)
        print(f"{args.model} at {args.size}², batch {args.batch_size}, device {args.device}; "
              f"{len(sources)} distinct phantoms of {SCAN_SHAPE[0]} × {SCAN_SHAPE[1]} px")
        runs = []
        for count in sorted({min(SMALL, args.images), args.images}):
            folder = scan_folder(scratch, sources, count)
            run = predict_child(model_dir, folder, scratch / f"out_{count}", args.device, args.batch_size)
            runs.append(checked(run, count))
        report(runs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
