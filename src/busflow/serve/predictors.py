"""Trained models as predictors of new images: one network, a segment→crop→classify cascade, or an ensemble.

Every predictor is rebuilt from what training wrote (``model.json`` + ``weights.pt`` of each network), never
from the current params.yaml, and takes decoded gray images at any resolution. Its outputs are at the model's
own input size: ``mask_probs`` (N×S×S lesion probabilities), ``class_probs`` (N×C) and, for a cascade,
``roi_boxes`` (N×4: top, left, bottom, right of the crop the classifier saw).

A predictor can also be *packaged* into one ``.safetensors`` file — tensors only, the descriptions as JSON
metadata — so a model travels without its results/ folder and loads without unpickling anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from busflow.data.rois import extract_rois
from busflow.errors import ModelFileError
from busflow.data.preprocess import model_input
from busflow.predictions import TASK_OF_OUTPUT, combine
from busflow.evaluate.metrics import lesion_mask
from busflow.io import atomic_path
from busflow.train.loop import ArrayData, predict
from busflow.train.outputs import build_described, load_state, load_trained, read_model_description

PACKAGE_SUFFIX = ".safetensors"
PACKAGE_METADATA_KEY = "busflow"
Tensors = dict[str, torch.Tensor]


class Predictor(Protocol):
    classes: list[str]
    tasks: frozenset[str]
    description: dict[str, Any]

    def to(self, device: torch.device) -> Predictor: ...

    def predict(self, grays: Sequence[np.ndarray]) -> dict[str, np.ndarray]: ...

    def pack(self, prefix: str) -> tuple[dict[str, Any], Tensors]: ...


class NetworkPredictor:
    """One trained network with the input pipeline it was trained with."""

    def __init__(self, model: torch.nn.Module, description: Mapping[str, Any], source: Path) -> None:
        if description.get("preprocess") is None:
            raise ModelFileError(f"{source}: no preprocessing recorded in model.json (trained by an older busflow); retrain it")
        self.model, self.description, self.device = model.eval(), dict(description), torch.device("cpu")
        self.classes, self.tasks = list(description["classes"]), frozenset(description["tasks"])

    def to(self, device: torch.device) -> NetworkPredictor:
        self.model.to(device)
        self.device = device
        return self

    def inputs(self, grays: Sequence[np.ndarray]) -> np.ndarray:
        """The images as the network sees them (uint8, N×S×S), through the training preprocessing."""
        return np.stack([model_input(gray, self.description["preprocess"]) for gray in grays])

    def predict_inputs(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        blank = np.zeros(len(inputs), dtype=np.int64)
        return predict(self.model, ArrayData(inputs, np.zeros_like(inputs), blank), np.arange(len(inputs)), self.device)

    def predict(self, grays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return self.predict_inputs(self.inputs(grays))

    def pack(self, prefix: str) -> tuple[dict[str, Any], Tensors]:
        tensors = {f"{prefix}{name}": value.detach().cpu().contiguous() for name, value in self.model.state_dict().items()}
        return {"kind": "network", "prefix": prefix, "description": self.description}, tensors


class CascadePredictor:
    """Segmenter → crop around the largest predicted lesion → crop classifier, as the cascade was tested."""

    def __init__(self, segmenter: NetworkPredictor, classifier: NetworkPredictor, settings: Mapping[str, Any]) -> None:
        self.segmenter, self.classifier, self.settings = segmenter, classifier, dict(settings)
        self.classes, self.tasks = classifier.classes, frozenset({"seg", "cls"})
        self.description = {**classifier.description, "tasks": ["cls", "seg"], "segmenter": segmenter.description}

    def to(self, device: torch.device) -> CascadePredictor:
        self.segmenter.to(device)
        self.classifier.to(device)
        return self

    def predict(self, grays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        inputs = self.segmenter.inputs(grays)
        mask_probs = self.segmenter.predict_inputs(inputs)["mask_probs"]
        crops, boxes = extract_rois(inputs, lesion_mask(mask_probs, self.settings["threshold"]), margin=self.settings["margin"],
                                    empty_fraction=self.settings["empty_roi_fraction"], size=self.classifier.description["image_size"])
        class_probs = self.classifier.predict_inputs(crops)["class_probs"]
        return {"mask_probs": mask_probs, "class_probs": class_probs, "roi_boxes": boxes}

    def pack(self, prefix: str) -> tuple[dict[str, Any], Tensors]:
        segmenter, seg_tensors = self.segmenter.pack(f"{prefix}segmenter.")
        classifier, cls_tensors = self.classifier.pack(f"{prefix}classifier.")
        return {"kind": "cascade", "settings": self.settings, "segmenter": segmenter, "classifier": classifier}, {**seg_tensors, **cls_tensors}


class EnsemblePredictor:
    """Weighted mean of the members' probabilities, with the weights the ensemble stage chose on validation."""

    def __init__(self, members: Mapping[str, Predictor], weights: Mapping[str, Mapping[str, float]], description: Mapping[str, Any]) -> None:
        self.members, self.description = dict(members), dict(description)
        output_of_task = {task: key for key, task in TASK_OF_OUTPUT.items()}
        self.weights = {output_of_task[task]: np.array([by_member[m] for m in self.members]) for task, by_member in weights.items()}
        self.classes, self.tasks = list(description["classes"]), frozenset(weights)

    def to(self, device: torch.device) -> EnsemblePredictor:
        for member in self.members.values():
            member.to(device)
        return self

    def predict(self, grays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return combine([member.predict(grays) for member in self.members.values()], self.weights)

    def pack(self, prefix: str) -> tuple[dict[str, Any], Tensors]:
        members, tensors = {}, {}
        for name, member in self.members.items():
            members[name], member_tensors = member.pack(f"{prefix}{name}.")
            tensors.update(member_tensors)
        return {"kind": "ensemble", "description": self.description, "members": members}, tensors


def _network(model_dir: Path) -> NetworkPredictor:
    model, description = load_trained(model_dir)
    return NetworkPredictor(model, description, model_dir)


def _sibling(model_dir: Path, model: str, models_root: Path) -> Path:
    """The same fold of another model of the run (e.g. a cascade's segmenter, an ensemble's member)."""
    path = models_root / model / model_dir.name
    if not (path / "model.json").is_file():
        raise ModelFileError(f"{model_dir}: needs the trained model {model} of the same fold at {path}, which is missing")
    return path


def load_model_dir(model_dir: Path) -> Predictor:
    """The predictor of a trained fold folder: a network, a cascade (``models/<cascade>/fold<k>``, with its
    segmenter beside it) or an ensemble (``ensembles/<name>/fold<k>``, members under ``models/``)."""
    description = read_model_description(model_dir)
    if description.get("arch") == "ensemble":
        models_root = model_dir.parents[2] / "models"
        members = {m: load_model_dir(_sibling(model_dir, m, models_root)) for m in description["members"]}
        return EnsemblePredictor(members, description["weights"], description)
    settings = description.get("cascade")
    if settings:
        if "threshold" not in settings:
            raise ModelFileError(f"{model_dir / 'model.json'}: the cascade's segmenter threshold is not recorded (older busflow); retrain it")
        segmenter = _network(_sibling(model_dir, settings["segmenter"], model_dir.parent.parent))
        return CascadePredictor(segmenter, _network(model_dir), settings)
    return _network(model_dir)


def _unpack(spec: Mapping[str, Any], tensors: Tensors, source: Path) -> Predictor:
    kind = spec.get("kind")
    if kind == "network":
        description, prefix = spec["description"], spec["prefix"]
        state = {name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)}
        return NetworkPredictor(load_state(build_described(description, source), state, source), description, source)
    if kind == "cascade":
        return CascadePredictor(_unpack(spec["segmenter"], tensors, source), _unpack(spec["classifier"], tensors, source), spec["settings"])
    if kind == "ensemble":
        members = {name: _unpack(member, tensors, source) for name, member in spec["members"].items()}
        return EnsemblePredictor(members, spec["description"]["weights"], spec["description"])
    raise ModelFileError(f"{source}: unknown predictor kind {kind!r} in its metadata")


def save_package(predictor: Predictor, target: Path) -> None:
    """One safetensors file: every network's tensors plus the predictor's structure as JSON metadata."""
    from safetensors.torch import save_file

    spec, tensors = predictor.pack("")
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata={PACKAGE_METADATA_KEY: json.dumps(spec)})


def load_package(path: Path) -> Predictor:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for a damaged header or body
        raise ModelFileError(f"{path}: not a readable safetensors model package ({error})") from None
    if PACKAGE_METADATA_KEY not in metadata:
        raise ModelFileError(f"{path}: a safetensors file without busflow metadata (make packages with `busflow package`)")
    try:
        return _unpack(json.loads(metadata[PACKAGE_METADATA_KEY]), tensors, path)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise ModelFileError(f"{path}: inconsistent busflow metadata ({type(error).__name__}: {error})") from None


def load_predictor(path: Path) -> Predictor:
    """A trained fold folder or a packaged ``.safetensors`` file, as a predictor on the CPU."""
    if path.is_file() and path.suffix == PACKAGE_SUFFIX:
        return load_package(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model folder or package")
    return load_model_dir(path)
