"""Dataset sources: the ``download`` stage creates ``raw/`` and the ``preprocess`` stage indexes it.

``raw/source.json`` says where the images are and how they are laid out, so the rest of the pipeline never
needs to know how they arrived:

- ``synthetic``: phantoms generated into ``raw/`` itself;
- ``busi``, ``busbra``, ``breast_lesions``, ``folder`` with ``data.<name>.path`` set: an already-extracted copy
  read in place (nothing is copied; the record holds its absolute path and a fingerprint of its files);
- ``busi``, ``busbra`` without a path: the archive at ``data.<name>.url`` is downloaded into the cache,
  verified against ``data.<name>.sha256`` and safely extracted into ``raw/extracted``;
- ``breast_lesions`` without a path or url: its images and spreadsheet are two separate files, so the error
  lists the manual steps (:data:`MANUAL_DOWNLOADS`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from busflow import CLASSES
from busflow.data.bad_samples import BadSamples
from busflow.data.breast_lesions import IMAGES_FOLDER, MANUAL_STEPS, SPREADSHEET_PATTERN, ingest_breast_lesions, is_breast_lesions_root
from busflow.data.busbra import ingest_busbra, is_busbra_root
from busflow.data.folder import ingest_folder
from busflow.errors import DatasetError
from busflow.io import atomic_dir, write_json

SOURCE_RECORD = "source.json"
LAYOUTS = {"synthetic": "folder", "busi": "folder", "folder": "folder", "busbra": "busbra", "breast_lesions": "breast_lesions"}
INGESTERS: dict[str, Callable[[Path, BadSamples | None], pd.DataFrame]] = {
    "folder": ingest_folder, "busbra": ingest_busbra, "breast_lesions": ingest_breast_lesions}
# Sources published as more than one file: no single url can fetch them, so a missing path explains the steps.
MANUAL_DOWNLOADS = {"breast_lesions": MANUAL_STEPS}
SEARCH_DEPTH = 3  # how deep below a given path (or an extracted archive) the dataset root may sit
GIB = 1 << 30


def _is_class_folder_root(path: Path) -> bool:
    return any((path / name).is_dir() for name in CLASSES)


# Per layout: how its root folder is recognised, and what that is in words (for the error).
ROOT_MARKERS: dict[str, tuple[Callable[[Path], bool], str]] = {
    "folder": (_is_class_folder_root, f"class folders ({', '.join(CLASSES)})"),
    "busbra": (is_busbra_root, "bus_data.csv and Images/"),
    "breast_lesions": (is_breast_lesions_root, f"{SPREADSHEET_PATTERN} beside {IMAGES_FOLDER}/"),
}


def find_dataset_root(path: Path, layout: str) -> Path:
    """``path`` itself or the shallowest folder below it that has the layout (e.g. ``Dataset_BUSI_with_GT``)."""
    matches, expected = ROOT_MARKERS[layout]
    level = [path]
    for _ in range(SEARCH_DEPTH + 1):
        found = sorted(p for p in level if matches(p))
        if found:
            return found[0]
        level = sorted(c for p in level for c in p.iterdir() if c.is_dir() and not c.name.startswith((".", "__MACOSX")))
    raise DatasetError(f"{path}: no dataset found (looked for {expected} up to {SEARCH_DEPTH} levels down)")


def fingerprint(root: Path) -> dict[str, Any]:
    """Count, total size and a hash of the relative names and sizes of every file under ``root``."""
    digest = hashlib.sha256()
    count = total = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root).as_posix()}\0{size}\n".encode("utf-8", "surrogateescape"))
        count, total = count + 1, total + size
    return {"files": count, "bytes": total, "names_and_sizes_sha256": digest.hexdigest()}


def _generate_synthetic(params: Mapping[str, Any], raw: Path) -> dict[str, Any]:
    from busflow.data.synthetic import generate_phantoms

    settings = params["data"]["synthetic"]
    generate_phantoms(raw, n_patients=settings["n_patients"], seed=params["seed"],
                      image_size=(settings["image_height"], settings["image_width"]),
                      class_mix=settings["class_mix"], views_per_patient=tuple(settings["views_per_patient"]),
                      acquisition=settings["acquisition"])
    return {"origin": "generated", "root": "."}


def _use_local_copy(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    path = Path(settings["path"]).expanduser()
    if not path.is_dir():
        raise DatasetError(f"data.{name}.path: folder {path} does not exist (point it at the extracted dataset)")
    root = find_dataset_root(path.resolve(), LAYOUTS[name])
    print(f"{name}: reading the local copy at {root} in place")
    return {"origin": "path", "root": str(root), "fingerprint": fingerprint(root)}


def _download(name: str, settings: Mapping[str, Any], download: Mapping[str, Any], raw: Path) -> dict[str, Any]:
    from busflow.data.download import fetch_archive

    if not settings.get("url"):
        if name in MANUAL_DOWNLOADS:
            raise DatasetError(f"data.{name}.path: not set, and there is no single archive to download.\n{MANUAL_DOWNLOADS[name]}")
        raise DatasetError(f"data.{name}: set either path (an extracted copy) or url (an archive to download)")
    extracted = raw / "extracted"
    provenance = fetch_archive(
        name=name, url=settings["url"], sha256=settings.get("sha256"), cache_dir=Path(download["cache_dir"]),
        target=extracted, max_download_bytes=int(download["max_download_gb"] * GIB),
        max_extract_bytes=int(download["max_extract_gb"] * GIB), max_members=download["max_members"],
        timeout_s=download["timeout_s"])
    root = find_dataset_root(extracted, LAYOUTS[name])
    return {"origin": "download", "root": root.relative_to(raw).as_posix(), "download": provenance}


def fetch_dataset(params: Mapping[str, Any], out_dir: Path, dataset: str | None = None) -> dict[str, Any]:
    """Create ``out_dir`` (atomically) with the source record of ``dataset`` (default: the run's dataset)."""
    name = dataset or params["dataset"]
    settings = params["data"][name]
    with atomic_dir(out_dir) as raw:
        if name == "synthetic":
            record = _generate_synthetic(params, raw)
        elif settings.get("path"):
            record = _use_local_copy(name, settings)
        elif name == "folder":
            raise DatasetError("data.folder.path: the folder dataset needs the path of its root folder")
        else:
            record = _download(name, settings, params["data"]["download"], raw)
        record = {"dataset": name, "layout": LAYOUTS[name], **record}
        write_json(raw / SOURCE_RECORD, record)
    return record


def read_source(raw_dir: Path) -> tuple[dict[str, Any], Path]:
    """The source record of ``raw_dir`` and the dataset root it points to."""
    record_path = raw_dir / SOURCE_RECORD
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{record_path}: missing; re-run the download stage") from None
    except json.JSONDecodeError as error:
        raise DatasetError(f"{record_path}: not valid JSON ({error}); re-run the download stage") from None
    root = Path(record["root"])
    return record, root if root.is_absolute() else raw_dir / root


def ingest_raw(raw_dir: str | Path, bad: BadSamples | None = None) -> pd.DataFrame:
    """Index the dataset that ``raw_dir`` (the download stage's output) points to; per-sample problems go to
    ``bad`` (default: the first one raises)."""
    record, root = read_source(Path(raw_dir))
    if record.get("origin") == "path" and fingerprint(root) != record.get("fingerprint"):
        raise DatasetError(f"{root}: files changed since the download stage recorded them; re-run it "
                           "(snakemake --forcerun download, or dvc repro --force download)")
    if record.get("layout") not in INGESTERS:
        raise DatasetError(f"{Path(raw_dir) / SOURCE_RECORD}: unknown layout {record.get('layout')!r}")
    return INGESTERS[record["layout"]](root, bad)
