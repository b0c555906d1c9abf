"""The phantom transfer benchmark compares like with like: the pretrained twin differs from the default classifier
only in where its encoder starts, and the SimCLR encoder has the classifier's shape."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from phantom_transfer import ENCODER, PRETRAINED, SCRATCH, benchmark_params, pretraining_throughput

REPO = Path(__file__).resolve().parents[1]


def test_the_twin_differs_from_the_default_classifier_only_in_its_start() -> None:
    default = yaml.safe_load((REPO / "params.yaml").read_text())
    params = benchmark_params(REPO / "params.yaml", pretrain_epochs=7, view_size=32)
    twin = dict(params["models"][PRETRAINED])
    assert twin.pop("init") == {"pretrain": ENCODER}
    assert twin == {k: v for k, v in default["models"][SCRATCH].items() if k != "init"}
    assert params["train"]["models"] == [*default["train"]["models"], PRETRAINED]
    encoder = params["pretrain"][ENCODER]
    assert (encoder["arch"], encoder["options"], encoder["epochs"], encoder["view_size"]) == (
        default["models"][SCRATCH]["arch"], default["models"][SCRATCH].get("options", {}), 7, 32)


def test_pretraining_throughput_counts_each_folds_pool_times_the_epochs(tmp_path: Path) -> None:
    logs = tmp_path / "logs" / "pretrain"
    logs.mkdir(parents=True)
    (logs / "fold0.log").write_text("fold 0: pretraining pool of 250 images, 1 encoder(s)\n")
    (logs / "fold1.log").write_text("fold 1: pretraining pool of 260 images, 1 encoder(s)\n")
    times = pd.DataFrame({"job": ["pretrain/fold0", "pretrain/fold1", "train/resnet50_fold0"],
                          "stage": ["pretrain", "pretrain", "train"], "minutes": [1.0, 1.5, 9.0]})
    assert pretraining_throughput(tmp_path, 10, times) == (5100, 150.0)
