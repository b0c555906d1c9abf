"""GPUs for the workflow: how many a machine has, what each job asks the scheduler for, and which GPU a job
on a multi-GPU machine takes. No torch import: the Snakefile reads this at parse time.

Scheduling (:class:`GpuPlan`). A job that trains asks for ``gpu=1`` and ``gpu_percent = 100 / jobs_per_gpu``
when it will run on a GPU: always for ``device: cuda``; for ``device: auto`` on a machine whose GPUs are
detected, and on a cluster (the submitting host often has none, the nodes do). On one machine the workflow
offers ``gpu = N x jobs_per_gpu`` and ``gpu_percent = 100 x N`` for its N GPUs, so at most that many jobs
train at once; ``--resources`` on the command line overrides both. ``device: cpu`` asks for nothing.

Pinning (:func:`gpu_slot`). Snakemake counts GPUs but does not say which one a job gets, so each job takes
one of the ``N x jobs_per_gpu`` slots by an exclusive ``flock`` on the slot's lock file and trains on that
slot's GPU. The kernel releases a ``flock`` when its process ends however it ends (``kill -9`` included),
so a crashed job never strands a GPU; no stale-lock clean-up is needed. Slots are named after the GPU's
entry in ``CUDA_VISIBLE_DEVICES`` (an index or a UUID) where set, so jobs whose schedulers gave them
different GPUs never block each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

GPU_COUNT_ENV = "BUSFLOW_GPUS"  # overrides detection: the number of GPUs this machine offers (0: none)
LOCK_DIR_ENV = "BUSFLOW_GPU_LOCK_DIR"  # where the slot lock files live (default: a per-user folder in /tmp)
PROC_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU the NVIDIA driver knows
WAIT_MESSAGE_EVERY_S = 60.0


def _count_override() -> int | None:
    value = os.environ.get(GPU_COUNT_ENV)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise ValueError(f"{GPU_COUNT_ENV}={value!r}: expected the number of GPUs, an integer >= 0")
    return int(value)


def _driver_gpu_count() -> int:
    """GPUs the NVIDIA driver reports: ``nvidia-smi -L`` where available, else the driver's /proc folders."""
    smi = shutil.which("nvidia-smi")
    if smi:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
            return sum(line.startswith("GPU ") for line in listing.splitlines())
    with contextlib.suppress(OSError):
        return sum(1 for entry in PROC_GPUS.iterdir() if entry.is_dir())
    return 0


def visible_gpu_ids() -> list[str] | None:
    """The entries of ``CUDA_VISIBLE_DEVICES`` up to the first invalid one (CUDA ignores the rest), or None
    when it is unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    ids = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry or entry.startswith("-"):
            break
        ids.append(entry)
    return ids


def visible_gpu_count() -> int:
    """CUDA GPUs that jobs started from here can use: ``$BUSFLOW_GPUS`` if set, else the driver's GPUs,
    limited to ``CUDA_VISIBLE_DEVICES`` where that is set."""
    override = _count_override()
    if override is not None:
        return override
    count = _driver_gpu_count()
    visible = visible_gpu_ids()
    return count if visible is None else min(count, len(visible))


@dataclass(frozen=True)
class GpuPlan:
    """What the training jobs of one workflow ask the scheduler for.

    Attributes:
        device: params' ``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``).
        gpus: GPUs detected on this machine.
        jobs_per_gpu: Training jobs that share one GPU (on one machine).
        cluster: True when jobs are submitted to a cluster scheduler, whose nodes have the GPUs.
    """

    device: str
    gpus: int
    jobs_per_gpu: int = 1
    cluster: bool = False

    @property
    def on_gpu(self) -> bool:
        if self.device == "cpu":
            return False
        return self.device.startswith("cuda") or self.cluster or self.gpus > 0

    def job_resources(self) -> dict[str, int]:
        """Resources of one GPU job: ``gpu`` (a whole GPU on a cluster) and its share ``gpu_percent``."""
        if not self.on_gpu:
            return {"gpu": 0, "gpu_percent": 0}
        return {"gpu": 1, "gpu_percent": 100 // self.jobs_per_gpu}

    def machine_resources(self) -> dict[str, int]:
        """What one machine offers its GPU jobs (nothing to declare on a cluster or without a GPU job): with
        ``device: cuda`` and no GPU detected, one, so that the jobs start and say what is missing."""
        if self.cluster or not self.on_gpu:
            return {}
        gpus = max(self.gpus, 1)
        return {"gpu": gpus * self.jobs_per_gpu, "gpu_percent": 100 * gpus}


    def describe(self, offered: dict[str, int]) -> str:
        """One line for the workflow's start: what each GPU job asks for and how many run at once."""
        job = self.job_resources()
        if self.cluster:
            return f"GPU jobs ask the cluster for gpu={job['gpu']} each (device {self.device})"
        at_once = min(offered.get("gpu", 0) // job["gpu"], offered.get("gpu_percent", 0) // job["gpu_percent"])
        return (f"{self.gpus} GPU(s) detected (device {self.device}): GPU jobs take gpu_percent={job['gpu_percent']} "
                f"each, at most {at_once} at once")


def default_lock_dir() -> Path:
    configured = os.environ.get(LOCK_DIR_ENV)
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"busflow-gpu-slots-{os.getuid()}"


def _slot_file(directory: Path, gpu: str, share: int) -> Path:
    return directory / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.{share}.lock"


def _try_lock(path: Path) -> TextIO | None:
    """The open, exclusively locked file, or None when another process holds it."""
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the slot's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


@contextlib.contextmanager
def gpu_slot(gpus: Sequence[str], jobs_per_gpu: int = 1, *, lock_dir: Path | None = None, poll_s: float = 1.0,
             log: Callable[[str], None] = print) -> Iterator[int]:
    """Hold one of ``len(gpus) x jobs_per_gpu`` GPU slots until the block ends; yields the index (into
    ``gpus``) of its GPU. Slots fill GPU by GPU before any GPU takes a second job; when all are held the
    call waits for one to free.

    Args:
        gpus: Names of the GPUs this process sees, in CUDA's order (indices or ``CUDA_VISIBLE_DEVICES`` ids).
        jobs_per_gpu: Slots per GPU.
        lock_dir: Folder of the lock files (default: :func:`default_lock_dir`).
        poll_s: Seconds between attempts while every slot is held.
        log: Receives a line when the job has to wait, and which GPU it took.
    """
    if not gpus or jobs_per_gpu < 1:
        raise ValueError(f"gpu_slot needs at least one GPU and jobs_per_gpu >= 1, got {list(gpus)} and {jobs_per_gpu}")
    directory = lock_dir or default_lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    slots = [(index, share) for share in range(jobs_per_gpu) for index in range(len(gpus))]
    last_message = None
    while True:
        for index, share in slots:
            handle = _try_lock(_slot_file(directory, gpus[index], share))
            if handle is None:
                continue
            log(f"GPU slot {share + 1}/{jobs_per_gpu} of GPU {gpus[index]} taken ({len(slots)} slots in {directory})")
            try:
                yield index
            finally:
                handle.close()  # closing the last descriptor releases the flock
            return
        if last_message is None or time.monotonic() - last_message > WAIT_MESSAGE_EVERY_S:
            log(f"all {len(slots)} GPU slots in {directory} are held by other jobs; waiting for one")
            last_message = time.monotonic()
        time.sleep(poll_s)
