"""Ingest BrEaST-Lesions_USG (Pawłowska et al., Scientific Data 2024; The Cancer Imaging Archive, DOI
10.7937/9WKK-Q141): 256 scans of 256 patients, benign / malignant / normal, with tumour masks.

TCIA publishes the images zip and the clinical spreadsheet as two files; the dataset root holds both::

    <root>/BrEaST-Lesions-USG-clinical-data-<date>.xlsx     one row per case: CaseID, Image_filename, ...
    <root>/BrEaST-Lesions_USG-images_and_masks/caseNNN.png  the scan
                                              caseNNN_tumor.png   tumour mask (normal cases: all black, or none)
                                              caseNNN_other*.png  other findings: not lesion ground truth

The spreadsheet is the index: every scan it lists must be on disk and every PNG on disk must belong to a listed
case. Its file-name cells may hold several names joined by ``&`` (the spreadsheet's separator for multiple
values). Tumour masks are the lesion ground truth; other-findings masks are only counted (``other_findings``).
One scan per patient, so every image is its own patient group (patient_id = CaseID, patient_known true).

``Pixel_size`` is kept as published (``pixel_size_raw``); the spreadsheet does not state its unit. Pixel spacing in
mm (``pixel_spacing_mm``) comes from the one unit under which the images have the field of view of a breast
ultrasound probe (:func:`pixel_spacing`); the unit chosen is in ``pixel_size_unit``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from busflow.data.folder import finalise_index, image_row
from busflow.errors import DatasetError

if TYPE_CHECKING:
    from busflow.data.bad_samples import BadSamples

IMAGES_FOLDER = "BrEaST-Lesions_USG-images_and_masks"
SPREADSHEET_PATTERN = "BrEaST-Lesions-USG-clinical-data-*.xlsx"
REQUIRED_COLUMNS = ("CaseID", "Image_filename", "Mask_tumor_filename", "Mask_other_filename", "Pixel_size", "Age",
                    "BIRADS", "Classification", "Diagnosis", "Verification")
FILE_COLUMNS = ("Image_filename", "Mask_tumor_filename", "Mask_other_filename")
LABELS = ("benign", "malignant", "normal")
SEPARATOR = "&"
# Diagnosis is the histopathological diagnosis, stated where a biopsy was done (Verification: how a case was confirmed).
METADATA_COLUMNS = {"Age": "age", "BIRADS": "birads", "Diagnosis": "diagnosis", "Verification": "verification",
                    "Pixel_size": "pixel_size_raw"}
# BI-RADS lesion descriptors and patient-level findings: carried over (lower-case names) where the spreadsheet has them.
DESCRIPTOR_COLUMNS = ("Tissue_composition", "Signs", "Symptoms", "Shape", "Margin", "Echogenicity", "Posterior_features",
                      "Halo", "Calcifications", "Skin_thickening", "Interpretation")
# A linear breast probe images 15-120 mm across: as the range spans less than a factor of 10, at most one of these
# units puts a dataset's typical image (its median field of view) inside it.
FIELD_OF_VIEW_MM = (15.0, 120.0)
UNIT_IN_MM = {"um": 0.001, "mm": 1.0, "cm": 10.0}
MANUAL_STEPS = (
    "BrEaST-Lesions_USG comes from The Cancer Imaging Archive as two files, not as one archive:\n"
    "  1. from https://www.cancerimagingarchive.net/collection/breast-lesions-usg/ (DOI 10.7937/9WKK-Q141) download the\n"
    "     images and masks zip (BrEaST-Lesions_USG-images_and_masks-<date>.zip) and the clinical spreadsheet\n"
    "     (BrEaST-Lesions-USG-clinical-data-<date>.xlsx);\n"
    f"  2. extract the zip into a folder, e.g. /data/BrEaST, so that it holds {IMAGES_FOLDER}/, and put the\n"
    "     spreadsheet into that same folder, beside it;\n"
    "  3. set data.breast_lesions.path: /data/BrEaST in params.yaml and re-run.")


def is_breast_lesions_root(path: Path) -> bool:
    return (path / IMAGES_FOLDER).is_dir() and any(path.glob(SPREADSHEET_PATTERN))


def find_spreadsheet(root: Path) -> Path:
    """The one clinical spreadsheet beside the images folder."""
    found = sorted(root.glob(SPREADSHEET_PATTERN))
    if not found:
        raise DatasetError(f"{root}: no clinical spreadsheet {SPREADSHEET_PATTERN} beside {IMAGES_FOLDER}/")
    if len(found) > 1:
        raise DatasetError(f"{root}: {len(found)} clinical spreadsheets ({', '.join(p.name for p in found)}); "
                           "keep only the one published with these images")
    return found[0]


def sheet_row(label: Any) -> int:
    """Spreadsheet row number of a table row label: the header is row 1, the first case row 2."""
    return int(label) + 2


def file_names(cell: object) -> list[str]:
    """The file names of one spreadsheet cell: none when empty, several when joined by '&'."""
    if not isinstance(cell, str):
        return []
    return [name.strip() for name in cell.split(SEPARATOR) if name.strip()]


def _load_workbook(path: Path) -> pd.DataFrame:
    try:
        from openpyxl.utils.exceptions import InvalidFileException
    except ImportError:
        raise DatasetError(f"{path}: reading the clinical spreadsheet needs openpyxl (pip install openpyxl)") from None
    # A damaged workbook surfaces as any of these: not a zip, a zip without the workbook parts, malformed XML.
    errors = (zipfile.BadZipFile, OSError, ValueError, KeyError, SyntaxError, InvalidFileException)
    text = {column: str for column in ("CaseID", *FILE_COLUMNS)}  # ids and names as written, never as numbers
    try:
        return pd.read_excel(path, sheet_name=0, dtype=text, engine="openpyxl")
    except errors as error:
        raise DatasetError(f"{path}: cannot be read as an Excel workbook ({type(error).__name__}: {error})") from None


def _check_identities(table: pd.DataFrame, path: Path) -> None:
    """Every case has a CaseID and an image, neither listed twice, and every file name stays inside the folder."""
    for column in ("CaseID", "Image_filename"):
        blank = table.index[table[column].isna()]
        if len(blank):
            raise DatasetError(f"{path}: row {sheet_row(blank[0])}: {column} is empty")
        repeated = table[column][table[column].duplicated(keep=False)]
        if len(repeated):
            rows = ", ".join(str(sheet_row(label)) for label in repeated.index[repeated == repeated.iloc[0]])
            raise DatasetError(f"{path}: {column} '{repeated.iloc[0]}' is listed twice (rows {rows})")
    for column in FILE_COLUMNS:
        for label, cell in table[column].items():
            for name in file_names(cell):
                if Path(name).name != name or name in (".", ".."):
                    raise DatasetError(f"{path}: row {sheet_row(label)} (CaseID {table.at[label, 'CaseID']}): {column} "
                                       f"'{name}' is not a file name inside {IMAGES_FOLDER}/")


def read_spreadsheet(path: Path) -> pd.DataFrame:
    """The cases of the clinical spreadsheet's first sheet (index: table row, see :func:`sheet_row`), checked."""
    table = _load_workbook(path).dropna(how="all")  # formatted but empty rows at the end of a sheet
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}")
    if table.empty:
        raise DatasetError(f"{path}: lists no case")
    for column in ("CaseID", *FILE_COLUMNS):
        table[column] = table[column].str.strip()
    _check_identities(table, path)
    return table


