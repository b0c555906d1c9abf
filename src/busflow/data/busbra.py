"""Ingest BUS-BRA (Gómez-Flores et al., Medical Physics 2023): ``Images/bus_XXXX-s.png``, ``Masks/mask_XXXX-s.png``,
``bus_data.csv`` (ID, Case = patient, Pathology, BIRADS, Device, ...) and the official patient-grouped folds
``5-fold-cv.csv`` / ``10-fold-cv.csv``.

Image sizes are read from the files: a few CSV rows disagree with their image, and the file is what is trained on.
Official folds are stored 0-based (``official_fold5`` = kFold - 1) so they line up with busflow's fold numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from busflow.data.folder import finalise_index, image_row
from busflow.errors import DatasetError

if TYPE_CHECKING:
    from busflow.data.bad_samples import BadSamples

METADATA_COLUMNS = {"BIRADS": "birads", "Device": "device", "Histology": "histology", "Side": "side"}
OFFICIAL_FOLD_FILES = {5: "5-fold-cv.csv", 10: "10-fold-cv.csv"}


def is_busbra_root(path: Path) -> bool:
    return (path / "bus_data.csv").is_file() and (path / "Images").is_dir()


def _read_table(path: Path, required: set[str]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype={"ID": str, "Case": str})
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot be read as CSV ({error})") from None
    missing = required - set(table.columns)
    if missing:
        raise DatasetError(f"{path}: missing column(s) {sorted(missing)}")
    if table["ID"].duplicated().any():
        raise DatasetError(f"{path}: image ID '{table['ID'][table['ID'].duplicated()].iloc[0]}' is listed twice")
    return table


def _mask_path(root: Path, image_id: str) -> Path:
    return root / "Masks" / f"mask_{image_id.removeprefix('bus_')}.png"


def _check_files_match_table(root: Path, ids: set[str]) -> None:
    on_disk = {p.stem for p in (root / "Images").glob("*.png")}
    unlisted = sorted(on_disk - ids)
    if unlisted:
        raise DatasetError(f"{root / 'Images' / (unlisted[0] + '.png')}: image not listed in bus_data.csv ({len(unlisted)} such file(s))")
    missing = sorted(ids - on_disk)
    if missing:
        raise DatasetError(f"{root / 'Images' / (missing[0] + '.png')}: listed in bus_data.csv but missing ({len(missing)} such image(s))")


def _official_folds(root: Path, ids: pd.Series) -> dict[str, pd.Series]:
    columns: dict[str, pd.Series] = {}
    for k, name in OFFICIAL_FOLD_FILES.items():
        path = root / name
        if not path.is_file():
            continue
        table = _read_table(path, {"ID", "kFold"})
        fold_of = dict(zip(table["ID"], table["kFold"]))
        unassigned = [i for i in ids if i not in fold_of]
        if unassigned:
            raise DatasetError(f"{path}: no fold for image(s) {unassigned[:5]} ({len(unassigned)} in all)")
        columns[f"official_fold{k}"] = ids.map(fold_of).astype(int) - 1
    return columns


def _label(pathology: str, image_id: str, table: Path) -> str:
    label = str(pathology).strip().lower()
    if label not in ("benign", "malignant"):
        raise DatasetError(f"{table}: image {image_id} has pathology '{pathology}' (expected benign or malignant)")
    return label


def _busbra_row(root: Path, record: Any, table_path: Path) -> dict[str, object]:
    image_id = str(record.ID)
    mask = _mask_path(root, image_id)
    if not mask.is_file():
        raise DatasetError(f"{mask}: mask of image {image_id} is missing")
    row = image_row(image_id, _label(record.Pathology, image_id, table_path), root / "Images" / f"{image_id}.png", [mask])
    row["patient_id"] = str(record.Case)
    row.update({column: getattr(record, source) for source, column in METADATA_COLUMNS.items() if hasattr(record, source)})
    return row


def ingest_busbra(root: str | Path, bad: BadSamples | None = None) -> pd.DataFrame:
    """Index every BUS-BRA image with its patient (Case), label, mask, metadata and official folds; a problem
    with one image goes to ``bad`` (default: raise DatasetError naming the file)."""
    from busflow.data.bad_samples import BadSamples

    root, bad = Path(root), bad or BadSamples()
    table_path = root / "bus_data.csv"
    if not is_busbra_root(root):
        raise DatasetError(f"{root}: not a BUS-BRA folder (expected bus_data.csv and Images/)")
    table = _read_table(table_path, {"ID", "Case", "Pathology"})
    _check_files_match_table(root, set(table["ID"]))
    rows = [bad.attempt(root / "Images" / f"{record.ID}.png", lambda record=record: _busbra_row(root, record, table_path))
            for record in table.itertuples(index=False)]
    index = pd.DataFrame([row for row in rows if row is not None]).assign(patient_known=True)
    if index.empty:
        raise DatasetError(f"{root}: no usable image (see the skipped samples)")
    index = index.assign(**_official_folds(root, index["image_id"]))
    return finalise_index(index)
