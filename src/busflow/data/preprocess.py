"""Preprocess: grayscale, resize to a square, normalise intensities, union of lesion masks.

The output ``arrays.npz`` is read once per training job, so no job decodes PNGs in its step loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from busflow import CLASSES
from busflow.errors import DatasetError
from busflow.io import atomic_path

if TYPE_CHECKING:
    from busflow.data.bad_samples import BadSamples

# Percentiles for intensity normalisation: robust to a few saturated pixels (calipers, text).
LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5


def load_grayscale(path: str | Path) -> np.ndarray:
    """Decode any 8-bit mode (L, RGB, RGBA, P) or 16-bit image to a float32 gray array."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I", "F"):
                return np.asarray(image, dtype=np.float32)
            return np.asarray(image.convert("L"), dtype=np.float32)
    except OSError as error:
        raise DatasetError(f"{path}: cannot be decoded as an image ({error})") from None


def mask_pixels(mask: Image.Image) -> np.ndarray:
    """Lesion pixels of one mask file: where its brightest colour channel is at least half range (>= 128),
    or, for a label map holding only the values 0 and 1, where it is 1.

    1-bit, L, RGB, RGBA and palette masks all pass through their RGB rendering (palette colours resolved,
    alpha ignored), so a white, red or green lesion drawn on black counts alike; anti-aliased edges count
    from half intensity up.
    """
    if mask.mode in ("1", "L"):  # gray: its RGB rendering repeats the value, so it is its own brightest channel
        brightest = np.asarray(mask.convert("L"))
    else:  # an elementwise maximum of the channel planes (numpy's max over a length-3 last axis is far slower)
        rgb = np.asarray(mask.convert("RGB"))
        brightest = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
    return brightest == 1 if brightest.max() == 1 else brightest >= 128


def load_mask_union(mask_paths: list[str], shape: tuple[int, int]) -> np.ndarray:
    """Pixel-wise OR of all lesion masks of an image (see :func:`mask_pixels` for the per-file rule)."""
    union = np.zeros(shape, dtype=bool)
    for path in mask_paths:
        try:
            with Image.open(path) as mask:
                lesion = mask_pixels(mask)
        except OSError as error:
            raise DatasetError(f"{path}: cannot be decoded as a mask ({error})") from None
        if lesion.shape != shape:
            raise DatasetError(f"{path}: mask size {lesion.shape[::-1]} differs from its image {shape[::-1]}")
        union |= lesion
    return union


def normalise(image: np.ndarray) -> np.ndarray:
    """Clip to robust percentiles and rescale to 0..255 (uint8)."""
    low, high = np.percentile(image, [LOW_PERCENTILE, HIGH_PERCENTILE])
    scaled = (image - low) / max(high - low, 1e-6)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Area-average a uint8 image to size × size (anti-aliased)."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BOX))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A boolean mask to size × size {0, 1} by nearest neighbour."""
    mask_resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)
    return (np.asarray(mask_resized) > 127).astype(np.uint8)


def model_input(gray: np.ndarray, settings: Mapping[str, Any]) -> np.ndarray:
    """A decoded gray image as the networks see it: normalised, contrast-enhanced, resized (``preprocess``
    settings: size, enhance, enhance_options). Training data and new images go through this one path."""
    from busflow.data.enhance import enhance

    enhanced = enhance(normalise(gray), settings["enhance"], **(settings.get("enhance_options") or {}))
    return resize_image(enhanced, settings["size"])


def select_classes(index: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """The images of the task's classes (e.g. benign/malignant for a binary task; normals left out)."""
    counts = index["label"].value_counts()
    empty = [c for c in classes if counts.get(c, 0) == 0]
    if empty:
        present = sorted(counts.index)
        raise DatasetError(f"preprocess.classes: no image of class {empty} in this dataset (it has {present}); "
                           f"choose among those")
    return index[index["label"].isin(classes)].reset_index(drop=True)


def _decode_sample(row: Any, settings: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    gray = load_grayscale(row.image_path)
    mask_paths = [p for p in str(row.mask_paths).split(";") if p and p != "nan"]
    union = load_mask_union(mask_paths, gray.shape)
    return model_input(gray, settings), resize_mask(union, settings["size"])


def preprocess_index(index: pd.DataFrame, size: int, *, classes: Sequence[str] = CLASSES, enhancement: str = "none",
                     options: Mapping[str, Any] | None = None, bad: BadSamples | None = None) -> dict[str, np.ndarray]:
    """Images (uint8, contrast-enhanced at full resolution, then resized) and union masks, in index order;
    labels index ``classes``. An image or mask that cannot be decoded goes to ``bad`` (default: raise); the
    arrays then hold the other rows (``image_ids`` says which)."""
    from busflow.data.bad_samples import BadSamples

    bad = bad or BadSamples()
    settings = {"size": size, "enhance": enhancement, "enhance_options": options or {}}
    decoded = [bad.attempt(row.image_path, lambda row=row: _decode_sample(row, settings)) for row in index.itertuples(index=False)]
    kept = np.array([sample is not None for sample in decoded], dtype=bool)
    samples = [sample for sample in decoded if sample is not None]
    empty = np.zeros((0, size, size), dtype=np.uint8)
    return {
        "images": np.stack([image for image, _ in samples]) if samples else empty,
        "masks": np.stack([mask for _, mask in samples]) if samples else empty,
        "labels": np.array([list(classes).index(label) for label in index["label"][kept]], dtype=np.int64),
        "image_ids": index["image_id"][kept].to_numpy(dtype=str),
        "classes": np.array(list(classes), dtype=str),
        **physical_geometry(index[kept]),
    }


def physical_geometry(index: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per image: ``original_shape`` (height, width in pixels before resizing) and ``pixel_spacing_mm`` (NaN where
    the source does not know it), so that masks at the model's size can be measured in mm."""
    spacing = index["pixel_spacing_mm"] if "pixel_spacing_mm" in index.columns else pd.Series(np.nan, index=index.index)
    return {"original_shape": index[["height", "width"]].to_numpy(dtype=np.int64).reshape(-1, 2),
            "pixel_spacing_mm": pd.to_numeric(spacing, errors="coerce").to_numpy(dtype=np.float64)}


def save_arrays(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def preprocess_raw(raw_dir: str | Path, settings: Mapping[str, Any], bad: BadSamples | None = None
                   ) -> tuple[pd.DataFrame, dict[str, np.ndarray], int]:
    """Index the raw folder, keep ``settings["classes"]`` and preprocess: (index, arrays, images left out by
    class). Bad samples go to ``bad`` (default: the first one raises) and are in neither the index nor the arrays."""
    from busflow.data.sources import ingest_raw

    ingested = ingest_raw(raw_dir, bad)
    index = select_classes(ingested, settings["classes"])
    arrays = preprocess_index(index, settings["size"], classes=settings["classes"], enhancement=settings["enhance"],
                              options=settings["enhance_options"], bad=bad)
    index = index[index["image_id"].isin(arrays["image_ids"])].reset_index(drop=True)
    if index.empty:
        raise DatasetError(f"{raw_dir}: no image left to preprocess (see the skipped samples)")
    return index, arrays, len(ingested) - int(ingested["label"].isin(settings["classes"]).sum())
