"""Shared fixtures: a scratch copy of the workflow driven by a chosen params file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_PARAMS = REPO / "tests" / "data" / "tiny_params.yaml"
WORKFLOW_FILES = ("Snakefile", "workflow", "dvc.yaml")


def workflow_copy(destination: Path, params: Path) -> Path:
    """Copy the Snakefile, workflow/ and dvc.yaml next to ``params`` (as params.yaml) in ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name)
        else:
            shutil.copy2(source, destination / name)
    shutil.copy2(params, destination / "params.yaml")
    return destination


def tool_env() -> dict[str, str]:
    """Environment in which `snakemake`, `dvc` and `busflow` of this interpreter's venv are found."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_tool(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.fixture
def tiny_workflow(tmp_path: Path) -> Path:
    return workflow_copy(tmp_path / "project", TINY_PARAMS)
