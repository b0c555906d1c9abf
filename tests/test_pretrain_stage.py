"""The pretrain stage and models that start from its encoders: leak-free pools, the encoder files, the checks
of the init-weights stage and of the training job, and one DAG for both orchestrators."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from dag import dvc_jobs, snakemake_jobs

from busflow.config import validate_params
from busflow.errors import DatasetError, ParamsError
from busflow.io import read_table
from busflow.models import build_model
from busflow.models.pretrained import load_pretrained
from busflow.stages import init_weights, pretrain
from busflow.train.job import start_encoder

from conftest import TINY_PARAMS, workflow_copy

ENCODER = {"arch": "resnet50", "options": {"widen_factor": 0.125}, "epochs": 2, "batch_size": 8}


def tiny_params(**changes: object) -> dict:
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["pretrain"] = {"simclr": dict(ENCODER)}
    params["models"]["resnet50"]["init"] = {"pretrain": "simclr"}
    params.update(changes)
    return validate_params(params, "tiny")


@pytest.fixture(scope="module")
def pretrained(tiny_project: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Fold 0 of the tiny run pretrained into a folder of its own (the tiny run stays as it is)."""
    params = tiny_params()
    results = tiny_project / "results" / "synthetic"
    out = tmp_path_factory.mktemp("pretrain") / "pretrain"
    for fold in (0, 1):
        pretrain.run(params, fold=fold, arrays=results / "data/arrays.npz", folds=results / "split/folds.csv", out=out / f"fold{fold}")
    return out, params


def test_the_pool_is_the_folds_training_and_validation_images_never_its_test_images(tiny_project: Path, pretrained) -> None:
    out, _ = pretrained
    folds = read_table(tiny_project / "results/synthetic/split/folds.csv")
    pool = set(pd.read_csv(out / "fold0" / pretrain.POOL, dtype=str)["image_id"])
    roles = folds.set_index("image_id")["fold0"]
    assert pool == set(roles[roles.isin(["train", "val"])].index.astype(str))
    assert pool.isdisjoint(set(roles[roles == "test"].index.astype(str)))


def test_the_encoder_records_its_training_and_loads_into_another_network_of_its_family(pretrained) -> None:
    out, _ = pretrained
    record = json.loads((out / "fold0" / "simclr" / pretrain.RECORD).read_text())
    assert record["arch"] == "resnet50" and record["images"] == len(pd.read_csv(out / "fold0" / pretrain.POOL))
    history = pd.read_csv(out / "fold0" / "simclr" / pretrain.HISTORY)
    assert list(history["epoch"]) == [1, 2] and np.isfinite(history["loss"]).all()
    model = build_model("mtl_resnet50", in_channels=1, n_classes=3, options={"widen_factor": 0.125})
    report = load_pretrained(model, "mtl_resnet50", out / "fold0" / "simclr" / pretrain.ENCODER, "busflow")
    assert report.matched_fraction == 1.0


def test_init_weights_links_each_folds_encoder_and_training_refuses_a_pool_with_its_test_images(pretrained, tmp_path: Path) -> None:
    out, params = pretrained
    record = init_weights.run(params, model="resnet50", pretrained=out, out=tmp_path / "init")
    assert record["init"] == "pretrain" and set(record["folds"]) == {"0", "1"}
    assert (tmp_path / "init" / "fold1.safetensors").resolve() == (out / "fold1" / "simclr" / pretrain.ENCODER).resolve()
    model = build_model("resnet50", in_channels=1, n_classes=3, options={"widen_factor": 0.125})
    test_ids = np.array(["never_seen"])
    start = start_encoder(model, "resnet50", record, 0, test_ids, lambda line: None)
    assert start.init["source"] == "self-supervised simclr, this fold's" and start.input_normalization is None
    pooled = pd.read_csv(out / "fold1" / pretrain.POOL, dtype=str)["image_id"].to_numpy()
    with pytest.raises(DatasetError, match=r"fold1.*pretrained on 1 image\(s\) that fold 1 of this job tests on"):
        start_encoder(model, "resnet50", record, 1, pooled[:1], lambda line: None)


def test_no_encoder_configured_writes_the_pool_alone_without_torch(tiny_project: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    results = tiny_project / "results" / "synthetic"
    code = ("import sys, yaml; from pathlib import Path; from busflow.config import validate_params; "
            "from busflow.stages import pretrain; "
            f"p = validate_params(yaml.safe_load(Path({str(TINY_PARAMS)!r}).read_text()), 't', check_registry=False); "
            f"pretrain.run(p, fold=0, arrays=Path({str(results / 'data/arrays.npz')!r}), folds=Path({str(results / 'split/folds.csv')!r}), "
            f"out=Path({str(tmp_path / 'fold0')!r})); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("False")
    assert sorted(p.name for p in (tmp_path / "fold0").iterdir()) == [pretrain.POOL]


@pytest.mark.parametrize(("change", "message"), [
    ({"pretrain": {}}, "no encoder 'simclr' in the pretrain section"),
    ({"pretrain": {"simclr": {**ENCODER, "arch": "vit", "options": {}}}}, "simclr pretrains a vit encoder, this network has a resnet"),
    ({"pretrain": {"simclr": {**ENCODER, "arch": "unet", "options": {}}}}, "unet is not a classifier with a pretrained-encoder layout"),
    ({"leakage": {"models": ["resnet50"], "seeds": [1, 2]}}, "resnet50 is a leakage.models model"),
])
def test_bad_pretrain_settings_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        tiny_params(**change)


def test_both_orchestrators_run_the_pretrain_and_init_stages_alike(tmp_path: Path) -> None:
    params_file = tmp_path / "params.yaml"
    raw = yaml.safe_load(TINY_PARAMS.read_text())
    raw["pretrain"] = {"simclr": dict(ENCODER)}
    raw["models"]["resnet50"]["init"] = {"pretrain": "simclr"}
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    project = workflow_copy(tmp_path / "project", params_file)
    snakemake = snakemake_jobs(project)
    assert snakemake == dvc_jobs(project)
    assert {job.name for job in snakemake} >= {"pretrain", "init_weights", "init_weights_cascade"}
    assert any("--pretrained results/synthetic/pretrain" in job.command for job in snakemake if job.name == "init_weights")


def test_a_pretrained_encoder_starts_training_from_its_weights(pretrained) -> None:
    out, params = pretrained
    model = build_model("resnet50", in_channels=1, n_classes=3, options={"widen_factor": 0.125})
    record = init_weights.init_record(params, "resnet50", out)
    start_encoder(model, "resnet50", record, 0, np.array([]), lambda line: None)
    from safetensors.torch import load_file

    encoder = load_file(str(out / "fold0" / "simclr" / pretrain.ENCODER))
    assert torch.equal(model.net.layer2[0].conv2.weight, encoder["net.layer2.0.conv2.weight"])


def test_schema_defaults_are_the_pretraining_defaults() -> None:
    from dataclasses import fields

    from busflow.config import load_schema
    from busflow.pretrain import PretrainSpec

    schema = load_schema()["$defs"]["pretraining"]["properties"]
    spec_defaults = {f.name: f.default for f in fields(PretrainSpec)}
    assert {k: v["default"] for k, v in schema.items() if k not in ("arch", "options")} == spec_defaults
