"""Model registry: architecture name -> builder function, with option validation.

A builder is a plain function with a keyword-only signature
``(*, in_channels, n_classes, <option>=<default>, ...)``; its keyword defaults *are*
the option schema, so adding a model is one decorated function and nothing else.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from busflow.models.layouts import EncoderLayout

Task = Literal["cls", "seg"]
TASKS: frozenset[str] = frozenset({"cls", "seg"})
# Arguments every builder receives from `build_model`; everything else is an option.
_REQUIRED = ("in_channels", "n_classes")


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture.

    Attributes:
        name: Registry key, e.g. ``"unet"``.
        tasks: Output keys of the network's forward dict: ``"cls"`` -> ``"logits"``, ``"seg"`` -> ``"seg"``.
        builder: Keyword-only function returning the ``nn.Module``.
        description: One-line human description.
        encoder: Where a pretrained checkpoint's tensors go (None: the network always starts from scratch).
    """

    name: str
    tasks: frozenset[str]
    builder: Callable[..., nn.Module]
    description: str
    encoder: EncoderLayout | None = None

    def option_defaults(self) -> dict[str, Any]:
        """Options accepted by the builder, mapped to their defaults."""
        params = inspect.signature(self.builder).parameters
        return {k: p.default for k, p in params.items() if k not in _REQUIRED}


class UnknownArchitectureError(KeyError, ValueError):
    """Raised for an unregistered architecture name (catchable as KeyError or ValueError)."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


_REGISTRY: dict[str, ModelEntry] = {}


def _check_builder_signature(name: str, builder: Callable[..., nn.Module]) -> None:
    params = inspect.signature(builder).parameters
    for required in _REQUIRED:
        if required not in params:
            raise TypeError(f"builder for {name!r} must accept keyword argument {required!r}")
    for p in params.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(f"builder for {name!r}: parameter {p.name!r} must be keyword-only")
        if p.name not in _REQUIRED and p.default is inspect.Parameter.empty:
            raise TypeError(f"builder for {name!r}: option {p.name!r} needs a default")


def register(name: str, tasks: Iterable[str], description: str, encoder: EncoderLayout | None = None) -> Callable:
    """Decorator registering a builder function under ``name``.

    Args:
        name: Unique architecture name.
        tasks: Non-empty subset of ``{"cls", "seg"}``.
        description: One-line description.
        encoder: The layout of its pretrained encoder, if it has one (:mod:`busflow.models.layouts`).

    Returns:
        A decorator that registers and returns the builder unchanged.

    Raises:
        ValueError: Duplicate name or invalid tasks.
        TypeError: Builder signature is not keyword-only with defaults for every option.
    """
    task_set = frozenset(tasks)
    if not task_set or not task_set <= TASKS:
        raise ValueError(f"tasks for {name!r} must be a non-empty subset of {sorted(TASKS)}, got {sorted(task_set)}")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is already registered")
        _check_builder_signature(name, builder)
        _REGISTRY[name] = ModelEntry(name=name, tasks=task_set, builder=builder, description=description, encoder=encoder)
        return builder

    return decorator


def get_entry(arch: str) -> ModelEntry:
    """Return the registry entry for ``arch``.

    Raises:
        UnknownArchitectureError: (a KeyError and ValueError) listing the available names.
    """
    try:
        return _REGISTRY[arch]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {arch!r}; available: {', '.join(available_architectures())}"
        ) from None


def build_model(
    arch: str, *, in_channels: int, n_classes: int, options: Mapping[str, Any] | None = None
) -> nn.Module:
    """Instantiate a registered network.

    Args:
        arch: Registered architecture name.
        in_channels: Input image channels (>= 1).
        n_classes: Number of classes for the ``"logits"`` head (>= 2 for classifiers).
        options: Builder-specific options; unknown keys are rejected.

    Returns:
        An ``nn.Module`` whose ``forward(x)`` returns a dict with exactly the keys of its tasks.

    Raises:
        UnknownArchitectureError: Unknown ``arch``.
        ValueError: Unknown option keys or invalid channel/class counts.
    """
    entry = get_entry(arch)
    opts = dict(options or {})
    allowed = entry.option_defaults()
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for architecture {arch!r}; "
            f"allowed: {', '.join(sorted(allowed)) or '(none)'}"
        )
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    min_classes = 2 if "cls" in entry.tasks else 1
    if int(n_classes) < min_classes:
        raise ValueError(f"n_classes must be >= {min_classes} for {arch!r}, got {n_classes}")
    return entry.builder(in_channels=int(in_channels), n_classes=int(n_classes), **opts)


def model_tasks(arch: str) -> frozenset[str]:
    """Tasks (``"cls"``/``"seg"``) produced by ``arch``."""
    return get_entry(arch).tasks


def model_options(arch: str) -> dict[str, Any]:
    """Options accepted by ``arch`` with their default values."""
    return get_entry(arch).option_defaults()


def available_architectures() -> list[str]:
    """Sorted names of all registered architectures."""
    return sorted(_REGISTRY)
