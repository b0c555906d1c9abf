"""The accelerator fast path: batched tensor augmentation, device-resident batches, no read-back from the
device inside the step loop, and the same training contract (determinism, checkpoints) as the reference path.

On a machine without CUDA the fast path is forced onto the CPU (``fast_path: true``); the CUDA-only checks
skip with the reason.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch._dynamo.exc import BackendCompilerFailed

from busflow.config import load_params
from busflow.models import build_model
from busflow.train.accelerate import REFERENCE, Acceleration, DeviceArrays, acceleration, compile_model
from busflow.train.augment import BatchAugmentation
from busflow.train.device import seed_everything
from busflow.train.loop import FitRun, _train_epoch, batch_source, fit, predict
from busflow.train.losses import TaskLoss
from busflow.train.outputs import load_weights, save_weights
from busflow.train.spec import AugmentSpec, TrainSpec

from conftest import TINY_PARAMS, run_tool

CPU = torch.device("cpu")
SMALL_CNN = {"channels": [8, 16]}
FORCED = acceleration({"fast_path": True}, CPU)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _square_batch(n: int = 64, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Off-centre bright squares whose masks equal the images, so any mismatch between the two shows."""
    images = torch.zeros(n, 1, size, size)
    images[:, :, 10:30, 12:36] = 1.0
    return images, images.clone()


# --- settings -------------------------------------------------------------------------------------------


def test_auto_takes_the_fast_path_on_cuda_only() -> None:
    cuda = torch.device("cuda")
    assert acceleration({"fast_path": "auto"}, CPU) == REFERENCE
    assert acceleration({}, CPU) == REFERENCE
    assert acceleration({"fast_path": "auto", "compile": True}, cuda) == Acceleration(True, True, True)
    assert acceleration({"fast_path": "auto"}, cuda).fused_optimizer
    assert acceleration({"fast_path": False}, cuda) == REFERENCE
    assert FORCED == Acceleration(fast_path=True, compile=False, channels_last=False) and FORCED.fused_optimizer
    assert not REFERENCE.fused_optimizer


def test_fast_path_settings_are_validated(tmp_path: Path) -> None:
    from busflow.errors import ParamsError

    params = TINY_PARAMS.read_text().replace("fast_path: auto", "fast_path: sometimes")
    (tmp_path / "params.yaml").write_text(params)
    with pytest.raises(ParamsError, match="accelerator.fast_path"):
        load_params(tmp_path / "params.yaml")


# --- batched augmentation ---------------------------------------------------------------------------------


def test_nothing_switched_on_means_no_batch_augmentation() -> None:
    assert BatchAugmentation.build(AugmentSpec(flip=False, rotate_deg=0, zoom=0, shift=0)) is None


def test_the_mask_follows_the_image_through_flips_and_the_affine() -> None:
    images, masks = _square_batch()
    augmentation = BatchAugmentation(AugmentSpec(flip=True, vertical_flip=True, rotate_deg=20, zoom=0.15, shift=0.1))
    out_images, out_masks = augmentation(images, masks, _generator())
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}  # nearest neighbour: still a binary mask
    assert out_images.min() >= 0 and out_images.max() <= 1
    moved = (out_masks != masks).flatten(1).any(1)
    assert moved.float().mean() > 0.5  # most samples were transformed
    # Bilinear image and nearest mask from one draw: the thresholded image is the mask up to the square's rim.
    agreement = ((out_images > 0.5) == (out_masks > 0.5)).float().mean(dim=(1, 2, 3))
    assert agreement.min() > 0.97


def test_horizontal_flips_keep_the_skin_line_on_top_vertical_flips_move_it() -> None:
    images = torch.zeros(32, 1, 16, 16)
    images[:, :, :4, :] = 1.0  # the skin line
    generator = _generator()
    flipped, _ = BatchAugmentation(AugmentSpec(flip=True, rotate_deg=0, zoom=0, shift=0))(images, images.clone(), generator)
    assert torch.equal(flipped, images)
    flipped, _ = BatchAugmentation(AugmentSpec(flip=False, vertical_flip=True, rotate_deg=0, zoom=0, shift=0))(images, images.clone(), generator)
    top_moved = flipped[:, 0, :4, :].mean(dim=(1, 2)) < 0.5
    assert 0 < top_moved.sum() < len(images)


