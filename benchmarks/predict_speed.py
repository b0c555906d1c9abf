"""`busflow predict` throughput: images/s for the U-Net and the multi-task model at 256².

    python benchmarks/predict_speed.py [--images 64] [--size 256] [--device auto] [--batch-size 16]

Writes phantom scans (400 × 500 px, like BUS frames) to a scratch folder, saves each network at its
paper-sized default width (weights as initialised: speed does not depend on them), and times the whole
command path — decoding, preprocessing, inference, full-resolution masks, overlays and the CSV.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from busflow.data.synthetic import generate_phantoms
from busflow.models import build_model
from busflow.serve.predict import predict_images
from busflow.train.job import network_card
from busflow.train.outputs import save_run

CLASSES = ["normal", "benign", "malignant"]
MODELS = {"unet": ("unet", {}), "mtl_resnet50": ("mtl_resnet50", {})}


def scans(root: Path, count: int) -> Path:
    generate_phantoms(root / "raw", n_patients=count, seed=0, image_size=(400, 500),
                      class_mix={"normal": 0.2, "benign": 0.5, "malignant": 0.3}, views_per_patient=(1, 1))
    folder = root / "scans"
    folder.mkdir()
    for path in sorted((root / "raw").rglob("*.png")):
        if "_mask" not in path.stem:
            shutil.copy2(path, folder / path.name)
    return folder


def save_untrained(model_dir: Path, arch: str, options: dict, size: int) -> None:
    """A model folder as training leaves it, with the network as initialised (speed does not depend on weights)."""
    preprocess = {"size": size, "enhance": "none", "enhance_options": {}, "classes": CLASSES}
    model = build_model(arch, in_channels=1, n_classes=3, options=options)
    card = network_card(arch, options, classes=CLASSES, image_size=size, device=torch.device("cpu"), preprocess=preprocess)
    save_run(model_dir, model, card, pd.DataFrame({"epoch": [1]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="busflow-predict-speed-"))
    try:
        folder = scans(scratch, args.images)
        print(f"{args.images} scans of 400 × 500 px, model input {args.size}², batch {args.batch_size}, torch threads {torch.get_num_threads()}")
        for name, (arch, options) in MODELS.items():
            save_untrained(scratch / name, arch, options, args.size)
            predict_images(scratch / name, str(folder), scratch / f"warm_{name}", device=args.device, progress=False,
                           batch_size=args.batch_size)  # warm-up: allocator, kernels
            started = time.perf_counter()
            table = predict_images(scratch / name, str(folder), scratch / f"out_{name}", device=args.device,
                                   batch_size=args.batch_size, progress=False)
            seconds = time.perf_counter() - started
            print(f"{name:>14}: {len(table) / seconds:6.1f} images/s ({seconds:.1f} s for {len(table)})")
        with Image.open(next((scratch / "out_unet").glob("*_overlay.png"))) as overlay:
            print(f"outputs at the scans' own resolution: overlay {overlay.size[0]} × {overlay.size[1]}")
    finally:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
