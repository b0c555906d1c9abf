"""The whole seed zoo's training time on one GPU, from the images/s a device check measured per architecture.

    python benchmarks/zoo_estimate.py DEVICE_CHECK_JSON [--images 780]

For every model of the P000–P004 presets, and the cascade classifier each preset trains: the preset's epochs
(an upper bound: early stopping ends some runs sooner) x folds x the images of one training epoch, at the
fast-path images/s that ``device_check.py`` measured for its architecture (``architecture_steps``, or
``compiled_steps`` where the preset compiles), plus one forward-only validation pass per epoch, counted as a
third of a training step per image. The measurement is of the architecture's default (paper-sized) options at
the check's input size; a preset model with other options or another size is marked, and a model without a
measurement is listed as not measured, never guessed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from busflow.config import cascade_settings, load_params

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "config" / "presets").glob("p00*.yaml"))
BUSI_IMAGES = {"normal": 133, "benign": 437, "malignant": 210}  # Al-Dhabyani et al., 2020
VALIDATION_STEP_SHARE = 1 / 3  # a forward pass costs about a third of forward + backward


def measured_rates(check: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, float], int | None]:
    """Images/s per architecture, uncompiled and compiled (0 for one without trainable parameters: nothing to
    train), and the input size they were measured at."""
    def rates(section: str) -> dict[str, float]:
        found = (check.get(section) or {}).get("architectures") or {}
        return {arch: 0.0 if row.get("trainable") is False else float(row["images_per_s"])
                for arch, row in found.items() if row.get("trainable") is False or row.get("images_per_s")}

    return rates("architecture_steps"), rates("compiled_steps"), (check.get("architecture_steps") or {}).get("size")


def fold_images(params: Mapping[str, Any], total: Mapping[str, int]) -> tuple[float, float]:
    """Training and validation images of one fold: the preset's classes, less the test fold, less validation."""
    images = sum(total[name] for name in params["preprocess"]["classes"])
    pool = images * (params["split"]["n_folds"] - 1) / params["split"]["n_folds"]
    validation = pool * params["split"]["val_fraction"]
    return pool - validation, validation


def trained_networks(params: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Every network a preset trains: its models and its cascades' crop classifiers, by name."""
    networks = {name: params["models"][name] for name in params["train"]["models"]}
    return networks | {name: cascade["classifier"] for name, cascade in cascade_settings(params).items()}


def image_passes(params: Mapping[str, Any], spec: Mapping[str, Any], total: Mapping[str, int]) -> float:
    """Training image passes of one network over all its folds, a validation pass counted at a third."""
    train, validation = fold_images(params, total)
    return spec["epochs"] * len(params["train"]["folds"]) * (train + VALIDATION_STEP_SHARE * validation)


def preset_rows(preset: Path, uncompiled: Mapping[str, float], compiled: Mapping[str, float], size: int | None,
                total: Mapping[str, int]) -> list[dict[str, Any]]:
    params = load_params(preset)
    folds = len(params["train"]["folds"])
    models = trained_networks(params)
    rows = []
    for name, spec in models.items():
        rates = compiled if params["accelerator"]["compile"] and spec["arch"] in compiled else uncompiled
        rate = rates.get(spec["arch"])
        if rate == 0.0:
            rows.append({"preset": preset.stem, "model": name, "arch": spec["arch"], "epochs": spec["epochs"], "folds": folds,
                         "images_per_s": None, "hours": 0.0, "note": "no trainable parameters: evaluated once"})
            continue
        notes = [note for note, applies in (("preset options differ from the measured defaults", bool(spec.get("options"))),
                                            (f"preset input {params['preprocess']['size']} px, measured at {size}",
                                             size is not None and params["preprocess"]["size"] != size)) if applies]
        hours = None
        if rate:
            hours = image_passes(params, spec, total) / rate / 3600
        rows.append({"preset": preset.stem, "model": name, "arch": spec["arch"], "epochs": spec["epochs"], "folds": folds,
                     "images_per_s": rate, "hours": None if hours is None else round(hours, 3),
                     "note": "; ".join(notes) if rate else "not measured"})
    return rows


def zoo_table(check: Mapping[str, Any], total: Mapping[str, int] = BUSI_IMAGES, presets: list[Path] = PRESETS) -> pd.DataFrame:
    uncompiled, compiled, size = measured_rates(check)
    return pd.DataFrame([row for preset in presets for row in preset_rows(preset, uncompiled, compiled, size, total)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", type=Path, help="device_check.json of benchmarks/device_check.sh")
    args = parser.parse_args()
    table = zoo_table(json.loads(args.check.read_text()))
    with pd.option_context("display.width", 200, "display.max_rows", 200, "display.max_colwidth", 80):
        print(table.to_string(index=False))
    measured = table["hours"].notna()
    print(f"whole zoo on this GPU, training only, upper bound: {table.loc[measured, 'hours'].sum():.2f} h for "
          f"{int(measured.sum())} of {len(table)} models (not measured: "
          f"{', '.join(table.loc[~measured, 'preset'] + '/' + table.loc[~measured, 'model']) or 'none'})")


if __name__ == "__main__":
    main()
