"""The settings a params file marks as busflow's choice or as a deviation from the paper it reproduces.

A paper preset says on the line itself where it departs from its paper or fills a gap the paper leaves
open, so the report's table of them is generated from the file and cannot drift from it::

    size: 224                     # busflow's choice: the ViT-B/16 patch grid needs a multiple of 16
    epochs: 60                    # deviation: 500 in the paper; 60 fit the GPU budget

Each note gets its setting's dotted path (from the indentation of the keys above it), its value as written
and the reason. No YAML parser keeps comments, hence this line reader; it expects the block style the
presets use (two-space indentation, one key per line; a list item is named by its ``name:``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

KINDS = {"busflow's choice": "busflow's choice", "deviation": "deviation"}
_NOTE = re.compile(r"#\s*(busflow's choice|deviation)\b\s*[:(-]?\s*(?P<reason>.*?)\)?\s*$", re.IGNORECASE)
_KEY = re.compile(r"^(?P<indent>\s*)(?P<item>-\s+)?(?P<key>[A-Za-z0-9_<]+):(?P<value>[^#]*)")


@dataclass(frozen=True)
class SettingNote:
    """One marked setting: ``path`` (e.g. ``models.resnet50.epochs``), its value as written, kind and reason."""

    path: str
    value: str
    kind: str
    reason: str


def settings_notes(text: str) -> list[SettingNote]:
    """Every setting of a params file's text marked ``# busflow's choice`` or ``# deviation``, in file order."""
    notes, stack = [], []  # stack: (indent, key) of the keys enclosing the current line
    for line in text.splitlines():
        found = _KEY.match(line)
        if not found or line.lstrip().startswith("#"):
            continue
        indent = len(found.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if found.group("item"):  # a list item's first key: the item is named by its `name:` (e.g. cascades.cascade)
            stack.append((indent, found.group("value").strip() if found.group("key") == "name" else "-"))
            indent += len(found.group("item"))
        stack.append((indent, found.group("key")))
        note = _NOTE.search(line[found.end("value"):]) if "#" in line else None
        if note:
            kind = KINDS[note.group(1).lower()]
            notes.append(SettingNote(".".join(key for _, key in stack), found.group("value").strip(), kind,
                                     note.group("reason").strip() or "not stated"))
    return notes


def file_notes(path: Path) -> list[SettingNote]:
    return settings_notes(path.read_text(encoding="utf-8"))


def presets_notes_markdown(presets: list[Path]) -> str:
    """A Markdown table of every marked setting of the given preset files (config/README.md's section)."""
    rows = [(path.stem, note) for path in presets for note in file_notes(path)]
    if not rows:
        return "_No preset marks a setting as busflow's choice or as a deviation._"
    lines = ["| preset | setting | value | kind | reason |", "|---|---|---|---|---|"]
    lines += [f"| `{stem}` | `{note.path}` | `{note.value}` | {note.kind} | {note.reason} |" for stem, note in rows]
    return "\n".join(lines)
