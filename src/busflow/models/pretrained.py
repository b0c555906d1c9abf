"""Start a network's encoder from a pretrained weight file (torchvision, timm or busflow's own).

Loading never unpickles: ``.safetensors`` files are read as tensors, anything else with
``torch.load(weights_only=True)``, which refuses pickled code. The file's tensors are renamed into the
family's canonical (torchvision) names (:mod:`busflow.models.layouts`), matched to the network's encoder
tensors and adapted where the difference is known to be exact:

* **3 -> 1 input channel.** busflow's networks see one gray channel; ImageNet stems have three. A gray image
  fed as three identical channels gives ``sum_c W_c * x = (sum_c W_c) * x`` (convolution is linear in its
  input channels, and the zero padding is replicated too), so summing the RGB kernels gives the same output
  on the gray image itself.
* **ViT position embeddings** are resampled (bicubic) to the network's patch grid when the input size differs
  from the checkpoint's; torchvision's class-token position is added to the class token, which MONAI's ViT
  concatenates after the position embeddings.
* **A convolution bias before BatchNorm** (VGG-bn) where busflow's convolution has none is absorbed into the
  BatchNorm's running mean: ``BN(conv(x) + b)`` with mean ``mu`` equals ``BN(conv(x))`` with mean ``mu - b``.

Every load is reported (tensors loaded, adapted, missing, shape-mismatched, unexpected) and refused when
fewer than :data:`MIN_MATCHED` of the encoder's tensors match.
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from busflow.errors import ModelFileError
from busflow.models.layouts import EncoderLayout, timm_to_canonical
from busflow.models.registry import get_entry

MIN_MATCHED = 0.95
FORMATS = ("torchvision", "timm", "busflow")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_LISTED = 12  # names kept per category in a report (counts are always complete)
_COUNTER = "num_batches_tracked"


@dataclass(frozen=True)
class InputNormalization:
    """``(x - mean) / std`` on the gray image in [0, 1], as the checkpoint's first layer expects.

    For an RGB checkpoint the gray statistics are the means of its per-channel ones: a gray image has no
    colour, so its replicated channels share one mean and one spread.
    """

    mean: float
    std: float

    @classmethod
    def of_channels(cls, mean: Sequence[float], std: Sequence[float]) -> InputNormalization:
        return cls(round(sum(mean) / len(mean), 6), round(sum(std) / len(std), 6))

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}


NORMALIZATIONS: dict[str, InputNormalization | None] = {
    "imagenet": InputNormalization.of_channels(IMAGENET_MEAN, IMAGENET_STD),
    "half": InputNormalization(0.5, 0.5),  # timm's ViT "augreg" checkpoints
    "none": None,
}


def attach_input_normalization(model: nn.Module, normalization: Mapping[str, float] | None) -> nn.Module:
    """Normalise every input of ``model`` (a forward pre-hook: training, validation and ``busflow predict``
    all call the network, and its state dict is unchanged)."""
    if normalization:
        mean, std = float(normalization["mean"]), float(normalization["std"])

        def normalize(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return ((args[0] - mean) / std, *args[1:])

        model.register_forward_pre_hook(normalize)
    return model


# --------------------------------------------------------------------------- reading a weight file


def read_weight_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a weight file and its metadata (safetensors only), without unpickling anything.

    Raises:
        ModelFileError: Missing, unreadable or pickled file, or one without tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: pretrained weight file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})  # noqa: SIM118 (not a dict)
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelFileError(f"{path}: refused to load, the file holds pickled objects other than tensors "
                             f"({str(error).splitlines()[0]})") from None
    except (OSError, RuntimeError, ValueError, EOFError) as error:
        raise ModelFileError(f"{path}: not a readable weight file ({type(error).__name__}: {error})") from None
    tensors = _state_dict_in(content)
    if not tensors:
        raise ModelFileError(f"{path}: holds no tensors (expected a state dict)")
    return tensors, {}


def _state_dict_in(content: Any) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: plain, or under ``state_dict``/``model``; a ``module.`` prefix
    (DataParallel) removed."""
    while isinstance(content, Mapping) and not any(isinstance(v, torch.Tensor) for v in content.values()):
        nested = next((content[k] for k in ("state_dict", "model") if isinstance(content.get(k), Mapping)), None)
        if nested is None:
            break
        content = nested
    if not isinstance(content, Mapping):
        return {}
    tensors = {str(k): v for k, v in content.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def canonical_tensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], fmt: str, family: str,
                      path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors under the family's torchvision names."""
    if fmt == "torchvision":
        return dict(tensors)
    if fmt == "timm":
        return {name: tensors[key] for key, name in timm_to_canonical(family, tensors).items()}
    if fmt == "busflow":
        source_arch = metadata.get("arch")
        if not source_arch:
            raise ModelFileError(f"{path}: a busflow weight file needs 'arch' in its metadata (written by busflow pretrain)")
        layout = encoder_layout(source_arch, path)
        if layout.family != family:
            raise ModelFileError(f"{path}: holds a {layout.family} encoder ({source_arch}), this network needs {family}")
        return {name: tensors[key] for key, name in layout.canonical_names(tensors).items()}
    raise ModelFileError(f"{path}: unknown weight format {fmt!r}; known: {', '.join(FORMATS)}")


