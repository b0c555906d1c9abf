"""The GPU device check (benchmarks/device_check.*): its driver in the CPU smoke mode, the parsing of what the GPU
prints, and the size limit of what travels to the GPU machine (benchmarks/device_size.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import device_check
import device_size

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One smoke run through the shell entry point: its JSON and its output folder."""
    out = tmp_path_factory.mktemp("device-check")
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh"), "--smoke"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return json.loads((out / device_check.JSON_NAME).read_text()), out


def test_every_section_runs_and_the_run_is_recorded(smoke: tuple[dict[str, Any], Path]) -> None:
    report, out = smoke
    assert set(report) == {"meta"} | {section.name for section in device_check.SECTIONS}
    assert set(device_check.RUN_ORDER) == {section.name for section in device_check.SECTIONS}
    statuses = {name: entry["status"] for name, entry in report.items() if name != "meta"}
    assert statuses == {**dict.fromkeys(statuses, "ok"), "compiled_steps": "skipped"}
    assert report["meta"]["smoke"] is True and report["meta"]["total_s"] > 0
    assert all(report[name]["seconds"] <= report[name]["budget_s"] for name in statuses)
    log = (out / device_check.LOG_NAME).read_text()
    assert all(f"{name}: started" in log for name in statuses if name != "compiled_steps")


def test_environment_names_versions_and_the_peak_it_assumes(smoke: tuple[dict[str, Any], Path]) -> None:
    environment = smoke[0]["environment"]
    assert environment["torch"] and environment["device"] == "cpu"
    assert environment["packages"]["monai"] and environment["packages"]["dvclive"]
    assert environment["dvclive_logger"] == "ok"
    assert environment["bf16_peak_tflops"] is None and environment["bf16_peak_source"] == "no CUDA device"


def test_cuda_tests_are_counted_and_skip_on_the_cpu(smoke: tuple[dict[str, Any], Path]) -> None:
    tests = smoke[0]["cuda_tests"]
    assert "tests/test_accelerate.py" in tests["files"]
    assert tests["passed"] >= 1 and tests["failed"] == 0 and tests["errors"] == 0
    assert tests["cuda_only"] and set(tests["cuda_only"].values()) == {"skipped"}


def test_architecture_steps_time_every_chosen_network(smoke: tuple[dict[str, Any], Path]) -> None:
    steps = smoke[0]["architecture_steps"]
    assert set(steps["architectures"]) == set(device_check.SMOKE.architectures) and steps["failed"] == []
    for result in steps["architectures"].values():
        assert result["step_s"] > 0 and result["first_step_s"] > 0 and math.isfinite(result["loss"])
        assert result["peak_memory_gib"] is None and result["compiled"] is False
    assert "torch.compile" in smoke[0]["compiled_steps"]["skip_reason"]


def test_throughput_records_each_model_of_the_script(smoke: tuple[dict[str, Any], Path]) -> None:
    models = smoke[0]["throughput"]["models"]
    assert set(models) == {"unet", "resnet50", "mtl_resnet50"}
    for figures in models.values():
        assert figures["fast_path_images_per_s"] > 0 and figures["baseline_images_per_s"] > 0
        assert figures["fast_path_tflops"] is None  # counted on CUDA only


def test_p003_training_reports_time_and_metrics(smoke: tuple[dict[str, Any], Path]) -> None:
    training = smoke[0]["p003_training"]
    assert training["model"] == "mtl_resnet50" and training["epochs"] == training["epochs_run"] == 1 and training["train_wall_s"] > 0
    assert training["roles"]["train"] > training["roles"]["test"] > 0
    assert 0.0 <= training["dice"] <= 1.0
    assert training["roc_auc_macro"] is None or 0.0 <= training["roc_auc_macro"] <= 1.0
    assert training["metrics"]["segmentation"] and training["trained_on"]["device"] == "cpu"


def test_a_gpu_result_line_of_train_throughput_is_parsed() -> None:
    name, figures = device_check.throughput_row("  mtl_resnet50      210.4     1650.0     95.2    17.33×    301.7 (31 % of 989)")
    assert name == "mtl_resnet50"
    assert figures["fast_path_images_per_s"] == 1650.0 and figures["speedup_default_over_baseline"] == 17.33
    assert figures["fast_path_tflops"] == 301.7 and figures["percent_of_bf16_peak"] == 31 and figures["bf16_peak_tflops"] == 989
    assert device_check.throughput_row("         model  reference  fast path  baseline  speed-up  (images/s)") is None


def test_the_size_check_refuses_a_tree_over_the_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "code.py").write_text("print('hello')\n")
    carried = tmp_path / ".device"
    carried.mkdir()
    with open(carried / "arrays.npz", "wb") as big:
        big.truncate(3 * MIB)  # sparse: its full length travels
    assert device_size.main(["--repo", str(tmp_path), "--limit-mib", "2", ".device", ".whl"]) == 1
    report = capsys.readouterr().out
    assert "OVER the limit of 2 MiB" in report and "largest part is .device (3.00 MiB)" in report and ".whl: 0.00 MiB (absent)" in report
    assert device_size.main(["--repo", str(tmp_path), "--limit-mib", "4", ".device"]) == 0
    assert "fits the limit of 4 MiB" in capsys.readouterr().out


def test_a_carried_path_is_counted_once_outside_a_git_tree(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"x" * 1000)
    parts = device_size.travel_sizes(tmp_path, ["a.txt"])  # not a git work tree: every file is tree, none counted twice
    assert sum(parts.values()) == 1000


def test_a_rerun_of_chosen_sections_runs_only_those_and_merges_into_the_first(
        smoke: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    out = tmp_path / "rerun"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)  # a fresh interpreter: the smoke run forks its sections
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh"), "--smoke", "--sections", "architecture_steps",
                             "--architectures", "custom_cnn", "--budget", "architecture_steps=50"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    rerun = json.loads((out / device_check.JSON_NAME).read_text())
    assert {name: rerun[name]["status"] for name in device_check.RUN_ORDER} == {
        **dict.fromkeys(device_check.RUN_ORDER, device_check.NOT_SELECTED), "data": "ok", "environment": "ok",
        "architecture_steps": "ok"}
    assert rerun["architecture_steps"]["budget_s"] == 50 and set(rerun["architecture_steps"]["architectures"]) == {"custom_cnn"}

    first = smoke[0]
    merged = device_check.merge_reports([first, rerun])
    steps = merged["architecture_steps"]
    assert set(steps["architectures"]) == set(first["architecture_steps"]["architectures"]) | {"custom_cnn"}
    assert steps["architectures"]["custom_cnn"] == rerun["architecture_steps"]["architectures"]["custom_cnn"]  # the later wins
    assert steps["statuses_per_run"] == ["ok", "ok"]
    assert merged["p003_training"] == first["p003_training"]  # not rerun: the first run's
    assert [run["statuses"]["p003_training"] for run in merged["meta"]["merged_runs"]] == ["ok", device_check.NOT_SELECTED]


def test_a_budget_names_a_section_and_seconds() -> None:
    assert device_check.parse_budgets(["throughput=40", "cuda_tests=12.5"]) == {"throughput": 40.0, "cuda_tests": 12.5}
    with pytest.raises(SystemExit, match="SECTION=SECONDS"):
        device_check.parse_budgets(["throughputs=40"])
