"""Shared fixtures: a scratch copy of the workflow driven by a chosen params file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_PARAMS = REPO / "tests" / "data" / "tiny_params.yaml"
BINARY, THREE = ("benign", "malignant"), ("normal", "benign", "malignant")


def classes_of(paper: str) -> tuple[str, ...]:
    """The classes of a paper's published numbers where its rows say, else of its preset."""
    import yaml

    from busflow.report.reproduction import published

    declared = {tuple(row["classes"]) for row in published()[paper]["rows"] if "classes" in row}
    if declared:
        return declared.pop()
    preset = REPO / "config" / "presets" / f"{paper}.yaml"
    return tuple(yaml.safe_load(preset.read_text())["preprocess"]["classes"])
WORKFLOW_FILES = ("Snakefile", "workflow", "profiles", "dvc.yaml", "config", ".dvcignore", "src")  # src: code the DVC stages depend on


def workflow_copy(destination: Path, params: Path) -> Path:
    """Copy the Snakefile, workflow/, dvc.yaml, config/ and src/ next to ``params`` (as params.yaml) in ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, destination / name)
    shutil.copy2(params, destination / "params.yaml")
    return destination


def tool_env() -> dict[str, str]:
    """Environment in which `snakemake`, `dvc` and `busflow` of this interpreter's venv are found."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_tool(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


EXTERNAL_MODELS = ["unet", "resnet50"]


def copy_project(project: Path, destination: Path) -> Path:
    """A copy of a finished project in which nothing is to be redone: timestamps (copy2) and Snakemake's
    records in .snakemake/ travel with the files, so a dry run in the copy plans what one in the original would."""
    shutil.copytree(project, destination, symlinks=True)
    return destination


def _fingerprint(project: Path) -> dict[str, object]:
    """The params and the size and mtime of every result: what a test could change by mistake."""
    results = (p for p in (project / "results").rglob("*") if p.is_file())
    return {"params.yaml": (project / "params.yaml").read_text(),
            **{str(p.relative_to(project)): (p.stat().st_size, p.stat().st_mtime_ns) for p in results}}


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The finished tiny run, with external validation on "any folder of images" (phantoms of another seed).

    Built once per session and READ ONLY: the pipeline, demo and Slurm tests read it in any order; a test that
    edits params, retrains or puts the project under git/DVC takes ``tiny_project_copy``. Teardown checks
    that no test changed it.
    """
    import yaml

    from busflow.data.synthetic import generate_phantoms

    scratch = tmp_path_factory.mktemp("e2e")
    root = workflow_copy(scratch / "project", TINY_PARAMS)
    generate_phantoms(scratch / "other_site", n_patients=10, seed=99, image_size=(64, 80),
                      class_mix={"normal": 0.2, "benign": 0.5, "malignant": 0.3}, views_per_patient=(1, 1))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["folder"] = {"path": str(scratch / "other_site")}
    params["external"] = {"datasets": ["folder"], "models": EXTERNAL_MODELS}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_tool(["snakemake", "--cores", "2"], root)
    before = _fingerprint(root)
    yield root
    after = _fingerprint(root)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, f"a test changed the shared tiny run (use tiny_project_copy): {changed[:10]}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked slurm_background go last (after pytest-randomly's shuffle): their pipeline runs from the first
    test on, mostly waiting for the scheduler, while the rest of the suite uses the cores."""
    waiting = [item for item in items if item.get_closest_marker("slurm_background")]
    items[:] = [item for item in items if not item.get_closest_marker("slurm_background")] + waiting


