"""Training throughput: busflow's loop against a plain baseline loop, side by side in one run.

    python benchmarks/train_throughput.py [--size 64] [--images 192] [--steps 24] [--batch-size 16] [--device auto] [--compile]

For the U-Net, the ResNet-50 classifier and the ResNet-50 multi-task model (paper-sized default widths):

* reference — busflow's training epoch on its reference path (``busflow.train.loop``): the preprocessed
  uint8 arrays held in host memory, MONAI flip + affine augmentation per sample, copied to the device at
  every step (bf16 autocast on CUDA). This is what the CPU runs;
* fast path — the same epoch on ``busflow.train.accelerate``'s path: arrays resident on the device, batched
  tensor augmentation there, channels_last, cuDNN autotuning, fused optimiser, losses read back once per
  epoch (what CUDA runs by default; forced here on the CPU too); ``--compile`` adds ``torch.compile``;
* baseline — what a one-off notebook does: a torch ``Dataset`` that decodes the PNG scan and its mask with
  PIL, converts and resizes them at every step, the same augmentation on the CPU, fp32, a default
  ``DataLoader`` (no workers).

Each trains a freshly initialised network with Adam for ``--steps`` batches after a warm-up; busflow's two
paths run those steps as one epoch of the real loop. The figure is training images per second, and the
speed-up is the device's default busflow path (reference on the CPU, fast path on CUDA) over the
baseline. On CUDA the achieved TFLOP/s (forward + backward FLOPs counted with torch's FlopCounterMode) is
also set against the device's dense bf16 peak. ``--zoo-estimate`` extrapolates a whole-zoo run (every model of the P000–P004 presets,
their epochs and folds, on BUSI's 780 images) from the measured images/s of each preset model.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from busflow.config import load_params
from busflow.data.folder import ingest_folder
from busflow.data.preprocess import load_grayscale, load_mask_union, model_input, preprocess_index, resize_mask
from busflow.data.synthetic import generate_phantoms
from busflow.models import build_model, model_tasks
from busflow.train.accelerate import REFERENCE, Acceleration, acceleration, compile_model, prepare_model
from busflow.train.augment import augment_batch, build_augmentation
from busflow.train.device import autocast, resolve_device
from busflow.train.loop import ArrayData, _optimizer, _train_epoch, batch_source
from busflow.train.losses import TaskLoss
from busflow.train.spec import AugmentSpec, TrainSpec

REPO = Path(__file__).resolve().parents[1]
MODELS = {"unet": ("unet", {}), "resnet50": ("resnet50", {}), "mtl_resnet50": ("mtl_resnet50", {})}
AUGMENT = AugmentSpec(flip=True, rotate_deg=15, zoom=0.1, shift=0.1)
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}  # dense, vendor sheets
BUSI_IMAGES = 780


def _spec(arch: str, batch_size: int) -> TrainSpec:
    return TrainSpec(arch=arch, epochs=1, batch_size=batch_size, lr=1e-4, weight_decay=0.0, augment=AUGMENT)


def _criterion(tasks: frozenset[str], device: torch.device) -> TaskLoss:
    return TaskLoss(tasks, None, 1.0, cls_loss="ce", seg_loss="dice_ce", focal_gamma=2.0).to(device)


class PngDataset(torch.utils.data.Dataset):
    """The baseline's input pipeline: decode, convert, resize and augment every sample at every step."""

    def __init__(self, index, size: int, augmentation) -> None:
        self.rows, self.size, self.augmentation = list(index.itertuples(index=False)), size, augmentation
        self.classes = ["normal", "benign", "malignant"]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int):
        row = self.rows[item]
        gray = load_grayscale(row.image_path)
        masks = [p for p in str(row.mask_paths).split(";") if p and p != "nan"]
        image = model_input(gray, {"size": self.size, "enhance": "none"}).astype(np.float32) / 255.0
        mask = resize_mask(load_mask_union(masks, gray.shape), self.size).astype(np.float32)
        image_t, mask_t = augment_batch(self.augmentation, image[None], mask[None])
        return image_t[0], mask_t[0], self.classes.index(row.label)


def _timed(step: Callable[[], int], steps: int, device: torch.device) -> float:
    """Images per second over ``steps`` calls of ``step`` (each returns its batch size), after one warm-up."""
    step()
    _synchronize(device)
    started, images = time.perf_counter(), 0
    for _ in range(steps):
        images += step()
    _synchronize(device)
    return images / (time.perf_counter() - started)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours(arch: str, options: dict, arrays: dict, size: int, steps: int, batch_size: int, device: torch.device,
         setup: Acceleration) -> float:
    """Images per second of busflow's training epoch over ``steps`` batches, after a warm-up epoch of 3."""
    torch.manual_seed(0)
    model = prepare_model(build_model(arch, in_channels=1, n_classes=3, options=options), device, setup)
    setup = compile_model(model, device, setup, size, log=lambda line: print(f"  {arch}: {line}"))
    criterion = _criterion(frozenset(model_tasks(arch)), device)
    optimizer = _optimizer(model, _spec(arch, batch_size), fused=setup.fused_optimizer)
    data = ArrayData(arrays["images"], arrays["masks"], arrays["labels"])
    batches = batch_source(data, device, setup, augment=AUGMENT, seed=0)
    batches.reseed(0)
    rng = np.random.default_rng(0)

    def epoch(n_batches: int) -> None:
        rows = np.resize(rng.permutation(len(data.images)), n_batches * batch_size)
        _train_epoch(model, criterion, optimizer, batches, rows, _spec(arch, batch_size), device, epoch=1)

    epoch(3)  # cuDNN autotuning, compilation, allocator warm-up
    _synchronize(device)
    started = time.perf_counter()
    epoch(steps)
    _synchronize(device)
    return steps * batch_size / (time.perf_counter() - started)


