"""``model.json``: the card of a trained model, typed. One of three shapes:

- :class:`NetworkCard`: one trained network (train stage, and every fold model of the leakage study and
  the ablation grid): everything needed to rebuild it and its input pipeline without params.yaml, and
  where it was trained;
- the same card with :class:`CascadeLink` set: the cascade's crop classifier, which also names the
  segmenter whose predicted masks it crops and how;
- :class:`EnsembleCard`: an ensemble, which has no network of its own, only members and their weights.

Cards are written by the stages and read by ``busflow predict``, ``package``, ``external`` and the demo.
Reading checks the keys every shape needs and names the file when it is unusable. No torch import.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from busflow.errors import ModelFileError
from busflow.io import write_json

CARD_FILE = "model.json"
INPUT_SCALING = "uint8 / 255"
ENSEMBLE_ARCH = "ensemble"


@dataclass(frozen=True)
class TrainedOn:
    """Where and how a network was trained (the report's reproducibility section reads it)."""

    device: str
    device_name: str | None = None
    torch: str | None = None
    threads: int | None = None  # None in cards of older versions
    deterministic: bool | None = None
    fast_path: bool = False
    compiled: bool = False


@dataclass(frozen=True)
class CascadeLink:
    """How the cascade classifier's test crops were made: around the largest lesion of ``segmenter``'s mask."""

    segmenter: str
    margin: float
    empty_roi_fraction: float
    threshold: float


@dataclass(frozen=True)
class NetworkCard:
    """One trained network: architecture and options, classes, input size and preprocessing."""

    arch: str
    options: Mapping[str, Any]
    in_channels: int
    n_classes: int
    classes: list[str]
    tasks: list[str]
    image_size: int | None = None
    input_scaling: str = INPUT_SCALING
    preprocess: Mapping[str, Any] | None = None  # the run's preprocess settings; None in cards of older versions
    trained_on: TrainedOn | None = None
    cascade: CascadeLink | None = None
    # (x - mean) / std after the uint8 scaling, as the pretrained encoder expects; None: the scaled image as is
    input_normalization: Mapping[str, float] | None = None
    init: Mapping[str, Any] | None = None  # where the encoder started and what the load matched; None: scratch

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        optional = ("cascade", "input_normalization", "init")  # absent rather than null: cards of scratch models stay as they were
        return {key: value for key, value in values.items() if not (key in optional and value is None)}


@dataclass(frozen=True)
class EnsembleCard:
    """An ensemble: the members' probabilities averaged with ``weights`` (task → member → weight)."""

    members: list[str]
    weights: Mapping[str, Mapping[str, float]]
    classes: list[str]
    tasks: list[str]
    weights_rule: str | list[float] = "equal"
    image_size: int | None = None
    arch: str = field(default=ENSEMBLE_ARCH, init=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ModelCard = NetworkCard | EnsembleCard


def _required(card_class: type) -> set[str]:
    return {f.name for f in fields(card_class) if f.init and f.default is MISSING and f.default_factory is MISSING}


def card_from_dict(values: Mapping[str, Any], source: Path) -> ModelCard:
    """The card of a parsed model.json; an error naming ``source`` when a key the shape needs is missing."""
    is_ensemble = values.get("arch") == ENSEMBLE_ARCH
    card_class = EnsembleCard if is_ensemble else NetworkCard
    missing = sorted((_required(card_class) | ({"arch"} if is_ensemble else set())) - set(values))
    if missing:
        raise ModelFileError(f"{source}: not a busflow model description (missing {missing})")
    known = {f.name for f in fields(card_class) if f.init}
    settings = {key: value for key, value in values.items() if key in known}
    if is_ensemble:
        return EnsembleCard(**settings)
    if settings.get("trained_on") is not None:
        settings["trained_on"] = TrainedOn(**settings["trained_on"])
    if settings.get("cascade") is not None:
        if "threshold" not in settings["cascade"]:
            raise ModelFileError(f"{source}: the cascade's segmenter threshold is not recorded (older busflow); retrain it")
        settings["cascade"] = CascadeLink(**settings["cascade"])
    return NetworkCard(**settings)


def read_card(model_dir: Path) -> ModelCard:
    """``model_dir/model.json``, checked: a clear error naming the file when it is missing or unusable."""
    path = model_dir / CARD_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{model_dir}: not a trained model (no model.json); expected results/<run>/models/<model>/fold<k> "
                             "or a packaged .safetensors file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFileError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise ModelFileError(f"{path}: not a busflow model description (a JSON {type(values).__name__})")
    try:
        return card_from_dict(values, path)
    except TypeError as error:  # a key of the wrong shape, e.g. trained_on with unknown fields
        raise ModelFileError(f"{path}: not a busflow model description ({error})") from None


def write_card(model_dir: Path, card: ModelCard) -> None:
    write_json(model_dir / CARD_FILE, card.to_dict())
