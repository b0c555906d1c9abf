"""End to end: the real Snakemake DAG on the tiny config, then cache behaviour under Snakemake and DVC.

The finished run (``tiny_project``) is built once and only read here; the tests that edit params, retrain or
push work on their own copy (``tiny_project_copy``), so any order gives the same outcome.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from busflow.layout import REPORT_FILES
from conftest import EXTERNAL_MODELS, run_tool, tool_env
from dag import snakemake_jobs

pytestmark = pytest.mark.slow

MODELS = ["unet", "resnet50", "mtl_resnet50", "cascade", "seg_ensemble", "seg_weighted"]
ENSEMBLES = {"seg_ensemble", "seg_weighted"}


def _fold_dir(project: Path, model: str, fold: int) -> Path:
    return project / "results/synthetic" / ("ensembles" if model in ENSEMBLES else "models") / model / f"fold{fold}"


@pytest.fixture(scope="module")
def project(tiny_project: Path) -> Path:
    """The shared finished run: read only."""
    return tiny_project


def _planned_jobs(project: Path) -> list[str]:
    """Rule names of the jobs a dry run would execute (from its job-stats table)."""
    text = run_tool(["snakemake", "--dry-run", "--cores", "2"], project).stdout
    if "Nothing to be done" in text:
        return []
    table = text.split("Job stats:")[1].split("total")[0]
    return sorted(f"{name}:{count}" for name, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE))


def test_every_declared_output_exists(project: Path) -> None:
    outputs = {path for job in snakemake_jobs(project) for path in job.outputs}
    missing = sorted(p for p in outputs if not (project / p).exists())
    assert not missing
    assert not list(project.rglob("*.tmp")), "temporary files left behind"


def test_metrics_are_complete_and_in_range(project: Path) -> None:
    for model in MODELS:
        for fold in (0, 1):
            metrics = json.loads((_fold_dir(project, model, fold) / "metrics.json").read_text())
            assert metrics["n_test_images"] > 0
            parts = [metrics[p] for p in ("classification", "segmentation") if metrics[p]]
            assert parts, f"{model} fold{fold} has no metrics"
            for part in parts:
                for key, value in part.items():
                    upper = 32 * 2**0.5 if key == "hd95" else 1.0  # HD95 in pixels of the 32 px images
                    if isinstance(value, float):
                        assert 0.0 <= value <= upper, (model, key, value)
    unet = json.loads((project / "results/synthetic/models/unet/fold0/metrics.json").read_text())
    assert unet["segmentation"]["n_empty_images"] > 0, "normal images must be evaluated, not dropped"


def test_report_lists_every_model(project: Path) -> None:
    report = project / "results/synthetic/report"
    assert all((report / name).stat().st_size > 0 for name in REPORT_FILES)
    leaderboard = pd.read_csv(report / "tables/leaderboard.csv")
    assert leaderboard["model"].tolist() == MODELS
    html = (report / "index.html").read_text()
    assert all(model in html for model in MODELS)
    split = pd.read_csv(report / "tables/split.csv")
    assert split.loc[split["split"] == "main", "crossings"].eq("none").all()
    leakage = pd.read_csv(report / "tables/leakage.csv")
    assert set(leakage["model"]) == {"unet"}
    summary = (report / "report.md").read_text()
    assert "- **deterministic**: yes: every model trained on the CPU with seeded draws (1 torch thread(s) per job)" in summary
    assert "- **bad samples skipped**: none" in summary


def test_external_validation_tests_every_fold_model_on_the_other_dataset(project: Path) -> None:
    external = project / "results/synthetic/external/folder"
    n_images = len(pd.read_csv(external / "data/index.csv"))
    assert n_images == 10
    for model in EXTERNAL_MODELS:
        for fold in (0, 1):
            metrics = json.loads((external / model / f"fold{fold}" / "metrics.json").read_text())
            assert metrics["n_test_images"] == n_images
    resnet = json.loads((external / "resnet50/fold0/metrics.json").read_text())["classification"]
    in_domain = json.loads((project / "results/synthetic/models/resnet50/fold0/metrics.json").read_text())["classification"]
    # The operating threshold is the one chosen on in-domain validation images, not re-tuned externally.
    assert resnet["operating_point"]["threshold"] == in_domain["operating_point"]["threshold"]
    table = pd.read_csv(project / "results/synthetic/report/tables/external.csv")
    assert set(table["model"]) == set(EXTERNAL_MODELS) and set(table["dataset"]) == {"folder"}
    assert {"dice", "accuracy"} <= set(table["metric"])


def test_per_image_tables_measure_lesions_in_mm(project: Path) -> None:
    """The phantoms declare their pixel spacing, so a segmenter's per-image table gives the true and predicted lesion
    sizes in mm, measured on the model-size masks with each image's own pixel shape."""
    results = project / "results/synthetic"
    index = pd.read_csv(results / "data/index.csv", dtype={"image_id": str}).set_index("image_id")
    with np.load(results / "data/arrays.npz") as arrays:
        masks, image_ids = arrays["masks"], arrays["image_ids"].astype(str)
    position = {image_id: k for k, image_id in enumerate(image_ids)}
    size = masks.shape[-1]
    per_image = pd.read_csv(results / "models/unet/fold0/per_image.csv", dtype={"image_id": str})
    for row in per_image.itertuples():
        image = index.loc[row.image_id]
        assert row.pixel_spacing_mm == pytest.approx(image["pixel_spacing_mm"])
        pixel_area = image["pixel_spacing_mm"] ** 2 * image["height"] * image["width"] / size**2
        assert row.lesion_area_mm2_true == pytest.approx(masks[position[row.image_id]].sum() * pixel_area, rel=1e-5)  # written with 6 significant digits
    lesions = per_image["label"] != "normal"
    assert per_image.loc[lesions, "lesion_diameter_mm_true"].between(1, 40).all()  # inside the 40 mm field of view
    assert per_image.loc[~lesions, "lesion_diameter_mm_true"].isna().all()
    assert per_image["lesion_area_mm2_pred"].notna().all()


