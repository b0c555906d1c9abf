"""Crash safety of training: per-epoch checkpoints, exact resumption, and clear stops on NaN loss or OOM."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from busflow.config import load_params
from busflow.models import build_model
from busflow.train.checkpoint import checkpoint_path, discard_checkpoint, make_checkpoint_folder
from busflow.train.device import seed_everything
from busflow.train.loop import BatchMemoryError, CheckpointCadence, FitRun, NonFiniteLossError, fit
from busflow.train.spec import TrainSpec

from conftest import TINY_PARAMS

EPOCHS = 5


def _spec(**changes: object) -> dict:
    # The tiny U-Net with augmentation and a learning-rate schedule: every random and stateful part is in play.
    return dict(load_params(TINY_PARAMS)["models"]["unet"], epochs=EPOCHS, patience=0, lr_step={"epochs": 2, "gamma": 0.5}, **changes)


def _model() -> nn.Module:
    seed_everything(0)
    return build_model("unet", in_channels=1, n_classes=3, options=_spec()["options"])


def _train(phantom_split, model: nn.Module, spec: dict, checkpoint: Path | None, on_epoch=lambda row: None, log=lambda line: None,
           every: int | None = 1):
    arrays, train_rows, val_rows = phantom_split
    return fit(model, TrainSpec.of(spec), arrays, train_rows, val_rows, tasks=frozenset({"seg"}), n_classes=3,
        run=FitRun(device=torch.device("cpu"), seed=7, checkpoint=checkpoint, checkpoint_every=every, log=log, on_epoch=on_epoch))


class _Crash(Exception):
    pass


def _crash_at(epoch: int):
    def on_epoch(row) -> None:
        if row["epoch"] == epoch:
            raise _Crash  # the job dies after epoch `epoch` ran, before its checkpoint was written
    return on_epoch


def test_resumed_training_ends_with_the_uninterrupted_weights(phantom_split, tmp_path: Path, single_thread_torch: None) -> None:
    reference = _model()
    expected = _train(phantom_split, reference, _spec(), tmp_path / "reference" / "checkpoint.pt")
    checkpoint = tmp_path / "resumed" / "checkpoint.pt"
    with pytest.raises(_Crash):
        _train(phantom_split, _model(), _spec(), checkpoint, on_epoch=_crash_at(3))
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2
    lines: list[str] = []
    replayed: list[int] = []
    resumed = _model()
    history = _train(phantom_split, resumed, _spec(), checkpoint, on_epoch=lambda row: replayed.append(row["epoch"]), log=lines.append)
    assert lines[0] == f"resuming after epoch 2 from {checkpoint}"
    assert replayed == list(range(1, EPOCHS + 1))  # dvclive sees every epoch once
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    columns = ["epoch", "train_loss", "val_loss", "val_score", "lr"]
    assert history[columns].equals(expected[columns])


def test_a_run_killed_between_checkpoints_resumes_from_the_last_one_to_the_same_weights(
        phantom_split, tmp_path: Path, single_thread_torch: None) -> None:
    """Checkpoints every 2 epochs: killed after epoch 3 ran, the job resumes after epoch 2 and repeats epoch 3."""
    reference = _model()
    _train(phantom_split, reference, _spec(), None)
    checkpoint = tmp_path / "checkpoint.pt"
    saved: list[str] = []
    with pytest.raises(_Crash):
        _train(phantom_split, _model(), _spec(), checkpoint, on_epoch=_crash_at(3), log=saved.append, every=2)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2
    assert [line.split("/")[0].split()[-1] for line in saved if line.endswith("(checkpoint)")] == ["2"]
    lines: list[str] = []
    resumed = _model()
    _train(phantom_split, resumed, _spec(), checkpoint, log=lines.append, every=2)
    assert lines[0] == f"resuming after epoch 2 from {checkpoint}"
    assert lines[-1].endswith("(checkpoint)") and f"{EPOCHS}/{EPOCHS}" in lines[-1]  # the last epoch is kept too
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


@pytest.mark.parametrize("restore_best", [True, False])
def test_a_run_ends_with_the_best_or_the_last_epochs_weights_as_asked(phantom_split, tmp_path: Path, restore_best: bool) -> None:
    """The checkpoint after the last epoch holds both: the last epoch's weights and the best ones so far."""
    checkpoint = tmp_path / "checkpoint.pt"
    model = _model()
    history = _train(phantom_split, model, _spec(restore_best=restore_best), checkpoint)
    saved = torch.load(checkpoint, weights_only=True)
    best_epoch = int(history["val_loss"].idxmin()) + 1
    expected = saved["best_state"] if restore_best else saved["model"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    if best_epoch != EPOCHS:  # the two differ: the other state must not be what the model ended with
        other = saved["model"] if restore_best else saved["best_state"]
        assert any(not torch.equal(tensor, other[name]) for name, tensor in model.state_dict().items())


def test_the_automatic_cadence_keeps_checkpoints_under_five_percent_of_the_training_time() -> None:
    cadence = CheckpointCadence(None)
    assert cadence.due(1)
    cadence.saved(1, epoch_seconds=4.0, save_seconds=1.0)  # a save costs a quarter epoch: every 5th epoch
    assert [epoch for epoch in range(2, 12) if cadence.due(epoch)] == [6, 7, 8, 9, 10, 11]
    cadence.saved(6, epoch_seconds=4.0, save_seconds=0.01)  # never more often than measured first
    assert not cadence.due(10) and cadence.due(11)
    slow_epochs = CheckpointCadence(None)
    slow_epochs.saved(1, epoch_seconds=60.0, save_seconds=0.5)  # a CPU epoch: every epoch
    assert slow_epochs.due(2)
    fixed = CheckpointCadence(3)
    fixed.saved(3, epoch_seconds=0.1, save_seconds=10.0)
    assert not fixed.due(5) and fixed.due(6)


def test_a_checkpoint_of_other_settings_is_not_resumed(phantom_split, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(_Crash):
        _train(phantom_split, _model(), _spec(), checkpoint, on_epoch=_crash_at(2))
    lines: list[str] = []
    _train(phantom_split, _model(), _spec(lr=5e-4), checkpoint, log=lines.append)
    assert not any(line.startswith("resuming") for line in lines)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == EPOCHS


class _Failing(nn.Module):
    """The network, until its ``fail_at``-th training forward pass: then NaN outputs or an OOM error."""

    def __init__(self, inner: nn.Module, fail_at: int, failure: str) -> None:
        super().__init__()
        self.inner, self.fail_at, self.failure, self.calls = inner, fail_at, failure, 0

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.inner(inputs)
        if self.training:
            self.calls += 1
            if self.calls == self.fail_at and self.failure == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            if self.calls >= self.fail_at:
                return {key: value * float("nan") for key, value in outputs.items()}
        return outputs


def test_nan_loss_stops_naming_epoch_and_batch_and_keeps_the_checkpoint(phantom_split, tmp_path: Path) -> None:
    arrays, train_rows, _ = phantom_split
    count, size = len(train_rows), _spec()["batch_size"]
    batches_per_epoch = -(-count // size) - (count % size == 1)  # a last batch of one image is dropped
    checkpoint = tmp_path / "checkpoint.pt"
    failing = _Failing(_model(), fail_at=batches_per_epoch + 2, failure="nan")
    with pytest.raises(NonFiniteLossError, match=rf"loss is nan at epoch 2, batch 2: training stopped .*"
                                                  rf"the checkpoint after epoch 1 is kept at {checkpoint}"):
        _train(phantom_split, failing, _spec(), checkpoint)
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["epoch"] == 1 and all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())


def test_out_of_memory_gives_a_hint(phantom_split, tmp_path: Path) -> None:
    with pytest.raises(BatchMemoryError, match=r"out of memory on cpu at epoch 1, batch 1 \(8 images of 32×32 px\): "
                                               r"lower this model's batch_size \(now 8\) or preprocess.size"):
        _train(phantom_split, _Failing(_model(), fail_at=1, failure="oom"), _spec(), tmp_path / "checkpoint.pt")


def test_checkpoints_live_outside_the_declared_outputs(tmp_path: Path) -> None:
    fold = Path("results/busi/models/unet/fold3")
    assert checkpoint_path(fold) == Path("results/busi/checkpoints/unet/fold3/checkpoint.pt")
    cell = Path("results/busi/models/unet_p002/ablation/lr0.0001_f16_64/fold0")
    assert checkpoint_path(cell) == Path("results/busi/checkpoints/unet_p002/ablation/lr0.0001_f16_64/fold0/checkpoint.pt")
    path = checkpoint_path(tmp_path / "results/run/models/unet/fold0")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"state")
    discard_checkpoint(path)
    assert not (tmp_path / "results/run/checkpoints").exists() and (tmp_path / "results/run").is_dir()


def test_jobs_side_by_side_write_and_discard_checkpoints_in_shared_folders(tmp_path: Path) -> None:
    """Jobs of one run write and discard checkpoints under the same checkpoints/ folder at the same time: one
    job's pruning of the empty folders never fails because another job created or removed one meanwhile, and
    never takes a folder that holds another job's checkpoint."""
    models = tmp_path / "results/run/models"
    failures: list[BaseException] = []

    def job(model: str) -> None:
        try:
            for fold in range(150):
                path = checkpoint_path(models / model / f"fold{fold % 3}")
                make_checkpoint_folder(path)
                path.write_bytes(b"state")
                assert path.read_bytes() == b"state"
                discard_checkpoint(path)
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            failures.append(error)

    threads = [threading.Thread(target=job, args=(model,)) for model in ("unet", "cascade", "cascade_exp1", "resnet50")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert not (tmp_path / "results/run/checkpoints").exists() and (tmp_path / "results/run").is_dir()


# --- kill -9 in the middle of a pipeline run, under Snakemake and under DVC --------------------------------------

TARGET = "results/synthetic/models/unet/fold0/metrics.json"
CHECKPOINT = "results/synthetic/checkpoints/unet/fold0/checkpoint.pt"
LONG_EPOCHS = 16  # long enough to be killed mid-way (after epoch 3; a 32 px epoch takes a fraction of a second)


def _project(root: Path) -> Path:
    import yaml

    from conftest import workflow_copy

    project = workflow_copy(root, TINY_PARAMS)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["models"]["unet"].update(epochs=LONG_EPOCHS, patience=0)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def _single_thread_env() -> dict[str, str]:
    from conftest import tool_env

    return dict(tool_env(), OMP_NUM_THREADS="1")


def _kill_mid_training(command: list[str], project: Path) -> int:
    """Start ``command``; kill -9 its whole process group once a checkpoint after epoch >= 3 exists."""
    import os
    import signal
    import subprocess
    import time

    process = subprocess.Popen(command, cwd=project, env=_single_thread_env(), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint, deadline = project / CHECKPOINT, time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.exists():
            try:
                epoch = torch.load(checkpoint, weights_only=True)["epoch"]
            except (OSError, RuntimeError, EOFError):
                epoch = 0  # replaced while being read: look again
            if epoch >= 3:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return epoch
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"`{' '.join(command)}` ended (rc {process.returncode}) before a checkpoint of epoch 3 was written")


@contextlib.contextmanager
def _in_background(command: list[str], project: Path) -> Iterator[Callable[[], None]]:
    """Start ``command`` (one torch thread, like the runs it is compared with); yield a function that waits for
    it and checks it succeeded. A run still going when the block ends is killed."""
    import os
    import signal
    import subprocess

    log = project.parent / f"{project.name}.log"
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=project, env=_single_thread_env(), start_new_session=True, stdout=output,
                                   stderr=subprocess.STDOUT)

    def finished() -> None:
        assert process.wait(timeout=900) == 0, f"{command} failed:\n{log.read_text()[-3000:]}"

    try:
        yield finished
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _run(command: list[str], project: Path) -> str:
    import subprocess

    result = subprocess.run(command, cwd=project, env=_single_thread_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def _assert_same_model(project: Path, reference: Path) -> None:
    import hashlib

    fold = "results/synthetic/models/unet/fold0"
    digests = [hashlib.sha256((p / fold / "metrics.json").read_bytes()).hexdigest() for p in (reference, project)]
    print(f"metrics.json sha256 — uninterrupted: {digests[0]}  resumed ({project.name}): {digests[1]}")
    for name in ("metrics.json", "per_image.csv", "predictions.csv", "predictions.npz"):
        assert (project / fold / name).read_bytes() == (reference / fold / name).read_bytes(), name
    resumed = torch.load(project / fold / "weights.pt", weights_only=True)
    for key, tensor in torch.load(reference / fold / "weights.pt", weights_only=True).items():
        assert torch.equal(tensor, resumed[key]), key
    assert not (project / "results/synthetic/checkpoints").exists(), "a finished job leaves no checkpoint"


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_to_identical_outputs_under_snakemake_and_dvc(tmp_path: Path) -> None:
    reference = _project(tmp_path / "reference")
    # The uninterrupted run goes on alongside the Snakemake crash and rerun (every job has one torch thread).
    with _in_background(["snakemake", "--cores", "1", TARGET], reference) as reference_finished:
        # Snakemake: the killed job's outputs are incomplete; the rerun (rerun-incomplete in the default profile)
        # deletes them and the training job resumes from the checkpoint that survived outside them.
        crashed = _project(tmp_path / "snakemake")
        killed_after = _kill_mid_training(["snakemake", "--cores", "1", TARGET], crashed)
        assert not (crashed / "results/synthetic/models/unet/fold0/metrics.json").exists()
        _run(["snakemake", "--unlock"], crashed)  # a killed Snakemake leaves its lock: the documented recovery
        _run(["snakemake", "--cores", "1", TARGET], crashed)
        log = (crashed / "results/synthetic/logs/train/unet_fold0.log").read_text()
        assert "resuming after epoch" in log and f"epoch {LONG_EPOCHS:>3}/{LONG_EPOCHS}" in log
        assert int(log.split("resuming after epoch ")[1].split()[0]) >= killed_after
        reference_finished()
    _assert_same_model(crashed, reference)
    assert "Nothing to be done" in _run(["snakemake", "--cores", "1", "--dry-run", TARGET], crashed)

    # DVC: the killed stage left no lock entry; `dvc repro` reruns it, resuming, and then reports it up to date.
    crashed = _project(tmp_path / "dvc")
    _run(["git", "init", "--quiet"], crashed)
    _run(["dvc", "init", "--quiet"], crashed)
    _run(["git", "add", "-A"], crashed)  # a checkout of the project has commits (dvclive needs one)
    _run(["git", "-c", "user.name=busflow", "-c", "user.email=busflow@localhost", "commit", "--quiet", "-m", "project"], crashed)
    _kill_mid_training(["dvc", "repro", "evaluate@unet-0"], crashed)
    assert "up to date" not in _run(["dvc", "status", "evaluate@unet-0"], crashed)  # DVC knows it is stale
    reproduced = _run(["dvc", "repro", "evaluate@unet-0"], crashed)
    assert "resuming after epoch" in reproduced
    _assert_same_model(crashed, reference)
    assert "up to date" in _run(["dvc", "status", "evaluate@unet-0"], crashed)
