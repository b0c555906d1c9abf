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


def _dvc_init(project: Path) -> None:
    """`dvc init --no-scm` in-process (the command's own call, without starting a DVC process)."""
    from dvc.repo import Repo

    if not (project / ".dvc").exists():
        Repo.init(str(project), no_scm=True).close()


def dvc_jobs(project: Path) -> set[Job]:
    """Every stage of dvc.yaml after foreach/matrix expansion, through DVC's own API."""
    from dvc.repo import Repo

    _dvc_init(project)
    with Repo(str(project)) as repo:
        return {Job(stage.name.split("@")[0], _normalise(stage.cmd), frozenset(str(out.def_path) for out in stage.outs))
                for stage in repo.index.stages}


def dvc_missing_params(project: Path) -> dict[str, list[str]]:
    """Stage → declared params that the params file lacks (`dvc repro` would refuse to run them)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    _dvc_init(project)
    missing: dict[str, list[str]] = {}
    with Repo(str(project)) as repo:
        deps = [(stage.name, dep) for stage in repo.index.stages for dep in stage.deps if isinstance(dep, ParamsDependency)]
        # What dep.read_params() gives each stage, with each params file parsed once instead of once per stage
        # (hundreds of YAML parses): DVC's reader asked for every key any stage declares on that file.
        wanted: dict[str, set[str]] = {}
        for _, dep in deps:
            wanted.setdefault(dep.fs_path, set()).update(dep.params)
        found = {path: _read_params(repo, path, sorted(keys)) for path, keys in wanted.items()}
        for name, dep in deps:
            absent = [key for key in dep.params if key not in found[dep.fs_path]]
            if absent:
                missing[name] = absent
    return missing


def _read_params(repo, path: str, keys: list[str]) -> dict:
    """DVC's own ParamsDependency.read_params for ``keys`` of the file at ``path`` ({} where it is missing)."""
    from dvc.dependency.param import read_param_file

    if not repo.fs.isfile(path):
        return {}
    return read_param_file(repo.fs, path, keys, flatten=True)
