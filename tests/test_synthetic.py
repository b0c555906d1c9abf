"""Tests for the synthetic breast-ultrasound phantom generator (busflow.data.synthetic)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage as ndi

from busflow.data import synthetic
from busflow.data.synthetic import CLASSES, generate_phantoms

SMALL = (64, 80)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root: Path, label: str, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(Image.open(root / label / f"{image_id}.png"))
    mask = np.asarray(Image.open(root / label / f"{image_id}_mask.png"))
    return image, mask


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return rows.min(), rows.max(), cols.min(), cols.max()


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("acquisition", ["repositioned", "sweep"])
def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path, acquisition: str) -> None:
    kwargs = dict(n_patients=6, image_size=SMALL, acquisition=acquisition)
    generate_phantoms(tmp_path / "a", seed=3, **kwargs)
    generate_phantoms(tmp_path / "b", seed=3, **kwargs)
    generate_phantoms(tmp_path / "c", seed=4, **kwargs)
    first, second, other = (_hashes(tmp_path / name) for name in "abc")
    assert first and first == second
    assert first != other


@pytest.mark.parametrize("acquisition", ["repositioned", "sweep"])
def test_patient_output_does_not_depend_on_n_patients(tmp_path: Path, acquisition: str) -> None:
    # single class, so the label shuffle cannot move patients between classes
    kwargs = dict(seed=11, image_size=SMALL, class_mix={"benign": 1.0}, acquisition=acquisition)
    generate_phantoms(tmp_path / "few", n_patients=2, **kwargs)
    generate_phantoms(tmp_path / "many", n_patients=5, **kwargs)
    few, many = _hashes(tmp_path / "few"), _hashes(tmp_path / "many")
    images = [k for k in few if k.startswith("benign/")]
    assert images and all(few[k] == many[k] for k in images)


# ----------------------------------------------------------------------------- layout


def test_layout_masks_and_patients_table(tmp_path: Path) -> None:
    out = tmp_path / "data"
    table = generate_phantoms(out, n_patients=12, seed=0, image_size=SMALL)
    assert list(table.columns) == ["image_id", "patient_id", "label"]
    on_disk = pd.read_csv(out / "patients.csv", dtype=str)
    pd.testing.assert_frame_equal(on_disk, table.astype(str))
    assert table["image_id"].tolist() == sorted(table["image_id"])
    assert table["image_id"].str.fullmatch(r"p\d{4}_v\d").all()
    assert (table["image_id"].str.split("_").str[0] == table["patient_id"]).all()
    per_patient = table.groupby("patient_id")
    assert per_patient.size().between(1, 3).all()
    assert (per_patient["label"].nunique() == 1).all()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(CLASSES)

    images = {p.stem for c in CLASSES for p in (out / c).glob("*.png") if not p.stem.endswith("_mask")}
    assert images == set(table["image_id"])
    for row in table.itertuples():
        image, mask = _load(out, row.label, row.image_id)
        assert image.dtype == np.uint8 and image.shape == SMALL
        assert mask.dtype == np.uint8 and mask.shape == SMALL
        assert set(np.unique(mask)) <= {0, 255}
        assert (mask.max() == 0) == (row.label == "normal")
        assert image.max() - image.min() > 150  # uses most of the 8-bit range


def test_class_without_patients_gets_no_folder(tmp_path: Path) -> None:
    table = generate_phantoms(tmp_path / "d", n_patients=3, seed=0, image_size=SMALL,
                              class_mix={"normal": 0.5, "benign": 0.5, "malignant": 0.0})
    assert not (tmp_path / "d" / "malignant").exists()
    assert set(table["label"]) == {"normal", "benign"}


def test_class_mix_for_100_patients(tmp_path: Path) -> None:
    mix = {"normal": 0.17, "benign": 0.56, "malignant": 0.27}
    table = generate_phantoms(tmp_path / "m", n_patients=100, seed=5, image_size=(32, 32),
                              class_mix=mix, views_per_patient=(1, 1))
    counts = table.drop_duplicates("patient_id")["label"].value_counts()
    for name, frac in mix.items():
        assert abs(counts.get(name, 0) - 100 * frac) <= 2


def test_class_counts_rounding_and_minimum_one() -> None:
    assert synthetic._class_counts(100, {"normal": 0.17, "benign": 0.56, "malignant": 0.27}) == \
        {"normal": 17, "benign": 56, "malignant": 27}
    small = synthetic._class_counts(3, {"normal": 0.05, "benign": 0.9, "malignant": 0.05})
    assert small == {"normal": 1, "benign": 1, "malignant": 1}
    assert sum(synthetic._class_counts(7, {"normal": 1 / 3, "benign": 1 / 3, "malignant": 1 / 3}).values()) == 7


# ----------------------------------------------------------------------------- acquisitions


def _aligned_correlation(first: np.ndarray, second: np.ndarray, max_shift: int) -> float:
    """Pearson correlation of two images at the lateral shift (up to ``max_shift`` columns) that aligns them best."""
    best = -1.0
    for shift in range(-max_shift, max_shift + 1):
        a = first[:, max(shift, 0): first.shape[1] + min(shift, 0)].astype(float)
        b = second[:, max(-shift, 0): second.shape[1] + min(-shift, 0)].astype(float)
        best = max(best, float(np.corrcoef(a.ravel(), b.ravel())[0, 1]))
    return best


def _view_pairs(root: Path, table: pd.DataFrame) -> list[tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]]:
    """(image, mask) of each patient's first two views."""
    pairs = []
    for _, views in table.groupby("patient_id"):
        if len(views) >= 2:
            first, second = views.iloc[0], views.iloc[1]
            pairs.append((_load(root, first["label"], first["image_id"]), _load(root, second["label"], second["image_id"])))
    return pairs


