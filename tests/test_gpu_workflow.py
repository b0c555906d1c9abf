"""What the workflow asks the scheduler for, from Snakemake dry runs: GPUs for the jobs that train when the
machine (simulated with BUSFLOW_GPUS) or the cluster has them, nothing on a CPU machine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import TINY_PARAMS, run_tool, workflow_copy

GPU_RULES = {"pretrain", "train", "train_leaky", "train_ablation", "cascade", "external"}


def _project(tmp_path: Path, device: str, jobs_per_gpu: int = 1) -> Path:
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["device"] = device
    params["accelerator"]["jobs_per_gpu"] = jobs_per_gpu
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return workflow_copy(tmp_path / "project", path)


def _dry_run(project: Path, *args: str) -> tuple[str, dict[str, set[str]], list[str]]:
    """The dry run's text, each rule's distinct resources lines, and its shell commands."""
    result = run_tool(["snakemake", "--dry-run", "--printshellcmds", *args], project)
    text = result.stdout + result.stderr
    resources: dict[str, set[str]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        header = re.match(r"(?:local)?rule (\w+):", block)
        found = re.search(r"^\s+resources: (.+)$", block, re.MULTILINE)
        if header and found:
            resources.setdefault(header.group(1), set()).add(found.group(1))
    return text, resources, re.findall(r"^Shell command: (.+)$", text, re.MULTILINE)


def _gpu_requests(resources: dict[str, set[str]]) -> dict[str, set[str]]:
    return {rule: {re.search(r"gpu=\d+, gpu_percent=\d+", line).group(0) for line in lines if "gpu=" in line}
            for rule, lines in resources.items() if any("gpu=" in line for line in lines)}


def test_a_cpu_machine_asks_for_no_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUSFLOW_GPUS", "0")
    text, resources, commands = _dry_run(_project(tmp_path, "auto"), "--cores", "2")
    requests = _gpu_requests(resources)
    assert set(requests) == GPU_RULES and all(found == {"gpu=0, gpu_percent=0"} for found in requests.values())
    assert "GPU(s) detected" not in text
    trains = [c for c in commands if c.startswith(("busflow train", "busflow cascade", "busflow pretrain", "busflow external"))]
    assert trains and all("--gpus 0" in c for c in trains)


def test_a_machine_with_gpus_runs_gpus_x_jobs_per_gpu_training_jobs_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUSFLOW_GPUS", "2")
    project = _project(tmp_path, "auto", jobs_per_gpu=2)
    text, resources, commands = _dry_run(project, "--cores", "8")
    assert _gpu_requests(resources) == {rule: {"gpu=1, gpu_percent=50"} for rule in GPU_RULES}
    assert "2 GPU(s) detected (device auto): GPU jobs take gpu_percent=50 each, at most 4 at once" in text
    assert all("--gpus 1" in c for c in commands if c.startswith("busflow train"))
    limited, _, _ = _dry_run(project, "--cores", "8", "--resources", "gpu_percent=100")  # the user's limit wins
    assert "at most 2 at once" in limited


def test_device_cpu_keeps_jobs_off_the_gpus_a_machine_has(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUSFLOW_GPUS", "2")
    _, resources, _ = _dry_run(_project(tmp_path, "cpu"), "--cores", "2")
    assert all(found == {"gpu=0, gpu_percent=0"} for found in _gpu_requests(resources).values())


@pytest.mark.parametrize(("device", "asked"), [("auto", "gpu=1, gpu_percent=100"), ("cpu", "gpu=0, gpu_percent=0")])
def test_under_slurm_training_jobs_ask_for_a_gpu_unless_device_is_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      device: str, asked: str) -> None:
    """The project's Slurm profile; the submitting host has no GPU (BUSFLOW_GPUS=0), the cluster's nodes do."""
    monkeypatch.setenv("BUSFLOW_GPUS", "0")
    _, resources, _ = _dry_run(_project(tmp_path, device), "--profile", "workflow/profiles/slurm")
    assert _gpu_requests(resources) == {rule: {asked} for rule in GPU_RULES}
