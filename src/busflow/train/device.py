"""Device selection and mixed precision: ``auto`` picks CUDA when present, else the CPU."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' requested in params but CUDA is not available on this machine")
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full fp32 on the CPU (CPU bf16 is slow on most machines and changes results)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    build and thread count; every random draw is seeded); on CUDA only with deterministic algorithms forced,
    which busflow does not do (cuDNN autotuning and atomics in backward passes are faster)."""
    return device.type == "cpu" or torch.are_deterministic_algorithms_enabled()


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
