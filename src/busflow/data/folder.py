"""Ingest a folder of images laid out as ``<root>/<class>/<name>.<ext>`` with masks ``<name>_mask*.<ext>``.

An optional ``<root>/patients.csv`` (columns image_id, patient_id) maps images to patients; without it
each image is its own patient and ``patient_known`` is false, so the split groups images by near-duplicate
detection instead. The result is the index contract of DESIGN.md (data/index.csv) plus ``patient_known`` and
``colour_overlay`` (RGB images whose channels differ: Doppler or annotation overlays).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import numpy as np
from PIL import Image

from busflow import CLASSES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_PATTERN = re.compile(r"^(?P<stem>.+)_mask(?:_\d+)?$")
INDEX_COLUMNS = ["image_id", "patient_id", "label", "image_path", "mask_paths", "width", "height"]
SOURCE_COLUMNS = [*INDEX_COLUMNS, "patient_known", "colour_overlay"]


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
    return [image_row(image.stem, folder.name, image, masks.get(image.stem, [])) for image in images]


def image_size_and_colour(path: Path) -> tuple[int, int, bool]:
    """Width, height and whether the image carries colour (any pixel whose RGB channels differ)."""
    try:
        with Image.open(path) as handle:
            width, height = handle.size
            if handle.mode in ("L", "1", "I", "I;16", "I;16B", "F", "LA"):
                return width, height, False
            rgb = np.asarray(handle.convert("RGB"))
    except OSError as error:
        raise DatasetError(f"{path}: cannot be read as an image ({error})") from None
    colour = bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())
    return width, height, colour


def check_mask_size(mask: Path, size: tuple[int, int], image: Path) -> None:
    """Masks must be pixel-aligned with their image: same width and height."""
    try:
        with Image.open(mask) as handle:
            mask_size = handle.size
    except OSError as error:
        raise DatasetError(f"{mask}: cannot be read as a mask ({error})") from None
    if mask_size != size:
        raise DatasetError(f"{mask}: mask size {mask_size} differs from its image {image.name} {size}")


def image_row(image_id: str, label: str, image: Path, masks: list[Path]) -> dict[str, object]:
    """One index row; reads the image header (and pixels when it may hold colour) and every mask header."""
    width, height, colour = image_size_and_colour(image)
    for mask in masks:
        check_mask_size(mask, (width, height), image)
    return {
        "image_id": image_id,
        "label": label,
        "image_path": str(image),
        "mask_paths": ";".join(str(m) for m in sorted(masks)),
        "width": width,
        "height": height,
        "colour_overlay": colour,
    }


def _attach_patients(index: pd.DataFrame, root: Path) -> pd.DataFrame:
    table = root / "patients.csv"
    if not table.exists():
        return index.assign(patient_id=index["image_id"], patient_known=False)
    patients = pd.read_csv(table, dtype=str)
    missing_columns = {"image_id", "patient_id"} - set(patients.columns)
    if missing_columns:
        raise DatasetError(f"{table}: missing column(s) {sorted(missing_columns)}")
    mapping = dict(zip(patients["image_id"], patients["patient_id"]))
    unmapped = sorted(set(index["image_id"]) - set(mapping))
    if unmapped:
        raise DatasetError(f"{table}: no patient for image(s) {unmapped[:5]} ({len(unmapped)} in all)")
    return index.assign(patient_id=index["image_id"].map(mapping).astype(str), patient_known=True)


def ingest_folder(root: str | Path) -> pd.DataFrame:
    """Index every image under ``root``; raise DatasetError naming the file on any layout problem."""
    root = Path(root)
    rows = [row for folder in _class_folders(root) for row in _scan_class(folder)]
    index = pd.DataFrame(rows)
    duplicated = index["image_id"][index["image_id"].duplicated()].tolist()
    if duplicated:
        raise DatasetError(f"{root}: image id '{duplicated[0]}' occurs in more than one class folder")
    return finalise_index(_attach_patients(index, root))


def patients_known(index: pd.DataFrame) -> bool:
    """Whether the source published a patient for every image (else patient_id is just the image id)."""
    return bool(index["patient_known"].astype(bool).all())


def finalise_index(index: pd.DataFrame) -> pd.DataFrame:
    """Contract columns first, any source-specific metadata after; rows sorted by image id."""
    extra = [c for c in index.columns if c not in SOURCE_COLUMNS]
    return index[[*SOURCE_COLUMNS, *extra]].sort_values("image_id", kind="stable").reset_index(drop=True)
