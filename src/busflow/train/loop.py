"""The training loop shared by every model: mini-batches from in-memory arrays, early stopping on the
validation loss, best weights kept, one concise progress line per epoch."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.transforms import Compose
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from busflow.errors import TrainingError
from busflow.train.augment import augment_batch, build_augmentation
from busflow.train.checkpoint import TrainingState, fingerprint, restore_checkpoint, save_checkpoint
from busflow.train.device import autocast
from busflow.train.losses import TaskLoss, inverse_frequency_weights, oversampled


@dataclass
class ArrayData:
    """Preprocessed images (uint8, N×S×S), lesion masks ({0,1}, N×S×S) and class labels (N)."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images = self.images[rows].astype(np.float32) / 255.0
        return images, self.masks[rows].astype(np.float32), self.labels[rows]


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; training stops instead of writing garbage weights."""


class BatchMemoryError(TrainingError):
    """A training batch did not fit in the device's memory."""


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def _epoch_random_state(seed: int, epoch: int, augmentation: Compose | None) -> np.random.Generator:
    """Every random draw of one epoch (shuffling, augmentation, dropout) seeded from (seed, epoch) alone,
    so an epoch replays identically whether or not the job was resumed before it."""
    sequence = np.random.SeedSequence([seed, epoch])
    torch_seed, augmentation_seed = (int(v) for v in sequence.generate_state(2))
    torch.manual_seed(torch_seed)
    if augmentation is not None:
        augmentation.set_random_state(seed=augmentation_seed)
    return np.random.default_rng(sequence)


def _optimizer(model: nn.Module, spec: Mapping[str, Any]) -> torch.optim.Optimizer:
    kind, lr, decay = spec["optimizer"], spec["lr"], spec["weight_decay"]
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=decay, nesterov=True)
    optimizer_class = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return optimizer_class(model.parameters(), lr=lr, weight_decay=decay, betas=tuple(spec["betas"]))


def _scheduler(optimizer: torch.optim.Optimizer, spec: Mapping[str, Any]) -> torch.optim.lr_scheduler.LRScheduler | None:
    step = spec["lr_step"]
    return torch.optim.lr_scheduler.StepLR(optimizer, step["epochs"], step["gamma"]) if step["epochs"] else None


def _to_device(device: torch.device, *arrays: np.ndarray | torch.Tensor) -> list[torch.Tensor]:
    tensors = [torch.as_tensor(a) for a in arrays]
    return [t.to(device, non_blocking=True) for t in tensors]


