"""Ingest a folder of images laid out as ``<root>/<class>/<name>.<ext>`` with masks ``<name>_mask*.<ext>``.

An optional ``<root>/patients.csv`` (columns image_id, patient_id) maps images to patients; without it
each image is its own patient and ``patient_known`` is false, so the split groups images by near-duplicate
detection instead. An optional ``<root>/pixel_spacing.csv`` (columns image_id, pixel_spacing_mm: the side of one
square pixel in mm, empty where unknown) gives lesion sizes in mm. The result is the index contract of
docs/architecture.md (data/index.csv) plus ``patient_known``, ``colour_overlay`` (RGB images whose channels differ:
Doppler or annotation overlays) and ``pixel_spacing_mm`` (NaN where the source does not say).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from busflow import CLASSES
from busflow.data.spacing import SPACING_FILE, read_spacing_table
from busflow.errors import DatasetError
from busflow.io import printable

if TYPE_CHECKING:
    from busflow.data.bad_samples import BadSamples

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_PATTERN = re.compile(r"^(?P<stem>.+)_mask(?:_\d+)?$")
INDEX_COLUMNS = ["image_id", "patient_id", "label", "image_path", "mask_paths", "width", "height"]
SOURCE_COLUMNS = [*INDEX_COLUMNS, "patient_known", "colour_overlay", "pixel_spacing_mm"]


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


def _utf8_name(path: Path) -> bool:
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes of the name, kept by Python as surrogates
        return False
    return True


def _scan_class(folder: Path, bad: BadSamples) -> list[dict[str, object]]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"{folder}: class folder holds no images")
    masks: dict[str, list[Path]] = {}
    images: list[Path] = []
    for path in files:
        if not _utf8_name(path):
            bad.report(path, f"{printable(path)}: file name is not valid UTF-8; rename the file (and its mask)")
            continue
        match = MASK_PATTERN.match(path.stem)
        if match:
            masks.setdefault(match["stem"], []).append(path)
        else:
            images.append(path)
    image_stems = {p.stem for p in images}
    for stem, paths in sorted(masks.items()):
        for mask in paths if stem not in image_stems else []:
            bad.report(mask, f"{mask}: mask without an image (no {stem}.<ext> in {folder})")
    rows = [bad.attempt(image, lambda image=image: image_row(image.stem, folder.name, image, masks.get(image.stem, [])))
            for image in images]
    return [row for row in rows if row is not None]


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


def drop_unmasked_lesions(index: pd.DataFrame, bad: BadSamples) -> pd.DataFrame:
    """In a dataset with masks, a benign or malignant image without one would teach "no lesion here": bad."""
    has_mask = index["mask_paths"].astype(str).str.len() > 0
    unmasked = index["label"].isin(["benign", "malignant"]) & ~has_mask
    if not has_mask.any() or not unmasked.any():
        return index
    for row in index[unmasked].itertuples():
        bad.report(row.image_path, f"{row.image_path}: {row.label} image without a mask (the dataset's other lesion images have masks)")
    return index[~unmasked]


def drop_duplicate_ids(index: pd.DataFrame, bad: BadSamples, root: Path) -> pd.DataFrame:
    """An image ID in two class folders has two labels: neither copy can be trusted."""
    duplicated = index["image_id"].duplicated(keep=False)
    for row in index[duplicated].itertuples():
        folders = sorted(Path(p).parent.name for p in index.loc[index["image_id"] == row.image_id, "image_path"])
        bad.report(row.image_path, f"{root}: image id '{row.image_id}' occurs in more than one class folder ({', '.join(folders)})")
    return index[~duplicated]


def ingest_folder(root: str | Path, bad: BadSamples | None = None) -> pd.DataFrame:
    """Index every image under ``root``; a problem with one sample goes to ``bad`` (default: raise
    DatasetError naming the file), a problem with the layout always raises."""
    from busflow.data.bad_samples import BadSamples

    root, bad = Path(root), bad or BadSamples()
    rows = [row for folder in _class_folders(root) for row in _scan_class(folder, bad)]
    index = pd.DataFrame(rows, columns=[c for c in SOURCE_COLUMNS if c not in ("patient_id", "patient_known", "pixel_spacing_mm")])
    if index.empty:
        raise DatasetError(f"{root}: no usable image (see the skipped samples)")
    index = drop_unmasked_lesions(drop_duplicate_ids(index, bad, root), bad)
    index = _attach_patients(index.reset_index(drop=True), root)
    if (root / SPACING_FILE).exists():
        index = index.assign(pixel_spacing_mm=read_spacing_table(root / SPACING_FILE, "image_id", index["image_id"].tolist()))
    return finalise_index(index)


def patients_known(index: pd.DataFrame) -> bool:
    """Whether the source published a patient for every image (else patient_id is just the image id)."""
    return bool(index["patient_known"].astype(bool).all())


def finalise_index(index: pd.DataFrame) -> pd.DataFrame:
    """Contract columns first, any source-specific metadata after; rows sorted by image id. A source that does
    not know its pixel spacing gets NaN."""
    if "pixel_spacing_mm" not in index.columns:
        index = index.assign(pixel_spacing_mm=np.nan)
    extra = [c for c in index.columns if c not in SOURCE_COLUMNS]
    return index[[*SOURCE_COLUMNS, *extra]].sort_values("image_id", kind="stable").reset_index(drop=True)
