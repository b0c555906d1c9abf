"""Untrusted model files never execute code: pickled payloads are refused, bad descriptions and tampered
packages fail with an error instead of loading (weights are read with ``weights_only=True`` or safetensors)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from busflow.cli import main
from busflow.errors import ModelFileError
from busflow.serve.predict import predict_images
from busflow.serve.predictors import load_predictor, save_package
from busflow.train.outputs import load_trained

from conftest import MODEL_CLASSES, saved_model

CLASSES = MODEL_CLASSES
UNET = ("unet", {"features": [4, 4, 8, 8, 16, 4]})




class _TouchOnUnpickle:
    """Unpickling this calls ``Path.touch(marker)``: stands in for any code an attacker would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return pathlib.Path.touch, (self.marker,)


PAYLOADS: dict[str, Callable[[Path], Any]] = {
    "bare object": _TouchOnUnpickle,
    "inside a state dict": lambda marker: {"net.weight": torch.zeros(2), "net.bias": _TouchOnUnpickle(marker)},
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 50), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "scan.png")
    return folder


def _plant(model_dir: Path, payload: Any, legacy: bool) -> None:
    torch.save(payload, model_dir / "weights.pt", _use_new_zipfile_serialization=not legacy)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip format", "legacy format"])
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_the_payload_is_live_when_unpickled_unsafely(tmp_path: Path, payload: str, legacy: bool) -> None:
    """Control: the planted file really does run code under a plain unpickle, so its refusal below means something."""
    marker = tmp_path / "pwned"
    _plant(tmp_path, PAYLOADS[payload](marker), legacy)
    torch.load(tmp_path / "weights.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip format", "legacy format"])
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_a_pickled_payload_in_weights_pt_is_refused_without_running(tmp_path: Path, images: Path, payload: str,
                                                                    legacy: bool, capsys: pytest.CaptureFixture[str]) -> None:
    model = saved_model(tmp_path / "model", "classical_threshold", {})
    marker = tmp_path / "pwned"
    _plant(model, PAYLOADS[payload](marker), legacy)
    refused = rf"{model / 'weights.pt'}: refused: it holds objects other than tensors"
    with pytest.raises(ModelFileError, match=refused):
        load_trained(model)
    assert not marker.exists()
    with pytest.raises(ModelFileError, match=refused):
        predict_images(model, str(images), tmp_path / "out", progress=False)
    assert not marker.exists()
    assert main(["predict", "--model", str(model), "--input", str(images), "--out", str(tmp_path / "cli")]) == 2
    error = capsys.readouterr().err
    assert "refused" in error and "Traceback" not in error and "weights_only=False" not in error
    assert not marker.exists()
    assert not (tmp_path / "cli" / "predictions.csv").exists()