def test_draw_probabilities_and_ranges_match_the_reference_augmentation() -> None:
    """Flips with probability 0.5, the affine with 0.8, shifts within ±shift of the side (MONAI's ranges)."""
    n, size, shift = 2000, 64, 0.1
    images = torch.zeros(n, 1, size, size)
    images[:, :, 30:34, 30:34] = 1.0  # a dot at the centre, symmetric under flips
    masks = images.clone()
    _, out_masks = BatchAugmentation(AugmentSpec(flip=False, rotate_deg=0, zoom=0, shift=shift))(images, masks, _generator(1))
    moved = (out_masks != masks).flatten(1).any(1).float().mean().item()
    assert 0.75 < moved < 0.85  # probability 0.8, less the rare draws that land within half a pixel
    rows = torch.arange(size).float()
    centre_y = (out_masks[:, 0].sum(2) * rows).sum(1) / out_masks[:, 0].sum((1, 2))
    assert (centre_y - 31.5).abs().max() <= shift * size + 1
    edge = torch.zeros(n, 1, 8, 8)
    edge[:, :, :, :4] = 1.0  # left half bright: a horizontal flip makes it the right half
    flipped, _ = BatchAugmentation(AugmentSpec(flip=True, rotate_deg=0, zoom=0, shift=0))(edge, edge.clone(), _generator(2))
    assert 0.45 < (flipped[:, 0, 0, 0] == 0).float().mean().item() < 0.55


def test_rotation_turns_the_image_about_its_centre() -> None:
    size = 65
    images = torch.zeros(400, 1, size, size)
    images[:, :, 31:34, 32:60] = 1.0  # a bar from the centre to the right
    augmentation = BatchAugmentation(AugmentSpec(flip=False, rotate_deg=45, zoom=0, shift=0))
    out, _ = augmentation(images, images.clone(), _generator(3))
    ys, xs = torch.meshgrid(torch.arange(size).float() - 32, torch.arange(size).float() - 32, indexing="ij")
    # Inside the inscribed disc a rotation samples the image itself; outside it, reflected borders repeat content.
    weight = (out[:, 0] * ((ys**2 + xs**2) <= 31**2)).flatten(1)
    angles = torch.atan2((weight * ys.flatten()).sum(1), (weight * xs.flatten()).sum(1))
    assert angles.abs().max() <= math.radians(45) + 0.05
    assert angles.abs().max() > math.radians(30)  # rotations of the full range occur
    torch.testing.assert_close(weight.sum(1), torch.full((len(images),), 84.0), rtol=0.05, atol=0)  # turned, not stretched


def test_a_seeded_generator_replays_the_same_batch() -> None:
    images, masks = _square_batch(16)
    augmentation = BatchAugmentation(AugmentSpec(flip=True, rotate_deg=15, zoom=0.1, shift=0.1))
    first = augmentation(images, masks, _generator(5))
    again = augmentation(images, masks, _generator(5))
    other = augmentation(images, masks, _generator(6))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


# --- device-resident batches -------------------------------------------------------------------------------


def test_device_batches_hold_the_same_values_as_host_batches(phantom_split) -> None:
    data, _, _ = phantom_split
    rows = np.array([3, 0, 7, 5])
    host = batch_source(data, CPU).batch(rows)
    device = batch_source(data, CPU, FORCED)
    assert isinstance(device.arrays, DeviceArrays)
    resident = device.batch(device.index(rows))
    for expected, actual in zip(host, resident):
        assert torch.equal(expected, actual)


def _spec(**changes: object) -> dict:
    return {**load_params(TINY_PARAMS)["models"]["mtl_resnet50"], "epochs": 3, "patience": 0,
            "lr_step": {"epochs": 2, "gamma": 0.5}, **changes}


def _model() -> torch.nn.Module:
    seed_everything(0)
    return build_model("mtl_resnet50", in_channels=1, n_classes=3, options=_spec()["options"])


def _fit(phantom_split, model: torch.nn.Module, setup: Acceleration, checkpoint: Path | None = None, **spec_changes: object):
    data, train_rows, val_rows = phantom_split
    return fit(model, TrainSpec.of(_spec(**spec_changes)), data, train_rows, val_rows, tasks=frozenset({"cls", "seg"}), n_classes=3,
        run=FitRun(device=CPU, seed=11, setup=setup, checkpoint=checkpoint, log=lambda line: None))


