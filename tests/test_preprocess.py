"""Folder ingest and preprocessing: layout rules, mask union, clear errors naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busflow.data.folder import ingest_folder

from busflow.errors import DatasetError
from busflow.data.preprocess import normalise, preprocess_index


def _write(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)


def _dataset(root: Path) -> Path:
    gray = (np.arange(40 * 50).reshape(40, 50) % 251).astype(np.uint8)
    _write(root / "benign" / "a (1).png", gray)
    first, second = np.zeros((40, 50), np.uint8), np.zeros((40, 50), np.uint8)
    first[5:15, 5:15], second[20:30, 30:45] = 255, 255
    _write(root / "benign" / "a (1)_mask.png", first, mode="1")
    _write(root / "benign" / "a (1)_mask_1.png", np.stack([second] * 3, -1), mode="RGBA")
    _write(root / "normal" / "n1.png", np.stack([gray] * 3, -1))  # RGB image
    _write(root / "normal" / "n1_mask.png", np.zeros((40, 50), np.uint8))
    _write(root / "malignant" / "m1.png", gray)
    _write(root / "malignant" / "m1_mask.png", second)
    _write(root / "normal" / "n2.png", gray)  # a normal image may come without a mask file: no lesion
    return root


def test_ingest_index_contract(tmp_path: Path) -> None:
    index = ingest_folder(_dataset(tmp_path / "raw"))
    assert index.columns.tolist() == ["image_id", "patient_id", "label", "image_path", "mask_paths", "width", "height", "patient_known",
                                      "colour_overlay", "pixel_spacing_mm"]
    assert index["pixel_spacing_mm"].isna().all()  # no pixel_spacing.csv: sizes in mm unknown
    row = index.set_index("image_id").loc["a (1)"]
    assert row["label"] == "benign" and row["width"] == 50 and row["height"] == 40
    assert len(row["mask_paths"].split(";")) == 2
    assert (index["patient_id"] == index["image_id"]).all()  # no patients.csv: one image per patient


def test_preprocess_unions_masks_and_resizes(tmp_path: Path) -> None:
    index = ingest_folder(_dataset(tmp_path / "raw"))
    arrays = preprocess_index(index, size=32)
    assert arrays["images"].shape == (4, 32, 32) and arrays["images"].dtype == np.uint8
    row = index["image_id"].tolist().index("a (1)")
    mask = arrays["masks"][row]
    assert set(np.unique(mask)) == {0, 1}
    assert mask[:16, :16].any() and mask[16:, 16:].any()  # both lesions survive the union
    assert not arrays["masks"][index["image_id"].tolist().index("n2")].any()
    assert arrays["classes"].tolist() == ["normal", "benign", "malignant"]


def test_patients_table_maps_images(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "raw")
    (root / "patients.csv").write_text("image_id,patient_id\na (1),P1\nn1,P1\nm1,P2\nn2,P3\n")
    assert ingest_folder(root).set_index("image_id")["patient_id"].to_dict() == {"a (1)": "P1", "m1": "P2", "n1": "P1", "n2": "P3"}
    (root / "patients.csv").write_text("image_id,patient_id\na (1),P1\n")
    with pytest.raises(DatasetError, match="no patient for image"):
        ingest_folder(root)


def test_pixel_spacing_table_reaches_the_arrays(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "raw")
    (root / "pixel_spacing.csv").write_text("image_id,pixel_spacing_mm\na (1),0.08\nn1,\nm1,0.1\nn2,0.065\nelsewhere,0.2\n")
    index = ingest_folder(root)
    spacing = index.set_index("image_id")["pixel_spacing_mm"]
    assert spacing["a (1)"] == pytest.approx(0.08) and np.isnan(spacing["n1"])  # an empty value: unknown
    arrays = preprocess_index(index, size=32)
    assert np.allclose(arrays["pixel_spacing_mm"], spacing[arrays["image_ids"]].to_numpy(), equal_nan=True)
    assert arrays["original_shape"].tolist() == [[40, 50]] * 4  # (height, width) before resizing


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("image_id,spacing\na (1),0.1\n", r"missing column\(s\) \['pixel_spacing_mm'\]"),
        ("image_id,pixel_spacing_mm\na (1),0.1\na (1),0.2\nn1,\nm1,\nn2,\n", "image 'a \\(1\\)' is listed twice"),
        ("image_id,pixel_spacing_mm\na (1),-0.1\nn1,\nm1,\nn2,\n", "pixel_spacing_mm of image 'a \\(1\\)' is '-0.1'"),
        ("image_id,pixel_spacing_mm\na (1),0.1 mm\nn1,\nm1,\nn2,\n", "pixel_spacing_mm of image 'a \\(1\\)' is '0.1 mm'"),
        ("image_id,pixel_spacing_mm\na (1),inf\nn1,\nm1,\nn2,\n", "pixel_spacing_mm of image 'a \\(1\\)' is 'inf'; give a positive number of millimetres"),
        ("image_id,pixel_spacing_mm\na (1),0.1\n", r"no row for image\(s\) \['m1', 'n1', 'n2'\]"),
    ],
)
def test_bad_pixel_spacing_table_is_named(tmp_path: Path, table: str, message: str) -> None:
    root = _dataset(tmp_path / "raw")
    (root / "pixel_spacing.csv").write_text(table)
    with pytest.raises(DatasetError, match=rf"pixel_spacing.csv: {message}"):
        ingest_folder(root)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda r: _write(r / "cats" / "c.png", np.zeros((8, 8), np.uint8)), "unknown class folder"),
        (lambda r: _write(r / "benign" / "ghost_mask.png", np.zeros((8, 8), np.uint8)), "ghost_mask.png: mask without an image"),
        (lambda r: (r / "benign" / "broken.png").write_bytes(b"not a png"), "broken.png: cannot be read"),
        (lambda r: _write(r / "normal" / "a (1).png", np.zeros((8, 8), np.uint8)), "more than one class folder"),
    ],
)
def test_layout_errors_name_the_problem(tmp_path: Path, breakage, message: str) -> None:
    root = _dataset(tmp_path / "raw")
    breakage(root)
    with pytest.raises(DatasetError, match=message):
        ingest_folder(root)


def test_mask_of_another_size_is_rejected(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "raw")
    _write(root / "normal" / "n1_mask.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DatasetError, match="n1_mask.png: mask size"):
        preprocess_index(ingest_folder(root), size=32)


def test_normalise_uses_robust_range() -> None:
    image = np.full((50, 50), 100.0)
    image[:25] = 50.0
    image[0, 0] = 10_000.0  # one saturated pixel must not compress the rest
    out = normalise(image)
    assert out.min() == 0 and out[30, 30] == 255


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "RGBA", "P"])
def test_every_mask_mode_gives_the_same_lesion(tmp_path: Path, mode: str) -> None:
    from busflow.data.preprocess import load_mask_union

    lesion = np.zeros((12, 16), np.uint8)
    lesion[3:7, 4:10] = 255
    image = Image.fromarray(lesion)
    if mode == "P":  # a palette mask whose lesion index is dark red (luminance below 128)
        image = image.convert("P")
        image.putpalette([0, 0, 0] + [200, 0, 0] * 255)
    else:
        image = image.convert(mode)
    image.save(tmp_path / "m.png")
    assert (load_mask_union([str(tmp_path / "m.png")], (12, 16)) == (lesion > 0)).all()


def test_binary_task_leaves_normals_out_and_relabels(tmp_path: Path) -> None:
    from busflow.data.preprocess import select_classes

    index = ingest_folder(_dataset(tmp_path / "raw"))
    binary = select_classes(index, ["benign", "malignant"])
    arrays = preprocess_index(binary, size=32, classes=["benign", "malignant"])
    assert binary["label"].tolist() == ["benign", "malignant"] and arrays["labels"].tolist() == [0, 1]
    assert arrays["classes"].tolist() == ["benign", "malignant"]
    with pytest.raises(DatasetError, match=r"no image of class \['normal'\]"):
        select_classes(binary, ["normal", "benign", "malignant"])