def encoder_layout(arch: str, context: object = "") -> EncoderLayout:
    """The registered encoder layout of ``arch``; a ModelFileError when it has no pretrained encoder."""
    layout = get_entry(arch).encoder
    if layout is None:
        raise ModelFileError(f"{context}: architecture {arch!r} has no pretrained encoder (no weight layout registered)")
    return layout


# --------------------------------------------------------------------------- matching and adapting


@dataclass
class InitReport:
    """What a load took from the file: counts, and up to a dozen names per category."""

    file: str
    format: str
    family: str
    encoder_tensors: int
    loaded: int = 0
    adapted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    shape_mismatched: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def matched_fraction(self) -> float:
        return self.loaded / self.encoder_tensors if self.encoder_tensors else 0.0

    def summary(self) -> str:
        return (f"{self.loaded}/{self.encoder_tensors} encoder tensors loaded ({self.matched_fraction:.1%}) from {self.file}"
                f" [{self.format}]: {len(self.adapted)} adapted, {len(self.missing)} missing, "
                f"{len(self.shape_mismatched)} shape-mismatched, {len(self.unexpected)} unused")

    def as_dict(self) -> dict[str, Any]:
        record = asdict(self)
        for key in ("adapted", "missing", "shape_mismatched", "unexpected"):
            record[f"n_{key}"] = len(record[key])
            record[key] = record[key][:_LISTED]
        record["matched_fraction"] = round(self.matched_fraction, 4)
        return record


def _square_side(n: int) -> int | None:
    side = math.isqrt(n)
    return side if side * side == n else None


