"""busflow predict: files per image, values consistent with the masks, and clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from busflow.cli import main
from busflow.data.synthetic import generate_phantoms
from busflow.errors import DatasetError, ModelFileError
from busflow.serve.predict import predict_images, shape_descriptors

from conftest import MODEL_CLASSES, saved_model

CLASSES = MODEL_CLASSES




@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("new_images")
    generate_phantoms(root / "raw", n_patients=4, seed=3, image_size=(70, 90),
                      class_mix={"normal": 0.0, "benign": 0.5, "malignant": 0.5}, views_per_patient=(1, 1))
    folder = root / "scans"
    folder.mkdir()
    for path in sorted((root / "raw").rglob("*.png")):
        if "_mask" not in path.stem:
            Image.open(path).save(folder / path.name)
    return folder


def test_segmenter_writes_mask_overlay_and_a_consistent_row(tmp_path: Path, images: Path) -> None:
    model = saved_model(tmp_path / "classical", "classical_threshold", {})
    table = predict_images(model, str(images), tmp_path / "out", progress=False)
    assert len(table) == len(list(images.glob("*.png"))) == 4
    for row in table.itertuples():
        stem = Path(row.image).stem
        with Image.open(tmp_path / "out" / f"{stem}_mask.png") as mask, Image.open(images / row.image) as original:
            assert mask.size == original.size == (90, 70)  # the image's own resolution
            pixels = np.asarray(mask) > 0
        assert row.lesion_area_px == pixels.sum() > 0  # the phantoms' dark lesions are found
        assert row.largest_lesion_area_px <= row.lesion_area_px
        assert row.lesion_fraction == pytest.approx(pixels.mean())
        with Image.open(tmp_path / "out" / f"{stem}_overlay.png") as overlay:
            assert overlay.mode == "RGB" and overlay.size == (90, 70)
    assert (pd.read_csv(tmp_path / "out" / "predictions.csv")["lesion_area_px"] == table["lesion_area_px"]).all()


def test_multitask_model_gives_probabilities_and_a_mask(tmp_path: Path, images: Path) -> None:
    model = saved_model(tmp_path / "mtl", "mtl_resnet50", {"widen_factor": 0.125, "decoder_channels": [16, 8, 8, 8, 8]})
    single = next(iter(sorted(images.glob("*.png"))))
    table = predict_images(model, str(single), tmp_path / "one", progress=False)
    probs = table[[f"prob_{c}" for c in CLASSES]].to_numpy()
    assert probs.sum(1) == pytest.approx(1.0) and table["predicted_class"].iloc[0] == CLASSES[int(probs.argmax())]
    assert (tmp_path / "one" / f"{single.stem}_mask.png").exists()
    globbed = predict_images(model, str(images / "*.png"), tmp_path / "glob", progress=False, batch_size=3)
    assert len(globbed) == 4


def test_shape_descriptors_of_a_disc_and_a_tall_ellipse() -> None:
    yy, xx = np.mgrid[:101, :101]
    disc = (yy - 50) ** 2 + (xx - 50) ** 2 <= 30**2
    described = shape_descriptors(disc)
    assert described["aspect_ratio"] == pytest.approx(1.0)
    assert described["solidity"] == pytest.approx(1.0, abs=0.02)
    assert described["margin_irregularity"] == pytest.approx(1.0, abs=0.15)
    tall = ((yy - 50) / 40) ** 2 + ((xx - 50) / 15) ** 2 <= 1
    assert shape_descriptors(tall)["aspect_ratio"] > 2.5  # taller than wide
    assert math.isnan(shape_descriptors(np.zeros((8, 8), bool))["solidity"])


def test_preprocessing_comes_from_model_json_not_params(tmp_path: Path, images: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = saved_model(tmp_path / "classical", "classical_threshold", {})
    monkeypatch.chdir(tmp_path)  # no params.yaml here: predict must not need one
    assert main(["predict", "--model", str(model), "--input", str(images), "--out", str(tmp_path / "cli")]) == 0
    description = json.loads((model / "model.json").read_text())
    del description["preprocess"]
    (model / "model.json").write_text(json.dumps(description))
    with pytest.raises(ModelFileError, match="no preprocessing recorded"):
        predict_images(model, str(images), tmp_path / "old", progress=False)


def test_bad_inputs_name_the_file(tmp_path: Path, images: Path) -> None:
    model = saved_model(tmp_path / "classical", "classical_threshold", {})
    with pytest.raises(DatasetError, match="no images found"):
        predict_images(model, str(tmp_path / "nothing*.png"), tmp_path / "out", progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "scan.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match="scan.png: cannot be decoded as an image"):
        predict_images(model, str(broken), tmp_path / "out", progress=False)


def test_pixel_spacing_gives_lesion_sizes_in_mm(tmp_path: Path, images: Path) -> None:
    model = saved_model(tmp_path / "classical", "classical_threshold", {})
    plain = predict_images(model, str(images), tmp_path / "plain", progress=False)
    assert not [c for c in plain.columns if c.endswith(("_mm", "_mm2"))]  # no spacing: no mm columns
    sized = predict_images(model, str(images), tmp_path / "sized", progress=False, pixel_spacing_mm=0.1)
    assert sized["lesion_area_mm2"].to_numpy() == pytest.approx(sized["lesion_area_px"].to_numpy() * 0.01)
    assert (sized["largest_lesion_width_mm"] <= sized["largest_lesion_diameter_mm"]).all()
    assert (sized["largest_lesion_diameter_mm"] <= np.hypot(sized["width"], sized["height"]) * 0.1).all()
    names = sorted(p.name for p in images.glob("*.png"))
    table = tmp_path / "spacing.csv"
    table.write_text("image,pixel_spacing_mm\n" + "".join(f"{n},{'' if k == 0 else 0.2}\n" for k, n in enumerate(names)))
    from_table = predict_images(model, str(images), tmp_path / "table", progress=False, pixel_spacing_csv=table).set_index("image")
    assert np.isnan(from_table.loc[names[0], "lesion_area_mm2"])  # left empty: unknown
    assert from_table.loc[names[1], "largest_lesion_diameter_mm"] == pytest.approx(
        2 * sized.set_index("image").loc[names[1], "largest_lesion_diameter_mm"])
    assert (pd.read_csv(tmp_path / "table" / "predictions.csv")["pixel_spacing_mm"].iloc[1:] == 0.2).all()


def test_bad_pixel_spacing_is_refused_before_predicting(tmp_path: Path, images: Path) -> None:
    model = saved_model(tmp_path / "classical", "classical_threshold", {})
    with pytest.raises(DatasetError, match="--pixel-spacing-mm: pixel spacing -0.1 mm"):
        predict_images(model, str(images), tmp_path / "out", progress=False, pixel_spacing_mm=-0.1)
    table = tmp_path / "spacing.csv"
    table.write_text("image,pixel_spacing_mm\nelsewhere.png,0.1\n")
    with pytest.raises(DatasetError, match=r"spacing.csv: no row for image\(s\)"):
        predict_images(model, str(images), tmp_path / "out", progress=False, pixel_spacing_csv=table)
    assert not (tmp_path / "out").exists()  # nothing written
    with pytest.raises(SystemExit):  # one spacing or a table, not both
        main(["predict", "--model", str(model), "--input", str(images), "--out", str(tmp_path / "cli"),
              "--pixel-spacing-mm", "0.1", "--pixel-spacing-csv", str(table)])


def _run_tree(root: Path) -> dict[str, Path]:
    """A results/<run> layout with a segmenter, a multi-task model, a cascade over the segmenter and an
    ensemble of the two mask models, all on fold 0 (random weights: only consistency is checked)."""
    models = root / "models"
    seg = saved_model(models / "unet" / "fold0", "unet", {"features": [4, 4, 8, 8, 16, 4]})
    mtl = saved_model(models / "mtl" / "fold0", "mtl_resnet50", {"widen_factor": 0.125, "decoder_channels": [16, 8, 8, 8, 8]})
    cascade = saved_model(models / "cascade" / "fold0", "segnet_classifier", {"filters": [8, 8, 16, 16]})
    description = json.loads((cascade / "model.json").read_text())
    description["cascade"] = {"segmenter": "unet", "margin": 0.15, "empty_roi_fraction": 0.5, "threshold": 0.5}
    (cascade / "model.json").write_text(json.dumps(description))
    ensemble = root / "ensembles" / "pair" / "fold0"
    ensemble.mkdir(parents=True)
    (ensemble / "model.json").write_text(json.dumps({
        "arch": "ensemble", "members": ["unet", "mtl"], "weights_rule": "validation", "weights": {"seg": {"unet": 0.25, "mtl": 0.75}},
        "tasks": ["seg"], "classes": CLASSES, "image_size": 64}))
    return {"seg": seg, "mtl": mtl, "cascade": cascade, "ensemble": ensemble}


def test_cascade_predicts_mask_box_and_crop_class(tmp_path: Path, images: Path) -> None:
    tree = _run_tree(tmp_path / "run")
    table = predict_images(tree["cascade"], str(images), tmp_path / "out", progress=False)
    segmenter_only = predict_images(tree["seg"], str(images), tmp_path / "seg", progress=False)
    # The cascade's mask is its segmenter's; its classes come from the crop classifier.
    assert (table["lesion_area_px"] == segmenter_only["lesion_area_px"]).all()
    assert table[[f"prob_{c}" for c in CLASSES]].sum(axis=1).to_numpy() == pytest.approx(1.0)
    assert ((table.roi_top < table.roi_bottom) & (table.roi_bottom <= table.height)).all()
    assert ((table.roi_left < table.roi_right) & (table.roi_right <= table.width)).all()
    (tree["seg"] / "model.json").unlink()
    with pytest.raises(ModelFileError, match="needs the trained model unet of the same fold"):
        predict_images(tree["cascade"], str(images), tmp_path / "again", progress=False)


def test_ensemble_prediction_is_the_weighted_mean_of_its_members(images: Path) -> None:
    from busflow.serve.predictors import load_predictor

    tree = _run_tree(images.parent / "ensemble_run")
    grays = [np.asarray(Image.open(p).convert("L"), dtype=np.float32) for p in sorted(images.glob("*.png"))]
    combined = load_predictor(tree["ensemble"]).predict(grays)["mask_probs"]
    expected = 0.25 * load_predictor(tree["seg"]).predict(grays)["mask_probs"] + 0.75 * load_predictor(tree["mtl"]).predict(grays)["mask_probs"]
    np.testing.assert_allclose(combined, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["seg", "cascade", "ensemble"])
def test_a_packaged_model_predicts_exactly_as_its_folder(tmp_path: Path, images: Path, kind: str) -> None:
    tree = _run_tree(tmp_path / "run")
    package = tmp_path / f"{kind}.safetensors"
    assert main(["package", "--model", str(tree[kind]), "--out", str(package)]) == 0
    from_folder = predict_images(tree[kind], str(images), tmp_path / "folder", progress=False)
    from_package = predict_images(package, str(images), tmp_path / "package", progress=False)
    pd.testing.assert_frame_equal(from_folder, from_package)


def test_foreign_safetensors_and_pickles_are_refused(tmp_path: Path, images: Path) -> None:
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ModelFileError, match="without busflow metadata"):
        predict_images(foreign, str(images), tmp_path / "out", progress=False)
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelFileError, match="damaged.safetensors: not a readable safetensors"):
        predict_images(damaged, str(images), tmp_path / "out", progress=False)
