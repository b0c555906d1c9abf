"""Wall time of the default pipeline, of a no-op re-run, and what reruns after one model's lr changes.

Runs in a scratch copy of the workflow (results/ of the checkout are untouched) and prints figures:

    python benchmarks/pipeline_walltime.py [--params params.yaml] [--model resnet50] [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path) -> tuple[float, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return elapsed, result.stdout + result.stderr


def scratch_project(params: Path, root: Path) -> Path:
    for name in ("Snakefile", "workflow", "dvc.yaml"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, root / name)
    shutil.copy2(params, root / "params.yaml")
    return root


def keep_or_remove(scratch: Path, keep: bool) -> None:
    """Leave the scratch project for inspection (--keep) or delete it."""
    if keep:
        print(f"scratch project kept at {scratch}")
    else:
        shutil.rmtree(scratch)


def scale_lr(project: Path, model: str, factor: float) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["models"][model]["lr"] *= factor
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def snakemake_plan(project: Path) -> list[str]:
    """Jobs a dry run would execute, as ``rule[wildcards]`` (just ``rule`` for rules without wildcards)."""
    _, text = run(["snakemake", "--dry-run", "--cores", "all"], project)
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        header = re.match(r"(?:local)?rule (\w+):", block)
        if header:
            wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.MULTILINE)
            jobs.append(f"{header.group(1)}[{wildcards.group(1)}]" if wildcards else header.group(1))
    return sorted(jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--model", default="resnet50", help="model whose lr is changed")
    parser.add_argument("--keep", action="store_true", help="keep the scratch project")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="busflow-bench-"))
    project = scratch_project(args.params.resolve(), root)
    figures: list[tuple[str, str]] = []

    seconds, _ = run(["snakemake", "--cores", "all"], project)
    figures.append(("snakemake --cores all (cold)", f"{seconds:.1f} s"))
    seconds, text = run(["snakemake", "--cores", "all"], project)
    figures.append(("snakemake no-op re-run", f"{seconds:.2f} s ({'nothing to be done' if 'Nothing to be done' in text else 'RAN JOBS'})"))

    leaderboard = (project / f"results/{yaml.safe_load(args.params.read_text())['dataset']}/report/tables/leaderboard.csv")
    figures.append(("leaderboard", "\n" + leaderboard.read_text()))

    scale_lr(project, args.model, 2)
    planned = snakemake_plan(project)
    figures.append((f"snakemake plan after models.{args.model}.lr x2", ", ".join(planned) or "nothing"))
    scale_lr(project, args.model, 0.5)

    run(["dvc", "init", "--no-scm", "--quiet"], project)
    run(["dvc", "commit", "--force", "--quiet"], project)
    seconds, text = run(["dvc", "repro"], project)
    figures.append(("dvc repro no-op", f"{seconds:.2f} s ({len(re.findall('Running stage', text))} stages ran)"))
    scale_lr(project, args.model, 2)
    seconds, text = run(["dvc", "repro"], project)
    ran = re.findall(r"Running stage '([^']+)'", text)
    figures.append((f"dvc repro after models.{args.model}.lr x2", f"{seconds:.1f} s, ran: {', '.join(ran)}"))

    width = max(len(name) for name, _ in figures)
    for name, value in figures:
        print(f"{name:<{width}}  {value}")
    keep_or_remove(root, args.keep)


if __name__ == "__main__":
    main()
