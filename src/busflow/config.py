"""Load and validate params.yaml: the schema (workflow/schemas/params.schema.yaml) plus cross-key checks.

Both orchestrators and every CLI command go through :func:`load_params`, so a wrong type, an unknown key
or an unknown model stops the run with a message that names the offending key.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from busflow.errors import ParamsError

SCHEMA_PATH = Path(__file__).parent / "schemas" / "params.schema.yaml"


ENSEMBLE_WEIGHTS = ("equal", "validation")  # or one number per member


def load_schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "<top level>"


def _with_defaults(validator_class: type) -> type:
    """Extend a jsonschema validator so that schema ``default`` values fill missing keys."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate_schema(params: dict[str, Any], source: str = "params") -> None:
    """Validate in place against the schema, filling defaults; raise ParamsError naming the key."""
    schema = load_schema()
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{source}: {_key_path(e)}: {e.message}" for e in errors]
        raise ParamsError("invalid parameters:\n  " + "\n  ".join(lines))


def check_consistency(params: Mapping[str, Any], source: str = "params") -> None:
    """Cross-key rules the schema cannot express (model names, fold indices, cascade wiring)."""
    problems: list[str] = _run_name_problems(params["run"])
    models = params["models"]
    for name in params["train"]["models"]:
        if name not in models:
            problems.append(f"train.models: unknown model '{name}' (defined under models: {sorted(models)})")
    problems += _split_problems(params)
    problems += _cascade_problems(params)
    problems += _ensemble_problems(params)
    problems += _external_problems(params)
    problems += _ablation_problems(params)
    reference = params["evaluate"]["reference_model"]
    if reference is not None and reference not in {*params["train"]["models"], *cascade_settings(params), *params["ensembles"]}:
        problems.append(f"evaluate.reference_model: '{reference}' is not a model, a cascade or an ensemble of this run")
    dataset = params["dataset"]
    if dataset not in params["data"]:
        problems.append(f"data.{dataset}: settings for dataset '{dataset}' are missing")
    if problems:
        raise ParamsError("invalid parameters:\n  " + "\n  ".join(f"{source}: {p}" for p in problems))


def _run_name_problems(run: str) -> list[str]:
    """``run`` names one folder under results/: '.', '..' or a hidden name would write elsewhere or out of sight."""
    if run.startswith("."):
        return [f"run: '{run}' is not a folder name under results/ (it must not start with a dot; use letters, digits, _ . -)"]
    return []


def _ablation_problems(params: Mapping[str, Any]) -> list[str]:
    ablation = params["ablation"]
    if ablation["model"] is None:
        return ["ablation: lr and options must be empty without a model"] if ablation["lr"] or ablation["options"] else []
    problems = [] if ablation["model"] in params["train"]["models"] else [f"ablation.model: '{ablation['model']}' is not one of train.models"]
    if not ablation["lr"] or not ablation["options"]:
        problems.append("ablation: name at least one learning rate and one option set")
    return problems


def _external_problems(params: Mapping[str, Any]) -> list[str]:
    external = params["external"]
    problems = [f"external.models: '{m}' is not one of train.models" for m in external["models"] if m not in params["train"]["models"]]
    if params["dataset"] in external["datasets"]:
        problems.append(f"external.datasets: '{params['dataset']}' is the run's own dataset, not an external one")
    problems += [f"data.{d}: settings for external dataset '{d}' are missing" for d in external["datasets"] if d not in params["data"]]
    if bool(external["datasets"]) != bool(external["models"]):
        problems.append("external: name both datasets and models (or neither)")
    return problems


