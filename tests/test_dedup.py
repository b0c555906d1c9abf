"""Duplicate detection: exact copies, crops at another scale, shared overlays that must not link, clusters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter, zoom

from busflow.split.dedup import LINK_COLUMNS, duplicate_clusters, find_duplicate_links, screen_pairs
from busflow.errors import DatasetError

SHAPE = (420, 560)


def speckle_scan(seed: int) -> np.ndarray:
    """Ultrasound-like frame: smooth tissue layers, bright skin line, dark lesion, multiplicative speckle."""
    rng = np.random.default_rng(seed)
    height, width = SHAPE
    tissue = zoom(rng.normal(size=(height // 20, width // 20)), 20, order=3)[:height, :width]
    rows = np.linspace(0, 1, height)[:, None]
    layers = 0.6 + 0.25 * np.sin(rows * rng.uniform(10, 20) + tissue) - 0.4 * rows
    y, x = np.ogrid[:height, :width]
    centre = rng.uniform([120, 150], [300, 410])
    layers = layers - 0.45 * (((y - centre[0]) / 40) ** 2 + ((x - centre[1]) / 60) ** 2 < 1)
    layers[8:14] += 0.5
    speckle = gaussian_filter(rng.rayleigh(1.0, size=SHAPE), sigma=(0.8, 1.6))
    return np.clip(150 * layers * speckle, 0, 255).astype(np.uint8)


def with_overlay(gray: np.ndarray) -> np.ndarray:
    """Scanner text, calipers and an annotation box (text, body mark) at fixed positions, as on BUSI frames."""
    image = Image.fromarray(gray)
    draw = ImageDraw.Draw(image)
    draw.text((150, 330), "RIGHT BREAST", fill=255, font=ImageFont.load_default(size=28))
    draw.text((10, 10), "LOGIQ E9", fill=230, font=ImageFont.load_default(size=16))
    for cx, cy in ((200, 150), (330, 210)):
        draw.line((cx - 8, cy, cx + 8, cy), fill=255, width=2)
        draw.line((cx, cy - 8, cx, cy + 8), fill=255, width=2)
    for t in np.linspace(0, 1, 14):
        px, py = 200 + t * 130, 150 + t * 60
        draw.ellipse((px - 1, py - 1, px + 1, py + 1), fill=255)
    draw.rectangle((380, 250, 540, 400), fill=0)
    for row, line in enumerate(["RT BREAST", "12:30 3CM FN", "Gn 52 DR 66", "FR 31 D4.0"]):
        draw.text((390, 258 + row * 20), line, fill=235, font=ImageFont.load_default(size=15))
    draw.ellipse((430, 340, 480, 390), outline=230, width=2)
    draw.line((440, 365, 470, 372), fill=230, width=3)
    return np.asarray(image)


def crop_rescale(gray: np.ndarray, fraction: float, offset: tuple[int, int], factor: float) -> np.ndarray:
    height, width = gray.shape
    top, left = offset
    crop = Image.fromarray(gray[top:top + round(height * fraction), left:left + round(width * fraction)])
    size = (round(crop.width * factor), round(crop.height * factor))
    return np.asarray(crop.resize(size, Image.Resampling.BICUBIC))


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """base; (a) exact copy stored as RGB; (b) crops of 80 % and 72 % at other scales; (c) other frame, same overlay."""
    folder = tmp_path_factory.mktemp("dedup")
    base = with_overlay(speckle_scan(1))
    return {
        "base": save(folder / "base.png", base),
        "exact": save(folder / "exact.png", base, mode="RGB"),
        "crop80": save(folder / "crop80.png", crop_rescale(base, 0.80, (30, 60), 1.3)),
        "crop72": save(folder / "crop72.png", crop_rescale(base, 0.72, (90, 20), 0.75)),
        "overlay": save(folder / "overlay.png", with_overlay(speckle_scan(2))),
        "other": save(folder / "other.png", speckle_scan(3)),
    }


def links_of(images: dict[str, Path]) -> pd.DataFrame:
    return find_duplicate_links(list(images), list(images.values()))


def pairs(links: pd.DataFrame) -> dict[tuple[str, str], str]:
    return {(a, b): reason for a, b, reason in zip(links["image_a"], links["image_b"], links["reason"])}


def test_exact_and_cropped_rescaled_copies_link_but_shared_overlay_does_not(synthetic: dict[str, Path]) -> None:
    links = links_of(synthetic)
    assert links.columns.tolist() == LINK_COLUMNS
    found = pairs(links)
    assert found[("base", "exact")] == "exact"
    assert found[("base", "crop80")] == "near-duplicate"
    assert found[("base", "crop72")] == "near-duplicate"
    assert not {pair for pair in found if "overlay" in pair or "other" in pair}
    crop = links.set_index(["image_a", "image_b"]).loc[("base", "crop80")]
    assert crop["score"] > 0.9 and crop["overlap"] > 0.95
    assert crop["scale"] == pytest.approx(1 / 1.3, rel=0.03)  # one crop80 pixel spans 1/1.3 base pixels
    assert (links["image_a"] < links["image_b"]).all()
    assert duplicate_clusters(list(synthetic), links) == {
        "base": "base", "exact": "base", "crop80": "base", "crop72": "base", "overlay": "overlay", "other": "other"}


def test_shared_overlay_is_rejected_by_the_correlation_check(synthetic: dict[str, Path]) -> None:
    """Alone together, the two frames pass RANSAC on their identical annotations; the tile correlation rejects them."""
    images = {name: synthetic[name] for name in ("base", "overlay")}
    screened = screen_pairs(list(images), list(images.values()))
    assert len(screened) == 1 and not screened["accepted"].any()
    assert screened["score"].iloc[0] < 0.3 and screened["overlap"].iloc[0] > 0.95
    assert find_duplicate_links(list(images), list(images.values())).empty


def test_links_are_deterministic_and_independent_of_input_order(synthetic: dict[str, Path]) -> None:
    first = links_of(synthetic)
    reversed_images = dict(reversed(list(synthetic.items())))
    assert first.equals(links_of(synthetic))
    assert first.to_csv(index=False) == links_of(reversed_images).to_csv(index=False)


def test_clusters_are_transitive_and_singletons_map_to_themselves() -> None:
    links = pd.DataFrame({"image_a": ["a", "b", "x"], "image_b": ["b", "c", "y"]})
    clusters = duplicate_clusters(["c", "b", "a", "d", "x", "y"], links)
    assert clusters == {"a": "a", "b": "a", "c": "a", "d": "d", "x": "x", "y": "x"}


def test_unreadable_image_and_duplicate_ids_raise(tmp_path: Path, synthetic: dict[str, Path]) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="broken.png"):
        find_duplicate_links(["base", "broken"], [synthetic["base"], broken])
    with pytest.raises(ValueError, match="not unique"):
        find_duplicate_links(["base", "base"], [synthetic["base"], synthetic["exact"]])


def test_busi_known_duplicates_and_cluster_counts(busi_duplicates: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """The exact pair across classes is found; cluster counts stay within bounds that guard against collapse.

    Lower bounds: the plain 16x16 average hash alone groups 31 BUSI images in 15 clusters, and the detector
    must find far more (crops and rescaled copies); Pawlowska et al. (2023) report duplicates throughout
    the benign and malignant folders. Upper bounds: chaining through false links would merge clusters into
    a few large ones, so no cluster may exceed 10 images and at most half of the 780 images may be grouped.
    """
    index, links = busi_duplicates
    found = pairs(links)
    assert found[("benign (433)", "malignant (145)")] == "exact"
    clusters = pd.Series(duplicate_clusters(index["image_id"].tolist(), links))
    assert clusters["benign (433)"] == clusters["malignant (145)"]
    sizes = clusters.value_counts()
    grouped = sizes[sizes >= 2]
    assert 100 <= len(grouped) <= 250
    assert 250 <= grouped.sum() <= 390
    assert sizes.max() <= 10
