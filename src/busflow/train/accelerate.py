"""The fast path for accelerators: the preprocessed arrays held on the device, augmentation as batched tensor
ops there, channels_last and cuDNN autotuning, fused optimiser steps, optional ``torch.compile``.

``params.yaml``'s ``accelerator`` section switches it: ``fast_path: auto`` takes it on CUDA and keeps the
CPU on its reference path (MONAI per-sample augmentation, bit-reproducible runs), so CPU results do not
depend on this module unless it is forced with ``fast_path: true``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Acceleration:
    """How one training job uses its device."""

    fast_path: bool = False
    compile: bool = False
    channels_last: bool = False

    @property
    def fused_optimizer(self) -> bool:
        """One kernel for every parameter's update, with no per-parameter host loop: on every fast path."""
        return self.fast_path


REFERENCE = Acceleration()


def acceleration(settings: Mapping[str, Any] | None, device: torch.device) -> Acceleration:
    """Resolve params' ``accelerator`` section for ``device``: ``auto`` means the fast path on CUDA only."""
    settings = settings or {}
    mode = settings.get("fast_path", "auto")
    fast = device.type == "cuda" if mode == "auto" else bool(mode)
    if not fast:
        return REFERENCE
    return Acceleration(fast_path=True, compile=bool(settings.get("compile", False)), channels_last=device.type == "cuda")


def prepare_model(model: nn.Module, device: torch.device, setup: Acceleration) -> nn.Module:
    """Move ``model`` to ``device`` in the layout the fast path wants (compilation: :func:`compile_model`)."""
    model.to(device)
    if setup.channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda" and setup.fast_path and not torch.backends.cudnn.deterministic:
        torch.backends.cudnn.benchmark = True  # fixed input sizes: autotune each convolution once
    return model


def compile_model(model: nn.Module, device: torch.device, setup: Acceleration, image_size: int,
                  log: Callable[[str], None]) -> Acceleration:
    """``torch.compile`` ``model`` in place when ``setup`` asks for it and a training step compiles; returns the
    setup that really applies.

    A copy first runs one forward and backward pass compiled: some networks hit compiler bugs (e.g. the
    backward of replication padding in MONAI's U-Net up-sampling), and then training runs uncompiled with a
    message instead of failing. Other shapes and modes compile later; a graph among them that fails to
    compile falls back to eager execution alone (``torch._dynamo.config.suppress_errors``). Only the compiler's own errors are caught: running out of device memory or a
    device-side assert is the job's problem, not the compiler's, and ends the job as it would uncompiled.
    ``nn.Module.compile`` keeps the parameter names, so checkpoints and saved weights are unchanged.
    """
    if not setup.compile:
        return setup
    # The compiler's import costs about a second: only jobs that compile pay it.
    import torch._dynamo
    from torch._dynamo.exc import TorchDynamoException

    if not any(parameter.requires_grad for parameter in model.parameters()):
        log("torch.compile skipped: the network has no trainable parameters, so there is no training step to speed up")
        return replace(setup, compile=False)
    probe = prepare_model(copy.deepcopy(model), device, setup).train()
    probe.compile()
    example = torch.rand(2, 1, image_size, image_size, device=device).contiguous(
        memory_format=torch.channels_last if setup.channels_last else torch.contiguous_format)
    try:
        with torch._dynamo.config.patch(suppress_errors=False), \
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs = probe(example)
            sum(output.float().mean() for output in outputs.values()).backward()
    except TorchDynamoException as error:
        cause = getattr(error, "inner_exception", None) or error.__cause__ or error
        if _is_device_failure(cause):
            raise cause from None
        log(f"torch.compile failed for this network ({_summary(error)}); training runs uncompiled")
        return replace(setup, compile=False)
    # The probe compiled one shape; the real batch, a short last batch and the no-grad validation and test
    # passes compile their own graphs later. One of those failing must not end a job whose weights exist,
    # so from here a graph that does not compile runs eagerly, with the compiler's warning in the job log.
    torch._dynamo.config.suppress_errors = True
    model.compile()
    log("torch.compile on: graphs compile at their first use; one that fails to compile runs eagerly")
    return setup


def _is_device_failure(error: BaseException) -> bool:
    """Out of memory or a failed device (e.g. a device-side assert): not a compiler bug."""
    return isinstance(error, (torch.OutOfMemoryError, torch.AcceleratorError, MemoryError))


def _summary(error: BaseException) -> str:
    """``Type: first line`` of an error, and of the error it wraps (the compiler wraps the real one)."""
    inner = getattr(error, "inner_exception", None)
    text = str(inner if inner is not None else error).strip()
    reason = text.splitlines()[0][:200] if text else ""
    kind = f"{type(error).__name__}: {type(inner).__name__}" if inner is not None else type(error).__name__
    return f"{kind}: {reason}" if reason else kind


class DeviceArrays:
    """The preprocessed images and masks (uint8) and labels held as tensors on the training device, so a
    batch is an index operation there rather than a host copy."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, labels: np.ndarray, device: torch.device,
                 channels_last: bool = False) -> None:
        self.device = device
        self.images = torch.as_tensor(images, device=device)
        self.masks = torch.as_tensor(masks, device=device)
        self.labels = torch.as_tensor(labels, dtype=torch.int64, device=device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def index(self, rows: np.ndarray) -> torch.Tensor:
        """``rows`` as a device tensor: one host-to-device copy, then every batch is a slice of it."""
        return torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.device)

    def tensors(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images scaled to [0, 1] and masks in {0, 1}, both (B, 1, S, S) float, and labels (B)."""
        images = (self.images[rows].unsqueeze(1).float() / 255.0).contiguous(memory_format=self.memory_format)
        return images, self.masks[rows].unsqueeze(1).float(), self.labels[rows]
