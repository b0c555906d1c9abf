"""Dataset sources: BUSI and BUS-BRA ingest (on the local copies), local paths read in place, archives
downloaded from a URL, verified and extracted, and the source record that the preprocess stage follows."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busflow.config import load_params
from busflow.data.busbra import ingest_busbra
from busflow.data.folder import ingest_folder
from busflow.errors import DatasetError
from busflow.data.sources import fetch_dataset, find_dataset_root, ingest_raw
from busflow.split.protocols import make_split
from conftest import REPO


def test_busi_ingests_the_official_layout(busi_root: Path) -> None:
    index = ingest_folder(busi_root)
    assert len(index) == 780
    assert index["label"].value_counts().to_dict() == {"benign": 437, "malignant": 210, "normal": 133}
    masks_per_image = index["mask_paths"].str.split(";").str.len()
    assert masks_per_image.sum() == 798 and (masks_per_image > 1).sum() == 17
    assert index.set_index("image_id").loc["benign (195)", "mask_paths"].count(";") == 2  # _mask, _mask_1, _mask_2
    assert not index["patient_known"].any()  # BUSI publishes no patient ids
    assert index["colour_overlay"].sum() == 16  # the Doppler / annotated RGB images of this copy
    for row in index.itertuples():  # every mask file is pixel-aligned with its image
        for mask in row.mask_paths.split(";"):
            with Image.open(mask) as handle:
                assert handle.size == (row.width, row.height), mask


def test_busi_masks_match_their_images_and_normals_are_empty(busi_root: Path) -> None:
    from busflow.data.preprocess import load_grayscale, load_mask_union

    index = ingest_folder(busi_root).set_index("image_id")
    for image_id in ("benign (195)", "normal (1)", "malignant (1)"):
        row = index.loc[image_id]
        gray = load_grayscale(row["image_path"])
        union = load_mask_union(row["mask_paths"].split(";"), gray.shape)
        assert gray.shape == (row["height"], row["width"])
        assert union.any() == (row["label"] != "normal")
    multi = index.loc["benign (195)", "mask_paths"].split(";")
    parts = [load_mask_union([m], (index.loc["benign (195)", "height"], index.loc["benign (195)", "width"])) for m in multi]
    assert load_mask_union(multi, parts[0].shape).sum() == np.logical_or.reduce(parts).sum() > max(p.sum() for p in parts)


def test_busbra_ingest_patients_and_official_folds(busbra_root: Path) -> None:
    index = ingest_busbra(busbra_root)
    assert len(index) == 623 and index["patient_id"].nunique() == 354
    assert index["label"].value_counts().to_dict() == {"benign": 421, "malignant": 202}
    assert index["patient_known"].all()
    assert sorted(index["official_fold5"].unique()) == [0, 1, 2, 3, 4]
    assert sorted(index["official_fold10"].unique()) == list(range(10))
    assert (index.groupby("patient_id")["official_fold5"].nunique() == 1).all()
    for row in index.sample(5, random_state=0).itertuples():  # sizes come from the files, not the CSV
        with Image.open(row.image_path) as image:
            assert image.size == (row.width, row.height)


@pytest.mark.parametrize("protocol", ["kfold", "holdout", "cascade", "official"])
def test_busbra_no_patient_in_two_roles_of_any_protocol(busbra_root: Path, protocol: str) -> None:
    from busflow.split.groups import build_groups

    params = load_params(REPO / "params.yaml", check_registry=False)
    index = ingest_busbra(busbra_root)
    groups, _ = build_groups(index, params["split"])
    assert (groups["reason"] == "patient").all()
    folds = make_split(index, groups, {**params["split"], "protocol": protocol, "n_folds": 5}, seed=0)
    folds = folds.merge(index[["image_id", "patient_id"]], on="image_id")
    for column in [c for c in folds.columns if c.startswith(("fold", "cascade"))]:
        assert (folds.groupby("patient_id")[column].nunique() == 1).all(), f"{protocol}: a patient in two roles of {column}"


def _tiny_dataset(root: Path) -> Path:
    """Six small images in the official BUSI layout, below an extra folder level."""
    for label, value in (("benign", 60), ("malignant", 120), ("normal", 200)):
        folder = root / "Dataset_BUSI_with_GT" / label
        folder.mkdir(parents=True)
        for n in (1, 2):
            mask = np.zeros((20, 24), np.uint8)
            mask[5:10, 5:10] = 0 if label == "normal" else 255
            Image.fromarray(np.full((20, 24), value + n, np.uint8)).save(folder / f"{label} ({n}).png")
            Image.fromarray(mask).save(folder / f"{label} ({n})_mask.png")
    return root


def _params(tmp_path: Path, **busi: object) -> dict:
    params = load_params(REPO / "params.yaml", check_registry=False)
    params["dataset"] = "busi"
    params["data"]["busi"] = {"path": None, "url": None, "sha256": None, **busi}
    params["data"]["download"]["cache_dir"] = str(tmp_path / "cache")
    return params


def test_local_path_is_read_in_place_and_changes_are_detected(tmp_path: Path) -> None:
    copy = _tiny_dataset(tmp_path / "copy")
    record = fetch_dataset(_params(tmp_path, path=str(copy)), tmp_path / "raw")
    assert record["origin"] == "path" and record["root"] == str((copy / "Dataset_BUSI_with_GT").resolve())
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["source.json"]  # nothing copied
    assert len(ingest_raw(tmp_path / "raw")) == 6
    (copy / "Dataset_BUSI_with_GT" / "benign" / "extra.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="files changed since the download stage"):
        ingest_raw(tmp_path / "raw")


def test_archive_is_downloaded_verified_and_extracted(tmp_path: Path) -> None:
    import hashlib

    copy = _tiny_dataset(tmp_path / "copy")
    archive = tmp_path / "Dataset_BUSI.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(copy.rglob("*.png")):
            bundle.write(path, path.relative_to(copy).as_posix())
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    record = fetch_dataset(_params(tmp_path, url=archive.as_uri(), sha256=digest), tmp_path / "raw")
    assert record["origin"] == "download" and record["download"]["sha256"] == digest
    assert json.loads((tmp_path / "raw" / "source.json").read_text())["root"] == "extracted/Dataset_BUSI_with_GT"
    index = ingest_raw(tmp_path / "raw")
    assert len(index) == 6 and index["image_path"].str.contains("extracted").all()
    with pytest.raises(DatasetError, match="sha256"):
        fetch_dataset(_params(tmp_path, url=archive.as_uri(), sha256="0" * 64), tmp_path / "raw2")
    assert not (tmp_path / "raw2").exists()


def test_missing_path_and_missing_source_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="data.busi.path: folder .* does not exist"):
        fetch_dataset(_params(tmp_path, path=str(tmp_path / "nowhere")), tmp_path / "raw")
    with pytest.raises(DatasetError, match="set either path .* or url"):
        fetch_dataset(_params(tmp_path), tmp_path / "raw")
    with pytest.raises(DatasetError, match="no dataset found"):
        find_dataset_root(tmp_path, "busbra")
    with pytest.raises(DatasetError, match="source.json: missing"):
        ingest_raw(tmp_path)


def test_cli_download_from_an_unreachable_host_explains_the_manual_steps(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    import yaml

    from busflow.cli import main

    with socket.socket() as probe:  # a local port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    params = _params(tmp_path, url=f"http://127.0.0.1:{port}/Dataset_BUSI.zip", sha256="ab" * 32)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "source.json").write_text("{}")  # an earlier stage output must survive the failure
    assert main(["download", "--params", str(params_file), "--out", str(raw)]) == 2
    message = capsys.readouterr().err
    assert f"http://127.0.0.1:{port}/Dataset_BUSI.zip" in message and "data.busi.path" in message
    assert "sha256sum" in message and (raw / "source.json").read_text() == "{}"


def _busbra_like(root: Path) -> Path:
    """Three images of two patients in the BUS-BRA layout, with an official 5-fold file."""
    (root / "Images").mkdir(parents=True)
    (root / "Masks").mkdir()
    for image_id in ("bus_0001-l", "bus_0001-r", "bus_0002-s"):
        Image.fromarray(np.full((30, 40), 90, np.uint8)).save(root / "Images" / f"{image_id}.png")
        Image.fromarray(np.zeros((30, 40), np.uint8)).convert("1").save(root / "Masks" / f"mask_{image_id[4:]}.png")
    (root / "bus_data.csv").write_text("ID,Case,Pathology,BIRADS,Device\nbus_0001-l,1,benign,3,A\n"
                                       "bus_0001-r,1,malignant,5,A\nbus_0002-s,2,benign,2,B\n")
    (root / "5-fold-cv.csv").write_text("ID,Pathology,kFold\nbus_0001-l,benign,2\nbus_0001-r,malignant,2\nbus_0002-s,benign,5\n")
    return root


def test_busbra_layout_and_metadata(tmp_path: Path) -> None:
    index = ingest_busbra(_busbra_like(tmp_path / "BUSBRA")).set_index("image_id")
    assert index["patient_id"].to_dict() == {"bus_0001-l": "1", "bus_0001-r": "1", "bus_0002-s": "2"}
    assert index["official_fold5"].to_dict() == {"bus_0001-l": 1, "bus_0001-r": 1, "bus_0002-s": 4}
    assert index.loc["bus_0001-r", "birads"] == 5 and "official_fold10" not in index


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda r: (r / "Masks" / "mask_0002-s.png").unlink(), "mask_0002-s.png: mask of image bus_0002-s is missing"),
        (lambda r: (r / "Images" / "bus_0009-l.png").write_bytes(b""), "bus_0009-l.png: image not listed in bus_data.csv"),
        (lambda r: (r / "Images" / "bus_0001-l.png").unlink(), "bus_0001-l.png: listed in bus_data.csv but missing"),
        (lambda r: (r / "bus_data.csv").write_text("ID,Case\nbus_0001-l,1\n"), "bus_data.csv: missing column"),
        (lambda r: (r / "5-fold-cv.csv").write_text("ID,kFold\nbus_0001-l,1\n"), "5-fold-cv.csv: no fold for image"),
        (lambda r: (r / "bus_data.csv").write_text(
            "ID,Case,Pathology\nbus_0001-l,1,benign\nbus_0001-r,1,unknown\nbus_0002-s,2,benign\n"), "pathology 'unknown'"),
    ],
)
def test_busbra_layout_errors_name_the_file(tmp_path: Path, breakage, message: str) -> None:
    root = _busbra_like(tmp_path / "BUSBRA")
    breakage(root)
    with pytest.raises(DatasetError, match=message):
        ingest_busbra(root)
