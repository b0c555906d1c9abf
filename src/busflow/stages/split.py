"""The ``split`` stage: the configured grouped protocol and the label-conflict table."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from busflow.errors import DatasetError
from busflow.io import read_table, write_csv
from busflow.split.groups import conflict_summary
from busflow.split.protocols import make_split


def run(params: Mapping[str, Any], *, index: Path, groups: Path, folds: Path, conflicts: Path,
        log: Callable[[str], None] = print) -> None:
    """Write ``folds`` (the protocol's roles per image) and ``conflicts`` (groups filed under several classes)."""
    split = params["split"]
    images, grouping = read_table(index), read_table(groups)
    try:
        roles = make_split(images, grouping, split, params["seed"])
    except DatasetError as error:
        raise DatasetError(f"{index}: {error}") from None
    clusters = conflict_summary(grouping, images, split["label_conflicts"])
    if split["label_conflicts"] == "flag":
        for row in clusters.itertuples():
            print(f"warning: label conflict in {row.group_id}: {row.images} filed as {row.labels}", file=sys.stderr)
    write_csv(conflicts, clusters)
    write_csv(folds, roles)
    log(f"{split['protocol']} split of {roles['group_id'].nunique()} groups; {len(clusters)} label-conflict clusters "
        f"({split['label_conflicts']})")
