"""predictions.npz / predictions.csv: what a model (trained, cascade or ensemble) predicted on one fold.

``predictions.npz`` holds the test part under ``image_ids``, ``class_probs`` (N×C float32) and
``mask_probs`` (N×S×S uint8, probability × 255), and the validation part under the same keys with a
``val_`` prefix. Validation outputs let later stages choose weights or operating thresholds without
touching the test images. No torch import: ensembles and evaluation read these files in light processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from busflow.io import atomic_path, write_csv

OUTPUT_KEYS: tuple[str, ...] = ("class_probs", "mask_probs")
VALIDATION_PREFIX = "val_"
TASK_OF_OUTPUT: dict[str, str] = {"class_probs": "cls", "mask_probs": "seg"}  # output key -> task of the network


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


def _stored(outputs: Mapping[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    arrays = {}
    if "class_probs" in outputs:
        arrays[f"{prefix}class_probs"] = outputs["class_probs"].astype(np.float32)
    if "mask_probs" in outputs:
        arrays[f"{prefix}mask_probs"] = np.round(outputs["mask_probs"] * 255).astype(np.uint8)
    return arrays


def save_predictions(
    out_dir: Path,
    table: pd.DataFrame,
    outputs: Mapping[str, np.ndarray],
    extra: Mapping[str, np.ndarray] | None = None,
    validation: tuple[Sequence[str], Mapping[str, np.ndarray]] | None = None,
) -> None:
    """predictions.csv (readable) and predictions.npz (test outputs, and validation outputs if given).

    ``outputs`` hold probabilities in [0, 1]; ``validation`` is (validation image ids, their outputs).
    """
    arrays: dict[str, np.ndarray] = {"image_ids": table["image_id"].to_numpy(dtype=str), **_stored(outputs)}
    if validation is not None:
        val_ids, val_outputs = validation
        arrays[f"{VALIDATION_PREFIX}image_ids"] = np.asarray(val_ids, dtype=str)
        arrays.update(_stored(val_outputs, VALIDATION_PREFIX))
    arrays.update(extra or {})
    with atomic_path(out_dir / "predictions.npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    write_csv(out_dir / "predictions.csv", table)


def rows_of(image_ids: np.ndarray, wanted: Sequence[str], source: Path) -> np.ndarray:
    """Positions of ``wanted`` ids among the preprocessed ``image_ids``; an unknown id names ``source``."""
    position = {str(i): n for n, i in enumerate(image_ids)}
    missing = [str(i) for i in wanted if str(i) not in position]
    if missing:
        raise ValueError(f"{source}: predictions for image(s) not in the preprocessed data: {missing[:5]}")
    return np.array([position[str(i)] for i in wanted], dtype=np.int64)


@dataclass(frozen=True)
class PartOutputs:
    """One part (test or validation) of a predictions.npz, probabilities as float in [0, 1]."""

    image_ids: np.ndarray
    outputs: dict[str, np.ndarray]

    def aligned_to(self, image_ids: Sequence[str], source: Path, exact: bool = True) -> "PartOutputs":
        """The outputs of ``image_ids`` in their order; every id must be present, and (``exact``) no other."""
        missing = sorted({str(i) for i in image_ids} - set(self.image_ids))
        extra = sorted(set(self.image_ids) - {str(i) for i in image_ids}) if exact else []
        if missing or extra:
            raise ValueError(f"{source}: predicted images differ from the expected ones "
                             f"(missing {missing[:5]}, unexpected {extra[:5]})")
        rows = rows_of(self.image_ids, image_ids, source)
        return PartOutputs(np.asarray(image_ids, dtype=str), {k: v[rows] for k, v in self.outputs.items()})


def load_predictions(path: Path, part: str = "test") -> PartOutputs:
    """Read the test or validation part of a predictions.npz; masks back to float probabilities."""
    prefix = VALIDATION_PREFIX if part == "val" else ""
    with np.load(path, allow_pickle=False) as archive:
        if f"{prefix}image_ids" not in archive.files:
            raise ValueError(f"{path}: no {part} predictions stored (retrain the model with this busflow version)")
        outputs = {key: archive[f"{prefix}{key}"] for key in OUTPUT_KEYS if f"{prefix}{key}" in archive.files}
        image_ids = archive[f"{prefix}image_ids"].astype(str)
    if "mask_probs" in outputs:
        outputs["mask_probs"] = outputs["mask_probs"].astype(np.float32) / 255.0
    return PartOutputs(image_ids, outputs)


def combine(outputs: Sequence[Mapping[str, np.ndarray]], weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weighted mean of the members' probabilities (one output mapping per member) for each combined output."""
    return {key: np.tensordot(w, np.stack([member[key] for member in outputs]), axes=1).astype(np.float32)
            for key, w in weights.items()}
