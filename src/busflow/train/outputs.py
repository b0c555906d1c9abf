"""What every trained model leaves in ``models/<model>/fold<k>/`` (the contract of DESIGN.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
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


def prediction_table(
    image_ids: Sequence[str], groups: Sequence[str], labels: np.ndarray, classes: Sequence[str], outputs: Mapping[str, np.ndarray], threshold: float = 0.5
) -> pd.DataFrame:
    """Per test image: truth, and the class probabilities and/or the predicted lesion area in pixels."""
    table = pd.DataFrame({"image_id": list(image_ids), "group_id": list(groups),
                          "label": [classes[i] for i in labels], "y_true": labels})
    if "class_probs" in outputs:
        probs = outputs["class_probs"]
        table["y_pred"] = probs.argmax(1)
        table["pred"] = [classes[i] for i in table["y_pred"]]
        for column, name in enumerate(classes):
            table[f"prob_{name}"] = probs[:, column]
    if "mask_probs" in outputs:
        table["lesion_area_pred"] = (outputs["mask_probs"] >= threshold).sum(axis=(1, 2))
        table["lesion_prob_max"] = outputs["mask_probs"].max(axis=(1, 2))
    return table


def save_predictions(out_dir: Path, table: pd.DataFrame, outputs: Mapping[str, np.ndarray], extra: Mapping[str, np.ndarray] | None = None) -> None:
    """predictions.csv (readable) and predictions.npz (image_ids, class_probs, mask_probs as uint8 0..255)."""
    arrays: dict[str, np.ndarray] = {"image_ids": table["image_id"].to_numpy(dtype=str)}
    if "class_probs" in outputs:
        arrays["class_probs"] = outputs["class_probs"].astype(np.float32)
    if "mask_probs" in outputs:
        arrays["mask_probs"] = np.round(outputs["mask_probs"] * 255).astype(np.uint8)
    arrays.update(extra or {})
    with atomic_path(out_dir / "predictions.npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    write_csv(out_dir / "predictions.csv", table)


def save_run(out_dir: Path, model: nn.Module, description: Mapping[str, Any], history: pd.DataFrame) -> None:
    save_weights(out_dir / "weights.pt", model)
    write_json(out_dir / "model.json", dict(description))
    write_csv(out_dir / "history.csv", history)
