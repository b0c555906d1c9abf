"""Device selection, determinism and mixed precision: ``auto`` picks CUDA when present, else the CPU."""

from __future__ import annotations

import contextlib
import os
import random
import socket
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from busflow.errors import DeviceError
from busflow.gpus import gpu_slot, visible_gpu_ids


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device '{name}' requested in params but CUDA is not available on this machine")
    return device


@contextlib.contextmanager
def job_device(name: str, *, jobs_per_gpu: int = 1, gpus_granted: int = 0,
               log: Callable[[str], None] = print) -> Iterator[torch.device]:
    """The device one pipeline job computes on, held until the block ends.

    ``auto`` and ``cuda`` on a machine with several visible GPUs take a GPU slot (:func:`busflow.gpus.gpu_slot`),
    so concurrent jobs spread over the GPUs instead of all landing on GPU 0; ``cuda:N`` is used as given.
    ``gpus_granted`` is what the scheduler gave the job (its ``gpu`` resource): a job granted a GPU that finds
    none stops with a :class:`DeviceError` instead of training on the CPU unnoticed.
    """
    device = resolve_device(name)
    if gpus_granted and device.type != "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        raise DeviceError(f"this job was scheduled with a GPU (resource gpu={gpus_granted}) but CUDA finds none on "
                          f"{socket.gethostname()} (CUDA_VISIBLE_DEVICES={visible}); check the node's GPU driver, or set "
                          "device: cpu in params.yaml to train on CPUs")
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type != "cuda" or device.index is not None or count < 2:
        yield device
        return
    names = (visible_gpu_ids() or [])[:count] or [str(index) for index in range(count)]
    with gpu_slot(names, jobs_per_gpu, log=log) as index:
        torch.cuda.set_device(index)
        yield torch.device("cuda", index)


def params_device(params: Any, gpus_granted: int = 0, log: Callable[[str], None] = print) -> contextlib.AbstractContextManager[torch.device]:
    """:func:`job_device` of a pipeline job: params' ``device`` and ``accelerator.jobs_per_gpu``."""
    return job_device(params["device"], jobs_per_gpu=params["accelerator"]["jobs_per_gpu"], gpus_granted=gpus_granted, log=log)


def resolve_deterministic(setting: Any, device: torch.device) -> bool:
    """params' ``accelerator.deterministic``: ``auto`` is deterministic on the CPU (free there) and autotuned
    on CUDA (faster kernels, results that differ in the last bits between runs)."""
    if setting == "auto":
        return device.type != "cuda"
    return bool(setting)


def apply_determinism(deterministic: bool, device: torch.device) -> None:
    """Set the kernel choice for ``device``: on CUDA, deterministic cuDNN and torch algorithms (warning where
    an operation has none) with cuBLAS's fixed workspace, or else cuDNN autotuning. The CPU's kernels are
    deterministic for a given torch build and thread count either way."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS creates its handle
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full fp32 on the CPU (CPU bf16 is slow on most machines and changes results)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


PRECISIONS = ("fp32", "bf16")


def inference_autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Prediction and validation passes: fp32, so GPU and CPU predictions of a model agree to float rounding;
    ``bf16`` asks for bf16 autocast on CUDA (faster, probabilities that differ in the second or third digit)."""
    if precision not in PRECISIONS:
        raise ValueError(f"prediction precision must be one of {PRECISIONS}, got {precision!r}")
    return autocast(device) if precision == "bf16" else contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, torch and MONAI so a CPU run is repeatable bit for bit."""
    from monai.utils import set_determinism

    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    set_determinism(seed=seed)


def is_deterministic(device: torch.device) -> bool:
    """Whether retraining with the same seed reproduces the weights bit for bit: on the CPU yes (same torch
    build and thread count; every random draw is seeded); on CUDA when :func:`apply_determinism` forced
    deterministic algorithms (``accelerator.deterministic``), not under cuDNN autotuning."""
    if device.type != "cuda":
        return True
    return torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic


def configure_threads() -> None:
    """Honour OMP_NUM_THREADS (set by Snakemake from a rule's ``threads``) for torch's intra-op pool."""
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))


def device_name(device: torch.device) -> str:
    """The accelerator's product name, or the CPU's architecture and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.machine() or 'cpu'}, {torch.get_num_threads()} thread(s)"
