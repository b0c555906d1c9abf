"""The ``download`` stage: ``raw/`` with its source record (generated phantoms, a local copy, or a verified archive)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from busflow.data.sources import fetch_dataset


def run(params: Mapping[str, Any], *, out: Path, dataset: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Create ``out`` for ``dataset`` (default: the run's own); return its source record."""
    record = fetch_dataset(params, out, dataset=dataset)
    log(f"{record['dataset']}: {record['origin']} source ready at {out}")
    return record
