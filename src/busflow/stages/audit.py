"""The ``audit`` stage: fail if a group, patient or identical image crosses a role boundary; count every role."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from busflow.data.preprocess import load_arrays
from busflow.io import read_table, write_csv, write_json
from busflow.split.audit import audit_split


def run(*, index: Path, arrays: Path, folds: Path, leaky: Path, out: Path, counts: Path, log: Callable[[str], None] = print) -> None:
    """Write ``out`` (audit.json) and ``counts`` (split_counts.csv) for the main and the leakage-study split."""
    images = load_arrays(arrays)
    splits = {"main": read_table(folds), "leakage_study": read_table(leaky)}
    summary, role_counts = audit_split(splits, read_table(index), images["image_ids"], images["images"])
    write_csv(counts, role_counts)
    write_json(out, summary)
    for item in summary["splits"]:
        state = "leaky by design" if item["leaky"] else "no group, patient or identical image crosses a role boundary"
        log(f"{item['split']} ({item['protocol']}): {item['crossings']} crossings, {state}")
