"""The errors that end a ``busflow`` command with a one-line message instead of a stack trace.

Every message names the file or the params key at fault and what is wrong with it; ``busflow.cli.main``
prints it as ``busflow <command>: error: <message>`` and exits with status 2. Each class also derives
from the built-in exception it refines, so callers that catch ``ValueError`` or ``RuntimeError`` keep working.
"""

from __future__ import annotations


class BusflowError(Exception):
    """Base of every error a command reports as a message."""


class ParamsError(BusflowError, ValueError):
    """params.yaml is unreadable or violates the schema or a cross-key rule."""


class DatasetError(BusflowError, ValueError):
    """A dataset, an input image or a stage's table on disk does not follow the expected layout."""


class ModelFileError(BusflowError, ValueError):
    """A trained model folder, weights file, model.json or package cannot be used as it is."""


class TrainingError(BusflowError, RuntimeError):
    """Training cannot go on; the message says where it stopped and what to change."""


class DeviceError(BusflowError, RuntimeError):
    """The compute device that params.yaml or the scheduler asked for is not on this machine."""
