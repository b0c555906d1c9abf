"""The GPU device check: what busflow's training does on an accelerator, measured in one run (docs/gpu.md).

    python benchmarks/device_check.py run --out DIR [--data .device] [--smoke] [--deadline S] [--epochs N]
    python benchmarks/device_check.py prepare --out .device --busi PATH [--size 256]
    python benchmarks/device_check.py prepare --out DIR --phantoms [--size 32]

``run`` writes ``DIR/device_check.json`` (rewritten after every section, and every few seconds while one runs)
and ``DIR/device_check.log``. Its sections, each with its own time limit:

* data — the prepared folder checked (the smoke run makes its phantom version first);
* environment — GPU, torch/CUDA/cuDNN versions, the dense bf16 peak assumed for TFLOP/s ratios, a measured bf16
  matrix product, and the versions of the packages training imports (monai, jsonschema, dvclive);
* cuda_tests — the test files that skip without CUDA (``pytest -m "not slow"``), with their outcome counts;
* architecture_steps — one fast-path training step (bf16 autocast, channels_last, fused Adam) of every registered
  architecture: seconds (first step with cuDNN autotuning, then steady) and peak device memory;
* compiled_steps — the same with ``torch.compile`` for U-Net, ResNet-50 and the multi-task ResNet-50;
* throughput — ``benchmarks/train_throughput.py``: busflow's loop against the plain loop, images/s and TFLOP/s;
* p003_training — P003's multi-task ResNet-50 on BUSI fold 0 for the preset's epochs through ``busflow train``
  and ``busflow evaluate`` on the prepared arrays: wall time, Dice, ROC AUC.

Each section runs in a child process of its own process group — a fresh interpreter on the GPU, a fork of this
process (already warm) in the smoke run — so an error, a crash or a hang ends that section only (its results so far
are kept) and the next one starts. ``--smoke`` runs the same sections on the CPU with tiny sizes and phantom data,
to test this driver without a GPU. ``prepare`` makes the data the last section
trains on, with busflow's own stage commands and a params file derived from config/presets/p003.yaml.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
PRESET = REPO / "config" / "presets" / "p003.yaml"
MODEL, FOLD = "mtl_resnet50", 0  # P003's ResNet-50 multi-task network, test fold 0
DATA_FILES = ("params.yaml", "arrays.npz", "folds.csv", f"init/{MODEL}/init.json")
JSON_NAME, LOG_NAME = "device_check.json", "device_check.log"
GIB = 2**30


# --- settings ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Sizes and time limits of one run: the GPU check, or its CPU smoke version."""

    smoke: bool
    size: int  # model input side of the architecture steps
    batch: int
    architectures: tuple[str, ...] | None  # None: every registered architecture
    compiled: tuple[str, ...]
    timed_steps: int
    throughput_args: tuple[str, ...]
    throughput_models: Mapping[str, tuple[str, Mapping[str, Any]]] | None  # None: the script's own (paper-sized)
    test_args: tuple[str, ...]  # extra pytest arguments
    budgets: Mapping[str, float]  # seconds per section
    deadline: float  # seconds for the whole run
    start: str  # how a section's child starts: "spawn" (fresh interpreter) or "fork" (quick, CPU only)
    epochs: int | None = None  # None: the preset's
    throughput_only: tuple[str, ...] = ()  # a subset of the throughput networks (empty: all)
    sections: tuple[str, ...] | None = None  # None: every section; else these (data and environment always run)


SMOKE_NETWORK = {"widen_factor": 0.125, "decoder_channels": [32, 16, 8, 8, 8]}  # a narrow multi-task ResNet-50 for the CPU
GPU_CHECK = Settings(
    smoke=False, size=256, batch=8, architectures=None, compiled=("unet", "resnet50", "mtl_resnet50"), timed_steps=3,
    throughput_args=("--size", "256"), throughput_models=None, test_args=(),
    # Limits from the H200 runs in docs/gpu.md: CUDA tests 100 s, all architecture steps 160 s (cuDNN autotuning of
    # each first step up to 25 s), P003 79 s, throughput about 40 s per network; compilation gets what is left.
    budgets={"data": 10, "environment": 30, "cuda_tests": 120, "architecture_steps": 180, "p003_training": 110,
             "throughput": 130, "compiled_steps": 120},
    deadline=560, start="spawn")
SMOKE = Settings(
    smoke=True, size=32, batch=2, architectures=("unet", "custom_cnn"), compiled=(), timed_steps=1,
    throughput_args=("--size", "32", "--images", "6", "--steps", "1", "--batch-size", "2"), test_args=("-k", "cuda"),
    throughput_models={"unet": ("unet", {"features": [8, 8, 16, 32, 64, 8]}), "resnet50": ("resnet50", {"widen_factor": 0.125}),
                       "mtl_resnet50": ("mtl_resnet50", SMOKE_NETWORK)},
    budgets={"data": 60, "environment": 30, "cuda_tests": 60, "architecture_steps": 60, "p003_training": 90,
             "throughput": 90, "compiled_steps": 10},
    deadline=300, start="fork", epochs=1)


@dataclass
class Context:
    """What every section reads: the settings, the prepared data, a scratch folder and the log."""

    settings: Settings
    data: Path
    work: Path
    log: Path


# --- results -------------------------------------------------------------------------------------------