@pytest.fixture(scope="module")
def acquisitions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """The same 24 patients (lesions only, two or three views each) acquired both ways."""
    root = tmp_path_factory.mktemp("acquisitions")
    kwargs = dict(n_patients=24, seed=8, image_size=(80, 100), views_per_patient=(2, 3),
                  class_mix={"benign": 0.5, "malignant": 0.5})
    return {mode: _view_pairs(root / mode, generate_phantoms(root / mode, acquisition=mode, **kwargs))
            for mode in ("repositioned", "sweep")}


def test_sweep_frames_are_much_more_alike_than_repositioned_views(acquisitions: dict[str, list]) -> None:
    """Neighbouring frames of a sweep differ by a small slide of the probe and partly decorrelated speckle:
    aligned, they correlate far better than two independent placements of the probe, with no exception."""
    correlation = {mode: np.array([_aligned_correlation(a[0], b[0], max_shift=12) for a, b in pairs])
                   for mode, pairs in acquisitions.items()}
    assert len(correlation["sweep"]) == len(correlation["repositioned"]) == 24
    assert correlation["sweep"].min() > 0.5
    assert np.median(correlation["sweep"]) > np.median(correlation["repositioned"]) + 0.15


def test_sweep_frames_show_the_lesion_at_one_size(acquisitions: dict[str, list]) -> None:
    """One sweep keeps its depth setting (zoom): the lesion's area typically changes by a few per cent from
    frame to frame (more only where a frame's edge cuts it), a repositioned probe's zoom changes it by a quarter."""
    def area_ratio(pairs: list) -> np.ndarray:
        areas = np.array([[(a[1] > 0).sum(), (b[1] > 0).sum()] for a, b in pairs], dtype=float)
        assert (areas > 0).all()
        return areas.max(axis=1) / areas.min(axis=1)

    assert np.median(area_ratio(acquisitions["sweep"])) < 1.05
    assert np.median(area_ratio(acquisitions["repositioned"])) > 1.15


# ----------------------------------------------------------------------------- physics


@pytest.fixture(scope="module")
def physics_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("physics") / "data"
    table = generate_phantoms(out, n_patients=60, seed=2, image_size=(96, 120), views_per_patient=(1, 1),
                              class_mix={"normal": 0.2, "benign": 0.4, "malignant": 0.4})
    return out, table


