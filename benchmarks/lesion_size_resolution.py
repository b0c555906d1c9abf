"""What measuring lesions on the model-size masks costs: the true lesions of a dataset measured at full resolution
and again after the preprocess stage's resize to S × S, for several S.

    python benchmarks/lesion_size_resolution.py [--root FOLDER] [--sizes 64 128 256]

``--root`` is a folder dataset with ``pixel_spacing.csv`` (default: the default run's phantoms, generated into a
temporary folder). The per-image tables measure true and predicted lesions at the model's size, so the
differences printed here are the floor under any segmenter's size error at that size.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from busflow.data.folder import ingest_folder
from busflow.data.preprocess import load_mask_union, resize_mask
from busflow.data.synthetic import generate_phantoms
from busflow.evaluate.lesion_size import lesion_size_mm, resized_pixel_mm

REPO = Path(__file__).resolve().parents[1]


def default_phantoms(folder: Path) -> Path:
    """The default run's phantoms (params.yaml's data.synthetic and seed)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    settings = params["data"]["synthetic"]
    generate_phantoms(folder, n_patients=settings["n_patients"], seed=params["seed"],
                      image_size=(settings["image_height"], settings["image_width"]), class_mix=settings["class_mix"],
                      views_per_patient=tuple(settings["views_per_patient"]), acquisition=settings["acquisition"])
    return folder


def measured(root: Path, sizes: list[int]) -> pd.DataFrame:
    """Per lesion image: diameter and area at full resolution and at each model size."""
    index = ingest_folder(root)
    index = index[index["pixel_spacing_mm"].notna() & (index["mask_paths"].str.len() > 0)]
    rows = []
    for row in index.itertuples():
        mask = load_mask_union(row.mask_paths.split(";"), (row.height, row.width))
        if not mask.any():
            continue
        full = lesion_size_mm(mask, (row.pixel_spacing_mm, row.pixel_spacing_mm))
        for size in sizes:
            small = lesion_size_mm(resize_mask(mask, size).astype(bool), resized_pixel_mm(row.pixel_spacing_mm, (row.height, row.width), size))
            rows.append({"image_id": row.image_id, "size": size, "diameter_mm": full["largest_lesion_diameter_mm"],
                         "diameter_error_mm": small["largest_lesion_diameter_mm"] - full["largest_lesion_diameter_mm"],
                         "area_relative_error": small["lesion_area_mm2"] / full["lesion_area_mm2"] - 1})
    return pd.DataFrame(rows)


def summary(sizes_table: pd.DataFrame) -> pd.DataFrame:
    grouped = sizes_table.groupby("size")
    return pd.DataFrame({
        "lesion_images": grouped["image_id"].nunique(),
        "median_diameter_mm": grouped["diameter_mm"].median().round(2),
        "diameter_mean_abs_error_mm": grouped["diameter_error_mm"].apply(lambda e: e.abs().mean()).round(3),
        "diameter_mean_error_mm": grouped["diameter_error_mm"].mean().round(3),
        "diameter_p95_abs_error_mm": grouped["diameter_error_mm"].apply(lambda e: e.abs().quantile(0.95)).round(3),
        "area_mean_abs_relative_error": grouped["area_relative_error"].apply(lambda e: e.abs().mean()).round(4),
    }).reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="a folder dataset with pixel_spacing.csv (default: the default run's phantoms)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or default_phantoms(Path(scratch) / "phantoms")
        print(summary(measured(root, args.sizes)).to_string(index=False))


if __name__ == "__main__":
    main()
