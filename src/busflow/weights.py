"""Pretrained ImageNet checkpoints busflow can start from: a pinned catalogue and a verified fetch.

Each :class:`PretrainedCheckpoint` names one published file of torchvision or timm, its URL, the name it has
in the cache and its sha256 pin. A pin is one of three kinds (:attr:`PretrainedCheckpoint.pin`):

- ``full``: the 64-digit sha256 of the file; the file must hash to exactly this.
- ``prefix``: only the leading hex digits that torchvision puts in the file name are known; the file's
  sha256 must start with them, which is the check ``torch.hub`` itself makes (``check_hash``).
- ``none``: no digest is known; :func:`fetch_weights` refuses to download the file unless a full sha256 is
  given for it (``busflow weights fetch NAME --sha256 HEX``).

Files are downloaded with :func:`busflow.data.download.download_file` (streamed, size-bounded, renamed into
place only once verified) into the cache folder of :func:`weights_dir`. Three environment variables matter:

- ``BUSFLOW_WEIGHTS_DIR``: the cache folder;
- ``TORCH_HOME``: without ``BUSFLOW_WEIGHTS_DIR``, the cache is ``$TORCH_HOME/hub/checkpoints``, the folder
  ``torch.hub`` fills, so checkpoints torchvision already fetched are found and verified in place;
- ``BUSFLOW_WEIGHTS_URL_BASE``: a mirror; the file is fetched from ``<base>/<filename>`` instead of its
  official URL (an offline mirror on a cluster, or a local server in tests).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from busflow.data.download import DownloadError, StderrProgress, TransferError, download_file, sha256_of
from busflow.errors import ModelFileError
from busflow.io import atomic_path

Library = Literal["torchvision", "timm"]
Pin = Literal["full", "prefix", "none"]
LIBRARIES = ("torchvision", "timm")
WEIGHTS_DIR_ENV = "BUSFLOW_WEIGHTS_DIR"
URL_BASE_ENV = "BUSFLOW_WEIGHTS_URL_BASE"
# The network families with a registered pretrained-encoder layout (busflow.models.layouts).
FAMILIES = ("resnet", "vgg", "densenet", "efficientnet", "mobilenet_v2", "vit", "swin")
MAX_WEIGHTS_BYTES = 4 << 30  # the largest checkpoint of the catalogue is about 0.6 GB
TORCHVISION_URL = "https://download.pytorch.org/models/{filename}"
TIMM_URL = "https://huggingface.co/timm/{model}.{tag}/resolve/main/model.safetensors"
_PIN = re.compile(r"^[0-9a-f]{8,64}$")
_FULL = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class PretrainedCheckpoint:
    """One published checkpoint: where it comes from, what it is called in the cache and how it is pinned.

    Attributes:
        name: catalogue key, ``<library>_<model>``.
        library: ``torchvision`` or ``timm``.
        model: the library's constructor name (``torchvision.models.<model>``, ``timm.create_model(model)``).
        family: the busflow network family the weights initialise.
        url: the official download URL.
        sha256: the full lowercase sha256 (pin ``full``), its leading hex digits only (pin ``prefix``:
            the file's digest must start with them), or None (pin ``none``: refused unless given at fetch).
        filename: the file name in the cache (torchvision: the URL's basename; timm: ``<model>.<tag>.safetensors``).
        format: how the file is stored: ``torchvision`` (a pickled state dict) or ``timm`` (safetensors).
        size_bytes: the published file size where known.
        normalization: the input statistics it was trained with (a key of
            ``busflow.models.pretrained.NORMALIZATIONS``: ``imagenet`` or ``half``, i.e. mean = std = 0.5).
    """

    name: str
    library: Library
    model: str
    family: str
    url: str
    sha256: str | None
    filename: str
    format: Library
    size_bytes: int | None = None
    normalization: str = "imagenet"

    def __post_init__(self) -> None:
        if self.library not in LIBRARIES or self.format not in LIBRARIES:
            raise ValueError(f"{self.name}: library and format must be one of {LIBRARIES}")
        if self.family not in FAMILIES:
            raise ValueError(f"{self.name}: family {self.family!r} is not one of {FAMILIES}")
        if self.sha256 is not None and not _PIN.match(self.sha256):
            raise ValueError(f"{self.name}: sha256 pin {self.sha256!r} is not 8 to 64 lowercase hex digits")

    @property
    def pin(self) -> Pin:
        """``full`` (whole sha256), ``prefix`` (leading digits, checked as torch.hub does) or ``none``."""
        if self.sha256 is None:
            return "none"
        return "full" if len(self.sha256) == 64 else "prefix"


def _torchvision(model: str, family: str, filename: str, sha256: str, size_bytes: int | None) -> PretrainedCheckpoint:
    return PretrainedCheckpoint(f"torchvision_{model}", "torchvision", model, family, TORCHVISION_URL.format(filename=filename),
                                sha256, filename, "torchvision", size_bytes)


def _timm(model: str, tag: str, family: str, sha256: str | None, size_bytes: int | None,
          normalization: str = "imagenet") -> PretrainedCheckpoint:
    return PretrainedCheckpoint(f"timm_{model}", "timm", model, family, TIMM_URL.format(model=model, tag=tag), sha256,
                                f"{model}.{tag}.safetensors", "timm", size_bytes, normalization)


# torchvision weights enums: IMAGENET1K_V2 for the ResNets and MobileNetV2, IMAGENET1K_V1 for the others.
# DenseNet-201 is pinned by the prefix its file name carries only. timm: model.safetensors of the Hugging Face
# repository timm/<model>.<tag>.
CHECKPOINTS: dict[str, PretrainedCheckpoint] = {entry.name: entry for entry in (
    _torchvision("resnet50", "resnet", "resnet50-11ad3fa6.pth",
                 "11ad3fa62ca79e40addfd354a8ec4b7c75143b3038b8d2a807fbc68deab379ca", 102_540_417),
    _torchvision("resnet101", "resnet", "resnet101-cd907fc2.pth",
                 "cd907fc2a0de2292b2ba2b27d2216bc672d84632d1cf20058d01c0c03b5e020e", None),
    _torchvision("vgg16", "vgg", "vgg16-397923af.pth",
                 "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0", 553_433_881),
    _torchvision("vgg16_bn", "vgg", "vgg16_bn-6c64b313.pth",
                 "6c64b3138f2f4fcb3bcc4cafde11619c4f440eb1631787e93a682fd88305888a", 553_507_836),
    _torchvision("vgg19", "vgg", "vgg19-dcbb9e9d.pth",
                 "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44", 574_673_361),
    _torchvision("vgg19_bn", "vgg", "vgg19_bn-c79401a0.pth",
                 "c79401a0cf3cb42714e4182f5868c7a6f4f4534f5df9e956e2bb2098de41cbb6", 574_769_405),
    _torchvision("densenet121", "densenet", "densenet121-a639ec97.pth",
                 "a639ec97d7c33b07ae66f0b5fb7d0192f95a3b11b7576c66c0126c2a727c4395", 32_342_954),
    _torchvision("densenet201", "densenet", "densenet201-c1103571.pth", "c1103571", None),
    _torchvision("efficientnet_b0", "efficientnet", "efficientnet_b0_rwightman-7f5810bc.pth",
                 "7f5810bc96def8f7552d5b7e68d53c4786f81167d28291b21c0d90e1fca14934", 21_444_401),
    _torchvision("mobilenet_v2", "mobilenet_v2", "mobilenet_v2-7ebf99e0.pth",
                 "7ebf99e03e254b273379b23edca7ec0da9f48273b23a332b93c1c99d49e86e8f", 14_258_573),
    _torchvision("vit_b_16", "vit", "vit_b_16-c867db91.pth",
                 "c867db91d3e12c6cbadabb610d73c24a546bf82d8c03a9fea34f43a712ddb0e9", 346_328_529),
    _torchvision("swin_t", "swin", "swin_t-704ceda3.pth",
                 "704ceda373461b0a224fcdddd75cd2a5e9f8064512ed47adbddef7f343fd147b", 113_445_839),
    _timm("resnet50", "a1_in1k", "resnet",
          "773525d5821de224f8f30c33377b7a795d7863e08522698200d3217d3f2a41bb", 102_469_840),
    _timm("vit_base_patch16_224", "augreg2_in21k_ft_in1k", "vit",
          "32aa17d6e17b43500f531d5f6dc9bc93e56ed8841b8a75682e1bb295d722405b", 346_284_714, "half"),
    _timm("swin_tiny_patch4_window7_224", "ms_in1k", "swin",
          "fb01861f793143135fa0d6cd97b1631e4b33eaa3ee162bbea9e62de1c76ebac1", 114_286_722),
)}


# ------------------------------------------------------------------------------------------ look-up


def checkpoint(name: str) -> PretrainedCheckpoint:
    """The catalogue entry ``name``; a ModelFileError listing the catalogue for any other name."""
    try:
        return CHECKPOINTS[name]
    except KeyError:
        raise ModelFileError(f"unknown pretrained checkpoint {name!r}; the catalogue has: {', '.join(CHECKPOINTS)}") from None


def weights_dir(explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] = os.environ) -> Path:
    """The cache folder: ``explicit``, else ``$BUSFLOW_WEIGHTS_DIR``, else ``$TORCH_HOME/hub/checkpoints``,
    else ``~/.cache/busflow/weights``."""
    if explicit is not None:
        return Path(explicit).expanduser()
    if environ.get(WEIGHTS_DIR_ENV):
        return Path(environ[WEIGHTS_DIR_ENV]).expanduser()
    if environ.get("TORCH_HOME"):
        return Path(environ["TORCH_HOME"]).expanduser() / "hub" / "checkpoints"
    return Path.home() / ".cache" / "busflow" / "weights"


def download_url(entry: PretrainedCheckpoint, environ: Mapping[str, str] = os.environ) -> str:
    """The official URL, or ``<$BUSFLOW_WEIGHTS_URL_BASE>/<filename>`` when a mirror is set."""
    base = environ.get(URL_BASE_ENV, "").strip()
    return f"{base.rstrip('/')}/{entry.filename}" if base else entry.url


# ----------------------------------------------------------------------------------------- verification


def verify_weights(path: str | os.PathLike[str], entry: PretrainedCheckpoint) -> str:
    """Check the file at ``path`` against the pin of ``entry``; return its sha256.

    A full pin must equal the file's sha256, a prefix pin must start it. Raises ModelFileError naming the
    file, the expected and the actual digest on a mismatch, and for an entry without a pin.
    """
    path = Path(path)
    if entry.sha256 is None:
        raise ModelFileError(f"{path}: {entry.name} has no sha256 pin, so the file cannot be verified")
    actual = sha256_of(path)
    if not actual.startswith(entry.sha256):
        expected = entry.sha256 if entry.pin == "full" else f"a digest starting with {entry.sha256}"
        raise ModelFileError(f"{path}: sha256 mismatch for {entry.name}: expected {expected}, got {actual}")
    return actual


def _check_command(entry: PretrainedCheckpoint, filename: str) -> str:
    if entry.pin == "full":
        return f"check that `sha256sum {filename}` prints {entry.sha256}"
    if entry.pin == "prefix":
        return f"check that `sha256sum {filename}` prints a digest starting with {entry.sha256}"
    return f"check `sha256sum {filename}` against the digest you pass with --sha256"


def manual_steps(entry: PretrainedCheckpoint, url: str, path: Path) -> str:
    """How to put the checkpoint in place by hand when the automatic download fails (no internet)."""
    official = "" if url == entry.url else f" (or the official {entry.url})"
    return (f"Download it manually instead:\n"
            f"  1. download {url}{official} on a machine with internet access;\n"
            f"  2. {_check_command(entry, entry.filename)};\n"
            f"  3. copy it to {path} and re-run (the file there is verified before use).")


# ---------------------------------------------------------------------------------------------- fetch


def _with_sha256(entry: PretrainedCheckpoint, sha256: str | None) -> PretrainedCheckpoint:
    """``entry`` pinned to the full digest given at fetch time, which must agree with the catalogue's pin."""
    if sha256 is None:
        return entry
    given = sha256.strip().lower()
    if not _FULL.match(given):
        raise ModelFileError(f"--sha256 {sha256!r} is not a 64-digit hexadecimal digest")
    if entry.sha256 is not None and not given.startswith(entry.sha256):
        raise ModelFileError(f"{entry.name}: the given sha256 {given} contradicts the catalogue's pin {entry.sha256}")
    return replace(entry, sha256=given)


def _refuse_unpinned(entry: PretrainedCheckpoint) -> ModelFileError:
    return ModelFileError(f"{entry.name}: no sha256 is pinned for {entry.url}, so it is not downloaded unverified; "
                          f"pass the file's sha256 with `busflow weights fetch {entry.name} --sha256 HEX` to fetch it")


def _reuse(path: Path, entry: PretrainedCheckpoint, log: Callable[[str], None]) -> bool:
    """True if a file at ``path`` verifies; a file that does not is removed, so it is never used."""
    if not path.is_file():
        return False
    try:
        verify_weights(path, entry)
    except ModelFileError as error:
        log(f"{error}; removing it and downloading again")
        path.unlink()
        return False
    return True


def _download(entry: PretrainedCheckpoint, url: str, path: Path, timeout_s: float) -> None:
    """Download into a temporary file beside ``path``; it becomes ``path`` only once it verifies."""
    full = entry.sha256 if entry.pin == "full" else None
    try:
        with atomic_path(path) as tmp:
            download_file(url, tmp, sha256=full, max_bytes=MAX_WEIGHTS_BYTES, timeout_s=timeout_s,
                          progress=StderrProgress(f"downloading {entry.name}"))
            if full is None and not (actual := sha256_of(tmp)).startswith(entry.sha256):  # prefix pin
                raise DownloadError(f"{url}: checksum mismatch: expected a sha256 starting with {entry.sha256}, got {actual}")
    except TransferError as error:
        raise ModelFileError(f"{entry.name}: download failed: {error}\n{manual_steps(entry, url, path)}") from error
    except DownloadError as error:
        raise ModelFileError(f"{entry.name}: {error}; nothing was written to {path}") from error


def fetch_weights(name: str, dest: str | os.PathLike[str] | None = None, *, sha256: str | None = None,
                  log: Callable[[str], None] = print, timeout_s: float = 60.0) -> Path:
    """Return the path of the verified checkpoint ``name`` in the cache, downloading it if needed.

    Args:
        name: a key of :data:`CHECKPOINTS`.
        dest: the cache folder (default: :func:`weights_dir`).
        sha256: the file's full sha256, required for an entry without a pin; for a pinned entry it must agree.
        log: receives one line on reuse or download.
        timeout_s: socket timeout of the download.

    Raises:
        ModelFileError: unknown name, no pin, checksum mismatch, or a failed download (its message then gives
            the URL, the sha256 and the path to put the file at by hand).
    """
    entry = _with_sha256(checkpoint(name), sha256)
    if entry.pin == "none":
        raise _refuse_unpinned(entry)
    path = weights_dir(dest) / entry.filename
    if _reuse(path, entry, log):
        log(f"{name}: verified {path} ({entry.pin} sha256 pin)")
        return path
    url = download_url(entry)
    log(f"{name}: downloading {url} to {path}")
    _download(entry, url, path, timeout_s)
    log(f"{name}: verified {path} ({entry.pin} sha256 pin)")
    return path


# ------------------------------------------------------------------------------ a network's starting point


@dataclass(frozen=True)
class InitSource:
    """Where one network's encoder starts (a ``models.<name>.init`` setting, resolved).

    Attributes:
        path: The weight file, or None to start from scratch.
        format: How its tensors are named: ``torchvision``, ``timm`` or ``busflow``.
        normalization: The input statistics it expects (``imagenet``, ``half`` or ``none``).
        checkpoint: The catalogue name when the file is a catalogue checkpoint (fetched and verified by name).
        pretrain: The name of a self-supervised encoder of the ``pretrain`` section (one file per test fold).
    """

    path: Path | None = None
    format: str | None = None
    normalization: str = "none"
    checkpoint: str | None = None
    pretrain: str | None = None

    @property
    def scratch(self) -> bool:
        return self.path is None and self.pretrain is None


def init_source(init: str | Mapping[str, str], weights_settings: Mapping[str, str | None]) -> InitSource:
    """Resolve a validated ``init`` setting: ``scratch``, ``{weights: NAME}`` (a catalogue checkpoint in the
    weights folder), ``{weights: PATH, format: FORMAT}`` or ``{pretrain: NAME}``."""
    if init == "scratch":
        return InitSource()
    if "pretrain" in init:
        return InitSource(format="busflow", pretrain=str(init["pretrain"]))
    name, fmt = str(init["weights"]), init.get("format")
    if fmt is None:
        if name not in CHECKPOINTS:
            raise ModelFileError(f"init.weights: {name!r} is not a checkpoint of `busflow weights list`; for a weight file "
                                 f"of your own give its path and its format (torchvision, timm or busflow)")
        entry = CHECKPOINTS[name]
        return InitSource(weights_dir(weights_settings.get("dir")) / entry.filename, entry.format,
                          init.get("normalization", entry.normalization), name)
    return InitSource(Path(name).expanduser(), fmt, init.get("normalization", "none" if fmt == "busflow" else "imagenet"))
