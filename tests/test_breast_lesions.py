"""BrEaST-Lesions_USG: a tiny copy of the published layout (scans, tumour masks, other-findings masks and the
clinical spreadsheet) is indexed with its labels, masks, patients and metadata; every inconsistency stops with
a message naming the file (and the spreadsheet row); the download stage reads a local copy in place."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from busflow.config import load_params, load_schema
from busflow.data.bad_samples import BadSamples
from busflow.data.breast_lesions import IMAGES_FOLDER, ingest_breast_lesions, pixel_spacing
from busflow.data.preprocess import load_mask_union
from busflow.data.sources import LAYOUTS, fetch_dataset, find_dataset_root, ingest_raw
from busflow.errors import DatasetError

from conftest import REPO

SHEET = "BrEaST-Lesions-USG-clinical-data-Dec-15-2023.xlsx"
SIZE = (20, 24)  # height, width of every scan
# CaseID, classification, tumour mask cell, other-findings mask cell (several names joined by '&')
CASES = [
    (1, "benign", "case001_tumor.png", "case001_other1.png&case001_other2.png"),
    (2, "malignant", "case002_tumor.png", None),
    (3, "normal", "case003_tumor.png", None),  # all-black tumour mask
    (4, "normal", None, None),  # no tumour mask at all
]


def _square(value: int, rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(SIZE, np.uint8)
    mask[rows, cols] = value
    return mask


def _sheet(cases: list[tuple[int, str, str | None, str | None]]) -> pd.DataFrame:
    return pd.DataFrame({
        "CaseID": [case for case, *_ in cases],
        "Image_filename": [f"case{case:03d}.png" for case, *_ in cases],
        "Mask_tumor_filename": [tumour for _, _, tumour, _ in cases],
        "Mask_other_filename": [other for *_, other in cases],
        "Pixel_size": [0.0075, 0.008, 0.0075, 0.009],
        "Age": [41, 63, 35, 50],
        "BIRADS": ["3", "4c", "1", "1"],
        "Classification": [label for _, label, *_ in cases],
        "Diagnosis": ["fibroadenoma", "invasive ductal carcinoma", "not applicable", "not applicable"],
        "Verification": ["confirmed by biopsy", "confirmed by biopsy", "confirmed by follow-up care", "confirmed by follow-up care"],
        "Shape": ["oval", "irregular", "not applicable", "not applicable"],
    })


def _write_sheet(root: Path, table: pd.DataFrame) -> None:
    table.to_excel(root / SHEET, index=False, sheet_name="BrEaST-Lesions-USG clinical dat")


def _archive(root: Path, change: Callable[[pd.DataFrame], pd.DataFrame] = lambda t: t) -> Path:
    """Four cases in the published layout below ``root`` (the folder holding the spreadsheet)."""
    folder = root / IMAGES_FOLDER
    folder.mkdir(parents=True)
    for case, label, tumour, _ in CASES:
        Image.fromarray(np.full(SIZE, 60 + 40 * case, np.uint8)).save(folder / f"case{case:03d}.png")
        if tumour:
            value = 0 if label == "normal" else 255
            Image.fromarray(_square(value, slice(4, 10), slice(5, 12))).convert("RGBA").save(folder / tumour)
    for name in ("case001_other1.png", "case001_other2.png"):  # other findings, away from the lesion
        Image.fromarray(_square(255, slice(14, 18), slice(15, 22))).save(folder / name)
    _write_sheet(root, change(_sheet(CASES)))
    return root


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _archive(tmp_path_factory.mktemp("breast") / "BrEaST")


def test_labels_masks_patients_and_metadata(archive: Path) -> None:
    index = ingest_breast_lesions(archive).set_index("image_id")
    assert index["label"].to_dict() == {"case001": "benign", "case002": "malignant", "case003": "normal", "case004": "normal"}
    assert index["patient_id"].to_dict() == {"case001": "1", "case002": "2", "case003": "3", "case004": "4"}
    assert index["patient_known"].all() and (index["width"] == SIZE[1]).all() and (index["height"] == SIZE[0]).all()
    folder = archive / IMAGES_FOLDER
    assert index.loc["case001", "mask_paths"] == str(folder / "case001_tumor.png")  # other findings are no ground truth
    assert index.loc["case003", "mask_paths"] == str(folder / "case003_tumor.png") and index.loc["case004", "mask_paths"] == ""
    assert index["other_findings"].to_dict() == {"case001": 2, "case002": 0, "case003": 0, "case004": 0}
    assert index.loc["case002", "birads"] == "4c" and index.loc["case002", "diagnosis"] == "invasive ductal carcinoma"
    assert index.loc["case001", "age"] == 41 and index.loc["case001", "pixel_size_raw"] == pytest.approx(0.0075)
    assert index.loc["case001", "verification"] == "confirmed by biopsy" and index.loc["case002", "shape"] == "irregular"
    assert index["pixel_spacing_mm"].isna().all()  # 24 px at 0.0075 spans no probe's field of view in any unit


def _sizes(raw: list[object], width: int = 500, height: int = 400) -> pd.DataFrame:
    return pd.DataFrame({"pixel_size_raw": raw, "width": width, "height": height})


@pytest.mark.parametrize(("raw", "unit", "factor"), [(0.0075, "cm", 10.0), (0.075, "mm", 1.0), (75.0, "um", 0.001)])
def test_pixel_size_unit_is_the_one_giving_a_probe_field_of_view(raw: float, unit: str, factor: float) -> None:
    """500 px wide at 0.0075 spans 3.75 units: a 37.5 mm field of view only if the unit is cm."""
    spaced = pixel_spacing(_sizes([raw, raw * 1.2, raw * 0.9]))
    assert (spaced["pixel_size_unit"] == unit).all()
    assert spaced["pixel_spacing_mm"].tolist() == pytest.approx([raw * factor, raw * 1.2 * factor, raw * 0.9 * factor])


def test_implausible_or_missing_pixel_sizes_give_no_spacing() -> None:
    spaced = pixel_spacing(_sizes([0.0075, 0.008, 0.5, -0.008, "n/a", None]))
    assert spaced["pixel_spacing_mm"].iloc[:2].tolist() == pytest.approx([0.075, 0.08])
    assert spaced["pixel_spacing_mm"].iloc[2:].isna().all()  # 0.5 cm pixels would make the image 2.5 m wide; the others are no number
    unfitting = pixel_spacing(_sizes([1.0, 1.0]))  # 500 mm, 5 m or 0.5 mm across: no unit fits
    assert unfitting["pixel_spacing_mm"].isna().all() and unfitting["pixel_size_unit"].isna().all()


def test_tumour_masks_hold_the_lesion_and_normals_are_empty(archive: Path) -> None:
    index = ingest_breast_lesions(archive).set_index("image_id")
    union = {i: load_mask_union([p for p in index.loc[i, "mask_paths"].split(";") if p], SIZE) for i in index.index}
    assert (union["case001"] == (_square(1, slice(4, 10), slice(5, 12)) > 0)).all()
    assert not union["case003"].any() and not union["case004"].any()


def test_every_scan_is_its_own_patient_group(archive: Path) -> None:
    from busflow.split.groups import build_groups

    params = load_params(REPO / "config" / "presets" / "breast_lesions.yaml")  # the preset, fully validated
    index = ingest_breast_lesions(archive)
    groups, _ = build_groups(index, params["split"])
    assert (groups["reason"] == "patient").all() and groups["group_id"].nunique() == len(index) == 4


def _rewrite_sheet(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    return lambda root: _write_sheet(root, change(_sheet(CASES)))


def _resized_mask(root: Path) -> None:
    Image.fromarray(np.full((SIZE[0] + 1, SIZE[1]), 255, np.uint8)).save(root / IMAGES_FOLDER / "case002_tumor.png")


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda r: (r / SHEET).write_bytes(b"not a workbook"), f"{SHEET}: cannot be read as an Excel workbook"),
        (_rewrite_sheet(lambda t: t.drop(columns=["Pixel_size", "Classification"])),
         rf"{SHEET}: missing column\(s\) \['Pixel_size', 'Classification'\]"),
        (lambda r: (r / IMAGES_FOLDER / "case002.png").unlink(), rf"case002.png: listed in {SHEET} \(row 3, CaseID 2\) but missing"),
        (lambda r: (r / IMAGES_FOLDER / "case099.png").write_bytes(b""), f"case099.png: not listed in {SHEET}"),
        (lambda r: (r / IMAGES_FOLDER / "case099_tumor.png").write_bytes(b""), f"case099_tumor.png: not listed in {SHEET}"),
        (_rewrite_sheet(lambda t: t.assign(CaseID=[1, 1, 3, 4])), rf"{SHEET}: CaseID '1' is listed twice \(rows 2, 3\)"),
        (_rewrite_sheet(lambda t: t.assign(Classification=["benign", "suspicious", "normal", "normal"])),
         rf"{SHEET} row 3 \(CaseID 2\): Classification 'suspicious' is not one of benign, malignant, normal"),
        (_resized_mask, r"case002_tumor.png: mask size \(24, 21\) differs from its image case002.png \(24, 20\)"),
        (lambda r: (r / IMAGES_FOLDER / "case002_tumor.png").unlink(), "case002_tumor.png: tumour mask of malignant case case002.png is missing"),
        (lambda r: Image.fromarray(np.zeros(SIZE, np.uint8)).save(r / IMAGES_FOLDER / "case002_tumor.png"),
         "case002_tumor.png: tumour mask of malignant case case002.png is empty"),
        (lambda r: Image.fromarray(np.full(SIZE, 255, np.uint8)).save(r / IMAGES_FOLDER / "case003_tumor.png"),
         "case003_tumor.png: tumour mask of normal case case003.png is not empty"),
        (lambda r: (r / IMAGES_FOLDER / "case001_other2.png").unlink(),
         rf"case001_other2.png: other-findings mask listed in .*{SHEET} row 2 \(CaseID 1\) is missing"),
        (_rewrite_sheet(lambda t: t.assign(Image_filename=["../case001.png", "case002.png", "case003.png", "case004.png"])),
         rf"{SHEET}: row 2 \(CaseID 1\): Image_filename '../case001.png' is not a file name inside {IMAGES_FOLDER}/"),
        (lambda r: (r / SHEET.replace("Dec-15", "Jan-01")).write_bytes(b""), "2 clinical spreadsheets"),
    ],
)
def test_bad_input_names_the_file(tmp_path: Path, breakage: Callable[[Path], object], message: str) -> None:
    root = _archive(tmp_path / "BrEaST")
    breakage(root)
    with pytest.raises(DatasetError, match=message):
        ingest_breast_lesions(root)


def test_a_bad_case_is_skipped_and_listed_under_skip(tmp_path: Path) -> None:
    root = _archive(tmp_path / "BrEaST")
    _resized_mask(root)
    bad = BadSamples("skip")
    index = ingest_breast_lesions(root, bad)
    assert sorted(index["image_id"]) == ["case001", "case003", "case004"]
    assert bad.table()["sample"].tolist() == [str(root / IMAGES_FOLDER / "case002.png")]
    assert "case002_tumor.png: mask size" in bad.table()["problem"].iloc[0]


@pytest.mark.parametrize("below", [Path("download"), Path("archives") / "tcia"])
def test_root_is_found_one_or_two_levels_down(archive: Path, tmp_path: Path, below: Path) -> None:
    import shutil

    shutil.copytree(archive, tmp_path / below / "BrEaST")
    assert find_dataset_root(tmp_path, "breast_lesions") == tmp_path / below / "BrEaST"
    assert find_dataset_root(tmp_path / below / "BrEaST", "breast_lesions") == tmp_path / below / "BrEaST"


def test_root_needs_the_spreadsheet_beside_the_images(tmp_path: Path) -> None:
    (tmp_path / "copy" / IMAGES_FOLDER).mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no dataset found \(looked for BrEaST-Lesions-USG-clinical-data-\*.xlsx beside"):
        find_dataset_root(tmp_path, "breast_lesions")


def _params(tmp_path: Path, path: Path | None) -> dict:
    params = load_params(REPO / "params.yaml", check_registry=False)
    params["dataset"] = "breast_lesions"
    params["data"]["breast_lesions"] = {"path": None if path is None else str(path), "url": None, "sha256": None}
    params["data"]["download"]["cache_dir"] = str(tmp_path / "cache")
    return params


def test_download_stage_reads_a_local_copy_in_place(archive: Path, tmp_path: Path) -> None:
    record = fetch_dataset(_params(tmp_path, archive.parent), tmp_path / "raw")
    stored = json.loads((tmp_path / "raw" / "source.json").read_text())
    assert stored == record and record["dataset"] == "breast_lesions" and record["layout"] == "breast_lesions"
    assert record["origin"] == "path" and record["root"] == str(archive.resolve())
    assert record["fingerprint"]["files"] == 10  # 4 scans, 3 tumour masks, 2 other-findings masks, the spreadsheet
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["source.json"]  # nothing copied
    assert len(ingest_raw(tmp_path / "raw")) == 4


def test_without_a_path_the_manual_steps_say_what_to_fetch_and_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        fetch_dataset(_params(tmp_path, None), tmp_path / "raw")
    message = str(caught.value)
    assert "data.breast_lesions.path: not set" in message and "BrEaST-Lesions-USG-clinical-data-<date>.xlsx" in message
    assert "beside it" in message and "data.breast_lesions.path: /data/BrEaST" in message
    assert not (tmp_path / "raw").exists()


def test_params_with_dataset_breast_lesions_validate(tmp_path: Path, archive: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"] = "breast_lesions"
    params["data"]["breast_lesions"]["path"] = str(archive)
    params["external"] = {"datasets": ["busbra"], "models": [params["train"]["models"][0]]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    loaded = load_params(tmp_path / "params.yaml", check_registry=False)
    assert loaded["dataset"] == "breast_lesions" and loaded["data"]["breast_lesions"]["path"] == str(archive)


def test_schema_datasets_are_the_known_sources() -> None:
    schema = load_schema()["properties"]
    assert set(schema["dataset"]["enum"]) == set(LAYOUTS)
    assert set(schema["external"]["properties"]["datasets"]["items"]["enum"]) == set(LAYOUTS)
