"""Self-supervised, in-domain encoder pretraining without labels: SimCLR (Chen et al., 2020).

Each image of a batch yields two random views (:mod:`busflow.pretrain.views`); the classifier's encoder
(everything but its class head) and an added projection MLP map both views to embeddings, and the NT-Xent
loss (MONAI's ``ContrastiveLoss``) pulls the two views of one image together and pushes them away from the
other ``2 * batch_size - 2`` views of the batch. The projection head is discarded afterwards; the
classifier keeps its pretrained encoder and loses its class head, so its state dict is that of the
classifier minus the head.

Why SimCLR here (a few hundred to a few thousand gray ultrasound images, a CPU):

* it needs nothing of the encoder but a pooled feature vector, so every busflow classifier (CNNs and
  transformers alike) is pretrained by the same code, with no architecture-specific masking or
  patch-prediction head;
* one network and one optimiser: no momentum encoder, queue or predictor to keep (MoCo, BYOL, DINO), which
  matters for memory and for bit-reproducible CPU runs;
* moderate batches work on small data sets when the temperature is not too low (0.5 here), and the
  augmentations carry the domain knowledge: crops, gain, gamma, speckle and blur vary what differs between
  scanners and operators, while depth (top to bottom) is never flipped.

Known limits: the loss learns from the negatives inside a batch, and fewer negatives give a weaker signal
(Chen et al., 2020, Fig. 9; the gap narrows with longer training). The default ``batch_size`` of 32 gives
62 negatives per view and keeps the memory of 256 px batches moderate on a CPU; ``batch_size`` is capped
at the number of images and incomplete batches are dropped. Several views of one patient in a batch count
as negatives of each other. SimCLR needs long schedules: the loss can stay near chance, ``log(2 *
batch_size - 1)``, for the first hundred or so steps, and on the 780 BUSI images at 64 px the P000 CNN's
features after 30 epochs were no better than a random network's for a linear probe (balanced accuracy
0.55-0.61 against 0.59), after 150 epochs (3,600 steps of 32) better (0.63). BatchNorm sees both views in
one batch, as in single-device SimCLR.

Reproducibility: every random draw (projection head initialisation, shuffling, views, dropout) is seeded
from ``(seed, epoch)``, so a CPU run repeats bit for bit with the same torch build and thread count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from monai.losses import ContrastiveLoss
from monai.optimizers import WarmupCosineSchedule
from torch import nn

from busflow.pretrain.spec import MIN_BATCH, PretrainSpec
from busflow.pretrain.views import random_view
from busflow.train.device import autocast
from busflow.train.loop import NonFiniteLossError

MIN_IMAGES = 2 * MIN_BATCH
MAX_PROJECTION_HIDDEN = 2048


class RemovedHead(nn.Identity):
    """Stands where a classifier's class head was (no parameters); remembers the feature width."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = in_features


def feature_extractor(model: nn.Module) -> tuple[nn.Module, int]:
    """Turn a busflow classifier into a network whose ``"logits"`` output holds its pooled features.

    The class head, the last ``nn.Linear`` registered in the model (true of every busflow classifier),
    is replaced in place by a :class:`RemovedHead`, so every other parameter keeps its name. Calling it
    again on the result changes nothing.

    Args:
        model: A classifier from ``busflow.models.build_model`` (forward returns ``{"logits": ...}``).

    Returns:
        The same module object, and the width of its features.

    Raises:
        ValueError: The model has no linear layer to take for its class head.
    """
    removed = [module for module in model.modules() if isinstance(module, RemovedHead)]
    if removed:
        return model, removed[0].in_features
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear class head: pretraining needs a classifier")
    parent_name, _, child = linears[-1].rpartition(".")
    parent = model.get_submodule(parent_name)
    features = getattr(parent, child).in_features
    setattr(parent, child, RemovedHead(features))
    return model, features


def projection_head(features: int, projection_dim: int) -> nn.Sequential:
    """SimCLR's projection MLP: linear, BatchNorm, ReLU, linear (hidden width = features, at most 2048).

    Written here with the training step around it: MONAI provides the NT-Xent loss and the schedule only.
    """
    hidden = max(projection_dim, min(features, MAX_PROJECTION_HIDDEN))
    return nn.Sequential(nn.Linear(features, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, projection_dim))


def check_images(images: np.ndarray) -> None:
    """Raise a ValueError unless ``images`` is a uint8 (N, S, S) array of at least :data:`MIN_IMAGES` images
    (a TypeError unless it is a numpy array)."""
    if not isinstance(images, np.ndarray):
        raise TypeError(f"pretraining images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"pretraining images must be uint8 gray levels (0-255), got dtype {images.dtype}")
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"pretraining images must be an (N, S, S) array of square gray images, got shape {images.shape}")
    if len(images) < MIN_IMAGES:
        raise ValueError(f"pretraining needs at least {MIN_IMAGES} images (two batches of {MIN_BATCH}), got {len(images)}")


def _seeds(seed: int, epoch: int, count: int) -> list[int]:
    return [int(value) for value in np.random.SeedSequence([seed, epoch]).generate_state(count)]