def cascade_settings(params: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The run's cascades (``cascades:``) by name, in params order."""
    return {cascade["name"]: cascade for cascade in params["cascades"]}


def _cascade_problems(params: Mapping[str, Any]) -> list[str]:
    problems = []
    names = [cascade["name"] for cascade in params["cascades"]]
    problems += [f"cascades: the name '{name}' is used by {names.count(name)} cascades" for name in sorted(set(names)) if names.count(name) > 1]
    for cascade in params["cascades"]:
        key = f"cascades.{cascade['name']}"
        if cascade["segmenter"] not in params["train"]["models"]:
            problems.append(f"{key}.segmenter: '{cascade['segmenter']}' is not one of train.models")
        if cascade["name"] in params["models"]:
            problems.append(f"{key}: the name clashes with a model of the same name")
    return problems


def _ensemble_problems(params: Mapping[str, Any]) -> list[str]:
    problems = []
    taken = {*params["models"], *cascade_settings(params)}
    for name, spec in params["ensembles"].items():
        key = f"ensembles.{name}"
        if name in taken:
            problems.append(f"{key}: the name clashes with a model or a cascade of the same name")
        problems += [f"{key}.members: '{m}' is not one of train.models" for m in spec["members"] if m not in params["train"]["models"]]
        weights = spec["weights"]
        if isinstance(weights, str) and weights not in ENSEMBLE_WEIGHTS:
            problems.append(f"{key}.weights: '{weights}' is not one of {', '.join(ENSEMBLE_WEIGHTS)} or a list of numbers")
        if isinstance(weights, list) and len(weights) != len(spec["members"]):
            problems.append(f"{key}.weights: {len(weights)} weights for {len(spec['members'])} members")
        if isinstance(weights, list) and not sum(weights) > 0:
            problems.append(f"{key}.weights: at least one weight must be positive")
    return problems


def _split_problems(params: Mapping[str, Any]) -> list[str]:
    from busflow.split.protocols import n_test_folds

    split = params["split"]
    protocol = split["protocol"]
    problems = [f"train.folds: fold {fold} does not exist with the {protocol} protocol ({n_test_folds(split)} test fold(s))"
                for fold in params["train"]["folds"] if fold >= n_test_folds(split)]
    if protocol == "official" and params["dataset"] != "busbra":
        problems.append(f"split.protocol: official folds are published only for busbra, not for {params['dataset']}")
    sums = {"split.holdout": split["holdout"], "split.cascade.classification": split["cascade"]["classification"]}
    problems += [f"{key}: fractions add up to {sum(parts.values()):g}, not 1" for key, parts in sums.items()
                 if abs(sum(parts.values()) - 1) > 1e-6]
    segmentation = split["cascade"]["segmentation"]
    if segmentation["train"] + segmentation["val"] >= 1:
        problems.append("split.cascade.segmentation: train + val must leave a rest for the classifier")
    leakage = params["leakage"]["models"]
    problems += [f"leakage.models: '{m}' is not one of train.models (the study compares it with its grouped run)"
                 for m in leakage if m not in params["train"]["models"]]
    if leakage and protocol != "kfold":
        problems.append(f"leakage.models: the leakage study compares image-level folds with kfold, not {protocol}")
    return problems


def _init_problems(key: str, spec: Mapping[str, Any], params: Mapping[str, Any]) -> list[str]:
    """A pretrained start needs an architecture with an encoder layout and a checkpoint (or a self-supervised
    encoder) of its family."""
    from busflow.models.registry import available_architectures, get_entry
    from busflow.weights import CHECKPOINTS

    init, encoder = spec["init"], get_entry(spec["arch"]).encoder
    tunes = spec["freeze_encoder_epochs"] > 0 or spec["encoder_lr_factor"] != 1.0
    if tunes and init == "scratch":
        return [f"{key}: freeze_encoder_epochs and encoder_lr_factor fine-tune a pretrained encoder, but init is scratch"]
    if init == "scratch":
        return []
    if encoder is None:
        pretrainable = [a for a in available_architectures() if get_entry(a).encoder is not None]
        return [f"{key}.init: {spec['arch']} has no pretrained encoder (architectures with one: {', '.join(pretrainable)})"]
    if "pretrain" in init:
        return _pretrain_init_problems(key, init["pretrain"], encoder.family, params)
    name = init["weights"]
    if "format" in init:
        return []
    if name not in CHECKPOINTS:
        return [f"{key}.init.weights: {name!r} is not a checkpoint of `busflow weights list` (give a file of your own with its format)"]
    if CHECKPOINTS[name].family != encoder.family:
        return [f"{key}.init.weights: {name} is a {CHECKPOINTS[name].family} checkpoint, {spec['arch']} has a {encoder.family} encoder"]
    return []


def _pretrain_init_problems(key: str, name: str, family: str, params: Mapping[str, Any]) -> list[str]:
    from busflow.models.registry import get_entry

    encoders = params["pretrain"]
    if name not in encoders:
        return [f"{key}.init.pretrain: no encoder {name!r} in the pretrain section (defined: {sorted(encoders)})"]
    source = get_entry(encoders[name]["arch"]).encoder if encoders[name]["arch"] in _registered() else None
    if source is not None and source.family != family:
        return [f"{key}.init.pretrain: {name} pretrains a {source.family} encoder, this network has a {family} encoder"]
    model = key.removeprefix("models.")
    if model in params["leakage"]["models"]:
        problem = (f"{key}.init.pretrain: {model} is a leakage.models model, whose image-level folds test on images the "
                   f"per-fold encoder {name} was pretrained on; start it from scratch or a weight file")
        return [problem]
    return []


def _registered() -> set[str]:
    from busflow.models.registry import available_architectures

    return set(available_architectures())


def _pretrain_section_problems(params: Mapping[str, Any]) -> list[str]:
    """Each encoder of the pretrain section is a registered classifier with a pretrained-encoder layout."""
    from busflow.models.registry import get_entry

    problems = []
    for name, settings in params["pretrain"].items():
        key, arch = f"pretrain.{name}", settings["arch"]
        if arch not in _registered():
            problems.append(f"{key}.arch: unknown architecture {arch!r}")
            continue
        entry = get_entry(arch)
        if "cls" not in entry.tasks or entry.encoder is None:
            problems.append(f"{key}.arch: {arch} is not a classifier with a pretrained-encoder layout")
        allowed = entry.option_defaults()
        problems += [f"{key}.options.{option}: not an option of {arch}" for option in sorted(set(settings["options"]) - set(allowed))]
    return problems


def check_architectures(params: Mapping[str, Any], source: str = "params") -> None:
    """Every configured network must be registered and provide what its role needs (imports torch)."""
    from busflow.models import model_options, model_tasks

    problems: list[str] = []
    specs = {f"models.{n}": s for n, s in params["models"].items()}
    specs |= {f"cascades.{name}.classifier": cascade["classifier"] for name, cascade in cascade_settings(params).items()}
    for key, spec in specs.items():
        try:
            allowed = model_options(spec["arch"])
        except (KeyError, ValueError) as error:
            problems.append(f"{key}.arch: {error}")
            continue
        problems += [f"{key}.options.{name}: not an option of {spec['arch']} (options: {', '.join(sorted(allowed)) or 'none'})"
                     for name in sorted(set(spec.get("options") or {}) - set(allowed))]
        problems += _init_problems(key, spec, params)
    problems += _pretrain_section_problems(params)
    ablation = params["ablation"]
    if ablation["model"] in params["models"]:
        allowed = model_options(params["models"][ablation["model"]]["arch"]) if not problems else {}
        problems += [f"ablation.options.{name}.{option}: not an option of {params['models'][ablation['model']]['arch']}"
                     for name, options in ablation["options"].items() for option in options if allowed and option not in allowed]
    if not problems:  # every arch is registered
        problems += _cascade_role_problems(params, model_tasks)
        problems += [f"ensembles.{name}.members: the members share no output (all need masks or all class probabilities)"
                     for name, ensemble in params["ensembles"].items()
                     if not frozenset.intersection(*(model_tasks(params["models"][m]["arch"]) for m in ensemble["members"]))]
    if problems:
        raise ParamsError("invalid parameters:\n  " + "\n  ".join(f"{source}: {p}" for p in problems))


def _cascade_role_problems(params: Mapping[str, Any], model_tasks: Callable[[str], frozenset[str]]) -> list[str]:
    """Each cascade segments with a segmenter and classifies with a classifier (archs known to be registered)."""
    problems = []
    for name, cascade in cascade_settings(params).items():
        segmenter = cascade["segmenter"]
        if segmenter in params["models"] and "seg" not in model_tasks(params["models"][segmenter]["arch"]):
            problems.append(f"cascades.{name}.segmenter: model '{segmenter}' has no segmentation output")
        if "cls" not in model_tasks(cascade["classifier"]["arch"]):
            problems.append(f"cascades.{name}.classifier.arch: the cascade classifier needs a classification output")
    return problems


def validate_params(params: dict[str, Any], source: str = "params", *, check_registry: bool = True) -> dict[str, Any]:
    validate_schema(params, source)
    check_consistency(params, source)
    if check_registry:
        check_architectures(params, source)
    return params


def load_params(path: str | Path, *, check_registry: bool = True) -> dict[str, Any]:
    """Read params.yaml with a safe loader, validate it and fill defaults."""
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: parameters file not found") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of settings at the top level")
    return validate_params(params, str(path), check_registry=check_registry)


def params_sha256(params: Mapping[str, Any]) -> str:
    """Stable hash of the (validated) parameters, reported with every run."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def model_spec(params: Mapping[str, Any], model: str) -> dict[str, Any]:
    """Training spec of a trained model name or of a cascade's crop classifier."""
    cascades = cascade_settings(params)
    if model in cascades:
        return cascades[model]["classifier"]
    if model not in params["models"]:
        raise ParamsError(f"models.{model}: unknown model (defined: {sorted(params['models'])})")
    return params["models"][model]