def baseline(arch: str, options: dict, index, size: int, steps: int, batch_size: int, device: torch.device) -> float:
    torch.manual_seed(0)
    model = build_model(arch, in_channels=1, n_classes=3, options=options).to(device)
    criterion = _criterion(frozenset(model_tasks(arch)), device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loader = torch.utils.data.DataLoader(PngDataset(index, size, build_augmentation(AUGMENT, size, seed=0)),
                                         batch_size=batch_size, shuffle=True, drop_last=True)
    batches = iter(loader)

    def step() -> int:
        nonlocal batches
        try:
            images, masks, labels = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, masks, labels = next(batches)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(images.to(device)), labels.to(device), masks.to(device))  # fp32, no autocast
        loss.backward()
        optimizer.step()
        return len(images)

    return _timed(step, steps, device)


def step_tflop(arch: str, options: dict, size: int, batch_size: int, device: torch.device) -> float:
    """FLOPs (in TFLOP) of one forward + backward pass of a batch, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(arch, in_channels=1, n_classes=3, options=options).to(device)
    criterion = _criterion(frozenset(model_tasks(arch)), device)
    images = torch.rand(batch_size, 1, size, size, device=device)
    masks = (torch.rand(batch_size, 1, size, size, device=device) > 0.5).float()
    labels = torch.randint(0, 3, (batch_size,), device=device)
    with FlopCounterMode(display=False) as counter, autocast(device):
        criterion(model(images), labels, masks).backward()
    return counter.get_total_flops() / 1e12


def _peak(device: torch.device) -> float | None:
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def zoo_estimate(size: int, steps: int, batch_size: int, device: torch.device, arrays: dict, setup: Acceleration) -> None:
    """Seconds per epoch of every preset model on BUSI-sized data, times its epochs and folds."""
    total = 0.0
    for preset in sorted((REPO / "config" / "presets").glob("p00*.yaml")):
        params = load_params(preset)
        folds = len(params["train"]["folds"])
        for name in params["train"]["models"]:
            spec = params["models"][name]
            rate = ours(spec["arch"], spec.get("options", {}), arrays, size, steps, batch_size, device, setup)
            seconds = BUSI_IMAGES * 0.7 / rate * spec["epochs"] * folds  # ~70 % of the images train per fold
            total += seconds
            print(f"  {preset.stem} {name:<22} {rate:8.1f} img/s × {spec['epochs']:>3} epochs × {folds} folds ≈ {seconds / 60:7.1f} min")
    print(f"whole zoo (P000–P004 models, training only) ≈ {total / 3600:.1f} h on this device at {size}²")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None, help="model input side (default: 256 on CUDA, 64 on the CPU)")
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network on the fast path")
    parser.add_argument("--zoo-estimate", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    size = args.size or (256 if device.type == "cuda" else 64)
    fast_path = acceleration({"fast_path": True, "compile": args.compile}, device)
    default_path = acceleration({"fast_path": "auto", "compile": args.compile}, device)
    scratch = Path(tempfile.mkdtemp(prefix="busflow-throughput-"))
    try:
        generate_phantoms(scratch / "scans", n_patients=args.images, seed=0, image_size=(400, 500), views_per_patient=(1, 1))
        index = ingest_folder(scratch / "scans")
        arrays = preprocess_index(index, size)
        print(f"{len(index)} scans of 400 × 500 px, model input {size}², batch {args.batch_size}, {args.steps} steps, "
              f"device {device}, torch threads {torch.get_num_threads()}; default path on this device: "
              f"{'fast' if default_path.fast_path else 'reference'}{', compiled' if args.compile else ''}")
        print(f"{'model':>14}  {'reference':>9}  {'fast path':>9}  {'baseline':>8}  {'speed-up':>8}  (images/s)"
              + ("  TFLOP/s (of bf16 peak)" if device.type == "cuda" else ""))
        for name, (arch, options) in MODELS.items():
            reference = ours(arch, options, arrays, size, args.steps, args.batch_size, device, REFERENCE)
            fast = ours(arch, options, arrays, size, args.steps, args.batch_size, device, fast_path)
            slow = baseline(arch, options, index, size, args.steps, args.batch_size, device)
            default = fast if default_path.fast_path else reference
            line = f"{name:>14}  {reference:9.1f}  {fast:9.1f}  {slow:8.1f}  {default / slow:7.2f}×"
            if device.type == "cuda":
                achieved = step_tflop(arch, options, size, args.batch_size, device) * fast / args.batch_size
                peak = _peak(device)
                line += f"  {achieved:7.1f}" + (f" ({100 * achieved / peak:.0f} % of {peak:.0f})" if peak else "")
            print(line, flush=True)
        if args.zoo_estimate:
            zoo_estimate(size, args.steps, args.batch_size, device, arrays, default_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
