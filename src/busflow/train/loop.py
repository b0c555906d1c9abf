"""The training loop shared by every model: mini-batches from in-memory arrays, early stopping on the
validation loss, best weights kept, one concise progress line per epoch.

Batches come from one of two sources: the reference path (host arrays, MONAI augmentation per sample,
copied to the device every step) or the fast path of :mod:`busflow.train.accelerate` (arrays resident on
the device, batched tensor augmentation). Either way the step loop never waits for the device: losses stay
there until the epoch ends, when they are read back once.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
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
from busflow.models.pretrained import encoder_parameter_names, set_encoder_frozen
from busflow.train.accelerate import REFERENCE, Acceleration, DeviceArrays, prepare_model
from busflow.train.augment import BatchAugmentation, augment_batch, build_augmentation
from busflow.train.checkpoint import TrainingState, fingerprint, restore_checkpoint, save_checkpoint
from busflow.train.device import autocast, inference_autocast
from busflow.train.losses import TaskLoss, inverse_frequency_weights, oversampled
from busflow.train.spec import AugmentSpec, TrainSpec

CHECKPOINT_SHARE = 0.05  # at most this fraction of the training time goes to checkpoints (checkpoint_every: auto)


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


def _epoch_random_state(seed: int, epoch: int, batches: BatchSource) -> np.random.Generator:
    """Every random draw of one epoch (shuffling, augmentation, dropout) seeded from (seed, epoch) alone,
    so an epoch replays identically whether or not the job was resumed before it."""
    sequence = np.random.SeedSequence([seed, epoch])
    torch_seed, augmentation_seed = (int(v) for v in sequence.generate_state(2))
    torch.manual_seed(torch_seed)
    batches.reseed(augmentation_seed)
    return np.random.default_rng(sequence)


def _parameter_groups(model: nn.Module, spec: TrainSpec, encoder: AbstractSet[str]) -> list[dict[str, Any]]:
    """One group; or, with an encoder learning-rate factor, the new layers at lr and the encoder at lr x factor."""
    if spec.encoder_lr_factor == 1.0:
        return [{"params": list(model.parameters())}]
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if n not in encoder]},
            {"params": [p for n, p in named if n in encoder], "lr": spec.lr * spec.encoder_lr_factor}]


def _optimizer(model: nn.Module, spec: TrainSpec, fused: bool = False, encoder: AbstractSet[str] = frozenset()) -> torch.optim.Optimizer:
    kind, lr, decay = spec.optimizer, spec.lr, spec.weight_decay
    implementation = {"fused": True} if fused else {}
    groups = _parameter_groups(model, spec, encoder)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=decay, nesterov=True, **implementation)
    optimizer_class = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return optimizer_class(groups, lr=lr, weight_decay=decay, betas=spec.betas, **implementation)


def _scheduler(optimizer: torch.optim.Optimizer, spec: TrainSpec) -> torch.optim.lr_scheduler.LRScheduler | None:
    step = spec.lr_step
    return torch.optim.lr_scheduler.StepLR(optimizer, step.epochs, step.gamma) if step.epochs else None


def _to_device(device: torch.device, *arrays: np.ndarray | torch.Tensor) -> list[torch.Tensor]:
    tensors = [torch.as_tensor(a) for a in arrays]
    return [t.to(device, non_blocking=True) for t in tensors]


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images (B,1,S,S) float, masks (B,1,S,S) float, labels (B)


class HostBatches:
    """The reference path: batches cut from the host arrays, augmented sample by sample with MONAI on the
    CPU and copied to the device at every step."""

    def __init__(self, data: ArrayData, device: torch.device, augmentation: Compose | None = None) -> None:
        self.data, self.device, self.augmentation = data, device, augmentation

    def reseed(self, seed: int) -> None:
        if self.augmentation is not None:
            self.augmentation.set_random_state(seed=seed)

    def index(self, rows: np.ndarray) -> np.ndarray:
        return rows

    def batch(self, rows: np.ndarray, augment: bool = False) -> Batch:
        images, masks, labels = self.data.batch(rows)
        if augment:
            image_tensor, mask_tensor = augment_batch(self.augmentation, images, masks)
        else:
            image_tensor, mask_tensor = torch.from_numpy(images).unsqueeze(1), torch.from_numpy(masks).unsqueeze(1)
        inputs, mask_targets, targets = _to_device(self.device, image_tensor, mask_tensor, torch.from_numpy(labels))
        return inputs, mask_targets, targets


class DeviceBatches:
    """The fast path: arrays resident on the device, batches indexed and augmented there."""

    def __init__(self, arrays: DeviceArrays, augmentation: BatchAugmentation | None = None) -> None:
        self.arrays, self.augmentation = arrays, augmentation
        self.generator = torch.Generator(device=arrays.device)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def index(self, rows: np.ndarray) -> torch.Tensor:
        return self.arrays.index(rows)

    def batch(self, rows: torch.Tensor, augment: bool = False) -> Batch:
        images, masks, labels = self.arrays.tensors(rows)
        if augment and self.augmentation is not None:
            images, masks = self.augmentation(images, masks, self.generator)
            images = images.contiguous(memory_format=self.arrays.memory_format)
        return images, masks, labels


BatchSource = HostBatches | DeviceBatches


def batch_source(data: ArrayData, device: torch.device, setup: Acceleration = REFERENCE,
                 augment: AugmentSpec | None = None, seed: int = 0) -> BatchSource:
    """Where ``fit`` and ``predict`` take their batches from; ``augment`` settings for training batches."""
    if setup.fast_path:
        arrays = DeviceArrays(data.images, data.masks, data.labels, device, channels_last=setup.channels_last)
        return DeviceBatches(arrays, BatchAugmentation.build(augment) if augment is not None else None)
    augmentation = build_augmentation(augment, data.images.shape[-1], seed) if augment is not None else None
    return HostBatches(data, device, augmentation)


def _batches(rows: np.ndarray | torch.Tensor, batch_size: int, drop_single: bool) -> list[np.ndarray | torch.Tensor]:
    chunks = [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
    # A trailing batch of one breaks BatchNorm statistics in training mode.
    if drop_single and len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks = chunks[:-1]
    return chunks


def _read_back(losses: list[torch.Tensor]) -> list[float]:
    """Per-batch losses kept on the device during a pass, read back in one transfer."""
    return torch.stack(losses).float().cpu().tolist() if losses else []


def _weighted_mean(values: list[float], sizes: list[int]) -> float:
    total = 0.0
    for value, size in zip(values, sizes):
        total += value * size
    return total / max(sum(sizes), 1)


def _collect(collected: dict[str, list[torch.Tensor]], outputs: Mapping[str, torch.Tensor]) -> None:
    """Append one batch's class and lesion probabilities (fp32, still on the device)."""
    if "logits" in outputs:
        collected.setdefault("class_probs", []).append(torch.softmax(outputs["logits"].float(), 1))
    if "seg" in outputs:
        collected.setdefault("mask_probs", []).append(torch.sigmoid(outputs["seg"].float())[:, 0])