def _png_names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png"}


def _own_masks(on_disk: set[str], image_name: str, kind: str) -> set[str]:
    """The ``<stem>_tumor*.png`` or ``<stem>_other*.png`` files of one scan (the underscore keeps case1 off case10)."""
    prefix = f"{Path(image_name).stem}_{kind}"
    return {name for name in on_disk if name.startswith(prefix) and name.lower().endswith(".png")}


def _case_files(record: Mapping[str, Any], on_disk: set[str]) -> tuple[list[str], list[str]]:
    """(tumour mask names, other-findings mask names) of one case: those listed and those on disk by name."""
    tumour = set(file_names(record["Mask_tumor_filename"])) | _own_masks(on_disk, record["Image_filename"], "tumor")
    other = set(file_names(record["Mask_other_filename"])) | _own_masks(on_disk, record["Image_filename"], "other")
    return sorted(tumour), sorted(other)


def _check_files_match_sheet(folder: Path, table: pd.DataFrame, sheet: Path, on_disk: set[str]) -> None:
    listed = dict(zip(table["Image_filename"], table.index))
    missing = sorted(name for name in listed if not (folder / name).is_file())
    if missing:
        label = listed[missing[0]]
        raise DatasetError(f"{folder / missing[0]}: listed in {sheet.name} (row {sheet_row(label)}, CaseID "
                           f"{table.at[label, 'CaseID']}) but missing ({len(missing)} such image(s))")
    accounted = set(listed)
    for record in table.to_dict("records"):
        accounted.update(*_case_files(record, on_disk))
    unlisted = sorted(on_disk - accounted)
    if unlisted:
        raise DatasetError(f"{folder / unlisted[0]}: not listed in {sheet.name} ({len(unlisted)} such file(s))")


def _label(record: Mapping[str, Any], where: str) -> str:
    label = str(record["Classification"]).strip().lower()
    if label not in LABELS:
        raise DatasetError(f"{where}: Classification '{record['Classification']}' is not one of {', '.join(LABELS)}")
    return label