def test_ablation_grid_trains_every_cell_with_its_settings(project: Path) -> None:
    cells = project / "results/synthetic/models/unet/ablation"
    assert sorted(p.name for p in cells.iterdir()) == ["lr0.001_narrow", "lr0.003_narrow"]
    narrow = json.loads((cells / "lr0.003_narrow/fold1/model.json").read_text())
    assert narrow["options"]["features"] == [4, 4, 8, 16, 32, 4]
    assert pd.read_csv(cells / "lr0.003_narrow/fold1/history.csv")["lr"].iloc[0] == pytest.approx(3.0e-3)
    table = pd.read_csv(project / "results/synthetic/report/tables/ablation.csv")
    dice = table[table["metric"] == "dice"]
    assert len(dice) == 2 and (dice["folds"] == 2).all()


def test_every_report_table_row_links_to_a_declared_output(project: Path) -> None:
    results = project / "results/synthetic"
    declared = {path for job in snakemake_jobs(project) for path in job.outputs}

    def is_declared(path: str) -> bool:  # a file output, or a file inside a directory output
        full = f"results/synthetic/{path}"
        return full in declared or any(full.startswith(f"{d}/") for d in declared)

    html = (results / "report/index.html").read_text()
    for table in sorted((results / "report/tables").glob("*.csv")):
        frame = pd.read_csv(table, keep_default_na=False)
        assert "source" in frame.columns, table.name
        for cell in frame["source"]:
            paths = [p for p in str(cell).split("; ") if p]
            assert paths, f"{table.name}: a row without a source"
            for path in paths:
                assert (results / path).is_file(), (table.name, path)
                assert path.startswith("logs/") or is_declared(path), (table.name, path)
    leaderboard = pd.read_csv(results / "report/tables/leaderboard.csv")
    for cell in leaderboard["source"]:
        assert all(f'href="../{path}"' in html for path in cell.split("; "))


