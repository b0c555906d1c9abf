"""Per-epoch training checkpoints, so a killed job resumes where it stopped and ends where it would have.

A checkpoint holds everything the remaining epochs depend on: network, optimizer and scheduler states, the
best weights so far with their early-stopping counters, and the history. Random draws need no saving: the
loop seeds every epoch from (seed, epoch). On CPU with a fixed seed a resumed run therefore finishes with
exactly the weights of an uninterrupted one.

Checkpoints live outside the job's declared outputs (``results/<run>/checkpoints/...``): Snakemake deletes
a killed job's incomplete outputs and DVC a stage's outputs before they rerun, and the checkpoint must
survive both. It is written atomically after each epoch, loaded with ``weights_only=True``, used only
when its fingerprint (training settings, seed, data, split) matches the job, and removed once the job's
outputs are written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from busflow.io import atomic_path

CHECKPOINT_FILE = "checkpoint.pt"


def checkpoint_path(out_dir: Path) -> Path:
    """``results/<run>/models/<m>/.../fold<k>`` → ``results/<run>/checkpoints/<m>/.../fold<k>/checkpoint.pt``."""
    parts = out_dir.parts
    if "models" in parts:
        at = len(parts) - 1 - parts[::-1].index("models")
        return Path(*parts[:at], "checkpoints", *parts[at + 1 :], CHECKPOINT_FILE)
    return out_dir.parent / f".{out_dir.name}.checkpoints" / CHECKPOINT_FILE


def fingerprint(spec: Mapping[str, Any], seed: int, arrays: Sequence[np.ndarray]) -> str:
    """What the epochs depend on (settings, seed, and the data and split ``arrays``); a checkpoint with another
    fingerprint belongs to another job."""
    digest = hashlib.sha256(json.dumps({"spec": spec, "seed": seed}, sort_keys=True, default=str).encode())
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def discard_checkpoint(path: Path) -> None:
    """Remove a finished job's checkpoint folder (with any temporary file a killed write left) and the
    folders that leaves empty, up to ``checkpoints/``.

    Jobs running side by side share those folders: one may create a folder another is about to remove, or
    remove one first. So each folder is simply tried: one that is no longer empty or already gone ends the
    pruning (no check-then-remove)."""
    shutil.rmtree(path.parent, ignore_errors=True)
    folder = path.parent.parent
    while True:
        try:
            folder.rmdir()
        except OSError:  # another job's checkpoint lives below it, or another job removed it
            return
        if folder.name == "checkpoints":
            return
        folder = folder.parent


def make_checkpoint_folder(path: Path, attempts: int = 10) -> None:
    """Create the folder of checkpoint ``path``; a job finishing meanwhile may remove a just-created, still
    empty parent (see :func:`discard_checkpoint`), which ``mkdir`` reports as a missing parent or, when the
    removal falls between its own steps, as an existing one, so the creation is retried."""
    for _ in range(attempts - 1):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return
        except (FileNotFoundError, FileExistsError):
            continue
    path.parent.mkdir(parents=True, exist_ok=True)


@dataclass
class TrainingState:
    """The loop's state after ``epoch`` complete epochs."""

    epoch: int
    best_loss: float
    best_state: dict[str, torch.Tensor]
    stale: int
    history: list[dict[str, float]]


def save_checkpoint(path: Path, key: str, state: TrainingState, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> None:
    payload = {
        "fingerprint": key, "epoch": state.epoch, "best_loss": state.best_loss, "stale": state.stale, "history": state.history,
        "best_state": {k: v.detach().cpu() for k, v in state.best_state.items()},
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }
    make_checkpoint_folder(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def restore_checkpoint(path: Path, key: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> TrainingState | None:
    """Load ``path`` into the training objects when it belongs to this job; the restored state, or None."""
    if not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("fingerprint") != key:
        return None
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(payload["scheduler"])
    return TrainingState(payload["epoch"], payload["best_loss"], payload["best_state"], payload["stale"], payload["history"])
