"""The SLURM profile on a real (single-node, localhost) Slurm: the tiny pipeline submitted job by job through
snakemake-executor-plugin-slurm gives the same outputs as the local run."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import run_tool, workflow_copy
from slurm_cluster import ClusterUnavailable, local_cluster

pytestmark = pytest.mark.slow

# Layered over workflow/profiles/slurm: sizes for this machine, one thread per training job as in the local
# run (torch's results depend on the thread count), no account, squeue for job states (no accounting here).
# The first status check comes 8 s after a submission, by when a short job (start-up included) is done: the
# plugin waits 10 s longer after every check that finds no job finished, so an early miss costs most.
TEST_PROFILE = """\
slurm-no-account: true
slurm-status-command: squeue
slurm-init-seconds-before-status-checks: 8
seconds-between-status-checks: 2
default-resources: {runtime: 30, mem_mb: 1000, cpus_per_task: 1}
set-threads: {train: 1, train_ablation: 1, cascade: 1, external: 1, group: 1}
set-resources: {report: {mem_mb: 2000}}
"""
NOT_COMPARED = {"logs", "report", "dvclive"}  # wall times, hosts and dates
NOT_BYTE_COMPARED = {"history.csv", "weights.pt"}  # epoch seconds; torch's serialization id (tensors compared)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    try:
        with local_cluster(tmp_path_factory.mktemp("slurm-state")):
            yield
    except ClusterUnavailable as reason:
        pytest.skip(f"no local Slurm cluster: {reason}")


def _compared_files(results: Path) -> list[Path]:
    return sorted(p.relative_to(results) for p in results.rglob("*")
                  if p.is_file() and not NOT_COMPARED & set(p.relative_to(results).parts))


def test_tiny_pipeline_through_the_slurm_profile_matches_the_local_run(slurm: None, tiny_project: Path, tmp_path: Path) -> None:
    project = workflow_copy(tmp_path / "project", tiny_project / "params.yaml")
    (project / "slurm-test").mkdir()
    (project / "slurm-test" / "config.yaml").write_text(TEST_PROFILE)
    run = run_tool(["snakemake", "--profile", "workflow/profiles/slurm", "--profile", "slurm-test"], project, timeout=1800)

    submitted = set(re.findall(r"has been submitted with SLURM jobid \d+ \(log: \S+/slurm_logs/rule_(\w+)/", run.stdout + run.stderr))
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