def _batches(rows: np.ndarray, batch_size: int, drop_single: bool) -> list[np.ndarray]:
    chunks = [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
    # A trailing batch of one breaks BatchNorm statistics in training mode.
    if drop_single and len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks = chunks[:-1]
    return chunks


@torch.no_grad()
def predict(model: nn.Module, data: ArrayData, rows: np.ndarray, device: torch.device, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Class probabilities (N×C) and/or lesion probabilities (N×S×S, float32) for ``rows``."""
    model.eval()
    collected: dict[str, list[np.ndarray]] = {}
    for chunk in _batches(rows, batch_size, drop_single=False):
        images, _, _ = data.batch(chunk)
        (inputs,) = _to_device(device, torch.from_numpy(images).unsqueeze(1))
        with autocast(device):
            outputs = model(inputs)
        if "logits" in outputs:
            collected.setdefault("class_probs", []).append(torch.softmax(outputs["logits"].float(), 1).cpu().numpy())
        if "seg" in outputs:
            collected.setdefault("mask_probs", []).append(torch.sigmoid(outputs["seg"].float())[:, 0].cpu().numpy())
    return {key: np.concatenate(parts) for key, parts in collected.items()}


def _validation_score(tasks: frozenset[str], data: ArrayData, rows: np.ndarray, outputs: dict[str, np.ndarray]) -> float:
    """Balanced accuracy for classifiers, batch Dice for segmenters, their mean for multi-task models."""
    scores = []
    if "cls" in tasks:
        scores.append(balanced_accuracy_score(data.labels[rows], outputs["class_probs"].argmax(1)))
    if "seg" in tasks:
        predicted, truth = outputs["mask_probs"] >= 0.5, data.masks[rows] > 0
        denominator = predicted.sum() + truth.sum()
        scores.append(2.0 * (predicted & truth).sum() / denominator if denominator else 1.0)
    return float(np.mean(scores))


@torch.no_grad()
def _validation_loss(model: nn.Module, criterion: TaskLoss, data: ArrayData, rows: np.ndarray, device: torch.device, batch_size: int) -> float:
    model.eval()
    total = 0.0
    for chunk in _batches(rows, batch_size, drop_single=False):
        images, masks, labels = data.batch(chunk)
        inputs, targets, mask_targets = _to_device(
            device, torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels), torch.from_numpy(masks).unsqueeze(1)
        )
        with autocast(device):
            total += float(criterion(model(inputs), targets, mask_targets)) * len(chunk)
    return total / max(len(rows), 1)


def fit(
    model: nn.Module,
    tasks: frozenset[str],
    data: ArrayData,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    spec: Mapping[str, Any],
    *,
    n_classes: int,
    device: torch.device,
    seed: int,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[Mapping[str, float]], None] = lambda row: None,
    checkpoint: Path | None = None,
) -> pd.DataFrame:
    """Train ``model`` in place (ending with the best-validation weights); return the per-epoch history.

    ``on_epoch`` receives each history row as soon as its epoch ends (e.g. for dvclive; a resumed run
    replays the restored epochs first). With ``checkpoint``, the state after every epoch is saved there and
    a matching checkpoint found at the start is resumed (:mod:`busflow.train.checkpoint`). A model without
    trainable parameters (e.g. the classical segmenter) is evaluated once on ``val_rows``.
    """
    model.to(device)
    if not any(p.requires_grad for p in model.parameters()):
        history = _evaluate_untrainable(model, tasks, data, val_rows, device, log)
        on_epoch(history.iloc[0].to_dict())
        return history
    class_weights = inverse_frequency_weights(data.labels[train_rows], n_classes) if spec["class_weights"] else None
    criterion = TaskLoss(tasks, class_weights, spec["seg_loss_weight"], cls_loss=spec["cls_loss"],
                         seg_loss=spec["seg_loss"], focal_gamma=spec["focal_gamma"]).to(device)
    optimizer = _optimizer(model, spec)
    scheduler = _scheduler(optimizer, spec)
    augmentation = build_augmentation(spec["augment"], data.images.shape[-1], seed)
    key = fingerprint(spec, seed, (data.images, data.masks, data.labels, train_rows, val_rows)) if checkpoint else ""
    state = TrainingState(0, float("inf"), copy.deepcopy(model.state_dict()), 0, [])
    restored = restore_checkpoint(checkpoint, key, model, optimizer, scheduler) if checkpoint else None
    if restored:
        state = restored
        log(f"resuming after epoch {state.epoch} from {checkpoint}")
        for row in state.history:
            on_epoch(row)
    stopped_early = lambda: bool(spec["patience"]) and state.stale >= spec["patience"]  # noqa: E731
    for epoch in range(state.epoch + 1, spec["epochs"] + 1):
        if stopped_early():
            break
        started = time.perf_counter()
        rng = _epoch_random_state(seed, epoch, augmentation)
        epoch_rows = oversampled(train_rows, data.labels, rng) if spec["oversample"] else rng.permutation(train_rows)
        try:
            train_loss = _train_epoch(model, criterion, optimizer, data, epoch_rows, spec, augmentation, device, epoch)
        except TrainingError as error:
            kept = f"the checkpoint after epoch {state.epoch} is kept at {checkpoint}" if checkpoint and state.epoch else "no epoch completed"
            raise type(error)(f"{error}; {kept}") from None
        val_loss = _validation_loss(model, criterion, data, val_rows, device, spec["batch_size"])
        val_score = _validation_score(tasks, data, val_rows, predict(model, data, val_rows, device))
        seconds = time.perf_counter() - started
        state.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_score": val_score,
                              "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3)})
        on_epoch(state.history[-1])
        if scheduler is not None:
            scheduler.step()
        improved = val_loss < state.best_loss
        if improved:
            state.best_loss, state.best_state, state.stale = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            state.stale += 1
        state.epoch = epoch
        if checkpoint:
            save_checkpoint(checkpoint, key, state, model, optimizer, scheduler)
        log(f"epoch {epoch:>3}/{spec['epochs']}  train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
            f"val_score {val_score:.3f}  {seconds:5.1f}s{'  *' if improved else ''}")
        if stopped_early():
            log(f"early stop: no validation improvement for {state.stale} epochs")
    model.load_state_dict(state.best_state)
    return pd.DataFrame(state.history)


def _evaluate_untrainable(model: nn.Module, tasks: frozenset[str], data: ArrayData, val_rows: np.ndarray,
                          device: torch.device, log: Callable[[str], None]) -> pd.DataFrame:
    started = time.perf_counter()
    val_score = _validation_score(tasks, data, val_rows, predict(model, data, val_rows, device))
    seconds = time.perf_counter() - started
    log(f"no trainable parameters: evaluated once, val_score {val_score:.3f}  {seconds:5.1f}s")
    return pd.DataFrame([{"epoch": 0, "train_loss": float("nan"), "val_loss": float("nan"), "val_score": val_score,
                          "lr": 0.0, "seconds": round(seconds, 3)}])


def _train_epoch(
    model: nn.Module,
    criterion: TaskLoss,
    optimizer: torch.optim.Optimizer,
    data: ArrayData,
    rows: np.ndarray,
    spec: Mapping[str, Any],
    augmentation: Compose | None,
    device: torch.device,
    epoch: int,
) -> float:
    """One pass over ``rows`` in mini-batches; returns the mean training loss."""
    model.train()
    total, seen = 0.0, 0
    for step, chunk in enumerate(_batches(rows, spec["batch_size"], drop_single=True), start=1):
        images, masks, labels = data.batch(chunk)
        image_tensor, mask_tensor = augment_batch(augmentation, images, masks)
        inputs, targets, mask_targets = _to_device(device, image_tensor, torch.from_numpy(labels), mask_tensor)
        optimizer.zero_grad(set_to_none=True)
        try:
            with autocast(device):
                loss = criterion(model(inputs), targets, mask_targets)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"loss is {float(loss.detach())} at epoch {epoch}, batch {step}: training stopped (lower lr, "
                                         f"check the inputs of this batch: {len(chunk)} images)")
            loss.backward()
        except (RuntimeError, MemoryError) as error:
            if isinstance(error, TrainingError) or not _is_out_of_memory(error):
                raise
            raise BatchMemoryError(f"out of memory on {device} at epoch {epoch}, batch {step} ({len(chunk)} images of "
                                   f"{images.shape[-1]}×{images.shape[-1]} px): lower this model's batch_size (now "
                                   f"{spec['batch_size']}) or preprocess.size, or train on a device with more memory") from None
        optimizer.step()
        total += float(loss.detach()) * len(chunk)
        seen += len(chunk)
    return total / max(seen, 1)
