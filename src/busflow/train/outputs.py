"""What every trained model leaves in ``models/<model>/fold<k>/`` (the contract of DESIGN.md)."""

from __future__ import annotations

import contextlib
import json
import math
import pickle
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from busflow.errors import ModelFileError
from busflow.io import atomic_path, write_csv, write_json
from busflow.layout import DVCLIVE_DIR

EPOCH_METRICS: tuple[str, ...] = ("train_loss", "val_loss", "val_score", "lr")


def save_weights(path: Path, model: nn.Module) -> None:
    """State dict only (loadable with ``weights_only=True``): no pickled code travels with a model. Tensors are
    stored contiguous, whatever layout (e.g. channels_last) they were trained in."""
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp)


NETWORK_KEYS = frozenset({"arch", "in_channels", "n_classes", "options", "classes", "tasks"})
ENSEMBLE_KEYS = frozenset({"arch", "members", "weights", "classes", "tasks"})  # an ensemble has no network of its own


def read_model_description(model_dir: Path) -> dict[str, Any]:
    """``model_dir/model.json``, checked: a clear error naming the file when it is missing or unusable."""

    path = model_dir / "model.json"
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{model_dir}: not a trained model (no model.json); expected results/<run>/models/<model>/fold<k> "
                           "or a packaged .safetensors file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFileError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(description, dict):
        raise ModelFileError(f"{path}: not a busflow model description (a JSON {type(description).__name__})")
    missing = sorted((ENSEMBLE_KEYS if description.get("arch") == "ensemble" else NETWORK_KEYS) - set(description))
    if missing:
        raise ModelFileError(f"{path}: not a busflow model description (missing {missing})")
    return description


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> nn.Module:
    """Weights into ``model``; tensors that do not fit its architecture are an error naming ``source``."""

    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first_problem = str(error).strip().splitlines()[1:2] or [str(error)]
        raise ModelFileError(f"{source}: the weights do not fit the network described with them ({first_problem[0].strip()})") from None
    return model


def load_weights(path: Path, model: nn.Module) -> nn.Module:
    """A plain state dict, read with ``weights_only=True``: a file that would run pickled code is refused."""

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelFileError(f"{path}: refused: it holds objects other than tensors, and loading them would run code "
                           "from the file (busflow saves plain state dicts only)") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ModelFileError(f"{path}: not a readable weights file ({error})") from None
    if not isinstance(state, Mapping):
        raise ModelFileError(f"{path}: not a state dict (found {type(state).__name__})")
    return load_state(model, state, path)


def build_described(description: Mapping[str, Any], source: Path) -> nn.Module:
    """The (untrained) network a model description names; an unknown architecture is an error naming ``source``."""
    from busflow.models import UnknownArchitectureError, build_model

    try:
        return build_model(description["arch"], in_channels=description["in_channels"], n_classes=description["n_classes"],
                           options=description["options"])
    except UnknownArchitectureError as error:
        raise ModelFileError(f"{source}: {error}") from None


def load_trained(model_dir: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The network of a trained model folder, rebuilt from its model.json and weights.pt, in eval mode."""
    description = read_model_description(model_dir)
    model = build_described(description, model_dir / "model.json")
    return load_weights(model_dir / "weights.pt", model).eval(), description


@contextlib.contextmanager
def epoch_logger(out_dir: Path) -> Iterator[Callable[[Mapping[str, float]], None]]:
    """dvclive logging of the per-epoch history into ``out_dir/dvclive`` (``dvc plots show`` reads it).

    dvclive only writes files here: it neither edits dvc.yaml nor saves a DVC experiment.
    """
    from dvclive import Live

    with Live(str(out_dir / DVCLIVE_DIR), save_dvc_exp=False, dvcyaml=False, report=None) as live:
        def log_epoch(row: Mapping[str, float]) -> None:
            for name in EPOCH_METRICS:
                if math.isfinite(row[name]):
                    live.log_metric(name, float(row[name]), plot=True)
            live.next_step()

        yield log_epoch


def save_run(out_dir: Path, model: nn.Module, description: Mapping[str, Any], history: pd.DataFrame) -> None:
    save_weights(out_dir / "weights.pt", model)
    write_json(out_dir / "model.json", dict(description))
    write_csv(out_dir / "history.csv", history)
