"""Network registry and architectures; importing this package registers every builder."""

from busflow.models import cascade, classifiers, multitask, segmenters  # noqa: F401  (register builders)
from busflow.models.registry import (
    ModelEntry,
    Task,
    UnknownArchitectureError,
    available_architectures,
    build_model,
    model_options,
    model_tasks,
    register,
)

__all__ = [
    "ModelEntry",
    "Task",
    "UnknownArchitectureError",
    "available_architectures",
    "build_model",
    "model_options",
    "model_tasks",
    "register",
]
