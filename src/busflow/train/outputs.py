"""What every trained model leaves in ``models/<model>/fold<k>/`` (the contract of DESIGN.md)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from busflow.io import atomic_path, write_csv, write_json


def save_weights(path: Path, model: nn.Module) -> None:
    """State dict only (loadable with ``weights_only=True``): no pickled code travels with a model."""
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)


def load_weights(path: Path, model: nn.Module) -> nn.Module:
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def save_run(out_dir: Path, model: nn.Module, description: Mapping[str, Any], history: pd.DataFrame) -> None:
    save_weights(out_dir / "weights.pt", model)
    write_json(out_dir / "model.json", dict(description))
    write_csv(out_dir / "history.csv", history)
