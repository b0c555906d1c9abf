"""Network registry and architectures; importing this package registers every builder.

One module per network family: ``unets``, ``resnet``, ``vgg``, ``deeplab``, ``fpn``, ``densenet``,
``efficientnet``, ``mobilenet``, ``vit``, ``swin``, ``cnn``, ``multitask`` (every multi-task network),
``cascade`` (the cascade's second stage) and ``classical`` (untrained segmenter); ``blocks`` holds what
several families share and ``registry`` the name -> builder table. Imports flow blocks -> families ->
multitask; ``deeplab`` and ``fpn`` take their backbone from ``resnet``.
"""

from busflow.models import (  # noqa: F401  (importing registers the builders)
    cascade,
    classical,
    cnn,
    deeplab,
    densenet,
    efficientnet,
    fpn,
    mobilenet,
    multitask,
    resnet,
    swin,
    unets,
    vgg,
    vit,
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