def test_retraining_on_cpu_reproduces_the_metrics_bit_for_bit(project: Path, tmp_path: Path) -> None:
    """The same params, model and fold trained again from scratch give byte-identical predictions and metrics."""
    results = project / "results/synthetic"
    again = tmp_path / "unet_fold0"
    common = ["--params", "params.yaml", "--model", "unet", "--fold", "0", "--arrays", str(results / "data/arrays.npz")]
    one_thread = dict(tool_env(), OMP_NUM_THREADS="1")  # as Snakemake runs it (threads: 1): the same reduction order
    for command in (["busflow", "train", *common, "--folds", str(results / "split/folds.csv"), "--init", str(results / "models/unet/init"), "--out", str(again)],
                    ["busflow", "evaluate", *common, "--predictions", str(again / "predictions.npz"), "--out", str(again)]):
        subprocess.run(command, cwd=project, env=one_thread, check=True, capture_output=True)
    for name in ("predictions.npz", "predictions.csv", "metrics.json", "per_image.csv"):
        assert (again / name).read_bytes() == (results / "models/unet/fold0" / name).read_bytes(), name
    # weights.pt: equal tensors (torch writes a fresh serialization id into every file, so not equal bytes).
    first, second = (torch.load(d / "weights.pt", weights_only=True) for d in (again, results / "models/unet/fold0"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def _scale_lr(project: Path, model: str, factor: float) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["models"][model]["lr"] *= factor
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_noop_rerun_and_one_model_change_reruns_only_its_chain(tiny_project_copy: Path) -> None:
    project = tiny_project_copy
    assert _planned_jobs(project) == []

    # The cascade's segmenter: its chain includes the cascade.
    _scale_lr(project, "unet", 2)
    # unet is also the ablation model: its grid cells inherit its settings, so they rerun too.
    assert _planned_jobs(project) == sorted(["all:1", "cascade:2", "ensembles:1", "evaluate:2", "evaluate_ablation:4",
                                             "evaluate_cascade:2", "evaluate_leaky:4", "external:1", "report:1", "train:2",
                                             "train_ablation:4", "train_leaky:4"])  # leaky: 2 seeds x 2 folds
    planned = run_tool(["snakemake", "--dry-run", "--cores", "2"], project).stdout
    assert "model=unet" in planned and "model=resnet50" not in planned and "model=mtl_resnet50" not in planned
    _scale_lr(project, "unet", 0.5)
    assert _planned_jobs(project) == []

    # Another seed for the leakage study redraws the image-level split and retrains only the leaky runs.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["leakage"]["seeds"].append(7)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _planned_jobs(project) == sorted(["all:1", "audit_leaky:1", "evaluate_leaky:6", "leaky_split:1", "report:1",
                                             "train_leaky:6"])
    params["leakage"]["seeds"].pop()
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    # DVC on the same outputs: record them (metrics files go to git, as DVC expects; `dvc commit` rewrites the
    # outputs, so after the Snakemake checks), then start another model from a pretrained file and reproduce for real.
    _track_with_dvc(project)
    weights = _pretrained_file(project.parent / "resnet50_imagenet_layout.pth", seed=0)
    _start_from(project, "resnet50", weights)
    assert _planned_jobs(project) == sorted(["all:1", "evaluate:2", "external:1", "init_weights:1", "report:1", "train:2"])
    reproduced = run_tool(["dvc", "repro"], project).stdout
    ran = sorted(re.findall(r"Running stage '([^']+)'", reproduced))
    # DVC's ensembles stage depends on the whole models folder (members cannot be listed), so it reruns too.
    assert ran == sorted(["init_weights@resnet50", "train@resnet50-0", "train@resnet50-1", "evaluate@resnet50-0",
                          "evaluate@resnet50-1", "ensembles", "external", "report"])
    assert "up to date" in run_tool(["dvc", "status"], project).stdout
    card = json.loads((project / "results/synthetic/models/resnet50/fold0/model.json").read_text())
    assert card["init"]["matched_fraction"] == 1.0 and card["input_normalization"] == {"mean": 0.449, "std": 0.226}

    # Replacing the weight file reruns exactly the models that start from it: DVC sees it through the init
    # folder's link, Snakemake through the init rule's input (by modification time: DVC, not Snakemake, ran the
    # jobs above, so Snakemake's record of their params is older).
    _pretrained_file(weights, seed=1)
    changed = [line.rstrip(":") for line in run_tool(["dvc", "status"], project).stdout.splitlines() if line.endswith(":") and not line.startswith("\t")]
    # Of the training stages only resnet50's; the stages that read the whole models folder follow, as above.
    assert sorted(changed) == sorted(["init_weights@resnet50", "train@resnet50-0", "train@resnet50-1", "ensembles", "external",
                                      "report"]), changed
    planned = run_tool(["snakemake", "--dry-run", "--cores", "2", "--rerun-triggers", "mtime"], project).stdout
    assert re.search(r"^init_weights\s+1$", planned, re.MULTILINE) and re.search(r"^train\s+2$", planned, re.MULTILINE)
    assert "model=resnet50" in planned and "model=unet" not in planned and "model=mtl_resnet50" not in planned
    _pretrained_file(weights, seed=0)  # back to the recorded file

    # `dvc metrics diff` against the commit shows the retrained model's metrics, and only those: its fold
    # files and its entries of the report's headline metrics.
    diff = json.loads(run_tool(["dvc", "metrics", "diff", "--json"], project).stdout)
    changed = {(path, key) for path, values in diff.items() for key, value in values.items() if value.get("diff")}
    assert changed and all("/resnet50/" in path or (path.endswith("report/headline.json") and key.startswith("resnet50."))
                           for path, key in changed), sorted(changed)
    assert any(path.endswith("resnet50/fold0/metrics.json") for path, _ in changed)
    assert any(path.endswith("report/headline.json") for path, _ in changed)
    # dvclive's per-epoch curves are DVC plots.
    plots = run_tool(["dvc", "plots", "show", "--json"], project).stdout
    assert "unet/fold0/dvclive/plots/metrics/val_loss.tsv" in plots
    # The ablation grid as DVC experiments: one queued `dvc exp run -S ...` per cell.
    queued = run_tool(["busflow", "queue-ablation"], project).stdout
    assert queued.count("dvc exp run --queue") == 2 and "models.unet.options.features=[4, 4, 8, 16, 32, 4]" in queued
    status = run_tool(["dvc", "queue", "status"], project).stdout
    assert status.count("Queued") == 2, status