def _tumour_masks(folder: Path, names: list[str], image: Path, label: str) -> list[Path]:
    """The tumour masks on disk; a lesion case needs every one it lists (a normal case may have none)."""
    paths = [folder / name for name in names] or [folder / f"{image.stem}_tumor.png"]
    absent = [path for path in paths if not path.is_file()]
    if absent and label != "normal":
        raise DatasetError(f"{absent[0]}: tumour mask of {label} case {image.name} is missing")
    return [path for path in paths if path.is_file()]


def _check_tumour_drawn(masks: list[Path], image: Path, label: str) -> None:
    """A lesion case must outline its lesion, a normal case none (read with the preprocess stage's mask rule)."""
    from busflow.data.preprocess import mask_pixels

    drawn = []
    for mask in masks:
        try:
            with Image.open(mask) as handle:
                drawn.append(bool(mask_pixels(handle).any()))
        except OSError as error:
            raise DatasetError(f"{mask}: cannot be decoded as a mask ({error})") from None
    if label == "normal" and any(drawn):
        raise DatasetError(f"{masks[drawn.index(True)]}: tumour mask of normal case {image.name} is not empty")
    if label != "normal" and not any(drawn):
        raise DatasetError(f"{masks[0]}: tumour mask of {label} case {image.name} is empty")


def _case_row(folder: Path, record: Mapping[str, Any], where: str, on_disk: set[str]) -> dict[str, object]:
    label = _label(record, where)
    image = folder / record["Image_filename"]
    tumour_names, other_names = _case_files(record, on_disk)
    absent_other = [name for name in other_names if not (folder / name).is_file()]
    if absent_other:
        raise DatasetError(f"{folder / absent_other[0]}: other-findings mask listed in {where} is missing")
    masks = _tumour_masks(folder, tumour_names, image, label)
    row = image_row(image.stem, label, image, masks)  # reads the headers: every mask must match the image size
    _check_tumour_drawn(masks, image, label)
    row.update(patient_id=str(record["CaseID"]), other_findings=len(other_names))
    row.update({column: record[source] for source, column in METADATA_COLUMNS.items()})
    row.update({name.lower(): record[name] for name in DESCRIPTOR_COLUMNS if name in record})
    return row


def _within_field_of_view(extent_mm: pd.Series | float) -> pd.Series | bool:
    low, high = FIELD_OF_VIEW_MM
    return (extent_mm >= low) & (extent_mm <= high)


def pixel_spacing(index: pd.DataFrame) -> pd.DataFrame:
    """``pixel_spacing_mm`` and ``pixel_size_unit`` from ``pixel_size_raw``. The unit is the one under which the
    median image spans a probe's field of view (:data:`FIELD_OF_VIEW_MM`, along its longer side); a case whose own
    field of view falls outside the range under that unit, or whose value is not a positive number, gets NaN.
    When no unit fits, no spacing is known."""
    raw = pd.to_numeric(index["pixel_size_raw"], errors="coerce")
    raw = raw.where(np.isfinite(raw) & (raw > 0))
    extent = raw * index[["width", "height"]].max(axis=1)
    fitting = [unit for unit, mm in UNIT_IN_MM.items() if bool(_within_field_of_view(extent.median() * mm))]
    if len(fitting) != 1:
        return index.assign(pixel_spacing_mm=np.nan, pixel_size_unit=None)
    unit = fitting[0]
    spacing = (raw * UNIT_IN_MM[unit]).where(_within_field_of_view(extent * UNIT_IN_MM[unit]))
    return index.assign(pixel_spacing_mm=spacing, pixel_size_unit=unit)


def ingest_breast_lesions(root: str | Path, bad: BadSamples | None = None) -> pd.DataFrame:
    """Index every BrEaST-Lesions_USG scan with its patient (CaseID), label, tumour masks and clinical metadata; a
    problem with one case goes to ``bad`` (default: raise DatasetError naming the file), a problem with the
    spreadsheet or the folder as a whole always raises."""
    from busflow.data.bad_samples import BadSamples

    root, bad = Path(root), bad or BadSamples()
    if not is_breast_lesions_root(root):
        raise DatasetError(f"{root}: not a BrEaST-Lesions_USG folder (expected {IMAGES_FOLDER}/ and {SPREADSHEET_PATTERN} beside it)")
    sheet = find_spreadsheet(root)
    table = read_spreadsheet(sheet)
    folder = root / IMAGES_FOLDER
    on_disk = _png_names(folder)
    _check_files_match_sheet(folder, table, sheet, on_disk)
    rows = []
    for label, record in table.to_dict("index").items():
        where = f"{sheet} row {sheet_row(label)} (CaseID {record['CaseID']})"
        rows.append(bad.attempt(folder / record["Image_filename"],
                                lambda record=record, where=where: _case_row(folder, record, where, on_disk)))
    index = pd.DataFrame([row for row in rows if row is not None]).assign(patient_known=True)
    if index.empty:
        raise DatasetError(f"{root}: no usable image (see the skipped samples)")
    return finalise_index(pixel_spacing(index))
