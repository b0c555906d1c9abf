"""The ``preprocess`` stage: index the raw folder; grayscale, enhance, resize, normalise, union of masks.

The external stage preprocesses its datasets through the same :func:`run`, so they are prepared exactly
like the run's own data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from busflow.data.bad_samples import BadSamples
from busflow.data.folder import patients_known
from busflow.data.preprocess import preprocess_raw, save_arrays
from busflow.io import write_csv


def run(params: Mapping[str, Any], *, raw: Path, index: Path, arrays: Path, skipped: Path,
        log: Callable[[str], None] = print) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Write ``arrays`` (arrays.npz), ``index`` (index.csv) and ``skipped`` (bad samples left out); return the
    index and the arrays."""
    settings, bad = params["preprocess"], BadSamples(params["data"]["on_bad_sample"])
    table, images, left_out = preprocess_raw(raw, settings, bad)
    save_arrays(arrays, images)
    write_csv(index, table)
    write_csv(skipped, bad.table())
    log(bad.summary(skipped))
    log(summary(table, settings, left_out))
    return table, images


def summary(index: pd.DataFrame, settings: Mapping[str, Any], left_out: int) -> str:
    counts = ", ".join(f"{n} {label}" for label, n in index["label"].value_counts().sort_index().items())
    patients = f"{index['patient_id'].nunique()} patients" if patients_known(index) else "unknown patients"
    return (f"preprocessed {len(index)} images ({counts}) of {patients} to {settings['size']} px, enhancement "
            f"{settings['enhance']}; {int(index['colour_overlay'].sum())} with colour overlays; "
            f"{left_out} image(s) of classes outside preprocess.classes left out")