def _patch_positions(pos: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Split a (1, [1 +] G*G, D) position embedding into its class-token entry (or None) and its patch grid."""
    if _square_side(pos.shape[1]):
        return None, pos
    return pos[:, :1], pos[:, 1:]


def _resampled_positions(pos: torch.Tensor, target: torch.Size) -> torch.Tensor | None:
    _, grid = _patch_positions(pos)
    source_side, target_side = _square_side(grid.shape[1]), _square_side(target[1])
    if source_side is None or target_side is None or grid.shape[2] != target[2]:
        return None
    if source_side == target_side:
        return grid
    image = grid.reshape(1, source_side, source_side, -1).permute(0, 3, 1, 2)
    image = F.interpolate(image.float(), size=(target_side, target_side), mode="bicubic", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, target_side * target_side, -1).to(grid.dtype)


def _adapted(name: str, tensor: torch.Tensor, target: torch.Size, source: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | None, str]:
    """``tensor`` made to fit ``target``: unchanged, or by one of the exact adaptations; (None, "") if none fits."""
    if name == "encoder.pos_embedding":
        grid = _resampled_positions(tensor, target)
        note = "" if grid is not None and grid.shape[1] == tensor.shape[1] else "position grid resampled"
        return grid, note
    if name == "class_token" and "encoder.pos_embedding" in source:
        class_position, _ = _patch_positions(source["encoder.pos_embedding"])
        if class_position is not None and tensor.shape == target:
            return tensor + class_position, "class-token position added"
    if tensor.shape == target:
        return tensor, ""
    if tensor.ndim == 4 and tensor.shape[1] == 3 and target[1] == 1 and tensor.shape[0] == target[0] and tensor.shape[2:] == target[2:]:
        return tensor.sum(dim=1, keepdim=True), "RGB kernels summed to one gray channel"
    return None, ""


def _absorb_conv_biases(source: Mapping[str, torch.Tensor], state: dict[str, torch.Tensor],
                        canonical_to_model: Mapping[str, str], report: InitReport) -> set[str]:
    """Fold ``<seq>.<i>.bias`` of a conv the network builds without bias into the BatchNorm at ``<seq>.<i+1>``."""
    used = set()
    for name, bias in source.items():
        match = re.fullmatch(r"(.+)\.(\d+)\.bias", name)
        if match is None or name in canonical_to_model or source.get(f"{match[1]}.{match[2]}.weight", bias).ndim != 4:
            continue
        running_mean = f"{match[1]}.{int(match[2]) + 1}.running_mean"
        model_key = canonical_to_model.get(running_mean)
        if model_key is not None and running_mean in source and state[model_key].shape == bias.shape:
            state[model_key] = state[model_key] - bias.to(state[model_key].dtype)
            report.adapted.append(f"{name} absorbed into {running_mean}")
            used.add(name)
    return used


def load_pretrained(model: nn.Module, arch: str, path: Path, fmt: str, *, min_fraction: float = MIN_MATCHED) -> InitReport:
    """Load the encoder of ``model`` (architecture ``arch``) from the weight file ``path`` in format ``fmt``.

    Returns:
        The load's report.

    Raises:
        ModelFileError: Unreadable or pickled file, another family's encoder, or fewer than ``min_fraction``
            of the encoder's tensors matched (the message names the file and the first mismatches).
    """
    layout = encoder_layout(arch, path)
    tensors, metadata = read_weight_file(path)
    source = canonical_tensors(tensors, metadata, fmt, layout.family, path)
    state = model.state_dict()
    # BatchNorm's batch counters are bookkeeping, not weights: neither loaded nor counted.
    model_to_canonical = {k: v for k, v in layout.canonical_names(state).items() if not k.endswith(_COUNTER)}
    canonical_to_model = {name: key for key, name in model_to_canonical.items()}
    report = InitReport(file=str(path), format=fmt, family=layout.family, encoder_tensors=len(model_to_canonical))
    for key, name in model_to_canonical.items():
        if name not in source:
            report.missing.append(key)
            continue
        tensor, note = _adapted(name, source[name], state[key].shape, source)
        if tensor is None:
            report.shape_mismatched.append(f"{key}: {tuple(source[name].shape)} in the file, {tuple(state[key].shape)} here")
            continue
        state[key] = tensor.to(state[key].dtype)
        report.loaded += 1
        if note:
            report.adapted.append(f"{key}: {note}")
    absorbed = _absorb_conv_biases(source, state, canonical_to_model, report)
    report.unexpected = [name for name in source if name not in canonical_to_model and name not in absorbed
                         and not name.endswith(_COUNTER)]
    if report.matched_fraction < min_fraction:
        detail = "; ".join((report.shape_mismatched + report.missing)[:4])
        raise ModelFileError(f"{path}: only {report.loaded} of the {report.encoder_tensors} tensors of {arch}'s "
                             f"{layout.family} encoder match ({report.matched_fraction:.1%} < {min_fraction:.0%}); "
                             f"first differences: {detail}")
    model.load_state_dict(state)
    return report


# --------------------------------------------------------------------------- fine-tuning


def encoder_parameter_names(model: nn.Module, arch: str) -> set[str]:
    """Names of the parameters of ``model`` that belong to its pretrained encoder."""
    layout = encoder_layout(arch, arch)
    return set(layout.canonical_names([name for name, _ in model.named_parameters()]))


def set_encoder_frozen(model: nn.Module, names: set[str], frozen: bool) -> None:
    """Freeze (or release) the encoder: no gradients, and its BatchNorm layers keep their running statistics.

    Call after ``model.train()``: freezing puts the encoder's normalisation layers back in eval mode.
    """
    for name, parameter in model.named_parameters():
        if name in names:
            parameter.requires_grad_(not frozen)
    if frozen:
        for name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and f"{name}.weight" in names:
                module.eval()


def save_encoder(model: nn.Module, arch: str, path: Path, metadata: Mapping[str, str]) -> int:
    """Write the encoder tensors of ``model`` as a busflow weight file (safetensors, ``arch`` in the metadata);
    return how many tensors were written."""
    from safetensors.torch import save_file

    from busflow.io import atomic_path

    layout = encoder_layout(arch, path)
    state = model.state_dict()
    encoder = {key: state[key].detach().cpu().contiguous() for key in layout.canonical_names(state)}
    with atomic_path(Path(path)) as tmp:
        save_file(encoder, str(tmp), metadata={**{k: str(v) for k, v in metadata.items()}, "arch": arch, "format": "busflow"})
    return len(encoder)