def _gathered(collected: dict[str, list[torch.Tensor]]) -> dict[str, np.ndarray]:
    return {key: torch.cat(parts).cpu().numpy() for key, parts in collected.items()}


@torch.no_grad()
def predict(model: nn.Module, data: ArrayData | BatchSource, rows: np.ndarray, device: torch.device, batch_size: int = 64,
            precision: str = "fp32") -> dict[str, np.ndarray]:
    """Class probabilities (N×C) and/or lesion probabilities (N×S×S, float32) for ``rows``, computed in fp32
    unless ``precision`` is ``bf16`` (then under bf16 autocast on CUDA)."""
    source = HostBatches(data, device) if isinstance(data, ArrayData) else data
    model.eval()
    collected: dict[str, list[torch.Tensor]] = {}
    for chunk in _batches(source.index(rows), batch_size, drop_single=False):
        inputs, _, _ = source.batch(chunk)
        with inference_autocast(device, precision):
            _collect(collected, model(inputs))
    return _gathered(collected)


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
def _validate(model: nn.Module, criterion: TaskLoss, source: BatchSource, data: ArrayData, rows: np.ndarray, *,
              tasks: frozenset[str], device: torch.device, batch_size: int, precision: str) -> tuple[float, float]:
    """The validation loss and score from one forward pass over ``rows``."""
    model.eval()
    losses, sizes = [], []
    collected: dict[str, list[torch.Tensor]] = {}
    for chunk in _batches(source.index(rows), batch_size, drop_single=False):
        inputs, mask_targets, targets = source.batch(chunk)
        with inference_autocast(device, precision):
            outputs = model(inputs)
        losses.append(criterion(outputs, targets, mask_targets).detach())
        _collect(collected, outputs)
        sizes.append(len(chunk))
    return _weighted_mean(_read_back(losses), sizes), _validation_score(tasks, data, rows, _gathered(collected))


def _ignore_epoch(row: Mapping[str, float]) -> None:
    pass


