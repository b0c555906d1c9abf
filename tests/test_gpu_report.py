"""docs/gpu.md's measured section is what benchmarks/gpu_report.py generates from the committed device check."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_report
from readme_results import with_table


def committed_check() -> dict:
    return json.loads(gpu_report.CHECK.read_text(encoding="utf-8"))


def test_the_gpu_doc_is_what_the_committed_check_gives() -> None:
    current = gpu_report.GPU_DOC.read_text(encoding="utf-8")
    assert current == with_table(current, gpu_report.measured_section(committed_check()), gpu_report.START, gpu_report.END)


def test_every_measured_architecture_has_a_row_and_a_missing_network_is_named() -> None:
    check = committed_check()
    section = gpu_report.measured_section(check)
    for arch, row in check["architecture_steps"]["architectures"].items():
        assert f"| {arch} | {row['parameters_m']:.2f} |" in section
    throughput = copy.deepcopy(check["throughput"])
    throughput["networks"]["densenet121"] = {"arch": "densenet121", "options": {}}
    assert "Not measured (the section's time limit ended first): densenet121" in "\n".join(gpu_report.throughput_text(throughput))


def test_a_failed_training_section_gives_no_estimate_comparison() -> None:
    check = committed_check()
    table = gpu_report.zoo_table(check)
    assert gpu_report.estimate_against_training(table, check["p003_training"])
    assert gpu_report.estimate_against_training(table, {**check["p003_training"], "status": "timeout"}) == []
