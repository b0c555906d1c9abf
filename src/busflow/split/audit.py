"""The ``audit`` stage: proof that a split does not leak, before any model trains on it.

For every role column of a folds table it counts groups, patients and identical images (equal preprocessed
pixels) that sit on both sides of a boundary (test vs train/val, and val vs train). Any such crossing fails
the stage for a non-leaky protocol; for the deliberately leaky ``random_image`` split the crossings are the
measured leak and are recorded, not fatal. It also tabulates images, groups, patients and classes per role.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from busflow import CLASSES
from busflow.data.folder import patients_known
from busflow.errors import DatasetError
from busflow.split.protocols import EXCLUDED, LEAKY_PROTOCOLS, ROLES, role_columns

BOUNDARIES = (("test", ("train", "val")), ("val", ("train",)))
EXAMPLES = 5


def content_keys(image_ids: np.ndarray, images: np.ndarray) -> pd.Series:
    """image_id -> hash of its preprocessed pixels (equal for identical frames)."""
    return pd.Series([hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()[:16] for img in images],
                     index=pd.Index(image_ids.astype(str), name="image_id"))


def _crossing(roles: pd.Series, keys: pd.Series) -> dict[str, list[str]]:
    """Keys (groups, patients, pixel hashes) present on both sides of each boundary."""
    frame = pd.DataFrame({"role": roles.to_numpy(), "key": keys.to_numpy()})
    found: dict[str, list[str]] = {}
    for inner, outer in BOUNDARIES:
        inside = set(frame.loc[frame["role"] == inner, "key"])
        outside = set(frame.loc[frame["role"].isin(outer), "key"])
        found[f"{inner}|{'+'.join(outer)}"] = sorted(map(str, inside & outside))
    return found


def _check_column(table: pd.DataFrame, column: str, count_patients: bool) -> dict[str, Any]:
    keys = {"groups": table["group_id"], "identical_images": table["content"]}
    if count_patients:
        keys["patients"] = table["patient_id"]
    result: dict[str, Any] = {"column": column}
    for name, values in keys.items():
        for boundary, crossing in _crossing(table[column], values).items():
            result[f"{name} across {boundary}"] = len(crossing)
            if crossing:
                result.setdefault("examples", {})[f"{name} across {boundary}"] = crossing[:EXAMPLES]
    return result


def role_counts(table: pd.DataFrame, column: str, count_patients: bool,
                classes: tuple[str, ...] = CLASSES) -> list[dict[str, Any]]:
    """Images, groups, patients (None where the source publishes none) and classes per role of one column."""
    rows = []
    for role in (*ROLES, EXCLUDED):
        part = table[table[column] == role]
        if part.empty:
            continue
        counts = part["label"].value_counts()
        rows.append({"column": column, "role": role, "images": len(part), "groups": part["group_id"].nunique(),
                     "patients": part["patient_id"].nunique() if count_patients else None, **{c: int(counts.get(c, 0)) for c in classes}})
    return rows


def _joined(folds: pd.DataFrame, index: pd.DataFrame, content: pd.Series) -> pd.DataFrame:
    table = folds.merge(index[["image_id", "patient_id"]], on="image_id", how="left", validate="1:1")
    return table.assign(content=table["image_id"].map(content))


LEAKAGE_STUDY = "leakage_study"  # the audited name of the leakage study's image-level split


def audit_folds(name: str, folds: pd.DataFrame, index: pd.DataFrame, content: pd.Series) -> tuple[dict[str, Any], pd.DataFrame]:
    """Checks and counts of one folds table; ``leaky`` marks the protocols allowed to cross."""
    known = patients_known(index)
    table = _joined(folds, index, content)
    protocol = str(folds["protocol"].iloc[0])
    columns = role_columns(folds)
    checks = [_check_column(table, c, known) for c in columns]
    crossings = sum(v for check in checks for k, v in check.items() if " across " in k)
    counts = pd.DataFrame([row for c in columns for row in role_counts(table, c, known)]).assign(split=name, protocol=protocol)
    leaky = protocol in LEAKY_PROTOCOLS
    summary = {"split": name, "protocol": protocol, "leaky": leaky, "crossings": int(crossings),
               "passed": leaky or crossings == 0, "columns": checks}
    return summary, counts


def _failure_message(summary: Mapping[str, Any]) -> str:
    lines = [f"split '{summary['split']}' ({summary['protocol']}) leaks across roles:"]
    for check in summary["columns"]:
        for what, examples in check.get("examples", {}).items():
            lines.append(f"  {check['column']}: {check[what]} {what} (e.g. {', '.join(examples)})")
    return "\n".join(lines)


def audit_split(splits: Mapping[str, pd.DataFrame], index: pd.DataFrame, image_ids: np.ndarray,
                images: np.ndarray) -> tuple[dict[str, Any], pd.DataFrame]:
    """Audit every named folds table; raise DatasetError naming the leak if a non-leaky one crosses."""
    content = content_keys(image_ids, images)
    summaries, tables = [], []
    for name, folds in splits.items():
        summary, counts = audit_folds(name, folds, index, content)
        summaries.append(summary)
        tables.append(counts)
    failed = [s for s in summaries if not s["passed"]]
    if failed:
        raise DatasetError("\n".join(_failure_message(s) for s in failed))
    counts = pd.concat(tables, ignore_index=True)
    leading = ["split", "protocol", "column", "role"]
    return {"passed": True, "splits": summaries}, counts[leading + [c for c in counts.columns if c not in leading]]