@dataclass(frozen=True)
class FitRun:
    """Where and how one fit runs, as opposed to what it learns (the :class:`TrainSpec`)."""

    device: torch.device
    seed: int
    setup: Acceleration = REFERENCE  # the reference path, or the accelerator's fast path
    checkpoint: Path | None = None  # resume from / save to this file
    checkpoint_every: int | None = None  # epochs between checkpoints; None: as often as costs < 5 % of the epochs
    log: Callable[[str], None] = print
    on_epoch: Callable[[Mapping[str, float]], None] = _ignore_epoch
    batches: BatchSource | None = None  # the job's batch source (kept for its predictions); None: built by fit
    precision: str = "fp32"  # of the validation passes: fp32, or bf16 under autocast on CUDA


def fit(model: nn.Module, spec: TrainSpec, data: ArrayData, train_rows: np.ndarray, val_rows: np.ndarray, *,
        tasks: frozenset[str], n_classes: int, run: FitRun) -> pd.DataFrame:
    """Train ``model`` in place (ending with the best-validation weights, or the last epoch's when
    ``spec.restore_best`` is false); return the per-epoch history.

    ``run.on_epoch`` receives each history row as soon as its epoch ends (e.g. for dvclive; a resumed run
    replays the restored epochs first). With ``run.checkpoint``, the state after every epoch is saved there and
    a matching checkpoint found at the start is resumed (:mod:`busflow.train.checkpoint`). ``run.setup`` picks
    the reference path or the accelerator's fast path (:mod:`busflow.train.accelerate`; a network to be compiled
    goes through its ``compile_model`` first). ``tasks`` selects the loss terms. A model without trainable
    parameters (e.g. the classical segmenter) is evaluated once on ``val_rows``.
    """
    device, seed, setup, checkpoint, log, on_epoch = run.device, run.seed, run.setup, run.checkpoint, run.log, run.on_epoch
    if not any(p.requires_grad for p in model.parameters()):
        model.to(device)
        history = _evaluate_untrainable(model, tasks, data, val_rows, device, log)
        on_epoch(history.iloc[0].to_dict())
        return history
    class_weights = inverse_frequency_weights(data.labels[train_rows], n_classes) if spec.class_weights else None
    criterion = TaskLoss(tasks, class_weights, spec.seg_loss_weight, cls_loss=spec.cls_loss,
                         seg_loss=spec.seg_loss, focal_gamma=spec.focal_gamma).to(device)
    prepare_model(model, device, setup)
    encoder = encoder_parameter_names(model, spec.arch) if spec.tunes_encoder else set()
    optimizer = _optimizer(model, spec, fused=setup.fused_optimizer, encoder=encoder)
    scheduler = _scheduler(optimizer, spec)
    batches = run.batches if run.batches is not None else batch_source(data, device, setup, augment=spec.augment, seed=seed)
    key = _checkpoint_key(spec, run, (data.images, data.masks, data.labels, train_rows, val_rows)) if checkpoint else ""
    state = _start_state(model, optimizer, scheduler, key, run)
    cadence = CheckpointCadence(run.checkpoint_every, start=state.epoch)
    stopped_early = lambda: bool(spec.patience) and state.stale >= spec.patience  # noqa: E731
    for epoch in range(state.epoch + 1, spec.epochs + 1):
        if stopped_early():
            break
        started = time.perf_counter()
        rng = _epoch_random_state(seed, epoch, batches)
        epoch_rows = oversampled(train_rows, data.labels, rng) if spec.oversample else rng.permutation(train_rows)
        model.train()
        set_encoder_frozen(model, encoder, frozen=epoch <= spec.freeze_encoder_epochs)
        try:
            train_loss = _train_epoch(model, criterion, optimizer, batches, epoch_rows, spec, device, epoch)
        except TrainingError as error:
            kept = f"the checkpoint after epoch {state.epoch} is kept at {checkpoint}" if checkpoint and state.epoch else "no epoch completed"
            raise type(error)(f"{error}; {kept}") from None
        val_loss, val_score = _validate(model, criterion, batches, data, val_rows, tasks=tasks, device=device,
                                        batch_size=spec.batch_size, precision=run.precision)
        seconds = time.perf_counter() - started
        state.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_score": val_score,
                              "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3)})
        on_epoch(state.history[-1])
        if scheduler is not None:
            scheduler.step()
        improved = _keep_if_best(state, model, val_loss)
        state.epoch = epoch
        saved = ""
        if checkpoint and (cadence.due(epoch) or epoch == spec.epochs or stopped_early()):
            cadence.saved(epoch, seconds, _timed(lambda: save_checkpoint(checkpoint, key, state, model, optimizer, scheduler)))
            saved = "  (checkpoint)"
        log(f"epoch {epoch:>3}/{spec.epochs}  train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
            f"val_score {val_score:.3f}  {seconds:5.1f}s{'  *' if improved else ''}{saved}")
        if stopped_early():
            log(f"early stop: no validation improvement for {state.stale} epochs")
    set_encoder_frozen(model, encoder, frozen=False)
    if spec.restore_best:
        model.load_state_dict(state.best_state)
    return pd.DataFrame(state.history)


