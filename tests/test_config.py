"""params.yaml validation: schema errors and cross-key errors name the offending key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from busflow.cli import main
from busflow.errors import ParamsError
from busflow.config import load_params, validate_params
from conftest import REPO, TINY_PARAMS


@pytest.fixture
def params() -> dict:
    return yaml.safe_load(TINY_PARAMS.read_text())


def _error(params: dict) -> str:
    with pytest.raises(ParamsError) as caught:
        validate_params(copy.deepcopy(params))
    return str(caught.value)


def test_default_and_tiny_params_are_valid() -> None:
    for path in (REPO / "params.yaml", TINY_PARAMS):
        params = load_params(path)
        assert params["models"]["unet"]["optimizer"] == "adam"  # schema default filled in
        assert params["models"]["unet"]["augment"]["flip"] is True


def test_wrong_type_names_the_key(params: dict) -> None:
    params["models"]["unet"]["lr"] = "fast"
    assert "models.unet.lr" in _error(params)


def test_unknown_key_is_rejected(params: dict) -> None:
    params["split"]["n_fold"] = 3
    message = _error(params)
    assert "split" in message and "n_fold" in message


@pytest.mark.parametrize("run", ["..", ".", ".hidden"])
def test_a_run_name_that_would_leave_results_is_refused(params: dict, run: str) -> None:
    params["run"] = run
    assert f"run: '{run}' is not a folder name under results/" in _error(params)


@pytest.mark.parametrize("run", ["../elsewhere", "a/b", ""])
def test_a_run_name_with_a_path_separator_is_refused_by_the_schema(params: dict, run: str) -> None:
    params["run"] = run
    assert "run:" in _error(params)


def test_unknown_model_name_in_train_models(params: dict) -> None:
    params["train"]["models"].append("resnet5O")
    assert "train.models: unknown model 'resnet5O'" in _error(params)


def test_unknown_architecture_names_the_key(params: dict) -> None:
    params["models"]["unet"]["arch"] = "unet3000"
    assert "models.unet.arch" in _error(params)


def test_unknown_architecture_option_names_the_key(params: dict) -> None:
    params["models"]["unet"]["options"]["featurez"] = [8, 8]
    assert "models.unet.options.featurez: not an option of unet" in _error(params)


def test_fold_beyond_n_folds(params: dict) -> None:
    params["train"]["folds"] = [0, 5]
    assert "train.folds: fold 5" in _error(params)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p["split"].update(protocol="holdout"), "train.folds: fold 1 does not exist with the holdout protocol"),
        (lambda p: p["split"].update(protocol="official"), "split.protocol: official folds are published only for busbra"),
        (lambda p: p["split"].update(holdout={"train": 0.7, "val": 0.2, "test": 0.2}), "split.holdout: fractions add up to 1.1"),
        (lambda p: p["split"].update(cascade={"segmentation": {"train": 0.6, "val": 0.4}}), "train + val must leave a rest"),
        (lambda p: p["leakage"].update(models=["vgg"]), "leakage.models: 'vgg' is not one of train.models"),
        (lambda p: p["split"].update(protocol="random_image"), "leakage study compares image-level folds with kfold"),
        (lambda p: p.update(dataset="busi"), "data.busi: settings for dataset 'busi' are missing"),
        (lambda p: p["split"].update(label_conflicts="ignore"), "split.label_conflicts"),
        (lambda p: p["data"].update(folder={"path": 3}), "data.folder.path"),
        (lambda p: p["ablation"].update(model="vgg"), "ablation.model: 'vgg' is not one of train.models"),
        (lambda p: p["ablation"].update(model=None), "ablation: lr and options must be empty without a model"),
        (lambda p: p["ablation"].update(lr=[]), "ablation: name at least one learning rate and one option set"),
        (lambda p: p["ablation"]["options"].update(odd={"widen_factor": 2}), "ablation.options.odd.widen_factor: not an option of unet"),
        (lambda p: p["external"].update(datasets=["synthetic"], models=["unet"]), "'synthetic' is the run's own dataset"),
        (lambda p: p["external"].update(datasets=["busi"], models=[]), "external: name both datasets and models"),
        (lambda p: p["external"].update(datasets=["busi"], models=["unet"]), "data.busi: settings for external dataset 'busi' are missing"),
        (lambda p: p["evaluate"].update(reference_model="vgg"), "evaluate.reference_model: 'vgg' is not a model"),
    ],
)
def test_split_and_data_rules_name_the_key(params: dict, change, message: str) -> None:
    change(params)
    assert message in _error(params)


def test_presets_are_complete_valid_params() -> None:
    from busflow.data.sources import MANUAL_DOWNLOADS

    expected = {"busi": ("busi", "kfold"), "busbra": ("busbra", "official"), "breast_lesions": ("breast_lesions", "kfold"),
                "p000": ("busi", "kfold"), "p001": ("busi", "kfold"), "p002": ("busi", "cascade"), "p003": ("busi", "kfold"),
                "p004": ("busi", "kfold"), "p004_3class": ("busi", "kfold"), "cross": ("busi", "kfold")}
    assert sorted(p.stem for p in (REPO / "config" / "presets").glob("*.yaml")) == sorted(expected)
    for name, (dataset, protocol) in expected.items():
        preset = load_params(REPO / "config" / "presets" / f"{name}.yaml")  # schema, cross-key rules and options
        assert preset["dataset"] == dataset and preset["split"]["protocol"] == protocol
        url = preset["data"][dataset]["url"]  # a dataset published as separate files is fetched by hand
        assert url is None if dataset in MANUAL_DOWNLOADS else url.startswith("https://")


def test_p004_runs_the_papers_protocol_and_its_three_class_experiment_apart() -> None:
    """Benign vs malignant for all 500 epochs (no early stopping, the last epoch kept); the three-class preset
    differs only in its classes and run name."""
    main, three = (load_params(REPO / "config" / "presets" / f"{name}.yaml") for name in ("p004", "p004_3class"))
    assert main["preprocess"]["classes"] == ["benign", "malignant"]
    assert three["preprocess"]["classes"] == ["normal", "benign", "malignant"]
    for spec in main["models"].values():
        assert (spec["epochs"], spec["patience"], spec["restore_best"]) == (500, 0, False)
        assert spec["lr_step"] == {"epochs": 20, "gamma": 0.1} and spec["batch_size"] == 16
    differing = {key for key in main if main[key] != three[key]}
    assert differing == {"run", "preprocess"} and main["preprocess"] | {"classes": three["preprocess"]["classes"]} == three["preprocess"]


def test_the_cross_preset_tests_busi_models_on_the_other_datasets() -> None:
    """Trained on BUSI's benign and malignant images, every model with both matrix metrics' outputs tested on
    BUS-BRA and BrEaST-Lesions, which have no normal class."""
    preset = load_params(REPO / "config" / "presets" / "cross.yaml")
    assert preset["run"] == "cross" and preset["preprocess"]["classes"] == ["benign", "malignant"]
    assert preset["external"] == {"datasets": ["busbra", "breast_lesions"], "models": preset["train"]["models"]}
    assert {"unet", "resnet50", "mtl_resnet50"} <= set(preset["external"]["models"])


def test_cascade_segmenter_must_segment(params: dict) -> None:
    params["cascades"][0]["segmenter"] = "resnet50"
    assert "cascades.cascade.segmenter: model 'resnet50' has no segmentation output" in _error(params)


def test_cascade_names_are_unique_and_their_classifiers_classify(params: dict) -> None:
    twin = {**params["cascades"][0], "classifier": {**params["cascades"][0]["classifier"], "arch": "unet", "options": {}}}
    params["cascades"].append(twin)
    error = _error(params)
    assert "cascades: the name 'cascade' is used by 2 cascades" in error
    twin["name"] = "cascade_unet"
    assert "cascades.cascade_unet.classifier.arch: the cascade classifier needs a classification output" in _error(params)


def test_a_run_without_a_cascade_is_valid(params: dict) -> None:
    params["cascades"] = []
    assert validate_params(params)["cascades"] == []


def test_cli_reports_invalid_params_and_exits_nonzero(tmp_path: Path, params: dict, capsys: pytest.CaptureFixture[str]) -> None:
    params["seed"] = -1
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    assert main(["validate", "--params", str(bad)]) == 2
    assert "seed" in capsys.readouterr().err


def test_yaml_is_parsed_safely(tmp_path: Path) -> None:
    evil = tmp_path / "params.yaml"
    evil.write_text("dataset: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(evil)


def test_schema_architectures_match_the_registry() -> None:
    from busflow.config import load_schema
    from busflow.models import available_architectures

    schema_archs = load_schema()["$defs"]["training"]["properties"]["arch"]["enum"]
    assert sorted(schema_archs) == sorted(available_architectures())


def test_duplicate_settings_in_the_schema_match_the_detector() -> None:
    import dataclasses

    from busflow.config import load_schema
    from busflow.split.dedup import DuplicateSettings

    schema = load_schema()["properties"]["split"]["properties"]["duplicates"]["properties"]
    assert set(schema) == {f.name for f in dataclasses.fields(DuplicateSettings)}


def test_view_settings_in_the_schema_match_the_detector() -> None:
    import dataclasses

    from busflow.config import load_schema
    from busflow.split.views import ViewSettings

    schema = load_schema()["properties"]["split"]["properties"]["views"]["properties"]
    assert set(schema) == {f.name for f in dataclasses.fields(ViewSettings)}


def test_the_package_schema_is_the_workflow_schema() -> None:
    """One schema: the package's copy (read by every busflow command) is the workflow's (documented) file."""
    from busflow.config import SCHEMA_PATH

    assert SCHEMA_PATH.read_bytes() == (REPO / "workflow" / "schemas" / "params.schema.yaml").read_bytes()
