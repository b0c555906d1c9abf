"""Contrastive pretraining speed: images/s and seconds per 1,000 images per epoch of ``busflow.pretrain``.

    python benchmarks/pretrain_speed.py [--arch resnet50] [--options '{"widen_factor": 0.5}'] [--sizes 64 128]
                                        [--images 256] [--epochs 3] [--batch-size 64] [--device cpu] [--threads N]

Renders phantom scans once (one view per patient), preprocesses them to each input side and pretrains a
freshly built classifier on them (two views per image, SimCLR). The first epoch is a warm-up: the figures
are the mean of the later epochs (of the only one when ``--epochs 1``). An image counts once per epoch,
though the network sees two views of it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from busflow.data.folder import ingest_folder
from busflow.data.preprocess import preprocess_index
from busflow.data.synthetic import generate_phantoms
from busflow.models import build_model
from busflow.pretrain import PretrainSpec, pretrain
from busflow.train.device import device_name, resolve_device


def phantom_images(count: int, sizes: list[int]) -> dict[int, np.ndarray]:
    """``count`` phantom scans preprocessed to each side in ``sizes`` (uint8, N×S×S)."""
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "raw"
        generate_phantoms(raw, n_patients=count, seed=0, image_size=(320, 400), views_per_patient=(1, 1))
        index = ingest_folder(raw)
        return {size: preprocess_index(index, size=size)["images"] for size in sizes}


def measure(arch: str, options: dict, images: np.ndarray, spec: PretrainSpec, device: torch.device) -> tuple[float, float]:
    """Images/s and seconds per 1,000 images per epoch, over the epochs after the first."""
    model = build_model(arch, in_channels=1, n_classes=2, options=options)
    history = pretrain(model, images, spec, device=device, seed=0, log=lambda line: None)
    timed = history[1:] or history
    rate = float(np.mean([row["images_per_s"] for row in timed]))
    return rate, 1000.0 / rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--options", default='{"widen_factor": 0.5}', help="builder options as JSON")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="model input sides")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=PretrainSpec.batch_size)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    options = json.loads(args.options)
    spec = PretrainSpec(epochs=args.epochs, batch_size=args.batch_size)
    print(f"{args.arch} {options} on {device_name(device)}: {args.images} phantom images, batch {spec.batch_size}, "
          f"{args.epochs} epochs (first one excluded)")
    print(f"{'side':>5}  {'images/s':>9}  {'s per 1,000 images per epoch':>29}")
    for size, images in phantom_images(args.images, args.sizes).items():
        rate, seconds = measure(args.arch, options, images, spec, device)
        print(f"{size:>5}  {rate:9.1f}  {seconds:29.1f}", flush=True)


if __name__ == "__main__":
    main()
