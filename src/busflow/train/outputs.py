"""What every trained model leaves in ``models/<model>/fold<k>/`` (the contract of DESIGN.md)."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from busflow.io import atomic_path, write_csv, write_json
from busflow.layout import DVCLIVE_DIR

EPOCH_METRICS: tuple[str, ...] = ("train_loss", "val_loss", "val_score", "lr")


def save_weights(path: Path, model: nn.Module) -> None:
    """State dict only (loadable with ``weights_only=True``): no pickled code travels with a model."""
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)


def load_weights(path: Path, model: nn.Module) -> nn.Module:
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def load_trained(model_dir: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The network of a trained model folder, rebuilt from its model.json and weights.pt, in eval mode."""
    from busflow.models import build_model

    description = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))
    model = build_model(description["arch"], in_channels=description["in_channels"], n_classes=description["n_classes"],
                        options=description["options"])
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