def _posterior_ratio(image: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean intensity under the lesion divided by the mean at the same depth beside it."""
    r0, r1, c0, c1 = _bbox(mask)
    width, height = c1 - c0 + 1, r1 - r0 + 1
    rows = slice(r1 + 2, min(image.shape[0], r1 + 2 + max(6, height // 2)))
    below = image[rows, c0 + width // 4: c1 + 1 - width // 4].astype(float)
    side = np.r_[image[rows, max(0, c0 - width // 2): max(0, c0 - 2)].ravel(),
                 image[rows, c1 + 3: c1 + 1 + width // 2].ravel()].astype(float)
    if below.size < 10 or side.size < 10:
        return None
    return below.mean() / side.mean()


def test_lesions_are_hypoechoic(physics_set: tuple[Path, pd.DataFrame]) -> None:
    out, table = physics_set
    ratios = []
    for row in table[table["label"] != "normal"].itertuples():
        image, mask = _load(out, row.label, row.image_id)
        inside = mask > 0
        ring = ndi.binary_dilation(inside, iterations=4) & ~inside
        ratios.append(image[inside].mean() / image[ring].mean())
    assert len(ratios) >= 30
    assert np.mean(ratios) < 0.8
    assert np.mean(np.array(ratios) < 1.0) > 0.9


def test_posterior_shadow_vs_enhancement(physics_set: tuple[Path, pd.DataFrame]) -> None:
    out, table = physics_set
    ratios: dict[str, list[float]] = {"benign": [], "malignant": []}
    for row in table[table["label"] != "normal"].itertuples():
        ratio = _posterior_ratio(*_load(out, row.label, row.image_id))
        if ratio is not None:
            ratios[row.label].append(ratio)
    assert min(len(v) for v in ratios.values()) >= 10
    assert np.mean(ratios["malignant"]) < np.mean(ratios["benign"]) - 0.2
    assert np.mean(ratios["benign"]) > 1.0 > np.mean(ratios["malignant"])


def test_malignant_taller_than_benign(physics_set: tuple[Path, pd.DataFrame]) -> None:
    out, table = physics_set
    aspect: dict[str, list[float]] = {"benign": [], "malignant": []}
    for row in table[table["label"] != "normal"].itertuples():
        r0, r1, c0, c1 = _bbox(_load(out, row.label, row.image_id)[1])
        aspect[row.label].append((r1 - r0 + 1) / (c1 - c0 + 1))
    assert np.mean(aspect["malignant"]) > np.mean(aspect["benign"]) + 0.1
    assert np.mean(aspect["benign"]) < 0.85  # wider than tall on average


def test_skin_line_brighter_than_fat_below(physics_set: tuple[Path, pd.DataFrame]) -> None:
    out, table = physics_set
    skin, fat = [], []
    for row in table.itertuples():
        image = _load(out, row.label, row.image_id)[0].astype(float)
        skin.append(image[:2].mean())
        fat.append(image[4:8].mean())
    assert np.mean(skin) > 1.5 * np.mean(fat)
    assert np.mean(np.array(skin) > np.array(fat)) > 0.9


def test_classes_not_trivially_separable_by_global_statistics(physics_set: tuple[Path, pd.DataFrame]) -> None:
    # the mean brightness of the image should not give away the class on its own
    out, table = physics_set
    means = {c: [] for c in CLASSES}
    for row in table.itertuples():
        means[row.label].append(_load(out, row.label, row.image_id)[0].mean())
    spread = np.std(np.concatenate([np.asarray(v) for v in means.values()]))
    assert max(np.mean(v) for v in means.values()) - min(np.mean(v) for v in means.values()) < 1.5 * spread


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"n_patients": 0}, "n_patients"),
    ({"n_patients": 2.5}, "n_patients"),
    ({"seed": -1}, "seed"),
    ({"image_size": (16, 80)}, "image_size"),
    ({"image_size": (64,)}, "image_size"),
    ({"class_mix": {"normal": 0.5, "benign": 0.5, "cancer": 0.0}}, "class_mix"),
    ({"class_mix": {"normal": -0.1, "benign": 0.6, "malignant": 0.5}}, "class_mix"),
    ({"class_mix": {"normal": 0.3, "benign": 0.3, "malignant": 0.3}}, "class_mix"),
    ({"views_per_patient": (0, 2)}, "views_per_patient"),
    ({"views_per_patient": (3, 1)}, "views_per_patient"),
    ({"acquisition": "video"}, "acquisition"),
])
def test_invalid_arguments(tmp_path: Path, kwargs: dict, name: str) -> None:
    args = {"n_patients": 2, "seed": 0, "image_size": SMALL, **kwargs}
    with pytest.raises(ValueError, match=name):
        generate_phantoms(tmp_path / "bad", **args)
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------- atomic output


def test_output_replaced_atomically(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "stale.txt").write_text("old run")
    generate_phantoms(out, n_patients=2, seed=0, image_size=SMALL)
    assert not (out / "stale.txt").exists()
    assert (out / "patients.csv").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no .tmp leftovers


def test_interrupted_run_keeps_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "data"
    generate_phantoms(out, n_patients=2, seed=0, image_size=SMALL)
    before = _hashes(out)
    calls = {"n": 0}
    real_write = synthetic._write_png

    def failing_write(path: Path, pixels: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        real_write(path, pixels)

    monkeypatch.setattr(synthetic, "_write_png", failing_write)
    with pytest.raises(KeyboardInterrupt):
        generate_phantoms(out, n_patients=4, seed=1, image_size=SMALL)
    assert _hashes(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
