"""Every registered architecture at its default (paper-size) options: parameters and training throughput.

    python benchmarks/model_zoo.py [--size 128] [--batch 8] [--steps 3] [--device auto] [--arch NAME ...]
        [--options JSON]

Throughput is images per second of forward + backward + Adam step on random 1-channel inputs, after one
warm-up step, with the number of threads the machine has. ``--options`` builds the named architectures with
these options instead (e.g. a preset's ``models.<m>.options``).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from busflow.models import available_architectures, build_model, model_tasks
from busflow.train.device import resolve_device

# Networks whose input size is fixed at build time get it from the benchmark size.
SIZE_OPTIONS = {"vit": "img_size"}


def train_throughput(arch: str, size: int, batch: int, steps: int, device: torch.device,
                     options: dict | None = None) -> tuple[int, float]:
    options = {**({SIZE_OPTIONS[arch]: size} if arch in SIZE_OPTIONS else {}), **(options or {})}
    model = build_model(arch, in_channels=1, n_classes=2, options=options).to(device).train()
    parameters = sum(p.numel() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-4) if trainable else None
    images = torch.rand(batch, 1, size, size, device=device)
    labels = torch.randint(0, 2, (batch,), device=device)
    masks = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()

    def step() -> None:
        outputs = model(images)
        loss = images.new_zeros(())
        if "cls" in model_tasks(arch):
            loss = loss + torch.nn.functional.cross_entropy(outputs["logits"], labels)
        if "seg" in model_tasks(arch):
            loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(outputs["seg"], masks)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return parameters, steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--arch", nargs="*", default=None, help="architectures (default: all registered)")
    parser.add_argument("--options", type=json.loads, default=None, help="builder options, as JSON, for every --arch")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device {device}, threads {torch.get_num_threads()}, {args.size}x{args.size}, batch {args.batch}")
    print(f"{'model':<22}{'tasks':<10}{'parameters':>14}{'train img/s':>14}")
    for arch in args.arch or available_architectures():
        parameters, rate = train_throughput(arch, args.size, args.batch, args.steps, device, args.options)
        tasks = "+".join(sorted(model_tasks(arch)))
        print(f"{arch:<22}{tasks:<10}{parameters:>14,}{rate:>14.1f}", flush=True)


if __name__ == "__main__":
    main()
