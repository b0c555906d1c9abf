"""Ingest a folder of images laid out as ``<root>/<class>/<name>.<ext>`` with masks ``<name>_mask*.<ext>``.

An optional ``<root>/patients.csv`` (columns image_id, patient_id) maps images to patients; without it
each image is its own patient. The result is the index contract of DESIGN.md (data/index.csv).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from PIL import Image

from busflow import CLASSES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_PATTERN = re.compile(r"^(?P<stem>.+)_mask(?:_\d+)?$")
INDEX_COLUMNS = ["image_id", "patient_id", "label", "image_path", "mask_paths", "width", "height"]


class DatasetError(ValueError):
    """The dataset on disk does not follow the expected layout."""


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in folders if p.name not in CLASSES]
    if unknown:
        raise DatasetError(f"{root}: unknown class folder(s) {unknown}; expected some of {list(CLASSES)}")
    if not folders:
        raise DatasetError(f"{root}: no class folders ({', '.join(CLASSES)}) found")
    return folders


def _scan_class(folder: Path) -> list[dict[str, object]]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    masks: dict[str, list[Path]] = {}
    images: list[Path] = []
    for path in files:
        match = MASK_PATTERN.match(path.stem)
        if match:
            masks.setdefault(match["stem"], []).append(path)
        else:
            images.append(path)
    image_stems = {p.stem for p in images}
    orphans = sorted(str(m) for stem, paths in masks.items() if stem not in image_stems for m in paths)
    if orphans:
        raise DatasetError(f"{orphans[0]}: mask without an image ({len(orphans)} such file(s) in {folder})")
    if not images:
        raise DatasetError(f"{folder}: class folder holds no images")
    return [_image_row(image, masks.get(image.stem, []), folder.name) for image in images]


def _image_row(image: Path, masks: list[Path], label: str) -> dict[str, object]:
    try:
        with Image.open(image) as handle:
            width, height = handle.size
    except OSError as error:
        raise DatasetError(f"{image}: cannot be read as an image ({error})") from None
    return {
        "image_id": image.stem,
        "label": label,
        "image_path": str(image),
        "mask_paths": ";".join(str(m) for m in sorted(masks)),
        "width": width,
        "height": height,
    }


def _attach_patients(index: pd.DataFrame, root: Path) -> pd.DataFrame:
    table = root / "patients.csv"
    if not table.exists():
        return index.assign(patient_id=index["image_id"])
    patients = pd.read_csv(table, dtype=str)
    missing_columns = {"image_id", "patient_id"} - set(patients.columns)
    if missing_columns:
        raise DatasetError(f"{table}: missing column(s) {sorted(missing_columns)}")
    mapping = dict(zip(patients["image_id"], patients["patient_id"]))
    unmapped = sorted(set(index["image_id"]) - set(mapping))
    if unmapped:
        raise DatasetError(f"{table}: no patient for image(s) {unmapped[:5]} ({len(unmapped)} in all)")
    return index.assign(patient_id=index["image_id"].map(mapping))


def ingest_folder(root: str | Path) -> pd.DataFrame:
    """Index every image under ``root``; raise DatasetError naming the file on any layout problem."""
    root = Path(root)
    rows = [row for folder in _class_folders(root) for row in _scan_class(folder)]
    index = pd.DataFrame(rows)
    duplicated = index["image_id"][index["image_id"].duplicated()].tolist()
    if duplicated:
        raise DatasetError(f"{root}: image id '{duplicated[0]}' occurs in more than one class folder")
    index = _attach_patients(index, root)
    return index[INDEX_COLUMNS].sort_values("image_id", kind="stable").reset_index(drop=True)
