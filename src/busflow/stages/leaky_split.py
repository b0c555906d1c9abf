"""The ``leaky-split`` stage: the leakage study's image-level folds, one draw per seed of ``leakage.seeds``.

A stage of its own, so that changing the seeds redraws only these folds and retrains only the leaky runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from busflow.errors import DatasetError
from busflow.io import read_table, write_csv
from busflow.split.protocols import image_level_split


def run(params: Mapping[str, Any], *, index: Path, groups: Path, leaky: Path, log: Callable[[str], None] = print) -> None:
    """Write ``leaky``: per image, its role in each image-level fold of each seed (``seed<S>_fold<k>``)."""
    seeds = params["leakage"]["seeds"]
    try:
        table = image_level_split(read_table(index), read_table(groups), params["split"], seeds)
    except DatasetError as error:
        raise DatasetError(f"{index}: {error}") from None
    write_csv(leaky, table)
    log(f"image-level split of {len(table)} images for the leakage study: {params['split']['n_folds']} folds for each "
        f"of the seeds {', '.join(map(str, seeds))}")