def test_a_second_checkout_pulls_the_trained_models_from_the_team_remote(tiny_project_copy: Path, tmp_path: Path) -> None:
    project = tiny_project_copy
    _track_with_dvc(project)
    remote = tmp_path / "team-remote"  # a local-directory remote; an S3, SSH or shared-drive URL works the same way
    run_tool(["dvc", "remote", "add", "--default", "team", str(remote)], project)
    _git_commit(project, "team remote")
    run_tool(["dvc", "push"], project)
    second = tmp_path / "second-checkout"
    run_tool(["git", "clone", "--quiet", str(project), str(second)], tmp_path)
    run_tool(["dvc", "pull"], second)
    for path in ("results/synthetic/models/unet/fold0/weights.pt", "results/synthetic/models/cascade/fold1/metrics.json",
                 "results/synthetic/report/index.html"):
        assert (second / path).read_bytes() == (project / path).read_bytes(), path
    assert "up to date" in run_tool(["dvc", "status"], second).stdout
    assert "Running stage" not in run_tool(["dvc", "repro"], second).stdout  # nothing is retrained

    # The code a stage runs is among its dependencies: editing the training loop makes exactly the stages that
    # train or run trained networks stale, and nothing upstream or downstream of them by itself.
    loop = second / "src" / "busflow" / "train" / "loop.py"
    loop.write_text(loop.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    stale = json.loads(run_tool(["dvc", "status", "--json"], second).stdout)
    assert {name.split("@")[0] for name in stale} == {"train", "train_leaky", "train_ablation", "cascade", "external"}, stale


def _pretrained_file(path: Path, seed: int) -> Path:
    """A resnet50 encoder (widen 0.125, as in the tiny params) in torchvision's layout, with RGB stem."""
    from busflow.models import build_model
    from busflow.models.pretrained import encoder_layout

    torch.manual_seed(seed)
    state = build_model("resnet50", in_channels=3, n_classes=1000, options={"widen_factor": 0.125}).state_dict()
    names = encoder_layout("resnet50").canonical_names(state)
    torch.save({name: state[key] for key, name in names.items()}, path)
    return path


def _start_from(project: Path, model: str, weights: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["models"][model]["init"] = {"weights": str(weights), "format": "torchvision"}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _track_with_dvc(project: Path) -> None:
    """git + DVC in the finished project: DVC records the outputs Snakemake made, and finds them up to date."""
    run_tool(["git", "init", "--quiet"], project)
    run_tool(["dvc", "init", "--quiet"], project)
    run_tool(["dvc", "commit", "--force", "--quiet"], project)
    _git_commit(project, "trained")
    assert "up to date" in run_tool(["dvc", "status"], project).stdout


def _git_commit(project: Path, message: str) -> None:
    run_tool(["git", "add", "-A"], project)
    run_tool(["git", "-c", "user.name=busflow", "-c", "user.email=busflow@localhost", "commit", "--quiet", "-m", message], project)


def test_snakemake_report_and_dvc_metrics_carry_the_headline(tiny_project_copy: Path, tmp_path: Path) -> None:
    """`snakemake --report` shows the headline table and key figures under Summary; `dvc metrics show` lists the
    headline metrics per model from report/headline.json."""
    import zipfile

    project = tiny_project_copy
    archive = tmp_path / "report.zip"
    run_tool(["snakemake", "--report", str(archive)], project)
    with zipfile.ZipFile(archive) as bundle:
        names = bundle.namelist()
        text = "\n".join(bundle.read(name).decode("utf-8", errors="replace") for name in names
                         if name.endswith((".html", ".js", ".json")))
    for item in ("leaderboard.csv", "metrics_bar.png", "roc.png", "overlays.png"):
        assert any(name.endswith(item) for name in names), item
    assert "Summary" in text and "Headline metrics per model" in text and "busflow run" in text and "synthetic" in text
    headline = json.loads((project / "results/synthetic/report/headline.json").read_text())
    assert set(headline) == set(MODELS)
    assert headline["resnet50"]["roc_auc_macro"]["ci_low"] <= headline["resnet50"]["roc_auc_macro"]["pooled"]
    run_tool(["dvc", "init", "--no-scm", "--quiet"], project)
    shown = json.loads(run_tool(["dvc", "metrics", "show", "--json"], project).stdout)
    found = json.dumps(shown)
    assert "results/synthetic/report/headline.json" in found and '"pooled"' in found and "resnet50" in found
