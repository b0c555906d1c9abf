"""``busflow weights``: fetch a pretrained checkpoint into the cache, or list the catalogue. Reads no params.yaml."""

from __future__ import annotations

import sys
from pathlib import Path

from busflow.weights import CHECKPOINTS, PretrainedCheckpoint, fetch_weights, weights_dir


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fetch(name: str, dest: Path | None = None, *, sha256: str | None = None) -> Path:
    """The verified file of checkpoint ``name`` in ``dest`` (default: the cache folder), downloaded if needed.

    Progress goes to stderr, so stdout carries only the path the command prints.
    """
    return fetch_weights(name, dest, sha256=sha256, log=_to_stderr)


def _line(entry: PretrainedCheckpoint, folder: Path) -> str:
    size = f"{entry.size_bytes / 1e6:.0f} MB" if entry.size_bytes else "size unknown"
    state = "present" if (folder / entry.filename).is_file() else "absent"
    return f"{entry.name:36s} {entry.family:13s} {entry.library:12s} {entry.pin:7s} {entry.filename:54s} {size:>12s}  {state}"


def listing(dest: Path | None = None) -> list[str]:
    """A header naming the cache folder, then one line per checkpoint: name, family, library, sha256 pin
    (full / prefix / none), file name, size and whether the file is present (not verified) in the cache."""
    folder = weights_dir(dest)
    header = f"{'name':36s} {'family':13s} {'library':12s} {'pin':7s} {'file':54s} {'size':>12s}  in {folder}"
    return [header, *(_line(entry, folder) for entry in CHECKPOINTS.values())]
