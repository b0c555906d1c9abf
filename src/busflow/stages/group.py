"""The ``group`` stage: images that must stay together in a split (patients, exact and near-duplicate frames)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from busflow.io import read_table, write_csv
from busflow.split.groups import build_groups


def run(params: Mapping[str, Any], *, index: Path, groups: Path, links: Path, log: Callable[[str], None] = print) -> None:
    """Write ``links`` (duplicate_links.csv) and ``groups`` (groups.csv) of the images of ``index``."""
    table, found = build_groups(read_table(index), params["split"])
    write_csv(links, found)
    write_csv(groups, table)
    sizes = table.groupby("group_id").size()
    log(f"{len(table)} images in {len(sizes)} groups; {int((sizes > 1).sum())} groups of several images; "
        f"links: {found['reason'].value_counts().to_dict()}; {int(table['label_conflict'].sum())} images in label conflicts")
