"""Network registry and architectures; importing this package registers every builder."""

from busflow.models import (  # noqa: F401  (importing registers the builders)
    cascade,
    classical,
    classifiers,
    multitask,
    segmenters,
    zoo_classifiers,
    zoo_segmenters,
)
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
