"""The data half of the pipeline on the real datasets, through Snakemake: local copies read in place,
groups, the configured protocol and an audit that passes (the presets' settings, at 32 px)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, run_tool, workflow_copy

pytestmark = pytest.mark.slow


def _project(tmp_path: Path, preset: str, root: Path) -> Path:
    params = yaml.safe_load((REPO / "config" / "presets" / f"{preset}.yaml").read_text())
    params["data"][preset]["path"] = str(root)
    params["preprocess"]["size"] = 32
    scratch = tmp_path / "params.yaml"
    scratch.write_text(yaml.safe_dump(params, sort_keys=False))
    return workflow_copy(tmp_path / "project", scratch)


def test_busi_groups_duplicates_drops_conflicts_and_passes_the_audit(tmp_path: Path, busi_root: Path) -> None:
    project = _project(tmp_path, "busi", busi_root)
    run_tool(["snakemake", "--cores", "2", "results/busi/split/audit.json"], project)
    split = project / "results" / "busi" / "split"
    assert json.loads((split / "audit.json").read_text())["passed"]
    assert len(pd.read_csv(split / "label_conflicts.csv")) >= 1
    folds = pd.read_csv(split / "folds.csv")
    conflicted = folds["label_conflict"].astype(bool)
    assert (folds.loc[conflicted, "fold0"] == "excluded").all() and conflicted.sum() >= 2
    assert not list((project / "results" / "busi" / "raw").glob("**/*.png"))  # read in place, never copied


def test_busbra_official_folds_pass_the_audit(tmp_path: Path, busbra_root: Path) -> None:
    project = _project(tmp_path, "busbra", busbra_root)
    run_tool(["snakemake", "--cores", "2", "results/busbra/split/audit.json"], project)
    split = project / "results" / "busbra" / "split"
    audit = json.loads((split / "audit.json").read_text())
    main = next(s for s in audit["splits"] if s["split"] == "main")
    assert main["protocol"] == "official" and main["crossings"] == 0
    counts = pd.read_csv(split / "split_counts.csv")
    tests = counts[(counts["split"] == "main") & (counts["role"] == "test")]
    assert tests["images"].sum() == 623 and tests["patients"].sum() == 354


def test_p002_cascade_protocol_runs_end_to_end_on_busi(tmp_path: Path, busi_root: Path, busbra_root: Path) -> None:
    """The seed-002 split through the real DAG: the ROI classifier is tested only on its own test part,
    which the segmenter never trained or validated on; the BUSI segmenter is validated externally on BUS-BRA."""
    params = yaml.safe_load((REPO / "config" / "presets" / "p002.yaml").read_text())
    params["data"]["busi"]["path"] = str(busi_root)
    params["data"]["busbra"] = {**yaml.safe_load((REPO / "params.yaml").read_text())["data"]["busbra"], "path": str(busbra_root)}
    params["external"] = {"datasets": ["busbra"], "models": ["unet_p002"]}
    params["ablation"] = {"model": None, "lr": [], "options": {}}  # the grid runs in the tiny end-to-end test
    params["preprocess"]["size"] = 64
    params["models"]["unet_p002"].update(epochs=1, options={"filters": [8, 16, 32, 64], "bottleneck": 128})
    for cascade in params["cascades"]:  # Table 2's three SegNet experiments, each a cascade on the same U-Net
        cascade.update(crop_size=32)
        cascade["classifier"].update(epochs=1)
    scratch = tmp_path / "params.yaml"
    scratch.write_text(yaml.safe_dump(params, sort_keys=False))
    project = workflow_copy(tmp_path / "project", scratch)
    run_tool(["snakemake", "--cores", "2"], project)
    results = project / "results" / "p002"
    folds = pd.read_csv(results / "split" / "folds.csv").set_index("image_id")
    classified = pd.read_csv(results / "models" / "cascade" / "fold0" / "predictions.csv")["image_id"]
    segmented = pd.read_csv(results / "models" / "unet_p002" / "fold0" / "predictions.csv")["image_id"]
    assert set(classified) == set(folds.index[folds["cascade0"] == "test"])
    for other in ("cascade_exp1", "cascade_exp3"):  # the same crops of the same test part
        assert set(pd.read_csv(results / "models" / other / "fold0" / "predictions.csv")["image_id"]) == set(classified)
    reproduction = pd.read_csv(results / "report" / "tables" / "reproduction.csv")
    table2 = reproduction[reproduction["model"].str.startswith("cascade")]
    assert set(table2["model"]) == {"cascade", "cascade_exp1", "cascade_exp3"} and (table2["status"] == "ok").all()
    assert (folds.loc[classified, "fold0"] == "test").all()  # never a segmenter training/validation image
    assert set(segmented) == set(folds.index[folds["fold0"] == "test"])
    assert set(folds["label"]) == {"benign", "malignant"}  # the binary task left the normals out
    assert (results / "report" / "index.html").stat().st_size > 0
    external = json.loads((results / "external" / "busbra" / "unet_p002" / "fold0" / "metrics.json").read_text())
    assert external["n_test_images"] == 623 and external["segmentation"]["dice"] is not None  # every BUS-BRA image
    table = pd.read_csv(results / "report" / "tables" / "external.csv").set_index(["dataset", "model", "metric"])
    assert table.loc[("busbra", "unet_p002", "dice"), "external_images"] == 623
