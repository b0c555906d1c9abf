"""The SLURM profile on a real (single-node, localhost) Slurm: the tiny pipeline submitted job by job through
snakemake-executor-plugin-slurm gives the same outputs as the local run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from slurm_cluster import ProfileRun

# Started at the suite's first test, in the background (tests/conftest.py: slurm_profile_run); run last.
pytestmark = [pytest.mark.slow, pytest.mark.slurm_background]

NOT_COMPARED = {"logs", "report", "dvclive"}  # wall times, hosts and dates
NOT_BYTE_COMPARED = {"history.csv", "weights.pt"}  # epoch seconds; torch's serialization id (tensors compared)


def _compared_files(results: Path) -> list[Path]:
    return sorted(p.relative_to(results) for p in results.rglob("*")
                  if p.is_file() and not NOT_COMPARED & set(p.relative_to(results).parts))


def test_tiny_pipeline_through_the_slurm_profile_matches_the_local_run(slurm_profile_run: ProfileRun, tiny_project: Path) -> None:
    if slurm_profile_run.unavailable:
        pytest.skip(f"no local Slurm cluster: {slurm_profile_run.unavailable}")
    output = slurm_profile_run.wait(timeout=1800)
    project = slurm_profile_run.project

    submitted = set(re.findall(r"has been submitted with SLURM jobid \d+ \(log: \S+/slurm_logs/rule_(\w+)/", output))
    assert {"download", "train", "cascade", "evaluate", "ensembles", "external", "report"} <= submitted, submitted
    local, cluster = tiny_project / "results", project / "results"
    files = _compared_files(local)
    assert files == _compared_files(cluster)
    assert any(f.name == "metrics.json" for f in files) and any(f.name == "weights.pt" for f in files)
    for relative in files:
        if relative.name == "weights.pt":
            ours, theirs = torch.load(local / relative, weights_only=True), torch.load(cluster / relative, weights_only=True)
            assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), relative
        elif relative.name not in NOT_BYTE_COMPARED:
            assert (local / relative).read_bytes() == (cluster / relative).read_bytes(), relative
