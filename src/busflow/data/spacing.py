"""Pixel spacing tables: the side of one square image pixel in millimetres, per image, from a CSV file.

A folder dataset may carry ``pixel_spacing.csv`` (columns image_id, pixel_spacing_mm) and ``busflow predict`` takes
``--pixel-spacing-csv`` (columns image, pixel_spacing_mm). Every image must have a row; an empty value says the
spacing of that image is not known.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from busflow.errors import DatasetError

SPACING_COLUMN = "pixel_spacing_mm"
SPACING_FILE = "pixel_spacing.csv"  # a folder dataset's table (image_id, pixel_spacing_mm)


def check_spacing(value: float, where: str) -> float:
    """A pixel spacing given by the user: a finite number of millimetres above zero."""
    if not (np.isfinite(value) and value > 0):
        raise DatasetError(f"{where}: pixel spacing {value!r} mm; give a positive number of millimetres")
    return float(value)


def read_spacing_table(table: Path, key: str, wanted: Sequence[str]) -> np.ndarray:
    """``pixel_spacing_mm`` of each of ``wanted`` (values of column ``key``) from the CSV ``table``; NaN where the
    table leaves it empty. A missing column, a repeated or missing image, or a value that is not a positive number
    raises DatasetError naming the table."""
    try:
        spacing = pd.read_csv(table, dtype=str)  # values as written, for the messages
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise DatasetError(f"{table}: cannot be read as a CSV table ({error})") from None
    missing_columns = {key, SPACING_COLUMN} - set(spacing.columns)
    if missing_columns:
        raise DatasetError(f"{table}: missing column(s) {sorted(missing_columns)}")
    repeated = spacing[key][spacing[key].duplicated()]
    if len(repeated):
        raise DatasetError(f"{table}: image '{repeated.iloc[0]}' is listed twice")
    values = pd.to_numeric(spacing[SPACING_COLUMN], errors="coerce")
    invalid = spacing[SPACING_COLUMN].notna() & ~(np.isfinite(values) & (values > 0))
    if invalid.any():
        row = spacing[invalid].iloc[0]
        raise DatasetError(f"{table}: {SPACING_COLUMN} of image '{row[key]}' is {row[SPACING_COLUMN]!r}; "
                           "give a positive number of millimetres, or leave it empty when unknown")
    mapping = dict(zip(spacing[key], values))
    unlisted = sorted(set(wanted) - set(mapping))
    if unlisted:
        raise DatasetError(f"{table}: no row for image(s) {unlisted[:5]} ({len(unlisted)} in all); "
                           f"list every image, with an empty {SPACING_COLUMN} where it is unknown")
    return np.array([mapping[name] for name in wanted], dtype=np.float64)
