"""``busflow predict``: run a trained model on new images — one file, a folder or a glob.

The model is a trained fold folder (a network, a cascade or an ensemble) or a packaged ``.safetensors``
file (:mod:`busflow.serve.predictors`). The input pipeline is rebuilt from the model's own description (size,
contrast enhancement, classes), never from the current params.yaml, and weights are read without
unpickling code (``weights_only=True`` or safetensors). Images stream
through in batches, so memory stays bounded for any number of them. Per image the command writes the
lesion mask and an overlay at the image's own resolution, and one ``predictions.csv`` row with the class
probabilities, the predicted class, the lesion area and shape descriptors of the largest lesion. Given the pixel
spacing (one value for every image, or a table of them), the row also has the lesion's size in mm: area, and the
largest lesion's diameter, width and depth.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from busflow.data.folder import IMAGE_SUFFIXES
from busflow.data.preprocess import load_grayscale, normalise
from busflow.data.rois import largest_component
from busflow.data.spacing import check_spacing, read_spacing_table
from busflow.errors import DatasetError
from busflow.evaluate.lesion_size import lesion_size_mm
from busflow.io import atomic_path, write_csv
from busflow.serve.predictors import load_predictor
from busflow.train.device import resolve_device

OVERLAY_COLOUR = np.array([255, 40, 40], dtype=np.float32)


def find_images(source: str) -> list[Path]:
    """The images named by ``source``: a file, every image of a folder (masks ``*_mask*`` left out), or a glob."""
    path = Path(source)
    if path.is_file():
        return [path]
    candidates = sorted(path.iterdir()) if path.is_dir() else sorted(Path(p) for p in glob.glob(source, recursive=True))
    images = [p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and "_mask" not in p.stem]
    if not images:
        raise DatasetError(f"{source}: no images found (expected a file, a folder or a glob of {sorted(IMAGE_SUFFIXES)})")
    stems: dict[str, Path] = {}
    for image in images:
        if image.stem in stems:
            raise DatasetError(f"{image}: same name as {stems[image.stem]}; outputs are named after the image, predict them separately")
        stems[image.stem] = image
    return images


def shape_descriptors(mask: np.ndarray) -> dict[str, float]:
    """Lesion area (all predicted pixels, and as a fraction of the image) and the shape of the largest lesion: bounding-box aspect ratio
    (height / width; > 1 is taller than wide, a malignancy sign in BI-RADS), solidity (area / convex-hull
    area) and margin irregularity (perimeter² / (4π · area): 1 for a disc, larger for lobulated or
    spiculated margins)."""
    lesion = largest_component(mask)
    area = int(lesion.sum())
    sizes = {"lesion_area_px": int(mask.sum()), "lesion_fraction": float(mask.mean()), "largest_lesion_area_px": area}
    if area == 0:
        return {**sizes, "aspect_ratio": math.nan, "solidity": math.nan, "margin_irregularity": math.nan}
    contours, _ = cv2.findContours(lesion.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    rows, cols = np.flatnonzero(lesion.any(1)), np.flatnonzero(lesion.any(0))
    hull_area = cv2.contourArea(cv2.convexHull(contour))
    perimeter = cv2.arcLength(contour, closed=True)
    return {**sizes, "aspect_ratio": (rows[-1] - rows[0] + 1) / (cols[-1] - cols[0] + 1),
            "solidity": min(1.0, area / hull_area) if hull_area else 1.0,
            "margin_irregularity": perimeter**2 / (4 * math.pi * area)}


def overlay_image(gray: np.ndarray, mask: np.ndarray, opacity: float = 0.4) -> np.ndarray:
    """RGB picture of the (normalised) image with the lesion tinted and outlined."""
    base = np.repeat(normalise(gray)[..., None], 3, axis=2).astype(np.float32)
    base[mask] = (1 - opacity) * base[mask] + opacity * OVERLAY_COLOUR
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    picture = np.ascontiguousarray(base.round().astype(np.uint8))
    cv2.drawContours(picture, contours, -1, tuple(int(c) for c in OVERLAY_COLOUR), thickness=max(1, min(mask.shape) // 200))
    return picture


def _save_png(pixels: np.ndarray, target: Path) -> None:
    with atomic_path(target) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def _batches(paths: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(paths), size):
        yield paths[start : start + size]


def full_resolution(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Lesion probabilities resized (bilinear) from the model's input size to the original image size."""
    return np.asarray(Image.fromarray(probs.astype(np.float32), mode="F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def scaled_box(box: np.ndarray, model_size: int, shape: tuple[int, int]) -> dict[str, int]:
    """A cascade's crop box (model input coordinates) in the original image's pixels."""
    top, left, bottom, right = (float(v) for v in box)
    sy, sx = shape[0] / model_size, shape[1] / model_size
    return {"roi_top": round(top * sy), "roi_left": round(left * sx), "roi_bottom": round(bottom * sy), "roi_right": round(right * sx)}


@dataclass(frozen=True)
class ImageOutputs:
    """One image's share of a predictor's batch outputs, at the image's own resolution."""

    class_probs: np.ndarray | None
    lesion_probs: np.ndarray | None
    roi_box: dict[str, int] | None


def image_outputs(outputs: Mapping[str, np.ndarray], k: int, shape: tuple[int, int]) -> ImageOutputs:
    masks = outputs.get("mask_probs")
    return ImageOutputs(
        class_probs=outputs["class_probs"][k] if "class_probs" in outputs else None,
        lesion_probs=full_resolution(masks[k], shape) if masks is not None else None,
        roi_box=scaled_box(outputs["roi_boxes"][k], masks.shape[-1], shape) if "roi_boxes" in outputs else None,
    )


def pixel_spacings(paths: Sequence[Path], spacing_mm: float | None = None, spacing_csv: Path | None = None) -> list[float]:
    """Pixel spacing (mm) of each image: one value for all, or the ``image`` rows of a CSV table; NaN when not given."""
    if spacing_mm is not None and spacing_csv is not None:
        raise DatasetError(f"{spacing_csv}: give either one pixel spacing for every image or a table of them, not both")
    if spacing_csv is not None:
        return read_spacing_table(spacing_csv, "image", [path.name for path in paths]).tolist()
    if spacing_mm is not None:
        return [check_spacing(spacing_mm, "--pixel-spacing-mm")] * len(paths)
    return [math.nan] * len(paths)


def _row(path: Path, gray: np.ndarray, result: ImageOutputs, classes: Sequence[str], threshold: float, out_dir: Path,
         spacing_mm: float = math.nan) -> dict[str, Any]:
    row: dict[str, Any] = {"image": path.name, "path": str(path), "height": gray.shape[0], "width": gray.shape[1]}
    if result.class_probs is not None:
        row.update({f"prob_{name}": float(p) for name, p in zip(classes, result.class_probs)})
        row["predicted_class"] = classes[int(result.class_probs.argmax())]
    row.update(result.roi_box or {})
    if result.lesion_probs is not None:
        mask = result.lesion_probs >= threshold
        _save_png(mask.astype(np.uint8) * 255, out_dir / f"{path.stem}_mask.png")
        _save_png(overlay_image(gray, mask), out_dir / f"{path.stem}_overlay.png")
        row.update(shape_descriptors(mask))
        if not math.isnan(spacing_mm):  # rows of images of unknown spacing get NaN sizes in the table
            row.update(pixel_spacing_mm=spacing_mm, **lesion_size_mm(mask, (spacing_mm, spacing_mm)))
    return row


def predict_images(model_path: Path, source: str, out_dir: Path, *, device: str = "auto", batch_size: int = 16,
                   threshold: float = 0.5, progress: bool = True, pixel_spacing_mm: float | None = None,
                   pixel_spacing_csv: Path | None = None) -> pd.DataFrame:
    """Predict every image of ``source`` with the trained model at ``model_path`` (fold folder or package);
    write masks, overlays and ``out_dir/predictions.csv``; return the table. Lesion sizes in mm need the pixel
    spacing: ``pixel_spacing_mm`` for every image, or ``pixel_spacing_csv`` (columns image, pixel_spacing_mm)."""
    predictor = load_predictor(model_path)
    paths = find_images(source)
    spacing_of = dict(zip(paths, pixel_spacings(paths, pixel_spacing_mm, pixel_spacing_csv)))
    predictor.to(resolve_device(device))
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for chunk in tqdm(list(_batches(paths, batch_size)), desc=f"predict {model_path.name}", unit="batch", disable=not progress):
        grays = [load_grayscale(path) for path in chunk]
        outputs = predictor.predict(grays)
        rows += [_row(path, gray, image_outputs(outputs, k, gray.shape), predictor.classes, threshold, out_dir, spacing_of[path])
                 for k, (path, gray) in enumerate(zip(chunk, grays))]
    table = pd.DataFrame(rows)
    write_csv(out_dir / "predictions.csv", table)
    return table
