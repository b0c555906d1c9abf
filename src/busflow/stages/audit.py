"""The ``audit`` stage: fail if a group, patient or identical image crosses a role boundary; count every role."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from busflow.data.preprocess import load_arrays
from busflow.io import read_table, write_csv, write_json
from busflow.split.audit import LEAKAGE_STUDY, audit_split


def run(*, index: Path, arrays: Path, folds: Path, out: Path, counts: Path, leakage_study: bool = False,
        log: Callable[[str], None] = print) -> None:
    """Write ``out`` (the audit's JSON) and ``counts`` (images per role) for one folds table: the main split, or
    with ``leakage_study`` the image-level split of the leakage study (audited, and expected to cross)."""
    images = load_arrays(arrays)
    splits = {LEAKAGE_STUDY if leakage_study else "main": read_table(folds)}
    summary, role_counts = audit_split(splits, read_table(index), images["image_ids"], images["images"])
    write_csv(counts, role_counts)
    write_json(out, summary)
    for item in summary["splits"]:
        state = "leaky by design" if item["leaky"] else "no group, patient or identical image crosses a role boundary"
        log(f"{item['split']} ({item['protocol']}): {item['crossings']} crossings, {state}")