def _optimizer(modules: list[nn.Module], spec: PretrainSpec) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices and kernels only, as in SimCLR."""
    parameters = [p for module in modules for p in module.parameters() if p.requires_grad]
    decayed = [p for p in parameters if p.ndim > 1]
    kept = [p for p in parameters if p.ndim <= 1]
    groups = [{"params": decayed, "weight_decay": spec.weight_decay}, {"params": kept, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=spec.lr)


def _features(model: nn.Module, inputs: torch.Tensor, width: int) -> torch.Tensor:
    outputs = model(inputs)
    features = outputs.get("logits") if isinstance(outputs, dict) else None
    if features is None or features.shape != (inputs.shape[0], width):
        shape = None if features is None else tuple(features.shape)
        raise ValueError(f"{type(model).__name__} without its class head should return {width} features per image under "
                         f"'logits', got {shape}: pretraining needs a classifier whose last linear layer is its head")
    return features


@dataclass
class _Run:
    """Everything one pretraining run steps through."""

    model: nn.Module
    projector: nn.Module
    width: int
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosineSchedule
    criterion: nn.Module
    generator: torch.Generator
    device: torch.device


def _epoch(run: _Run, images: torch.Tensor, order: torch.Tensor, spec: PretrainSpec, batch_size: int) -> list[float]:
    """One pass in full batches of ``batch_size``; the per-batch losses, read back once at the end."""
    run.model.train()
    run.projector.train()
    losses = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        batch = images[order[start : start + batch_size]].unsqueeze(1).float().div_(255.0)
        with torch.no_grad():
            views = torch.cat([random_view(batch, spec, run.generator), random_view(batch, spec, run.generator)])
            views = views.contiguous(memory_format=torch.channels_last)
        run.optimizer.zero_grad(set_to_none=True)
        with autocast(run.device):
            projections = run.projector(_features(run.model, views, run.width))
        projections = projections.float()
        loss = run.criterion(projections[:batch_size], projections[batch_size:])
        loss.backward()
        run.optimizer.step()
        run.schedule.step()
        losses.append(loss.detach())
    return torch.stack(losses).cpu().tolist()


def _check_finite(losses: list[float], epoch: int) -> None:
    bad = [step for step, value in enumerate(losses) if not math.isfinite(value)]
    if bad:
        raise NonFiniteLossError(f"pretraining loss is {losses[bad[0]]} at epoch {epoch}, batch {bad[0] + 1}: "
                                 "stopped (lower lr or raise temperature)")


def pretrain(model: nn.Module, images: np.ndarray, spec: PretrainSpec, *, device: torch.device, seed: int,
             log: Callable[[str], None] = print) -> list[dict[str, float]]:
    """Pretrain a classifier's encoder with SimCLR on unlabelled images, in place.

    The model's class head is removed first (:func:`feature_extractor`) and never trained; a projection
    head is added for the loss and discarded at the end. The model is left on ``device``, in train mode.

    Args:
        model: A busflow classifier (one input channel).
        images: uint8 (N, S, S) gray images, N >= 4; exactly these are used (the caller's selection).
        spec: Schedule, loss and augmentation settings.
        device: Where to train (bf16 autocast on CUDA, fp32 on the CPU).
        seed: Seeds every random draw; the same seed repeats a CPU run bit for bit.
        log: Receives one progress line per epoch.

    Returns:
        One row per epoch: ``epoch``, ``loss`` (mean NT-Xent of its batches), ``seconds``, ``images_per_s``.

    Raises:
        ValueError: Bad images, or a model that is not a classifier.
        NonFiniteLossError: The loss became NaN or infinite.
    """
    check_images(images)
    batch_size = min(spec.batch_size, len(images))
    model, width = feature_extractor(model)
    torch.manual_seed(_seeds(seed, 0, 1)[0])
    projector = projection_head(width, spec.projection_dim)
    # channels_last: measured 1.3-1.4x faster for the CNNs on the CPU too; the layout is restored at the end.
    model.to(device, memory_format=torch.channels_last)
    projector.to(device)
    optimizer = _optimizer([model, projector], spec)
    steps = len(images) // batch_size
    schedule = WarmupCosineSchedule(optimizer, warmup_steps=steps * spec.warmup_epochs, t_total=steps * spec.epochs)
    run = _Run(model, projector, width, optimizer, schedule, ContrastiveLoss(temperature=spec.temperature),
               torch.Generator(device=device), device)
    pixels = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    view_side = spec.view_size or images.shape[1]
    log(f"pretraining on {len(images)} images of {images.shape[1]} px (views of {view_side} px): {steps} batches of {batch_size} per epoch, "
        f"{width} features, {spec.epochs} epochs; loss at chance {math.log(2 * batch_size - 1):.3f}")
    history = []
    for epoch in range(1, spec.epochs + 1):
        started = time.perf_counter()
        torch_seed, view_seed, order_seed = _seeds(seed, epoch, 3)
        torch.manual_seed(torch_seed)  # dropout, stochastic depth
        run.generator.manual_seed(view_seed)
        order = torch.from_numpy(np.random.default_rng(order_seed).permutation(len(images))).to(device)
        losses = _epoch(run, pixels, order, spec, batch_size)
        _check_finite(losses, epoch)
        seconds = time.perf_counter() - started
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "seconds": round(seconds, 3),
               "images_per_s": round(steps * batch_size / seconds, 2)}
        history.append(row)
        log(f"pretrain epoch {epoch:>3}/{spec.epochs}  loss {row['loss']:.4f}  {seconds:6.1f}s  {row['images_per_s']:7.1f} images/s")
    model.to(memory_format=torch.contiguous_format)
    return history