def test_fast_path_training_is_repeatable_and_learns(phantom_split, single_thread_torch: None) -> None:
    first, second = _model(), _model()
    columns = ["epoch", "train_loss", "val_loss", "val_score", "lr"]
    history = _fit(phantom_split, first, FORCED)[columns]
    assert _fit(phantom_split, second, FORCED)[columns].equals(history)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert np.isfinite(history["train_loss"]).all()
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    reference = _fit(phantom_split, _model(), REFERENCE)
    assert not reference["train_loss"].equals(history["train_loss"])  # its own augmentation draws


def test_fast_path_resumes_from_its_checkpoint_to_the_same_weights(phantom_split, tmp_path: Path, single_thread_torch: None) -> None:
    class Crash(Exception):
        pass

    def crash_at_epoch_3(row) -> None:
        if row["epoch"] == 3:
            raise Crash

    reference = _model()
    _fit(phantom_split, reference, FORCED)
    checkpoint = tmp_path / "checkpoint.pt"
    data, train_rows, val_rows = phantom_split
    with pytest.raises(Crash):
        fit(_model(), TrainSpec.of(_spec()), data, train_rows, val_rows, tasks=frozenset({"cls", "seg"}), n_classes=3,
            run=FitRun(device=CPU, seed=11, setup=FORCED, checkpoint=checkpoint, checkpoint_every=1, log=lambda line: None,
                       on_epoch=crash_at_epoch_3))
    resumed = _model()
    lines: list[str] = []
    fit(resumed, TrainSpec.of(_spec()), data, train_rows, val_rows, tasks=frozenset({"cls", "seg"}), n_classes=3,
        run=FitRun(device=CPU, seed=11, setup=FORCED, checkpoint=checkpoint, log=lines.append))
    assert lines[0].startswith("resuming after epoch 2")
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_a_reference_checkpoint_is_not_resumed_on_the_fast_path(phantom_split, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    _fit(phantom_split, _model(), REFERENCE, checkpoint, epochs=1)
    lines: list[str] = []
    data, train_rows, val_rows = phantom_split
    fit(_model(), TrainSpec.of(_spec(epochs=1)), data, train_rows, val_rows, tasks=frozenset({"cls", "seg"}), n_classes=3,
        run=FitRun(device=CPU, seed=11, setup=FORCED, checkpoint=checkpoint, log=lines.append))
    assert not any(line.startswith("resuming") for line in lines)


def _record_read_backs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every call that copies a computed tensor's values to the host (on a GPU each one waits for it).

    Integer tensors are left out: the only ones read back here are shape arithmetic that MONAI's Dice loss
    builds on the host (``torch.arange(2, ndim).tolist()``), which stays on the CPU when training on CUDA.
    """
    calls: list[str] = []
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        original = getattr(torch.Tensor, name)

        def recording(self, *args, _original=original, _name=name, **kwargs):
            if self.is_floating_point() or self.dtype == torch.bool:
                calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, recording)
    return calls


@pytest.mark.parametrize("arch,tasks", [("unet", {"seg"}), ("mtl_resnet50", {"cls", "seg"}), ("custom_cnn", {"cls"})])
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_the_step_loop_reads_nothing_back_from_the_device(phantom_split, monkeypatch: pytest.MonkeyPatch, arch: str, tasks: set,
                                                          optimizer: str) -> None:
    """An epoch of 2 batches and one of 6 read back the same: the losses, once, when the epoch ends."""
    from busflow.train.loop import _optimizer

    data, train_rows, _ = phantom_split
    spec = TrainSpec.of(dict(load_params(TINY_PARAMS)["models"]["mtl_resnet50"], batch_size=4, optimizer=optimizer))
    options = load_params(TINY_PARAMS)["models"].get(arch, {}).get("options", SMALL_CNN)
    model = build_model(arch, in_channels=1, n_classes=3, options=options)
    criterion = TaskLoss(frozenset(tasks), torch.ones(3), 1.0)
    optimizer = _optimizer(model, spec, fused=FORCED.fused_optimizer)
    source = batch_source(data, CPU, FORCED, augment=AugmentSpec(flip=True, vertical_flip=True, rotate_deg=10, zoom=0.1, shift=0.1))
    counts = []
    for n_rows in (8, 24):
        calls = _record_read_backs(monkeypatch)
        _train_epoch(model, criterion, optimizer, source, train_rows[:n_rows], spec, CPU, epoch=1)
        monkeypatch.undo()
        counts.append(list(calls))
    assert counts[0] == counts[1] == ["cpu", "tolist"], f"read-backs per epoch of 2 and of 6 batches: {counts}"


def test_predictions_from_device_batches_match_host_batches(phantom_split) -> None:
    data, _, val_rows = phantom_split
    model = _model().eval()
    host = predict(model, data, val_rows, CPU)
    resident = predict(model, batch_source(data, CPU, FORCED), val_rows, CPU)
    for key in host:
        np.testing.assert_allclose(resident[key], host[key], rtol=1e-5, atol=1e-6)


def _has_c_compiler() -> bool:
    return any(shutil.which(name) for name in ("cc", "gcc", "clang"))


@pytest.mark.skipif(not _has_c_compiler(), reason="torch.compile on the CPU needs a C compiler (none found)")
def test_a_compiled_network_trains_and_saves_plain_weights(phantom_split, tmp_path: Path) -> None:
    data, train_rows, val_rows = phantom_split
    model = build_model("custom_cnn", in_channels=1, n_classes=3, options=SMALL_CNN)
    names = list(model.state_dict())
    spec = dict(load_params(TINY_PARAMS)["models"]["resnet50"], epochs=1, patience=0)
    lines: list[str] = []
    setup = compile_model(model, CPU, acceleration({"fast_path": True, "compile": True}, CPU), 32, log=lines.append)
    assert setup.compile and lines == ["torch.compile on: graphs compile at their first use; one that fails to compile runs eagerly"]
    assert torch._dynamo.config.suppress_errors  # the graphs the probe did not cover fall back one by one
    history = fit(model, TrainSpec.of(spec), data, train_rows, val_rows, tasks=frozenset({"cls"}), n_classes=3,
        run=FitRun(device=CPU, seed=3, setup=setup, log=lambda line: None))
    assert np.isfinite(history["train_loss"]).all()
    assert list(model.state_dict()) == names  # compiled in place: parameter names unchanged
    save_weights(tmp_path / "weights.pt", model)
    plain = build_model("custom_cnn", in_channels=1, n_classes=3, options=SMALL_CNN).eval()
    load_weights(tmp_path / "weights.pt", plain)
    images = torch.from_numpy(data.images[val_rows[:4]]).float().unsqueeze(1) / 255
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(images)["logits"], model(images)["logits"], rtol=1e-4, atol=1e-5)


def _compiler_raising(error: Exception):
    def compile_that_fails_when_run(function, *args, **kwargs):
        def compiled(*call_args, **call_kwargs):
            raise BackendCompilerFailed("inductor", error, None)
        return compiled
    return compile_that_fails_when_run


@pytest.mark.skipif(not _has_c_compiler(), reason="torch.compile on the CPU needs a C compiler (none found)")
def test_a_network_that_does_not_compile_trains_uncompiled_with_a_message(phantom_split, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", _compiler_raising(RuntimeError("unsupported operator")))  # as a compiler bug surfaces
    lines: list[str] = []
    model = build_model("unet", in_channels=1, n_classes=3, options=load_params(TINY_PARAMS)["models"]["unet"]["options"])
    setup = compile_model(model, CPU, acceleration({"fast_path": True, "compile": True}, CPU), 32, log=lines.append)
    assert setup == FORCED  # compile dropped, the rest of the fast path kept
    assert lines == ["torch.compile failed for this network (BackendCompilerFailed: RuntimeError: unsupported operator); "
                     "training runs uncompiled"]
    data, train_rows, val_rows = phantom_split
    spec = {**load_params(TINY_PARAMS)["models"]["unet"], "epochs": 1, "patience": 0}
    history = fit(model, TrainSpec.of(spec), data, train_rows, val_rows, tasks=frozenset({"seg"}), n_classes=3,
        run=FitRun(device=CPU, seed=3, setup=setup, log=lambda line: None))  # the model itself was never compiled
    assert np.isfinite(history["train_loss"]).all()


def test_running_out_of_memory_while_compiling_is_not_called_a_compiler_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", _compiler_raising(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")))
    model = build_model("custom_cnn", in_channels=1, n_classes=3, options=SMALL_CNN)
    with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate"):
        compile_model(model, CPU, acceleration({"fast_path": True, "compile": True}, CPU), 32, log=pytest.fail)


def test_a_network_without_parameters_is_not_compiled_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", _compiler_raising(RuntimeError("must not be reached")))
    lines: list[str] = []
    model = build_model("classical_threshold", in_channels=1, n_classes=3)
    setup = compile_model(model, CPU, acceleration({"fast_path": True, "compile": True}, CPU), 32, log=lines.append)
    assert setup == FORCED
    assert lines == ["torch.compile skipped: the network has no trainable parameters, so there is no training step to speed up"]


# --- CUDA ------------------------------------------------------------------------------------------------------


@needs_cuda
def test_on_cuda_the_step_loop_never_synchronises(phantom_split) -> None:
    cuda = torch.device("cuda")
    data, train_rows, _ = phantom_split
    setup = acceleration({"fast_path": "auto"}, cuda)
    model = build_model("unet", in_channels=1, n_classes=3, options=load_params(TINY_PARAMS)["models"]["unet"]["options"])
    from busflow.train.accelerate import prepare_model

    prepare_model(model, cuda, setup)
    criterion = TaskLoss(frozenset({"seg"}), None, 1.0).to(cuda)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    source = batch_source(data, cuda, setup, augment=AugmentSpec(flip=True, rotate_deg=10, zoom=0.1, shift=0.1))
    spec = TrainSpec.of(dict(load_params(TINY_PARAMS)["models"]["unet"], batch_size=4))
    rows = source.index(train_rows)

    def step(chunk: torch.Tensor) -> torch.Tensor:
        inputs, masks, labels = source.batch(chunk, augment=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = criterion(model(inputs), labels, masks)
        loss.backward()
        optimizer.step()
        return loss.detach()

    step(rows[:4])  # warm-up: cuDNN autotuning and first allocations may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call in the steady-state step raises
    try:
        losses = [step(rows[4:8]), step(rows[8:12])]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(math.isfinite(float(loss)) for loss in losses)
    assert math.isfinite(_train_epoch(model, criterion, optimizer, source, train_rows, spec, cuda, epoch=1))


# --- the pipeline ----------------------------------------------------------------------------------------


def _scheduled_rules(project: Path) -> set[str]:
    text = run_tool(["snakemake", "--dry-run", "--cores", "1"], project).stdout
    return set(re.findall(r"^(?:local)?rule (\w+):", text, re.MULTILINE))


def test_fast_path_settings_rerun_training_and_gpu_sharing_reruns_nothing(tiny_project_copy: Path) -> None:
    params_file = tiny_project_copy / "params.yaml"
    original = params_file.read_text()
    assert _scheduled_rules(tiny_project_copy) == set()
    params_file.write_text(original.replace("jobs_per_gpu: 1", "jobs_per_gpu: 4"))
    assert _scheduled_rules(tiny_project_copy) == set()
    params_file.write_text(original.replace("fast_path: auto", "fast_path: true"))
    assert {"train", "train_leaky", "cascade"} <= _scheduled_rules(tiny_project_copy)


def test_the_train_stage_on_the_fast_path_records_it(tiny_project: Path, tmp_path: Path) -> None:
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["accelerator"]["fast_path"] = True
    params["models"]["unet"]["epochs"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    data = tiny_project / "results" / params["run"]
    run_tool(["busflow", "train", "--params", str(tmp_path / "params.yaml"), "--model", "unet", "--fold", "0",
              "--arrays", str(data / "data" / "arrays.npz"), "--folds", str(data / "split" / "folds.csv"),
              "--init", str(data / "models" / "unet" / "init"), "--out", str(tmp_path / "unet"), "--log", str(tmp_path / "train.log")],
             tiny_project)
    trained_on = json.loads((tmp_path / "unet" / "model.json").read_text())["trained_on"]
    assert trained_on["fast_path"] is True and trained_on["compiled"] is False and trained_on["device"] == "cpu"
    predictions = pd.read_csv(tmp_path / "unet" / "predictions.csv")
    reference = pd.read_csv(data / "models" / "unet" / "fold0" / "predictions.csv")
    assert predictions["image_id"].tolist() == reference["image_id"].tolist()
    assert not (tmp_path / "unet" / "checkpoints").exists()
