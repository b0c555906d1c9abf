"""Atomic file output: every stage writes to a temporary name and renames on success.

An interrupted stage therefore never leaves a half-written file that looks finished. :func:`read_table` is
the one reader of the stages' CSV tables, so ids stay strings everywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it onto ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600; outputs should be as readable as any file
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; it replaces ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | os.PathLike[str], payload: Any) -> None:
    write_text(target, json.dumps(payload, indent=2, sort_keys=True, allow_nan=True) + "\n")


def printable(path: str | os.PathLike[str]) -> str:
    """A path as text that can be printed and written as UTF-8 (undecodable bytes of a name shown as �)."""
    return os.fsencode(path).decode("utf-8", errors="replace")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(target: str | os.PathLike[str], frame: "pandas.DataFrame") -> None:
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


# Columns of the stage tables that hold ids or text: read as strings, empty cells as "" (never NaN or numbers).
TEXT_COLUMNS = ("image_id", "patient_id", "group_id", "linked_to", "image_a", "image_b", "images", "labels")


def read_table(path: str | os.PathLike[str]) -> "pandas.DataFrame":
    """A CSV written by a stage: id and text columns as strings, ``label_conflict`` as bool."""
    import pandas as pd

    frame = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS})
    for column in set(TEXT_COLUMNS) & set(frame.columns):
        frame[column] = frame[column].fillna("")
    if "label_conflict" in frame:
        frame["label_conflict"] = frame["label_conflict"].astype(str).str.lower() == "true"
    return frame