def clean(value: Any) -> Any:
    """``value`` as strict JSON: numpy scalars as numbers, non-finite floats as null, paths as strings."""
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def write_json(path: Path, value: Any) -> None:
    """Atomically: a reader (or a run cut short) sees the previous or the new content, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(clean(value), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


class Recorder:
    """A section's results, written to its own file after every change (the parent merges them)."""

    def __init__(self, path: Path) -> None:
        self.path, self.values = path, {}

    def put(self, **values: Any) -> None:
        self.values.update(values)
        write_json(self.path, self.values)

    def add(self, key: str, name: str, value: Any) -> None:
        self.values.setdefault(key, {})[name] = value
        write_json(self.path, self.values)


def error_text(error: BaseException) -> str:
    """``Type: message`` (first 500 characters): the JSON names the problem, the log holds the traceback."""
    return f"{type(error).__name__}: {str(error).strip()[:500]}"


def say(ctx: Context, line: str) -> None:
    """A progress line on the console and in the log."""
    stamped = f"[device-check {time.strftime('%H:%M:%S')}] {line}"
    print(stamped, flush=True)
    with open(ctx.log, "a", encoding="utf-8") as log:
        log.write(stamped + "\n")


# --- the sections ----------------------------------------------------------------------------------------


def torch_device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def section_data(ctx: Context, record: Recorder) -> None:
    """The prepared inputs of the training section: phantoms made now (smoke), or the prepared folder checked."""
    if ctx.settings.smoke:
        prepare(ctx.data, size=ctx.settings.size, busi=None)
    missing = [name for name in DATA_FILES if not (ctx.data / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{ctx.data}: missing {', '.join(missing)}; run `bash benchmarks/device_prepare.sh` where the "
                                "dataset is and bring the .device folder along")
    record.put(folder=str(ctx.data), source="phantoms (smoke)" if ctx.settings.smoke else "prepared folder",
               files={name: (ctx.data / name).stat().st_size for name in DATA_FILES})


def bf16_peak(device_name: str) -> tuple[float | None, str]:
    """The dense bf16 peak that train_throughput.py divides by, and where the figure comes from."""
    sys.path.insert(0, str(BENCHMARKS))
    from train_throughput import BF16_PEAK_TFLOPS

    for key, peak in BF16_PEAK_TFLOPS.items():
        if key in device_name:
            return peak, f"vendor data sheet, dense bf16 without sparsity, for '{key}' (train_throughput.BF16_PEAK_TFLOPS)"
    return None, f"no figure for '{device_name}' in train_throughput.BF16_PEAK_TFLOPS"


def matmul_tflops(device: Any, n: int = 8192, repeats: int = 10) -> float:
    """Achieved bf16 TFLOP/s of an n×n×n matrix product on random data (mean of ``repeats`` after 3 warm-ups)."""
    import torch

    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e12


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    import importlib.metadata

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def gpu_facts(device: Any) -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(device)
    facts = {"gpu": props.name, "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
             "memory_gib": round(props.total_memory / GIB, 1), "device_count": torch.cuda.device_count()}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        facts["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                         capture_output=True, text=True, timeout=20, check=False).stdout.strip() or None
    return facts


def dvclive_opens(folder: Path) -> str:
    """Open and close the per-epoch logger training uses (dvclive imports much of dvc: carried wheels)."""
    from busflow.train.outputs import epoch_logger

    with epoch_logger(folder) as log_epoch:
        log_epoch({"train_loss": 1.0, "val_loss": 1.0, "val_score": 0.5, "lr": 1e-4})
    return "ok"


def section_environment(ctx: Context, record: Recorder) -> None:
    import torch

    device = torch_device()
    record.put(python=platform.python_version(), torch=torch.__version__, cuda_runtime=torch.version.cuda,
               cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None, device=str(device),
               torch_threads=torch.get_num_threads(), cpus=os.cpu_count(),
               packages=package_versions(["monai", "jsonschema", "dvclive", "dvc", "numpy", "pandas", "scikit-learn",
                                          "torchvision", "timm", "pytest"]))
    record.put(dvclive_logger=dvclive_opens(ctx.work / "dvclive-probe"))
    if device.type != "cuda":
        record.put(bf16_peak_tflops=None, bf16_peak_source="no CUDA device", matmul_bf16_tflops=None)
        return
    facts = gpu_facts(device)
    peak, source = bf16_peak(facts["gpu"])
    record.put(**facts, bf16_peak_tflops=peak, bf16_peak_source=source)
    achieved = matmul_tflops(device)
    record.put(matmul_bf16_tflops=round(achieved, 1), matmul_shape="8192x8192x8192, random data, mean of 10",
               matmul_fraction_of_peak=round(achieved / peak, 3) if peak else None)


class OutcomeCounter:
    """A pytest plugin: outcome per test, which tests only run with CUDA, and the deselection of tests that need
    the workflow tools (the ``tiny_project`` fixtures run Snakemake) where they are not installed."""

    WORKFLOW_FIXTURES = frozenset({"tiny_project", "tiny_project_copy", "tiny_workflow"})

    def __init__(self, deselect_workflow: bool) -> None:
        self.deselect_workflow = deselect_workflow
        self.outcomes: dict[str, str] = {}
        self.cuda_only: list[str] = []
        self.deselected: list[str] = []

    def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
        self.cuda_only = [item.nodeid for item in items if any(
            "CUDA" in str(mark.kwargs.get("reason", "")) for mark in item.iter_markers("skipif"))]
        if not self.deselect_workflow:
            return
        dropped = [item for item in items if self.WORKFLOW_FIXTURES & set(getattr(item, "fixturenames", ()))]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if item not in dropped]
            self.deselected = [item.nodeid for item in dropped]

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed:
            self.outcomes[report.nodeid] = "failed" if report.when == "call" else "error"
        elif report.skipped:
            self.outcomes[report.nodeid] = "skipped"
        elif report.when == "call":
            self.outcomes[report.nodeid] = "passed"

    def summary(self) -> dict[str, Any]:
        counts = {f"{kind}s" if kind == "error" else kind: sum(1 for v in self.outcomes.values() if v == kind)
                  for kind in ("passed", "failed", "error", "skipped")}
        return {**counts, "deselected": len(self.deselected), "deselected_tests": self.deselected,
                "not_passed": sorted(k for k, v in self.outcomes.items() if v in ("failed", "error"))[:30],
                "cuda_only": {nodeid: self.outcomes.get(nodeid, "not run") for nodeid in self.cuda_only}}


def cuda_test_files() -> list[str]:
    """Test files that hold tests skipped without CUDA."""
    return sorted(str(path.relative_to(REPO)) for path in (REPO / "tests").glob("test_*.py")
                  if "cuda.is_available" in path.read_text(encoding="utf-8"))


def section_cuda_tests(ctx: Context, record: Recorder) -> None:
    import importlib.util

    import pytest

    files = cuda_test_files()
    args = ["-q", "-m", "not slow", "-p", "no:cacheprovider", "-p", "no:randomly", *ctx.settings.test_args, *files]
    if importlib.util.find_spec("pytest_timeout"):
        args += ["--timeout", "120"]
    plugin = OutcomeCounter(deselect_workflow=shutil.which("snakemake") is None)
    record.put(files=files, args=args)
    os.chdir(REPO)
    exit_code = pytest.main(list(args), plugins=[plugin])  # pytest prepends the ini's addopts to the list it gets
    summary = plugin.summary()
    record.put(exit_code=int(exit_code), **summary,
               deselected_reason="they run Snakemake (tiny_project fixtures), which is not installed here"
               if plugin.deselected else None)
    if exit_code != 0:
        raise RuntimeError(f"pytest exited with {int(exit_code)}: {summary['failed']} failed, {summary['errors']} errors "
                           f"(the log has the report)")


def training_step(arch: str, size: int, batch: int, compiled: bool, timed_steps: int) -> dict[str, Any]:
    """One fast-path training step of ``arch`` as busflow's loop takes it (fresh network, random batch): build,
    first step (cuDNN autotuning and compilation included), then the mean of ``timed_steps`` steady steps."""
    import torch

    from busflow.models import build_model, model_options, model_tasks
    from busflow.train.accelerate import acceleration, compile_model, prepare_model
    from busflow.train.losses import TaskLoss

    device = torch_device()
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    options = {"img_size": size} if "img_size" in model_options(arch) else {}  # a ViT is built for one input size
    model = build_model(arch, in_channels=1, n_classes=3, options=options)
    setup = acceleration({"fast_path": True, "compile": compiled}, device)
    prepare_model(model, device, setup)
    messages: list[str] = []
    setup = compile_model(model, device, setup, size, log=messages.append)
    build_s = time.perf_counter() - started
    step = _step_function(model, TaskLoss(frozenset(model_tasks(arch)), None, 1.0).to(device), size, batch, device, setup)
    first_s, loss = _timed(step, device)
    steady = [_timed(step, device)[0] for _ in range(timed_steps)]
    step_s = sum(steady) / len(steady)
    return {"tasks": sorted(model_tasks(arch)), "options": options, "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "trainable": any(p.requires_grad for p in model.parameters()), "channels_last": setup.channels_last,
            "compiled": setup.compile, "build_s": round(build_s, 3), "first_step_s": round(first_s, 3),
            "step_s": round(step_s, 4), "images_per_s": round(batch / step_s, 1), "loss": float(loss),
            "peak_memory_gib": peak_memory_gib(),
            "messages": messages}


def _step_function(model: Any, criterion: Any, size: int, batch: int, device: Any, setup: Any) -> Callable[[], Any]:
    """A training step on a fixed random batch: bf16 autocast on CUDA (as ``busflow.train.device.autocast``), fused
    Adam; a network without parameters (the classical segmenter) only runs forward."""
    import torch

    memory_format = torch.channels_last if setup.channels_last else torch.contiguous_format
    images = torch.rand(batch, 1, size, size, device=device).contiguous(memory_format=memory_format)
    masks = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    labels = torch.randint(0, 3, (batch,), device=device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-4, fused=setup.fused_optimizer and device.type == "cuda") if trainable else None
    model.train()

    def step() -> Any:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if optimizer is None:
                with torch.no_grad():
                    return criterion(model(images), labels, masks).detach()
            loss = criterion(model(images), labels, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def _timed(step: Callable[[], Any], device: Any) -> tuple[float, Any]:
    synchronize(device)
    started = time.perf_counter()
    loss = step()
    synchronize(device)
    return time.perf_counter() - started, loss


def _release_device_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def steps_of(ctx: Context, record: Recorder, architectures: Iterable[str], compiled: bool) -> None:
    settings = ctx.settings
    record.put(size=settings.size, batch=settings.batch, precision="bf16 autocast" if torch_device().type == "cuda" else "fp32",
               timed_steps=settings.timed_steps, compiled=compiled)
    failed = []
    for arch in architectures:
        try:
            record.add("architectures", arch, training_step(arch, settings.size, settings.batch, compiled, settings.timed_steps))
        except Exception as error:  # noqa: BLE001 - one architecture's failure is a result, the others still run
            traceback.print_exc()
            failed.append(arch)
            record.add("architectures", arch, {"error": error_text(error)})
        _release_device_memory()
    record.put(failed=failed)


def section_architecture_steps(ctx: Context, record: Recorder) -> None:
    from busflow.models import available_architectures

    registered = available_architectures()
    chosen = list(ctx.settings.architectures or registered)
    unknown = sorted(set(chosen) - set(registered))
    if unknown:
        raise ValueError(f"not registered in busflow.models: {', '.join(unknown)}")
    record.put(registered=len(registered))
    steps_of(ctx, record, chosen, compiled=False)


def section_compiled_steps(ctx: Context, record: Recorder) -> None:
    if not ctx.settings.compiled:
        record.put(skip_reason="torch.compile is left out of the smoke run (minutes of C++ compilation on a CPU)")
        return
    steps_of(ctx, record, ctx.settings.compiled, compiled=True)


THROUGHPUT_ROW = re.compile(r"^\s*(?P<model>\w+)\s+(?P<reference>[\d.]+)\s+(?P<fast>[\d.]+)\s+(?P<baseline>[\d.]+)\s+"
                            r"(?P<speedup>[\d.]+)×(?:\s+(?P<tflops>[\d.]+)(?: \((?P<percent>\d+) % of (?P<peak>[\d.]+)\))?)?\s*$")


def throughput_row(line: str) -> tuple[str, dict[str, float | None]] | None:
    """One model's figures from a result line of train_throughput.py (images/s, speed-up, TFLOP/s)."""
    match = THROUGHPUT_ROW.match(line)
    if not match:
        return None
    values = {key: float(v) if v is not None else None for key, v in match.groupdict().items() if key != "model"}
    return match["model"], {"reference_images_per_s": values["reference"], "fast_path_images_per_s": values["fast"],
                            "baseline_images_per_s": values["baseline"], "speedup_default_over_baseline": values["speedup"],
                            "fast_path_tflops": values["tflops"], "percent_of_bf16_peak": values["percent"],
                            "bf16_peak_tflops": values["peak"]}


class LineTee(io.TextIOBase):
    """Passes text on to ``stream`` and hands every complete line to ``on_line``."""

    def __init__(self, stream: Any, on_line: Callable[[str], None]) -> None:
        self.stream, self.on_line, self.pending = stream, on_line, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.on_line(line)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def section_throughput(ctx: Context, record: Recorder) -> None:
    """train_throughput.py's main() in this process, its result lines recorded as they are printed; the smoke run
    swaps its paper-sized networks for narrow ones."""
    sys.path.insert(0, str(BENCHMARKS))
    import train_throughput

    args = list(ctx.settings.throughput_args)
    if ctx.settings.throughput_models is not None:
        train_throughput.MODELS = {name: (arch, dict(options)) for name, (arch, options) in ctx.settings.throughput_models.items()}
    if ctx.settings.throughput_only:
        train_throughput.MODELS = {name: train_throughput.MODELS[name] for name in ctx.settings.throughput_only}
    record.put(command=f"python benchmarks/train_throughput.py {' '.join(args)}",
               networks={name: {"arch": arch, "options": options} for name, (arch, options) in train_throughput.MODELS.items()})
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        row = throughput_row(line)
        if row:
            record.add("models", *row)
        elif len(lines) == 1:
            record.put(setup=line.strip())

    saved_argv, sys.argv = sys.argv, ["train_throughput.py", *args]
    try:
        with contextlib.redirect_stdout(LineTee(sys.stdout, on_line)):
            train_throughput.main()
    finally:
        sys.argv = saved_argv
    if not record.values.get("models"):
        raise RuntimeError("train_throughput.py printed no result line (its output is in the log)")


def training_params(ctx: Context) -> Path:
    """The prepared params file, or a copy with the model's epochs overridden (``--epochs``, the smoke run)."""
    import yaml

    source = ctx.data / "params.yaml"
    epochs = ctx.settings.epochs
    if epochs is None:
        return source
    params = yaml.safe_load(source.read_text(encoding="utf-8"))
    params["models"][MODEL]["epochs"] = epochs
    target = ctx.work / "params.yaml"
    target.write_text(yaml.dump(params, Dumper=_plain_dumper(), sort_keys=False), encoding="utf-8")
    return target


def busflow_command(argv: list[str]) -> float:
    """Run one ``busflow`` command in this process; its wall seconds, or an error naming the command."""
    from busflow import cli

    started = time.perf_counter()
    code = cli.main(argv)
    if code != 0:
        raise RuntimeError(f"busflow {argv[0]} exited with {code} (its message is in the log)")
    return time.perf_counter() - started


def watch_epochs(folder: Path, record: Recorder, stop: threading.Event) -> None:
    """Count finished epochs from the per-epoch curve dvclive appends to, so a run cut short still says how far it got."""
    from busflow.layout import TRAIN_PLOTS

    curve = folder / TRAIN_PLOTS / "train_loss.tsv"
    started = time.monotonic()
    while not stop.wait(5.0):
        with contextlib.suppress(OSError):
            done = max(0, len(curve.read_text().splitlines()) - 1)
            record.put(epochs_done=done, elapsed_s=round(time.monotonic() - started, 1))


def headline_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Dice and ROC AUC (macro, and of the malignant class) with a few neighbours, from busflow's metrics.json."""
    classification = metrics.get("classification") or {}
    segmentation = metrics.get("segmentation") or {}
    malignant = (classification.get("per_class") or {}).get("malignant") or {}
    return {"dice": segmentation.get("dice"), "iou_tumour": segmentation.get("iou_tumour"),
            "roc_auc_macro": classification.get("roc_auc_macro"), "roc_auc_malignant": malignant.get("roc_auc"),
            "accuracy": classification.get("accuracy"), "balanced_accuracy": classification.get("balanced_accuracy"),
            "n_test_images": metrics.get("n_test_images")}


def history_summary(history_csv: Path, train_images: int) -> dict[str, Any]:
    """Epoch times (the first one holds cuDNN autotuning) and training images per second from history.csv."""
    import pandas as pd

    history = pd.read_csv(history_csv)
    seconds = history["seconds"].astype(float)
    later = seconds.iloc[1:]
    return {"epochs_run": len(history), "epoch_seconds_total": round(seconds.sum(), 1), "first_epoch_s": round(seconds.iloc[0], 2),
            "later_epoch_s_mean": round(later.mean(), 3) if len(later) else None,
            "train_images_per_s": round(train_images * len(history) / seconds.sum(), 1),
            "best_val_score": float(history["val_score"].max()), "final_val_score": float(history["val_score"].iloc[-1])}


def peak_memory_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / GIB, 2) if torch.cuda.is_available() else None


def section_p003_training(ctx: Context, record: Recorder) -> None:
    import pandas as pd

    from busflow.config import load_params

    params = training_params(ctx)
    epochs = load_params(params)["models"][MODEL]["epochs"]
    out = ctx.work / "p003" / MODEL / f"fold{FOLD}"
    folds = pd.read_csv(ctx.data / "folds.csv", dtype=str)
    roles = folds[f"fold{FOLD}"].value_counts().to_dict()
    record.put(model=MODEL, fold=FOLD, epochs=epochs, roles=roles, params=str(params))
    stop = threading.Event()
    watcher = threading.Thread(target=watch_epochs, args=(out, record, stop), daemon=True)
    watcher.start()
    try:
        train_s = busflow_command(["train", "--params", str(params), "--model", MODEL, "--fold", str(FOLD),
                                   "--arrays", str(ctx.data / "arrays.npz"), "--folds", str(ctx.data / "folds.csv"),
                                   "--init", str(ctx.data / "init" / MODEL), "--out", str(out)])
    finally:
        stop.set()
        watcher.join()
    record.put(train_wall_s=round(train_s, 1), **history_summary(out / "history.csv", int(roles.get("train", 0))),
               peak_memory_gib=peak_memory_gib(), trained_on=read_json(out / "model.json").get("trained_on"))
    evaluate_s = busflow_command(["evaluate", "--params", str(params), "--model", MODEL, "--fold", str(FOLD),
                                  "--arrays", str(ctx.data / "arrays.npz"), "--predictions", str(out / "predictions.npz"),
                                  "--out", str(out)])
    metrics = read_json(out / "metrics.json")
    record.put(evaluate_wall_s=round(evaluate_s, 1), **headline_metrics(metrics), metrics=metrics)


@dataclass(frozen=True)
class Section:
    name: str
    run: Callable[[Context, Recorder], None]
    title: str


SECTIONS = (
    Section("data", section_data, "the prepared inputs of the training section"),
    Section("environment", section_environment, "GPU, versions, bf16 peak assumed and a measured bf16 matrix product"),
    Section("cuda_tests", section_cuda_tests, "pytest -m 'not slow' on the test files that skip without CUDA"),
    Section("architecture_steps", section_architecture_steps, "one fast-path training step of every registered architecture"),
    Section("compiled_steps", section_compiled_steps, "the same step with torch.compile for unet, resnet50, mtl_resnet50"),
    Section("throughput", section_throughput, "benchmarks/train_throughput.py: busflow's loop against the plain loop"),
    Section("p003_training", section_p003_training, "P003 multi-task ResNet-50, BUSI fold 0, the preset's epochs"),
)
# The order they run in: the costly compilation last, so that a slow compiler cannot squeeze the training run.
RUN_ORDER = ("data", "environment", "cuda_tests", "architecture_steps", "p003_training", "throughput", "compiled_steps")
ALWAYS_RUN = ("data", "environment")  # what every other section's skip decision reads


# --- running sections in children ------------------------------------------------------------------------


def section_body(section: Section, ctx: Context, partial: Path) -> int:
    """Run ``section`` recording into ``partial``: exit code 0, or 1 with the error recorded and its traceback logged."""
    os.chdir(ctx.work)  # outside the repository: dvclive opens the DVC project it finds above the working folder
    record = Recorder(partial)
    code = 0
    try:
        section.run(ctx, record)
    except BaseException as error:  # noqa: BLE001 - whatever ends the section is its result
        traceback.print_exc()
        record.put(error=error_text(error))
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


class Forked:
    """A section in a forked child of this process (modules already imported: quick to start). Only for the CPU:
    a CUDA driver initialised before a fork is unusable in the child."""

    def __init__(self, section: Section, ctx: Context, partial: Path) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            os.setsid()  # its own process group, so that a timeout ends its subprocesses too
            log = os.open(ctx.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(log)
            os._exit(section_body(section, ctx, partial))  # no atexit handlers or buffers inherited from the parent
        self.exit_code: int | None = None

    def poll(self) -> int | None:
        if self.exit_code is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.exit_code = os.waitstatus_to_exitcode(status)
        return self.exit_code


class Spawned:
    """A section in a fresh interpreter (``device_check.py section NAME``) in its own session: nothing of this
    process's state, a CUDA driver included, reaches it."""

    def __init__(self, section: Section, ctx: Context, partial: Path) -> None:
        with open(ctx.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "section", section.name, "--context", str(ctx.work / CONTEXT_FILE)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ctx.work)
        self.pid = self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()


STARTS: dict[str, type[Forked | Spawned]] = {"fork": Forked, "spawn": Spawned}
CONTEXT_FILE = "context.json"


def _stop_group(child: Forked | Spawned) -> None:
    """SIGTERM, then SIGKILL after 5 s, to the child's whole process group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)
        waited = time.monotonic()
        while time.monotonic() - waited < 5.0:
            if child.poll() is not None:
                return
            time.sleep(0.1)


def _status(exit_code: int | None, values: Mapping[str, Any]) -> str:
    if exit_code is None:
        return "timeout"
    if exit_code == 0:
        return "skipped" if "skip_reason" in values else "ok"
    return "failed" if "error" in values else f"crashed (exit code {exit_code})"


class Report:
    """device_check.json: meta, then one entry per section with its status, seconds, limit and results."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.path = out / JSON_NAME
        self.data: dict[str, Any] = {"meta": meta, **{s.name: {"status": "pending", "title": s.title} for s in SECTIONS}}
        self.flush()

    def set(self, name: str, entry: dict[str, Any]) -> None:
        self.data[name] = {"title": self.data[name]["title"], **entry}
        self.flush()

    def flush(self) -> None:
        write_json(self.path, self.data)


def run_section(section: Section, ctx: Context, report: Report, budget: float) -> str:
    """Run ``section`` in a child for at most ``budget`` seconds; merge its results into the report as they come."""
    partial = ctx.work / f"{section.name}.json"
    started = last_flush = time.monotonic()
    child = STARTS[ctx.settings.start](section, ctx, partial)
    while child.poll() is None and time.monotonic() - started < budget:
        if time.monotonic() - last_flush > 5.0:
            report.set(section.name, {"status": "running", "seconds": round(time.monotonic() - started, 1), **read_json(partial)})
            last_flush = time.monotonic()
        time.sleep(0.1)
    exit_code = child.poll()
    if exit_code is None:
        _stop_group(child)
    values = read_json(partial)
    status = _status(exit_code, values)
    report.set(section.name, {"status": status, "seconds": round(time.monotonic() - started, 1), "budget_s": round(budget, 1),
                              **values})
    return status


def save_context(ctx: Context) -> None:
    """What a spawned section needs to rebuild the run's context (``device_check.py section``)."""
    write_json(ctx.work / CONTEXT_FILE, {"settings": asdict(ctx.settings), "data": ctx.data, "work": ctx.work, "log": ctx.log})


def load_context(path: Path) -> Context:
    saved = read_json(path)
    if not saved:
        raise FileNotFoundError(f"{path}: no saved context of a device check run")
    return Context(settings=Settings(**saved["settings"]), data=Path(saved["data"]), work=Path(saved["work"]), log=Path(saved["log"]))


def preload() -> None:
    """Import what the sections use once, before forking, so each child starts warm."""
    import torch  # noqa: F401

    import busflow.cli
    import busflow.models
    import busflow.train.loop  # noqa: F401


def run(out: Path, data: Path, settings: Settings) -> int:
    """Every section in RUN_ORDER within the run's deadline; 0 when each one ended ok (or was skipped by design) on
    the device the mode needs."""
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    work = Path(tempfile.mkdtemp(prefix="busflow-device-check-"))
    ctx = Context(settings=settings, data=work / "data" if settings.smoke else data.resolve(), work=work, log=out / LOG_NAME)
    ctx.log.write_text("", encoding="utf-8")
    meta = {"smoke": settings.smoke, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "deadline_s": settings.deadline, "budgets_s": dict(settings.budgets),
            "run_order": list(RUN_ORDER), "start": settings.start, "data": str(ctx.data)}
    report = Report(out, meta)
    say(ctx, f"{'smoke run on the CPU' if settings.smoke else 'GPU check'}: results in {report.path}, log in {ctx.log}")
    save_context(ctx)
    if settings.start == "fork":
        preload()
    started = time.monotonic()
    statuses = run_sections(ctx, report, deadline=started + settings.deadline)
    meta.update(finished=datetime.now(timezone.utc).isoformat(timespec="seconds"), total_s=round(time.monotonic() - started, 1))
    report.flush()
    shutil.rmtree(work, ignore_errors=True)
    without_gpu = not settings.smoke and report.data["environment"].get("device") == "cpu"
    return 0 if all(status in ("ok", "skipped") for status in statuses.values()) and not without_gpu else 1


def run_sections(ctx: Context, report: Report, deadline: float) -> dict[str, str]:
    """Each section with its budget cut to what is left before ``deadline`` (a monotonic time); the GPU check
    stops after the environment section on a machine without CUDA rather than train for hours on its CPU."""
    sections = {section.name: section for section in SECTIONS}
    statuses: dict[str, str] = {}
    for name in RUN_ORDER:
        if ctx.settings.sections is not None and name not in ctx.settings.sections:
            report.set(name, {"status": NOT_SELECTED})
            continue
        budget = min(ctx.settings.budgets[name], deadline - time.monotonic())
        reason = skip_reason(ctx, report, budget)
        if reason:
            statuses[name] = "skipped"
            report.set(name, {"status": "skipped", "skip_reason": reason})
            say(ctx, f"{name}: skipped ({reason})")
            continue
        say(ctx, f"{name}: started (limit {budget:.0f} s)")
        statuses[name] = run_section(sections[name], ctx, report, budget)
        say(ctx, f"{name}: {statuses[name]} in {report.data[name]['seconds']} s{summary_of(name, report.data[name])}")
    return statuses


def skip_reason(ctx: Context, report: Report, budget: float) -> str | None:
    if budget < 5:
        return "the run's deadline was reached"
    if not ctx.settings.smoke and report.data["environment"].get("device") == "cpu":
        return "no CUDA device, which the GPU check needs; on a CPU use --smoke"
    return None


def summary_of(name: str, entry: Mapping[str, Any]) -> str:
    """A few key figures of a finished section for the console (the JSON holds all of them)."""
    if "error" in entry:
        return f": {entry['error']}"
    picks = {"environment": ("gpu", "torch", "matmul_bf16_tflops", "bf16_peak_tflops"),
             "cuda_tests": ("passed", "failed", "errors", "skipped"),
             "architecture_steps": ("failed",), "compiled_steps": ("failed", "skip_reason"),
             "p003_training": ("epochs_run", "train_wall_s", "dice", "roc_auc_macro")}.get(name, ())
    shown = ", ".join(f"{key} {entry[key]}" for key in picks if key in entry)
    if name == "throughput":
        shown = ", ".join(f"{m} {v.get('fast_path_images_per_s')} img/s" for m, v in (entry.get("models") or {}).items())
    return f" ({shown})" if shown else ""


# --- preparing the data ----------------------------------------------------------------------------------


PHANTOMS = {"n_patients": 40, "image_height": 64, "image_width": 80, "class_mix": {"normal": 0.2, "benign": 0.5, "malignant": 0.3},
            "views_per_patient": [1, 1]}


def _plain_dumper() -> type:
    import yaml

    class Plain(yaml.SafeDumper):
        """No anchors or aliases: the preset's merged model entries share nested values once loaded."""

        def ignore_aliases(self, data: Any) -> bool:
            return True

    return Plain


def derived_params(size: int, busi: Path | None) -> dict[str, Any]:
    """config/presets/p003.yaml at ``size`` px on the local BUSI copy, or (``busi`` None) on phantoms with a
    narrow network and a batch of 4."""
    import yaml

    params = yaml.safe_load(PRESET.read_text(encoding="utf-8"))
    params["preprocess"]["size"] = size
    if busi is not None:
        params["data"]["busi"]["path"] = str(busi.resolve())
        return params
    params.update(run="p003-phantoms", dataset="synthetic", device="cpu")
    params["data"]["synthetic"] = dict(PHANTOMS)
    params["models"][MODEL].update(options=dict(SMOKE_NETWORK), batch_size=4)
    return params


def prepare(out: Path, *, size: int, busi: Path | None) -> None:
    """Make ``out``: params.yaml, arrays.npz, folds.csv and init/<model>/ from busflow's own stage commands
    (download, preprocess, group, split, audit, init-weights); nothing else is kept. Skipped when ``out``
    already holds them for the same params."""
    import yaml

    text = yaml.dump(derived_params(size, busi), Dumper=_plain_dumper(), sort_keys=False)
    if all((out / name).is_file() for name in DATA_FILES) and (out / "params.yaml").read_text(encoding="utf-8") == text:
        print(f"{out}: prepared already ({', '.join(DATA_FILES)})")
        return
    with tempfile.TemporaryDirectory(prefix="busflow-device-data-") as scratch:
        stage, final = Path(scratch) / "stages", Path(scratch) / "final"
        (final / "init").mkdir(parents=True)
        (final / "params.yaml").write_text(text, encoding="utf-8")
        for argv in stage_commands(final, stage):
            busflow_command(argv)
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(final), str(out))
    print(f"{out}: prepared ({', '.join(f'{n} {(out / n).stat().st_size / 2**20:.1f} MiB' for n in DATA_FILES)})")


def stage_commands(final: Path, stage: Path) -> Iterator[list[str]]:
    """The busflow commands from the dataset to the training inputs: the kept outputs go to ``final``."""
    params = ["--params", str(final / "params.yaml")]
    arrays, folds, index = str(final / "arrays.npz"), str(final / "folds.csv"), str(stage / "index.csv")
    yield ["download", *params, "--out", str(stage / "raw")]
    yield ["preprocess", *params, "--raw", str(stage / "raw"), "--index", index, "--arrays", arrays,
           "--skipped", str(stage / "skipped.csv")]
    yield ["group", *params, "--index", index, "--groups", str(stage / "groups.csv"), "--links", str(stage / "links.csv")]
    yield ["split", *params, "--index", index, "--groups", str(stage / "groups.csv"), "--folds", folds,
           "--conflicts", str(stage / "conflicts.csv")]
    yield ["audit", *params, "--index", index, "--arrays", arrays, "--folds", folds,
           "--out", str(stage / "audit.json"), "--counts", str(stage / "counts.csv")]
    yield ["init-weights", *params, "--model", MODEL, "--pretrained", str(stage / "pretrain"), "--out", str(final / "init" / MODEL)]


# --- merging runs ---------------------------------------------------------------------------------------

NOT_SELECTED = "not selected"
RESULT_TABLES = ("architectures", "models")  # per-item results: a later run adds to an earlier run's items


def merge_reports(reports: list[Mapping[str, Any]]) -> dict[str, Any]:
    """One report from several runs on the same machine kind, e.g. a run cut short and the runs that finished its
    sections: per section the latest run that ran it, its per-architecture (per-network) results added to the
    earlier runs' (the latest measurement of an item wins); ``meta.merged_runs`` lists each run's start and statuses."""
    merged: dict[str, Any] = {"meta": {"merged_runs": [
        {"started": r["meta"].get("started"), "statuses": {n: r[n]["status"] for n in RUN_ORDER if n in r}} for r in reports]}}
    for name in RUN_ORDER:
        ran = [r[name] for r in reports if r.get(name, {}).get("status") not in (None, NOT_SELECTED, "pending")]
        if not ran:
            continue
        entry = dict(ran[-1])
        for table in RESULT_TABLES:
            items = {item: row for r in ran for item, row in (r.get(table) or {}).items()}
            if items:
                entry[table] = items
        if len(ran) > 1:
            entry["statuses_per_run"] = [r["status"] for r in ran]
        merged[name] = entry
    return merged


# --- command line ----------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("run", help="run the check, writing device_check.json and device_check.log into --out")
    check.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                       required=not os.environ.get("OUT"), help="results folder (default: $OUT)")
    check.add_argument("--data", type=Path, default=REPO / ".device", help="the prepared folder (device_prepare.sh)")
    check.add_argument("--smoke", action="store_true", help="on the CPU: tiny sizes, phantom data made on the fly")
    check.add_argument("--deadline", type=float, help="seconds for the whole run (default: 560, smoke 300)")
    check.add_argument("--epochs", type=int, help="train the P003 network this many epochs instead of the preset's")
    check.add_argument("--sections", nargs="+", choices=[n for n in RUN_ORDER if n not in ALWAYS_RUN],
                       help="run only these sections (data and environment always run), e.g. to finish a run cut short")
    check.add_argument("--architectures", nargs="+", help="the architecture steps of these architectures only")
    check.add_argument("--throughput-models", nargs="+", help="the throughput of these networks only (unet, resnet50, ...)")
    check.add_argument("--budget", nargs="+", default=[], metavar="SECTION=SECONDS", help="a section's own time limit")
    check.add_argument("--start", choices=sorted(STARTS), help="how sections start (default: spawn, smoke fork; fork is "
                                                                "for the CPU only: CUDA does not survive a fork)")
    data = commands.add_parser("prepare", help="make the prepared folder the training section reads")
    data.add_argument("--out", type=Path, required=True)
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--busi", type=Path, help="the extracted BUSI folder (read in place)")
    source.add_argument("--phantoms", action="store_true", help="generated phantoms instead (a tiny CPU-sized set)")
    data.add_argument("--size", type=int, default=256)
    merge = commands.add_parser("merge", help="one device_check.json from several runs (later runs win)")
    merge.add_argument("reports", type=Path, nargs="+", help="device_check.json files, oldest first")
    merge.add_argument("--out", type=Path, required=True, help="the merged device_check.json")
    section = commands.add_parser("section", help="run one section of a started run (the run spawns these itself)")
    section.add_argument("name", choices=[s.name for s in SECTIONS])
    section.add_argument("--context", type=Path, required=True, help="the run's saved context")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "prepare":
        prepare(args.out, size=args.size, busi=args.busi)
        return 0
    if args.command == "merge":
        write_json(args.out, merge_reports([read_json(path) for path in args.reports]))
        return 0
    if args.command == "section":
        ctx = load_context(args.context)
        return section_body(next(s for s in SECTIONS if s.name == args.name), ctx, ctx.work / f"{args.name}.json")
    settings = SMOKE if args.smoke else GPU_CHECK
    overrides = {k: v for k, v in (("deadline", args.deadline), ("epochs", args.epochs), ("start", args.start)) if v is not None}
    if args.sections:
        overrides["sections"] = tuple(n for n in RUN_ORDER if n in ALWAYS_RUN or n in args.sections)
    if args.architectures:
        overrides["architectures"] = tuple(args.architectures)
    if args.throughput_models:
        overrides["throughput_only"] = tuple(args.throughput_models)
    if args.budget:
        overrides["budgets"] = {**settings.budgets, **parse_budgets(args.budget)}
    return run(args.out, args.data, replace(settings, **overrides))


def parse_budgets(items: list[str]) -> dict[str, float]:
    budgets = {}
    for item in items:
        name, _, seconds = item.partition("=")
        if name not in RUN_ORDER or not seconds.replace(".", "", 1).isdigit():
            raise SystemExit(f"device_check: error: --budget {item!r}: expected SECTION=SECONDS with SECTION one of "
                             f"{', '.join(RUN_ORDER)}")
        budgets[name] = float(seconds)
    return budgets


if __name__ == "__main__":
    sys.exit(main())