def _timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


class CheckpointCadence:
    """When the loop saves a checkpoint: every ``every`` epochs, or, with ``every`` None, as often as keeps
    the saving below :data:`CHECKPOINT_SHARE` of the training time (measured: the first save after a start
    is timed against that epoch). A fast GPU epoch of a large network then saves every few epochs, a CPU
    epoch every epoch. The loop also saves after its last epoch, so a job killed while writing its outputs
    does not train again."""

    def __init__(self, every: int | None, start: int = 0) -> None:
        self.every, self.fixed, self.last = every or 1, every is not None, start

    def due(self, epoch: int) -> bool:
        return epoch - self.last >= self.every

    def saved(self, epoch: int, epoch_seconds: float, save_seconds: float) -> None:
        if not self.fixed:
            self.every = max(self.every, math.ceil(save_seconds / (CHECKPOINT_SHARE * max(epoch_seconds, 1e-9))))
        self.last = epoch


def _checkpoint_key(spec: TrainSpec, run: FitRun, arrays: tuple[np.ndarray, ...]) -> str:
    # The fast path draws its augmentation differently: its checkpoints never resume a reference-path job.
    settings = {**spec.as_dict(), "fast_path": True} if run.setup.fast_path else spec.as_dict()
    return fingerprint(settings, run.seed, arrays)


def _start_state(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler | None,
                 key: str, run: FitRun) -> TrainingState:
    """A fresh state, or that of the job's matching checkpoint (its epochs replayed to ``run.on_epoch``)."""
    fresh = TrainingState(0, float("inf"), copy.deepcopy(model.state_dict()), 0, [])
    restored = restore_checkpoint(run.checkpoint, key, model, optimizer, scheduler) if run.checkpoint else None
    if not restored:
        return fresh
    run.log(f"resuming after epoch {restored.epoch} from {run.checkpoint}")
    for row in restored.history:
        run.on_epoch(row)
    return restored


def _keep_if_best(state: TrainingState, model: nn.Module, val_loss: float) -> bool:
    """Keep the weights when the validation loss improved (early stopping counts the epochs since); say whether it did."""
    if val_loss < state.best_loss:
        state.best_loss, state.best_state, state.stale = val_loss, copy.deepcopy(model.state_dict()), 0
        return True
    state.stale += 1
    return False


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
    batches: BatchSource,
    rows: np.ndarray,
    spec: TrainSpec,
    device: torch.device,
    epoch: int,
) -> float:
    """One pass over ``rows`` in mini-batches (the model already in training mode); returns the mean training loss.

    Nothing in the loop reads a value back from the device: the losses are checked for NaN/inf once the
    epoch ends, which then names the first bad batch (the weights of that epoch are discarded anyway).
    """
    losses: list[torch.Tensor] = []
    sizes: list[int] = []
    for step, chunk in enumerate(_batches(batches.index(rows), spec.batch_size, drop_single=True), start=1):
        inputs, mask_targets, targets = batches.batch(chunk, augment=True)
        optimizer.zero_grad(set_to_none=True)
        try:
            with autocast(device):
                loss = criterion(model(inputs), targets, mask_targets)
            loss.backward()
        except (RuntimeError, MemoryError) as error:
            if not _is_out_of_memory(error):
                raise
            side = inputs.shape[-1]
            raise BatchMemoryError(f"out of memory on {device} at epoch {epoch}, batch {step} ({len(chunk)} images of "
                                   f"{side}×{side} px): lower this model's batch_size (now "
                                   f"{spec.batch_size}) or preprocess.size, or train on a device with more memory") from None
        optimizer.step()
        losses.append(loss.detach())
        sizes.append(len(chunk))
    values = _read_back(losses)
    _check_finite(values, sizes, epoch)
    return _weighted_mean(values, sizes)


def _check_finite(values: list[float], sizes: list[int], epoch: int) -> None:
    bad = [step for step, value in enumerate(values) if not np.isfinite(value)]
    if bad:
        raise NonFiniteLossError(f"loss is {values[bad[0]]} at epoch {epoch}, batch {bad[0] + 1}: training stopped (lower lr, "
                                 f"check the inputs of this batch: {sizes[bad[0]]} images)")
