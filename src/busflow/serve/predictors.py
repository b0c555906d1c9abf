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
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from busflow import layout
from busflow.data.preprocess import model_input
from busflow.data.rois import extract_rois
from busflow.errors import ModelFileError
from busflow.evaluate.metrics import lesion_mask
from busflow.io import atomic_path
from busflow.model_card import CARD_FILE, CascadeLink, EnsembleCard, NetworkCard, card_from_dict, read_card
from busflow.predictions import TASK_OF_OUTPUT, combine
from busflow.train.loop import ArrayData, predict
from busflow.train.outputs import build_described, load_state, load_trained

PACKAGE_SUFFIX = ".safetensors"
PACKAGE_METADATA_KEY = "busflow"
Tensors = dict[str, torch.Tensor]


class Predictor(Protocol):
    classes: list[str]
    tasks: frozenset[str]

    def to(self, device: torch.device) -> Predictor: ...

    def predict(self, grays: Sequence[np.ndarray]) -> dict[str, np.ndarray]: ...

    def pack(self, prefix: str) -> tuple[dict[str, Any], Tensors]: ...


class NetworkPredictor:
    """One trained network with the input pipeline it was trained with."""

    def __init__(self, model: torch.nn.Module, card: NetworkCard, source: Path) -> None:
        if card.preprocess is None:
            raise ModelFileError(f"{source}: no preprocessing recorded in model.json (trained by an older busflow); retrain it")
        self.model, self.card, self.device = model.eval(), card, torch.device("cpu")
        self.classes, self.tasks = list(card.classes), frozenset(card.tasks)

    def to(self, device: torch.device) -> NetworkPredictor:
        self.model.to(device)
        self.device = device
        return self

    def inputs(self, grays: Sequence[np.ndarray]) -> np.ndarray:
        """The images as the network sees them (uint8, N×S×S), through the training preprocessing."""
        return np.stack([model_input(gray, self.card.preprocess) for gray in grays])

    def predict_inputs(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        blank = np.zeros(len(inputs), dtype=np.int64)
        return predict(self.model, ArrayData(inputs, np.zeros_like(inputs), blank), np.arange(len(inputs)), self.device)

    def predict(self, grays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return self.predict_inputs(self.inputs(grays))

    def pack(self, prefix: str) -> tuple[dict[str, Any], Tensors]:
        tensors = {f"{prefix}{name}": value.detach().cpu().contiguous() for name, value in self.model.state_dict().items()}
        return {"kind": "network", "prefix": prefix, "description": self.card.to_dict()}, tensors


class CascadePredictor:
    """Segmenter → crop around the largest predicted lesion → crop classifier, as the cascade was tested."""

    def __init__(self, segmenter: NetworkPredictor, classifier: NetworkPredictor, link: CascadeLink) -> None:
        self.segmenter, self.classifier, self.link = segmenter, classifier, link
        self.classes, self.tasks = classifier.classes, frozenset({"seg", "cls"})

    def to(self, device: torch.device) -> CascadePredictor:
        self.segmenter.to(device)
        self.classifier.to(device)
        return self

    def predict(self, grays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        inputs = self.segmenter.inputs(grays)
        mask_probs = self.segmenter.predict_inputs(inputs)["mask_probs"]
        crops, boxes = extract_rois(inputs, lesion_mask(mask_probs, self.link.threshold), margin=self.link.margin,
                                    empty_fraction=self.link.empty_roi_fraction, size=self.classifier.card.image_size)
        class_probs = self.classifier.predict_inputs(crops)["class_probs"]
        return {"mask_probs": mask_probs, "class_probs": class_probs, "roi_boxes": boxes}

    def pack(self, prefix: str) -> tuple[dict[str, Any], Tensors]:
        segmenter, seg_tensors = self.segmenter.pack(f"{prefix}segmenter.")
        classifier, cls_tensors = self.classifier.pack(f"{prefix}classifier.")
        spec = {"kind": "cascade", "settings": asdict(self.link), "segmenter": segmenter, "classifier": classifier}
        return spec, {**seg_tensors, **cls_tensors}


class EnsemblePredictor:
    """Weighted mean of the members' probabilities, with the weights the ensemble stage chose on validation."""

    def __init__(self, members: Mapping[str, Predictor], card: EnsembleCard) -> None:
        self.members, self.card = dict(members), card
        output_of_task = {task: key for key, task in TASK_OF_OUTPUT.items()}
        self.weights = {output_of_task[task]: np.array([by_member[m] for m in self.members]) for task, by_member in card.weights.items()}
        self.classes, self.tasks = list(card.classes), frozenset(card.weights)

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
        return {"kind": "ensemble", "description": self.card.to_dict(), "members": members}, tensors


def _network(model_dir: Path) -> NetworkPredictor:
    model, card = load_trained(model_dir)
    return NetworkPredictor(model, card, model_dir)


def _sibling(model_dir: Path, model: str, models_root: Path) -> Path:
    """The same fold of another model of the run (e.g. a cascade's segmenter, an ensemble's member)."""
    path = models_root / model / model_dir.name
    if not (path / CARD_FILE).is_file():
        raise ModelFileError(f"{model_dir}: needs the trained model {model} of the same fold at {path}, which is missing")
    return path


def load_model_dir(model_dir: Path) -> Predictor:
    """The predictor of a trained fold folder: a network, a cascade (``models/<cascade>/fold<k>``, with its
    segmenter beside it) or an ensemble (``ensembles/<name>/fold<k>``, members under ``models/``)."""
    card = read_card(model_dir)
    if isinstance(card, EnsembleCard):
        models_root = layout.models_of_ensemble_fold(model_dir)
        return EnsemblePredictor({m: load_model_dir(_sibling(model_dir, m, models_root)) for m in card.members}, card)
    if card.cascade is not None:
        segmenter = _network(_sibling(model_dir, card.cascade.segmenter, layout.models_of_model_fold(model_dir)))
        return CascadePredictor(segmenter, _network(model_dir), card.cascade)
    return _network(model_dir)


def _unpack(spec: Mapping[str, Any], tensors: Tensors, source: Path) -> Predictor:
    kind = spec.get("kind")
    if kind == "network":
        card, prefix = card_from_dict(spec["description"], source), spec["prefix"]
        state = {name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)}
        return NetworkPredictor(load_state(build_described(card, source), state, source), card, source)
    if kind == "cascade":
        return CascadePredictor(_unpack(spec["segmenter"], tensors, source), _unpack(spec["classifier"], tensors, source),
                                CascadeLink(**spec["settings"]))
    if kind == "ensemble":
        members = {name: _unpack(member, tensors, source) for name, member in spec["members"].items()}
        return EnsemblePredictor(members, card_from_dict(spec["description"], source))
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
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:  # also a card of the wrong shape
        raise ModelFileError(f"{path}: inconsistent busflow metadata ({type(error).__name__}: {error})") from None


def load_predictor(path: Path) -> Predictor:
    """A trained fold folder or a packaged ``.safetensors`` file, as a predictor on the CPU."""
    if path.is_file() and path.suffix == PACKAGE_SUFFIX:
        return load_package(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model folder or package")
    return load_model_dir(path)


def package_model(model_dir: Path, target: Path) -> int:
    """Pack the trained fold folder ``model_dir`` into the safetensors file ``target``; return its size in bytes."""
    if target.suffix != PACKAGE_SUFFIX:
        raise ModelFileError(f"--out {target}: a model package is a {PACKAGE_SUFFIX} file")
    save_package(load_model_dir(model_dir), target)
    return target.stat().st_size
