"""The typed training spec of one network: a ``models.<name>`` entry of params.yaml (or a cascade's ``classifier``)
after schema validation, as one frozen value that the loop, the losses and the augmentation read.

The schema (``workflow/schemas/params.schema.yaml``, ``$defs/training``) fills every default before a spec is
built, so :meth:`TrainSpec.of` requires every key: a missing one is a bug upstream, not a user error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class AugmentSpec:
    """Random augmentation of the training part: flips, then a random affine (rotation, zoom, shift)."""

    flip: bool = True
    vertical_flip: bool = False
    rotate_deg: float = 15.0
    zoom: float = 0.1  # scale drawn in [1 - zoom, 1 + zoom]
    shift: float = 0.1  # fraction of the side

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> AugmentSpec:
        return cls(**settings)

    @property
    def has_affine(self) -> bool:
        return bool(self.rotate_deg or self.zoom or self.shift)

    @property
    def active(self) -> bool:
        return self.flip or self.vertical_flip or self.has_affine


NO_AUGMENTATION = AugmentSpec(flip=False, vertical_flip=False, rotate_deg=0, zoom=0, shift=0)


@dataclass(frozen=True)
class LrStep:
    """Step schedule: lr × gamma every ``epochs`` epochs (0 = constant lr)."""

    epochs: int = 0
    gamma: float = 0.1


@dataclass(frozen=True)
class TrainSpec:
    """What one network is and how it is fitted (one ``$defs/training`` entry of the params schema)."""

    arch: str
    epochs: int
    batch_size: int
    lr: float
    options: Mapping[str, Any] = field(default_factory=dict)
    weight_decay: float = 1.0e-4
    optimizer: str = "adam"  # adam | adamw | sgd
    betas: tuple[float, float] = (0.9, 0.999)
    patience: int = 10  # epochs without validation improvement before stopping; 0 = never stop early
    restore_best: bool = True  # end with the best validation epoch's weights; False: the last epoch's
    lr_step: LrStep = LrStep()
    cls_loss: str = "ce"  # ce | focal
    focal_gamma: float = 2.0
    class_weights: bool = True  # inverse-frequency class weights in the classification loss
    seg_loss: str = "dice_ce"  # dice_ce | dice | bce
    seg_loss_weight: float = 1.0  # multi-task loss = cls_loss + seg_loss_weight × seg_loss
    oversample: bool = False
    augment: AugmentSpec = AugmentSpec()
    init: str | Mapping[str, str] = "scratch"  # where the encoder starts (resolved by the init-weights stage)
    freeze_encoder_epochs: int = 0  # epochs that train only the layers around a frozen pretrained encoder
    encoder_lr_factor: float = 1.0  # the encoder's learning rate relative to lr

    @property
    def tunes_encoder(self) -> bool:
        """Whether the encoder is trained differently from the rest (frozen first, or at another rate)."""
        return self.freeze_encoder_epochs > 0 or self.encoder_lr_factor != 1.0

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> TrainSpec:
        """The spec of a validated params entry."""
        settings = dict(entry)
        return cls(**{**settings, "options": dict(settings.get("options") or {}), "betas": tuple(settings["betas"]),
                      "lr_step": LrStep(**settings["lr_step"]), "augment": AugmentSpec.of(settings["augment"])})

    def with_cell(self, lr: float, options: Mapping[str, Any]) -> TrainSpec:
        """One cell of an ablation grid: this spec with another learning rate and some options replaced."""
        return replace(self, lr=lr, options={**self.options, **options})

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (for checkpoint fingerprints)."""
        values = asdict(self)
        values["options"] = dict(self.options)
        return values
