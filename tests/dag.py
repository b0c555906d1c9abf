"""Read the job graph of each orchestrator as comparable records (rule/stage name, command, outputs)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from conftest import run_tool


@dataclass(frozen=True)
class Job:
    name: str
    command: str
    outputs: frozenset[str]


def _normalise(command: str) -> str:
    return " ".join(command.split())


def snakemake_jobs(project: Path, *extra_args: str) -> set[Job]:
    """Every job of a forced dry run, from `snakemake -n -p` (rules without a shell command are skipped)."""
    text = run_tool(["snakemake", "--dry-run", "--printshellcmds", "--forceall", "--cores", "1", *extra_args], project).stdout
    jobs = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        header = re.match(r"(?:local)?rule (\w+):", block)
        command = re.search(r"^Shell command: (.+)$", block, re.MULTILINE)
        if not header or not command or command.group(1).strip() == "None":
            continue
        outputs = re.search(r"^\s+output: (.+)$", block, re.MULTILINE)
        files = frozenset(o.strip() for o in outputs.group(1).split(",")) if outputs else frozenset()
        jobs.add(Job(header.group(1), _normalise(command.group(1)), files))
    return jobs


def dvc_jobs(project: Path) -> set[Job]:
    """Every stage of dvc.yaml after foreach/matrix expansion, through DVC's own API."""
    from dvc.repo import Repo

    if not (project / ".dvc").exists():
        run_tool(["dvc", "init", "--no-scm", "--quiet"], project)
    with Repo(str(project)) as repo:
        return {Job(stage.name.split("@")[0], _normalise(stage.cmd), frozenset(str(out.def_path) for out in stage.outs))
                for stage in repo.index.stages}


def dvc_missing_params(project: Path) -> dict[str, list[str]]:
    """Stage → declared params that the params file lacks (`dvc repro` would refuse to run them)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    if not (project / ".dvc").exists():
        run_tool(["dvc", "init", "--no-scm", "--quiet"], project)
    missing: dict[str, list[str]] = {}
    with Repo(str(project)) as repo:
        for stage in repo.index.stages:
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    absent = [key for key in dep.params if key not in dep.read_params()]
                    if absent:
                        missing[stage.name] = absent
    return missing
