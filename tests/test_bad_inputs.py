"""The bad-input catalogue: every case gives one clear message naming the file and the problem, and never
removes an output that was already produced; under ``data.on_bad_sample: skip`` a bad sample is left out and
listed in data/skipped.csv instead.

Cases covered elsewhere: archives with ``../``, absolute paths or links, checksum mismatches and interrupted
downloads (test_download.py); NaN/inf loss and out-of-memory (test_resume.py); untrusted model files
(test_untrusted.py); non-images and oversized images in the demo (test_demo.py).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from busflow.cli import main
from busflow.data.synthetic import generate_phantoms
from conftest import TINY_PARAMS

Breakage = Callable[[Path], str]  # breaks the dataset at root; returns the file the message must name


def _first(root: Path, label: str, mask: bool = False) -> Path:
    return next(p for p in sorted((root / label).glob("*.png")) if ("_mask" in p.stem) == mask)


def _truncated_png(root: Path) -> str:
    image = _first(root, "benign")
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    return str(image)


def _zero_byte(root: Path) -> str:
    image = _first(root, "malignant")
    image.write_bytes(b"")
    return str(image)


def _text_as_png(root: Path) -> str:
    image = _first(root, "benign")
    image.write_text("patient notes, not pixels")
    return str(image)


def _image_without_mask(root: Path) -> str:
    mask = _first(root, "benign", mask=True)
    mask.unlink()
    return str(mask).replace("_mask", "")


def _mask_without_image(root: Path) -> str:
    image = _first(root, "malignant")
    image.unlink()
    return str(image.with_name(f"{image.stem}_mask.png"))


def _mask_of_another_size(root: Path) -> str:
    mask = _first(root, "benign", mask=True)
    Image.new("L", (17, 13)).save(mask)
    return str(mask)


def _corrupt_mask(root: Path) -> str:
    mask = _first(root, "malignant", mask=True)
    mask.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return str(mask)


def _duplicate_ids(root: Path) -> str:
    image = _first(root, "benign")
    shutil.copy2(image, root / "malignant" / image.name)
    shutil.copy2(image.with_name(f"{image.stem}_mask.png"), root / "malignant" / f"{image.stem}_mask.png")
    return image.stem


def _non_utf8_name(root: Path) -> str:
    image = _first(root, "normal")
    with open(os.fsencode(root / "normal") + b"/scan\xff.png", "wb") as handle:
        handle.write(image.read_bytes())
    return "scan\N{REPLACEMENT CHARACTER}.png"


SAMPLE_CASES: dict[str, tuple[Breakage, str]] = {
    "truncated PNG": (_truncated_png, "cannot be decoded as an image"),
    "zero-byte file": (_zero_byte, "cannot be read as an image"),
    "non-image with a .png name": (_text_as_png, "cannot be read as an image"),
    "image without mask": (_image_without_mask, "benign image without a mask"),
    "mask without image": (_mask_without_image, "mask without an image"),
    "mask of another size": (_mask_of_another_size, "mask size (17, 13) differs from its image"),
    "undecodable mask": (_corrupt_mask, "cannot be read as a mask"),
    "duplicate image IDs": (_duplicate_ids, "occurs in more than one class folder"),
    "non-UTF-8 file name": (_non_utf8_name, "file name is not valid UTF-8"),
}


def _empty_class(root: Path) -> str:
    for path in (root / "normal").iterdir():
        path.unlink()
    return str(root / "normal")


def _unknown_class(root: Path) -> str:
    (root / "cysts").mkdir()
    shutil.copy2(_first(root, "benign"), root / "cysts" / "c1.png")
    return "cysts"


DATASET_CASES: dict[str, tuple[Breakage, str]] = {
    "empty class folder": (_empty_class, "class folder holds no images"),
    "unknown class folder": (_unknown_class, "unknown class folder"),
}


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clean") / "scans"
    generate_phantoms(root, n_patients=9, seed=4, image_size=(48, 60), class_mix={"normal": 0.3, "benign": 0.4, "malignant": 0.3},
                      views_per_patient=(1, 1))
    return root


class Workspace:
    """A folder-dataset run: params, the dataset, and the outputs of a clean preprocess already written."""

    def __init__(self, root: Path, clean: Path) -> None:
        self.root, self.dataset = root, root / "scans"
        shutil.copytree(clean, self.dataset)
        self.outputs = {name: root / "data" / name for name in ("index.csv", "arrays.npz", "skipped.csv")}
        self.write_params("error")
        assert self.run("download", "--out", str(root / "raw")) == 0
        assert self.preprocess() == 0
        self.produced = {name: path.read_bytes() for name, path in self.outputs.items()}

    def write_params(self, policy: str, **changes: object) -> Path:
        params = yaml.safe_load(TINY_PARAMS.read_text())
        params.update(dataset="folder", **changes)
        params["data"].update(on_bad_sample=policy, folder={"path": str(self.dataset)})
        path = self.root / "params.yaml"
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        return path

    def run(self, command: str, *args: str) -> int:
        return main([command, "--params", str(self.root / "params.yaml"), *args])

    def preprocess(self) -> int:
        paths = [f"--{name}" if i % 2 == 0 else value for name, value in
                 (("raw", self.root / "raw"), ("index", self.outputs["index.csv"]), ("arrays", self.outputs["arrays.npz"]),
                  ("skipped", self.outputs["skipped.csv"])) for i in (0, 1)]
        return self.run("preprocess", *map(str, paths))

    def break_with(self, breakage: Breakage) -> str:
        named = breakage(self.dataset)
        assert self.run("download", "--out", str(self.root / "raw")) == 0  # the source record follows the dataset
        return named

    def untouched(self) -> bool:
        return all(self.outputs[name].read_bytes() == content for name, content in self.produced.items())


@pytest.fixture
def workspace(tmp_path: Path, clean_dataset: Path) -> Workspace:
    return Workspace(tmp_path, clean_dataset)


@pytest.mark.parametrize("case", list(SAMPLE_CASES))
def test_bad_sample_stops_with_its_name_or_is_skipped_and_listed(workspace: Workspace, case: str, capsys) -> None:
    breakage, problem = SAMPLE_CASES[case]
    named = workspace.break_with(breakage)
    capsys.readouterr()
    assert workspace.preprocess() == 2
    message = capsys.readouterr().err
    assert named in message and problem in message, message
    assert "Traceback" not in message
    assert workspace.untouched(), "a failed run must not remove or change what was produced"

    workspace.write_params("skip")
    assert workspace.preprocess() == 0
    assert "bad sample(s) skipped" in capsys.readouterr().out
    skipped = pd.read_csv(workspace.outputs["skipped.csv"])
    assert len(skipped) >= 1 and skipped["problem"].str.contains(problem, regex=False).all()
    assert skipped["problem"].str.contains(named, regex=False).any()
    index = pd.read_csv(workspace.outputs["index.csv"])
    with np.load(workspace.outputs["arrays.npz"]) as arrays:
        assert arrays["image_ids"].tolist() == index["image_id"].astype(str).tolist()
    assert not index["image_path"].isin(skipped["sample"]).any()


@pytest.mark.parametrize("case", list(DATASET_CASES))
def test_a_broken_dataset_layout_stops_under_both_policies(workspace: Workspace, case: str, capsys) -> None:
    breakage, problem = DATASET_CASES[case]
    named = workspace.break_with(breakage)
    for policy in ("error", "skip"):
        workspace.write_params(policy)
        capsys.readouterr()
        assert workspace.preprocess() == 2
        message = capsys.readouterr().err
        assert named in message and problem in message, message
        assert workspace.untouched()


def _accepted_variant(root: Path, variant: str) -> tuple[Path, np.ndarray]:
    """Rewrite one benign scan or its mask in another encoding; return the image and the lesion it must have."""
    image = _first(root, "benign")
    mask_path = image.with_name(f"{image.stem}_mask.png")
    lesion = np.asarray(Image.open(mask_path).convert("L")) >= 128
    if variant == "16-bit image":
        Image.fromarray((np.asarray(Image.open(image).convert("L")).astype(np.uint16) * 257)).save(image)
    elif variant == "RGBA mask":
        Image.fromarray(np.dstack([lesion * 255] * 3 + [np.full(lesion.shape, 255)]).astype(np.uint8), "RGBA").save(mask_path)
    elif variant == "1-bit mask":
        Image.fromarray(lesion).convert("1").save(mask_path)
    elif variant == "palette mask":
        Image.fromarray(lesion.astype(np.uint8) * 255).convert("P").save(mask_path)
    elif variant == "0/1 label mask":
        Image.fromarray(lesion.astype(np.uint8)).save(mask_path)
    elif variant == "anti-aliased mask (0-255)":
        soft = np.where(lesion, 200, 60).astype(np.uint8)  # 60 < 128 <= 200: the documented half-range rule
        Image.fromarray(soft).save(mask_path)
    return image, lesion


@pytest.mark.parametrize("variant", ["16-bit image", "RGBA mask", "1-bit mask", "palette mask", "0/1 label mask",
                                     "anti-aliased mask (0-255)"])
def test_accepted_encodings_give_the_same_lesion(workspace: Workspace, variant: str) -> None:
    from busflow.data.preprocess import load_grayscale, load_mask_union

    image, lesion = _accepted_variant(workspace.dataset, variant)
    mask_path = image.with_name(f"{image.stem}_mask.png")
    assert (load_mask_union([str(mask_path)], lesion.shape) == lesion).all()
    assert load_grayscale(image).shape == lesion.shape
    workspace.break_with(lambda root: "")
    assert workspace.preprocess() == 0 and len(pd.read_csv(workspace.outputs["skipped.csv"])) == 0


@pytest.mark.parametrize(("change", "message"), [
    ({"preprocess": {"size": 32, "colour": "rgb"}}, "preprocess: Additional properties are not allowed ('colour'"),
    ({"preprocess": {"size": "large"}}, "preprocess.size: 'large' is not of type 'integer'"),
    ({"train": {"models": ["unet", "unet_9000"], "folds": [0, 1]}}, "unet_9000"),
])
def test_bad_params_name_the_key(workspace: Workspace, change: dict, message: str, capsys) -> None:
    params = workspace.write_params("error", **change)
    capsys.readouterr()
    assert workspace.preprocess() == 2
    error = capsys.readouterr().err
    assert str(params) in error and message in error, error
    assert workspace.untouched()


@pytest.mark.parametrize(("split", "message"), [
    ({"n_folds": 12, "val_fraction": 0.25, "grouping": "auto", "duplicates": {}, "views": {}}, "too few for 12 folds"),
    ({"n_folds": 3, "val_fraction": 0.5, "grouping": "auto", "duplicates": {}, "views": {}}, "part holds only class"),
])
def test_split_problems_name_the_index_and_the_remedy(workspace: Workspace, split: dict, message: str, capsys) -> None:
    if message.startswith("part holds"):  # one benign and one malignant patient among normals: a test fold of one class
        for label in ("benign", "malignant"):
            for path in sorted((workspace.dataset / label).glob("*.png"))[2:]:
                path.unlink()
        workspace.break_with(lambda root: "")
        assert workspace.preprocess() == 0
    data = workspace.root / "data"
    workspace.write_params("error", split=split)
    assert workspace.run("group", "--index", str(data / "index.csv"), "--groups", str(data / "groups.csv"),
                         "--links", str(data / "links.csv")) == 0
    capsys.readouterr()
    outputs = [str(data / name) for name in ("folds.csv", "conflicts.csv")]
    assert workspace.run("split", "--index", str(data / "index.csv"), "--groups", str(data / "groups.csv"),
                         "--folds", outputs[0], "--conflicts", outputs[1]) == 2
    error = capsys.readouterr().err
    assert str(data / "index.csv") in error and message in error, error
    assert not any(Path(p).exists() for p in outputs)