@pytest.fixture(scope="session", autouse=True)
def slurm_profile_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The tiny run's workflow submitted to a local Slurm cluster in the background, from the first test of a
    session that selected a slurm_background test (None otherwise); that test waits for it and compares."""
    if not any(item.get_closest_marker("slurm_background") for item in request.session.items):
        yield None
        return
    from slurm_cluster import profile_run_in_background

    tiny = request.getfixturevalue("tiny_project")
    project = workflow_copy(tmp_path_factory.mktemp("slurm") / "project", tiny / "params.yaml")
    with profile_run_in_background(tmp_path_factory.mktemp("slurm-state"), project, tool_env()) as run:
        yield run


@pytest.fixture
def tiny_project_copy(tiny_project: Path, tmp_path: Path) -> Path:
    """A private copy of the finished tiny run, for a test that changes it (its external dataset is shared, read only)."""
    return copy_project(tiny_project, tmp_path / "project")


@pytest.fixture(scope="session")
def phantom_split(tmp_path_factory: pytest.TempPathFactory):
    """32 px arrays of 16 phantom patients and a 3:1 train/validation split of their rows (read only)."""
    import numpy as np

    from busflow.data.folder import ingest_folder
    from busflow.data.preprocess import preprocess_index
    from busflow.data.synthetic import generate_phantoms
    from busflow.train.loop import ArrayData

    root = tmp_path_factory.mktemp("phantoms") / "raw"
    generate_phantoms(root, n_patients=16, seed=5, image_size=(48, 60))
    arrays = preprocess_index(ingest_folder(root), size=32)
    rows = np.arange(len(arrays["image_ids"]))
    return ArrayData(arrays["images"], arrays["masks"], arrays["labels"]), rows[: len(rows) * 3 // 4], rows[len(rows) * 3 // 4 :]


MODEL_CLASSES = ["normal", "benign", "malignant"]
MODEL_PREPROCESS = {"size": 64, "enhance": "none", "enhance_options": {}, "classes": MODEL_CLASSES}


def saved_model(directory: Path, arch: str, options: dict) -> Path:
    """A model folder as training leaves it (64 px input, three classes), with seeded untrained weights."""
    import pandas as pd
    import torch

    from busflow.models import build_model
    from busflow.train.job import network_card
    from busflow.train.outputs import save_run

    torch.manual_seed(0)
    model = build_model(arch, in_channels=1, n_classes=3, options=options)
    card = network_card(arch, options, classes=MODEL_CLASSES, image_size=64, device=torch.device("cpu"), preprocess=MODEL_PREPROCESS)
    save_run(directory, model, card, pd.DataFrame({"epoch": [1]}))
    return directory


@pytest.fixture
def tiny_workflow(tmp_path: Path) -> Path:
    return workflow_copy(tmp_path / "project", TINY_PARAMS)


SHARED_DATASETS = Path(os.environ.get("BUSFLOW_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
BUSI_ROOT = SHARED_DATASETS / "busi" / "Dataset_BUSI_with_GT"
BUSBRA_ROOT = SHARED_DATASETS / "busbra-subset" / "BUSBRA"


def _shared_dataset(root: Path) -> Path:
    if not root.is_dir():
        pytest.skip(f"real dataset not available at {root} (set BUSFLOW_SHARED_DATASETS to a folder holding busi/ and busbra-subset/)")
    return root


@pytest.fixture(scope="session")
def busi_root() -> Path:
    """The local BUSI copy (official layout); the test is skipped where it is absent."""
    return _shared_dataset(BUSI_ROOT)


@pytest.fixture(scope="session")
def busi_duplicates(busi_root: Path):
    """BUSI's index and its near-duplicate links under the default detector settings, found once per session
    (the search over 780 images takes most of a minute); the tests read them and never change them."""
    from busflow.data.folder import ingest_folder
    from busflow.split.dedup import find_duplicate_links

    index = ingest_folder(busi_root)
    return index, find_duplicate_links(index["image_id"].tolist(), index["image_path"].tolist())


@pytest.fixture(scope="session")
def busbra_root() -> Path:
    """The local BUS-BRA subset; the test is skipped where it is absent."""
    return _shared_dataset(BUSBRA_ROOT)


@pytest.fixture(scope="module")
def single_thread_torch():
    """Tiny tensors gain nothing from intra-op threads, and OpenMP spin-waits make them 10-50x slower on a
    contended CPU; the global setting is restored for other test modules."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def seeded_torch(single_thread_torch: None) -> None:
    import torch

    torch.manual_seed(0)