def test_model_json_that_is_not_json_is_an_error(tmp_path: Path, images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = saved_model(tmp_path / "model", "classical_threshold", {})
    (model / "model.json").write_text("{'arch': 'unet',", encoding="utf-8")
    with pytest.raises(ModelFileError, match=rf"{model / 'model.json'}: not valid JSON \(Expecting property name"):
        load_predictor(model)
    assert main(["predict", "--model", str(model), "--input", str(images), "--out", str(tmp_path / "cli")]) == 2
    assert "busflow predict: error:" in capsys.readouterr().err


def test_model_json_without_the_network_keys_is_refused(tmp_path: Path, images: Path) -> None:
    model = saved_model(tmp_path / "model", "classical_threshold", {})
    (model / "model.json").write_text(json.dumps({"arch": "unet"}), encoding="utf-8")
    with pytest.raises(ModelFileError, match=r"model.json: not a busflow model description \(missing \['classes', 'in_channels'"):
        load_predictor(model)


def test_model_json_with_an_unknown_arch_names_it(tmp_path: Path, images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = saved_model(tmp_path / "model", "classical_threshold", {})
    description = json.loads((model / "model.json").read_text(encoding="utf-8"))
    (model / "model.json").write_text(json.dumps({**description, "arch": "no_such_net"}), encoding="utf-8")
    with pytest.raises(ModelFileError, match=rf"{model / 'model.json'}: unknown architecture 'no_such_net'; available: .*unet"):
        load_trained(model)
    with pytest.raises(ModelFileError, match="no_such_net"):
        predict_images(model, str(images), tmp_path / "out", progress=False)
    assert main(["predict", "--model", str(model), "--input", str(images), "--out", str(tmp_path / "cli")]) == 2
    assert "unknown architecture 'no_such_net'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("package")
    target = root / "unet.safetensors"
    save_package(load_predictor(saved_model(root / "unet", *UNET)), target)
    return target


def _split(path: Path) -> tuple[dict[str, Any], bytes]:
    """A safetensors file's JSON header and its tensor bytes."""
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _join(target: Path, header: dict[str, Any], body: bytes) -> Path:
    encoded = json.dumps(header).encode()
    target.write_bytes(len(encoded).to_bytes(8, "little") + encoded + body)
    return target


def _first_conv(header: dict[str, Any]) -> str:
    return next(name for name, entry in header.items() if name != "__metadata__" and len(entry["shape"]) == 4)


def _retyped(header: dict[str, Any], name: str, **changes: Any) -> dict[str, Any]:
    return {**header, name: {**header[name], **changes}}


def _truncated(package: Path, target: Path) -> Path:
    target.write_bytes(package.read_bytes()[: package.stat().st_size // 2])
    return target


def _bigger_shape(package: Path, target: Path) -> Path:
    header, body = _split(package)
    name = _first_conv(header)
    return _join(target, _retyped(header, name, shape=[2 * n for n in header[name]["shape"]]), body)


def _other_dtype(package: Path, target: Path) -> Path:
    header, body = _split(package)
    return _join(target, _retyped(header, _first_conv(header), dtype="F64"), body)


def _overlapping_offsets(package: Path, target: Path) -> Path:
    header, body = _split(package)
    name = _first_conv(header)
    start, end = header[name]["data_offsets"]
    return _join(target, _retyped(header, name, data_offsets=[start - 4, end - 4]), body)


def _huge_header_length(package: Path, target: Path) -> Path:
    target.write_bytes((10**12).to_bytes(8, "little") + package.read_bytes()[8:])
    return target


TAMPERS: dict[str, Callable[[Path, Path], Path]] = {
    "truncated": _truncated, "bigger shape": _bigger_shape, "other dtype": _other_dtype,
    "overlapping offsets": _overlapping_offsets, "huge header length": _huge_header_length,
}


def test_rewriting_an_untouched_header_keeps_a_loadable_package(tmp_path: Path, package: Path) -> None:
    """Control: the tampering helpers change only what they mean to."""
    header, body = _split(package)
    copy = _join(tmp_path / "copy.safetensors", header, body)
    assert load_predictor(copy).tasks == frozenset({"seg"})


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_a_tampered_package_is_refused_naming_the_file(tmp_path: Path, images: Path, package: Path, tamper: str) -> None:
    damaged = TAMPERS[tamper](package, tmp_path / "tampered.safetensors")
    with pytest.raises(ModelFileError, match=r"tampered\.safetensors: not a readable safetensors model package"):
        load_predictor(damaged)
    with pytest.raises(ModelFileError, match=r"tampered\.safetensors"):
        predict_images(damaged, str(images), tmp_path / "out", progress=False)


def test_tensors_that_do_not_fit_the_described_network_are_not_loaded(tmp_path: Path, package: Path) -> None:
    """A well-formed file whose shapes disagree with its metadata's architecture (same byte count, so the
    safetensors layer accepts it) still fails rather than loading a wrong network."""
    header, body = _split(package)
    name = _first_conv(header)
    damaged = _join(tmp_path / "reshaped.safetensors", _retyped(header, name, shape=header[name]["shape"][::-1]), body)
    with pytest.raises(ModelFileError, match=f"reshaped.safetensors: the weights do not fit the network described with them "
                                           f"\\(size mismatch for {name}"):
        load_predictor(damaged)


def test_package_metadata_that_is_not_a_busflow_description_is_refused(tmp_path: Path, package: Path) -> None:
    header, body = _split(package)
    for name, metadata in {"not_json": "{no", "no_kind": json.dumps({"prefix": ""})}.items():
        damaged = _join(tmp_path / f"{name}.safetensors", {**header, "__metadata__": {"busflow": metadata}}, body)
        with pytest.raises(ModelFileError, match=rf"{name}.safetensors: (inconsistent busflow metadata|unknown predictor kind)"):
            load_predictor(damaged)
