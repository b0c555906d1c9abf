"""GPU scheduling without a GPU: detection, what jobs ask the scheduler for, the slot locks that pin a job
to one GPU (distinct GPUs for concurrent jobs, freed when a job is killed), and the refusal of a CPU fallback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from busflow import gpus
from busflow.gpus import GPU_COUNT_ENV, GpuPlan, gpu_slot, visible_gpu_count, visible_gpu_ids

SRC = Path(__file__).resolve().parents[1] / "src"


def _quiet(line: str) -> None:
    pass


@pytest.fixture
def no_driver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No nvidia-smi on PATH, an empty driver folder, no overrides: a CPU machine."""
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv(GPU_COUNT_ENV, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    driver = tmp_path / "driver"
    driver.mkdir()
    monkeypatch.setattr(gpus, "PROC_GPUS", driver)
    return tmp_path


def _fake_nvidia_smi(folder: Path, count: int) -> None:
    (folder / "bin").mkdir(exist_ok=True)
    script = folder / "bin" / "nvidia-smi"
    lines = "\n".join(f"echo 'GPU {i}: NVIDIA H200 (UUID: GPU-{i:08d})'" for i in range(count))
    script.write_text(f"#!/bin/sh\n{lines}\n")
    script.chmod(0o755)


def test_a_cpu_machine_has_no_gpu(no_driver: Path) -> None:
    assert visible_gpu_count() == 0


def test_gpus_are_counted_from_nvidia_smi_and_limited_by_cuda_visible_devices(no_driver: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_nvidia_smi(no_driver, 4)
    assert visible_gpu_count() == 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpu_count() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpu_count() == 0


def test_without_nvidia_smi_the_driver_folder_counts(no_driver: Path) -> None:
    for index in range(3):
        (no_driver / "driver" / f"0000:0{index}:00.0").mkdir()
    assert visible_gpu_count() == 3


def test_the_override_wins_and_must_be_a_count(no_driver: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_nvidia_smi(no_driver, 4)
    monkeypatch.setenv(GPU_COUNT_ENV, "0")
    assert visible_gpu_count() == 0
    monkeypatch.setenv(GPU_COUNT_ENV, "two")
    with pytest.raises(ValueError, match=f"{GPU_COUNT_ENV}='two'"):
        visible_gpu_count()


@pytest.mark.parametrize(("value", "ids"), [("0,1", ["0", "1"]), ("GPU-aa, GPU-bb", ["GPU-aa", "GPU-bb"]), ("1,-1,2", ["1"]), ("", [])])
def test_cuda_visible_devices_stops_at_the_first_invalid_entry(monkeypatch: pytest.MonkeyPatch, value: str, ids: list[str]) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert visible_gpu_ids() == ids


def test_the_plan_asks_for_gpus_only_where_jobs_will_get_one() -> None:
    none = {"gpu": 0, "gpu_percent": 0}
    assert GpuPlan("cpu", gpus=2).job_resources() == none and GpuPlan("cpu", gpus=2).machine_resources() == {}
    assert GpuPlan("auto", gpus=0).job_resources() == none and GpuPlan("auto", gpus=0).machine_resources() == {}
    shared = GpuPlan("auto", gpus=2, jobs_per_gpu=2)
    assert shared.job_resources() == {"gpu": 1, "gpu_percent": 50}
    assert shared.machine_resources() == {"gpu": 4, "gpu_percent": 200}  # 2 GPUs x 2 jobs at once
    cluster = GpuPlan("auto", gpus=0, cluster=True)  # the login node has none; the nodes do
    assert cluster.job_resources() == {"gpu": 1, "gpu_percent": 100} and cluster.machine_resources() == {}
    assert GpuPlan("cpu", gpus=0, cluster=True).job_resources() == none
    missing = GpuPlan("cuda", gpus=0)  # the jobs start and say that CUDA is missing
    assert missing.job_resources()["gpu"] == 1 and missing.machine_resources() == {"gpu": 1, "gpu_percent": 100}


def test_concurrent_jobs_get_distinct_gpus_before_any_gpu_takes_a_second_job(tmp_path: Path) -> None:
    with gpu_slot(["0", "1"], 2, lock_dir=tmp_path, log=_quiet) as first, gpu_slot(["0", "1"], 2, lock_dir=tmp_path, log=_quiet) as second:
        assert {first, second} == {0, 1}
        with gpu_slot(["0", "1"], 2, lock_dir=tmp_path, log=_quiet) as third:
            assert third in (0, 1)


def test_a_job_waits_while_every_slot_is_held_and_takes_the_one_that_frees(tmp_path: Path) -> None:
    taken: list[int] = []
    messages: list[str] = []
    release = threading.Event()

    def holder() -> None:
        with gpu_slot(["0"], 1, lock_dir=tmp_path, log=_quiet):
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    time.sleep(0.3)

    def waiter() -> None:
        with gpu_slot(["0"], 1, lock_dir=tmp_path, poll_s=0.05, log=messages.append) as index:
            taken.append(index)

    waiting = threading.Thread(target=waiter)
    waiting.start()
    time.sleep(0.5)
    assert taken == [] and any("held by other jobs" in m for m in messages)
    release.set()
    waiting.join(10)
    thread.join(10)
    assert taken == [0]


def test_a_killed_job_frees_its_gpu_at_once(tmp_path: Path) -> None:
    """kill -9 leaves the lock file behind, but the kernel drops the lock with the process."""
    code = ("import sys, time; from pathlib import Path; from busflow.gpus import gpu_slot\n"
            f"with gpu_slot(['0', '1'], 1, lock_dir=Path({str(tmp_path)!r}), log=lambda line: None) as index:\n"
            "    print(index, flush=True); time.sleep(60)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    job = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        held = int(job.stdout.readline())
        with gpu_slot(["0", "1"], 1, lock_dir=tmp_path, log=_quiet) as other:
            assert other == 1 - held  # the killed-to-be job's GPU is taken
        os.kill(job.pid, signal.SIGKILL)
        job.wait(10)
        assert list(tmp_path.glob("*.lock"))  # the file stays, the lock does not
        with gpu_slot(["0", "1"], 1, lock_dir=tmp_path, poll_s=0.05, log=_quiet) as first, \
                gpu_slot(["0", "1"], 1, lock_dir=tmp_path, poll_s=0.05, log=_quiet) as second:
            assert {first, second} == {0, 1}
    finally:
        job.kill()
        job.wait(10)


def test_slots_on_gpus_named_by_the_scheduler_never_block_each_other(tmp_path: Path) -> None:
    """Two Slurm jobs on one node each see their own GPU as index 0; the slot is named after its id."""
    with gpu_slot(["GPU-aa"], 1, lock_dir=tmp_path, log=_quiet) as first, gpu_slot(["GPU-bb"], 1, lock_dir=tmp_path, log=_quiet) as second:
        assert first == second == 0


def test_a_job_granted_a_gpu_refuses_to_train_on_the_cpu() -> None:
    torch = pytest.importorskip("torch")
    from busflow.errors import DeviceError
    from busflow.train.device import job_device

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    refused = pytest.raises(DeviceError, match=r"scheduled with a GPU \(resource gpu=1\) but CUDA finds none.*device: cpu")
    with refused, job_device("auto", gpus_granted=1, log=_quiet):
        pass
    with job_device("auto", gpus_granted=0, log=_quiet) as device:
        assert device.type == "cpu"
    with pytest.raises(DeviceError, match="CUDA is not available"), job_device("cuda", log=_quiet):
        pass


def test_deterministic_auto_is_exact_on_the_cpu_and_autotuned_on_cuda_and_the_card_says_which() -> None:
    torch = pytest.importorskip("torch")
    from busflow.train.device import apply_determinism, is_deterministic, resolve_deterministic

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_deterministic("auto", cpu) and not resolve_deterministic("auto", cuda)
    assert resolve_deterministic(True, cuda) and not resolve_deterministic(False, cpu)
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    try:
        apply_determinism(True, cuda)  # sets torch's flags; no GPU needed for that
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark and is_deterministic(cuda)
        apply_determinism(False, cuda)
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic and not is_deterministic(cuda)
        assert is_deterministic(cpu)  # the CPU's kernels are deterministic whatever was asked
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[:2]
        torch.use_deterministic_algorithms(saved[2])
