"""Tests of the report stage on a small synthetic results tree."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import busflow.split.groups
from busflow.split.audit import audit_split
from busflow.split.groups import build_groups, conflict_summary
from busflow.io import write_csv, write_json
from busflow.errors import DatasetError
from busflow.evaluate.lesion_size import size_columns
from busflow.layout import LEAKY_SPLIT, REPORT_DIRS, REPORT_FIGURES, REPORT_FILES, REPORT_TABLES, SPLIT_FILES, leaky_part
from busflow.report import registry
from busflow.report.build import build_report
from busflow.report.figures import read_tile
from busflow.report.loading import load_results
from busflow.report.uncertainty import model_cases
from busflow.split.protocols import image_level_split, leaky_stage, make_split

CLASSES = ["normal", "benign", "malignant"]
SIZE = 32
N_IMAGES = 30
TASKS = {"unet": ["seg"], "resnet50": ["cls"], "mtl": ["cls", "seg"]}
FIGURES = [f for f in REPORT_FILES if f.startswith("figures/")]
LEAKAGE = ("unet", "resnet50")  # a segmenter and a classifier
LEAKAGE_SEEDS = (1, 2)  # the image-level split is drawn twice
SPACING_MM = 0.25  # pixel spacing of the originals (SIZE × SIZE): segmenters' per-image tables measure lesions in mm


# --------------------------------------------------------------------------- fake results tree


def _write_data(root: Path, rng: np.random.Generator) -> pd.DataFrame:
    """index.csv + arrays.npz + original PNGs: 15 patients with 2 images each; normal images have empty masks.

    The originals of two images are written at other sizes (a rescaled duplicate, a larger frame).
    """
    patient_labels = rng.permutation(np.resize(np.arange(3), 15))
    rows, images, masks = [], [], []
    yy, xx = np.mgrid[:SIZE, :SIZE]
    (root / "raw").mkdir(parents=True)
    for i in range(N_IMAGES):
        label = int(patient_labels[i // 2])
        cy, cx, r = rng.integers(10, 22), rng.integers(10, 22), rng.integers(4, 8)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2).astype(np.uint8) * (label > 0)
        image = np.clip(rng.normal(90, 25, (SIZE, SIZE)) + 80 * mask, 0, 255).astype(np.uint8)
        rows.append({"image_id": f"img{i:03d}", "patient_id": f"P{i // 2:02d}", "label": CLASSES[label],
                     "mask_paths": f"raw/img{i:03d}_mask.png", "patient_known": True, "colour_overlay": False,
                     "device": "phantom"})
        images.append(image)
        masks.append(mask)
    index = pd.DataFrame(rows)
    clusters = _planted_clusters(index)
    first, copy = clusters["exact"]
    images[int(copy[3:])] = images[int(first[3:])]  # an exact duplicate: the same frame filed twice
    index["image_path"] = [str(_write_png(root / "raw" / f"{i}.png", img, _original_size(i, clusters)))
                           for i, img in zip(index["image_id"], images)]
    index[["width", "height"]] = [Image.open(path).size for path in index["image_path"]]
    (root / "data").mkdir(parents=True)
    index.to_csv(root / "data" / "index.csv", index=False)
    np.savez(root / "data" / "arrays.npz", images=np.stack(images), masks=np.stack(masks),
             labels=index["label"].map(CLASSES.index).to_numpy(np.int64),
             image_ids=index["image_id"].to_numpy(str), classes=np.array(CLASSES))
    return index


def _planted_clusters(index: pd.DataFrame) -> dict[str, list[str]]:
    """Two duplicate clusters across patients: an exact pair of one class, a near-duplicate triple of two classes."""
    firsts = index[index["image_id"].str[3:].astype(int) % 2 == 0]  # the first image of every patient
    by_label = {c: firsts.loc[firsts["label"] == c, "image_id"].tolist() for c in CLASSES}
    return {"exact": by_label["benign"][:2], "conflict": [by_label["normal"][0], *by_label["malignant"][:2]]}


def _original_size(image_id: str, clusters: dict[str, list[str]]) -> tuple[int, int]:
    sizes = {clusters["exact"][1]: (48, 48), clusters["conflict"][1]: (64, 40)}
    return sizes.get(image_id, (SIZE, SIZE))


def _write_png(path: Path, pixels: np.ndarray, size: tuple[int, int]) -> Path:
    Image.fromarray(pixels).resize(size).save(path)
    return path


def _planted_links(index: pd.DataFrame) -> pd.DataFrame:
    clusters = _planted_clusters(index)
    (a, b), (n, m1, m2) = clusters["exact"], clusters["conflict"]
    rows = [(a, b, "exact", 1.0), (n, m1, "near-duplicate", 0.93), (m1, m2, "near-duplicate", 0.88)]
    return pd.DataFrame([{"image_a": min(x, y), "image_b": max(x, y), "reason": r, "score": s, "scale": 1.0,
                          "overlap": 1.0} for x, y, r, s in rows])


def _split_params(protocol: str, n_folds: int) -> dict:
    return {"protocol": protocol, "n_folds": n_folds, "val_fraction": 0.34, "official_folds": 5,
            "holdout": {"train": 0.7, "val": 0.1, "test": 0.2},
            "cascade": {"segmentation": {"train": 0.15, "val": 0.05},
                        "classification": {"train": 0.6, "val": 0.1, "test": 0.3}},
            "grouping": "patient+duplicates", "duplicates": {}, "label_conflicts": "drop"}


def _write_split(root: Path, index: pd.DataFrame, split: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The split stage's files, made by busflow's own group/split/audit code on the planted duplicate links."""
    with mock.patch.object(busflow.split.groups, "duplicate_links", lambda *_: _planted_links(index)):
        groups, links = build_groups(index, split)
    folds = make_split(index, groups, split, seed=0)
    leaky = image_level_split(index, groups, split, LEAKAGE_SEEDS)
    with np.load(root / "data" / "arrays.npz") as npz:
        audit, counts = audit_split({"main": folds}, index, npz["image_ids"], npz["images"])
        leaky_audit, leaky_counts = audit_split({"leakage_study": leaky}, index, npz["image_ids"], npz["images"])
    files = {"groups": groups, "links": links, "folds": folds, "leaky": leaky, "counts": counts, "leaky_counts": leaky_counts,
             "conflicts": conflict_summary(groups, index, split["label_conflicts"])}
    for key, frame in files.items():
        write_csv(root / SPLIT_FILES[key], frame)
    write_json(root / SPLIT_FILES["audit"], audit)
    write_json(root / SPLIT_FILES["leaky_audit"], leaky_audit)
    return folds, leaky


def _cls_metrics(rng: np.random.Generator, y_true: np.ndarray, y_pred: np.ndarray, nan_auc: bool) -> dict:
    cm = np.zeros((3, 3), dtype=int)
    for t, p in zip(y_true, y_pred):
        cm[t, p] += 1
    per_class = {c: {"precision": float(rng.uniform(0.3, 1)), "recall": float(rng.uniform(0.3, 1)),
                     "specificity": float(rng.uniform(0.3, 1)), "f1": float(rng.uniform(0.3, 1)),
                     "roc_auc": None if nan_auc else float(rng.uniform(0.5, 1)), "support": int(cm[i].sum())}
                 for i, c in enumerate(CLASSES)}
    keys = ["accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "specificity_macro", "f1_macro"]
    return {"classes": CLASSES, **{k: float(rng.uniform(0.4, 0.95)) for k in keys},
            "roc_auc_macro": math.nan if nan_auc else float(rng.uniform(0.5, 1)),  # NaN literal in JSON
            "per_class": per_class, "confusion_matrix": cm.tolist()}


def _seg_metrics(rng: np.random.Generator, n_lesion: int, n_empty: int) -> dict:
    keys = ["dice", "iou_tumour", "iou_background", "pixel_accuracy", "dice_lesion_images", "iou_lesion_images"]
    return {**{k: float(rng.uniform(0.3, 0.95)) for k in keys},
            "empty_image_false_positive_rate": float(rng.uniform(0, 0.5)) if n_empty else None,
            "n_lesion_images": n_lesion, "n_empty_images": n_empty}


def _write_model_fold(root: Path, rng: np.random.Generator, model: str, fold: int, test: pd.DataFrame,
                      arrays: dict[str, np.ndarray], nan_auc: bool, split: str = "main", split_seed: int | None = None,
                      sized: bool = True) -> None:
    out = root / "models" / model / f"{leaky_part(split, split_seed)}fold{fold}"
    out.mkdir(parents=True)
    tasks = TASKS[model]
    y_true = test["label"].map(CLASSES.index).to_numpy()
    per_image = test[["image_id", "label"]].copy()
    metrics = {"model": model, "fold": fold, "tasks": tasks, "n_test_images": len(test),
               "classification": None, "segmentation": None}
    if "cls" in tasks:
        probs = rng.dirichlet(np.ones(3), size=len(test))
        probs[np.arange(len(test)), y_true] += 0.5
        probs /= probs.sum(1, keepdims=True)
        y_pred = probs.argmax(1)
        preds = test[["image_id", "group_id", "label"]].assign(
            y_true=y_true, y_pred=y_pred, pred=[CLASSES[p] for p in y_pred],
            **{f"prob_{c}": probs[:, i] for i, c in enumerate(CLASSES)})
        preds.to_csv(out / "predictions.csv", index=False)
        per_image = per_image.assign(y_true=y_true, y_pred=y_pred, confidence=probs.max(1))
        metrics["classification"] = _cls_metrics(rng, y_true, y_pred, nan_auc)
    if "seg" in tasks:
        rows = [arrays["row"][i] for i in test["image_id"]]
        truth = arrays["masks"][rows].astype(float)
        prob = np.clip(truth * rng.uniform(0.3, 1.0, (len(rows), 1, 1)) + rng.uniform(0, 0.55, truth.shape), 0, 1)
        pred = prob >= 0.5
        inter = (pred & (truth > 0)).sum((1, 2))
        area_t, area_p = truth.sum((1, 2)), pred.sum((1, 2))
        denom = area_t + area_p
        dice = np.where(denom > 0, 2 * inter / np.maximum(denom, 1), 1.0)
        iou = np.where(denom > 0, inter / np.maximum(denom - inter, 1), 1.0)
        per_image = per_image.assign(dice=dice, iou=iou, area_true=area_t.astype(int), area_pred=area_p.astype(int),
                                     tp_pixels=inter.astype(int), fp_pixels=(area_p - inter).astype(int),
                                     fn_pixels=(area_t - inter).astype(int))
        if sized:
            per_image = per_image.assign(**size_columns(pred, truth > 0, np.full(len(rows), SPACING_MM), np.full((len(rows), 2), SIZE)))
        with open(out / "predictions.npz", "wb") as fh:
            np.savez(fh, image_ids=test["image_id"].to_numpy(str), mask_probs=(prob * 255).astype(np.uint8))
        metrics["segmentation"] = _seg_metrics(rng, int((area_t > 0).sum()), int((area_t == 0).sum()))
    per_image.to_csv(out / "per_image.csv", index=False)
    epochs = np.arange(1, 6)
    pd.DataFrame({"epoch": epochs, "train_loss": 1 / epochs + rng.uniform(0, 0.1, 5),
                  "val_loss": 1.2 / epochs + rng.uniform(0, 0.1, 5), "val_score": rng.uniform(0, 1, 5),
                  "lr": 1e-3, "seconds": 1.0}).to_csv(out / "history.csv", index=False)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))


def make_results(root: Path, models: list[str], folds: list[int], protocol: str = "kfold",
                 leakage: tuple[str, ...] = (), seed: int = 0, sized: bool = True) -> Path:
    """Write a complete fake results tree under ``root`` (leakage runs for the ``leakage`` models) and return it."""
    rng = np.random.default_rng(seed)
    index = _write_data(root, rng)
    main, leaky = _write_split(root, index, _split_params(protocol, max(2, max(folds) + 1)))
    with np.load(root / "data" / "arrays.npz") as npz:
        arrays = {"masks": npz["masks"], "row": {str(i): k for k, i in enumerate(npz["image_ids"])}}
    runs = [(m, main, "main", None, "fold") for m in models]
    runs += [(m, leaky, LEAKY_SPLIT, s, leaky_stage(s)) for m in leakage for s in LEAKAGE_SEEDS]
    for model, table, split, split_seed, stage in runs:
        for j, fold in enumerate(folds):
            test = table[table[f"{stage}{fold}"] == "test"]
            _write_model_fold(root, rng, model, fold, test, arrays, nan_auc=(model == "resnet50" and j == 1),
                              split=split, split_seed=split_seed, sized=sized)
    return root


def run_info(protocol: str = "kfold", leakage: tuple[str, ...] = ()) -> dict:
    params = {"seed": 1, "train": {"lr": 0.001}, "split": _split_params(protocol, 2),
              "leakage": {"models": list(leakage), "seeds": list(LEAKAGE_SEEDS)}}
    return {"dataset": "synthetic", "params_sha256": "ab" * 32, "busflow_version": "0.1.0", "classes": CLASSES,
            "empty_mask_convention": "Dice = 1 when both masks are empty", "params": params}


def _report(tmp: Path, models: list[str], folds: list[int], protocol: str = "kfold",
            leakage: tuple[str, ...] = (), sized: bool = True) -> Path:
    results = make_results(tmp / "results", models, folds, protocol, leakage, sized=sized)
    out = tmp / "report"
    build_report(results_dir=results, out_dir=out, models=models, folds=folds, run_info=run_info(protocol, leakage))
    return out


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("full")
    out = _report(tmp, ["unet", "resnet50", "mtl"], [0, 1], leakage=LEAKAGE)
    return tmp / "results", out


# --------------------------------------------------------------------------- tests


def test_report_files_are_exactly_the_files_written(full: tuple[Path, Path]) -> None:
    _, out = full
    assert list(registry.TABLES) == list(REPORT_TABLES) and list(registry.FIGURES) == list(REPORT_FIGURES)
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    in_dirs = {rel for rel in written if rel.split("/")[0] in REPORT_DIRS}
    assert written - in_dirs == set(REPORT_FILES) and len(REPORT_FILES) == len(set(REPORT_FILES))
    assert all((out / rel).stat().st_size > 0 for rel in REPORT_FILES)
    for rel in REPORT_DIRS:
        assert (out / rel).is_dir(), rel
    assert not list(out.rglob("*.tmp"))


def test_leaderboard_matches_metrics_json(full: tuple[Path, Path]) -> None:
    results, out = full
    lb = pd.read_csv(out / "tables" / "leaderboard.csv")
    assert lb["model"].tolist() == ["unet", "resnet50", "mtl"]
    for _, row in lb.iterrows():
        blocks = [json.loads((results / "models" / row["model"] / f"fold{k}" / "metrics.json").read_text())
                  for k in (0, 1)]
        for block_name, metric in [("classification", "accuracy"), ("classification", "f1_macro"),
                                   ("classification", "roc_auc_macro"), ("segmentation", "dice"),
                                   ("segmentation", "iou_tumour")]:
            values = [b[block_name][metric] if b[block_name] else None for b in blocks]
            values = np.array([math.nan if v is None else v for v in values], dtype=float)
            finite = values[~np.isnan(values)]
            if finite.size == 0:
                assert math.isnan(row[f"{metric}_mean"]), (row["model"], metric)
                continue
            assert row[f"{metric}_mean"] == pytest.approx(finite.mean(), abs=1e-5)
            if finite.size > 1:
                assert row[f"{metric}_sd"] == pytest.approx(finite.std(ddof=1), abs=1e-5)
            else:
                assert math.isnan(row[f"{metric}_sd"])


def test_pooled_accuracy_matches_predictions(full: tuple[Path, Path]) -> None:
    results, out = full
    lb = pd.read_csv(out / "tables" / "leaderboard.csv").set_index("model")
    preds = pd.concat(pd.read_csv(results / "models" / "mtl" / f"fold{k}" / "predictions.csv") for k in (0, 1))
    assert lb.loc["mtl", "accuracy_pooled"] == pytest.approx((preds["y_true"] == preds["y_pred"]).mean(), abs=1e-5)


def test_pooled_values_carry_group_bootstrap_intervals(full: tuple[Path, Path]) -> None:
    results, out = full
    intervals = pd.read_csv(out / "tables" / "intervals.csv")
    assert set(intervals["model"]) == {"unet", "resnet50", "mtl"}
    defined = intervals.dropna(subset=["ci_low", "ci_high"])
    assert len(defined) > 20
    assert (defined["ci_low"] <= defined["estimate"] + 1e-9).all() and (defined["estimate"] <= defined["ci_high"] + 1e-9).all()
    folds = pd.read_csv(results / "split" / "folds.csv")
    tested = folds[(folds["fold0"] == "test") | (folds["fold1"] == "test")]
    dice = intervals.set_index(["model", "metric"]).loc[("unet", "segmentation.dice")]
    assert dice["n_images"] == len(tested) and dice["n_groups"] == tested["group_id"].nunique() < len(tested)
    lb = pd.read_csv(out / "tables" / "leaderboard.csv").set_index("model")
    assert lb.loc["unet", "dice_pooled"] == pytest.approx(dice["estimate"])
    assert lb.loc["unet", "dice_ci_low"] == pytest.approx(dice["ci_low"])
    assert "[" in (out / "report.md").read_text()  # the pooled leaderboard shows the intervals


def test_pixel_pooled_metrics_are_resampled_from_the_per_image_pixel_counts(full: tuple[Path, Path]) -> None:
    results, out = full
    intervals = pd.read_csv(out / "tables" / "intervals.csv").set_index(["model", "metric"])
    cases = pd.concat(pd.read_csv(results / "models" / "unet" / f"fold{k}" / "per_image.csv") for k in (0, 1))
    tp, fp, fn = (float(cases[f"{kind}_pixels"].sum()) for kind in ("tp", "fp", "fn"))
    expected = {"pooled_dice": 2 * tp / (2 * tp + fp + fn), "pooled_iou": tp / (tp + fp + fn),
                "pooled_precision": tp / (tp + fp), "pooled_recall": tp / (tp + fn)}
    for name, value in expected.items():
        row = intervals.loc[("unet", f"segmentation.{name}")]
        assert row["estimate"] == pytest.approx(value), name
        assert row["ci_low"] < value < row["ci_high"] and row["ci_high"] - row["ci_low"] < 0.5, name
    # pixels pooled over all images differ from the mean of per-image Dice
    assert intervals.loc[("unet", "segmentation.pooled_dice"), "estimate"] != pytest.approx(
        intervals.loc[("unet", "segmentation.dice"), "estimate"])


def test_lesion_size_errors_are_recomputed_from_the_per_image_sizes(full: tuple[Path, Path]) -> None:
    results, out = full
    table = pd.read_csv(out / "tables" / "lesion_size.csv")
    assert sorted(table["model"].unique()) == ["mtl", "unet"]  # the segmenters
    rows = table[table["model"] == "unet"].set_index("statistic")
    pooled = pd.concat([pd.read_csv(results / "models" / "unet" / f"fold{k}" / "per_image.csv") for k in (0, 1)])
    lesions = pooled[pooled["lesion_diameter_mm_true"].notna()]
    measured = lesions[lesions["lesion_diameter_mm_pred"].notna()]
    error = measured["lesion_diameter_mm_pred"] - measured["lesion_diameter_mm_true"]
    assert rows.loc["diameter_abs_error_mm", "estimate"] == pytest.approx(error.abs().mean(), rel=1e-4)
    assert rows.loc["diameter_error_mm", "estimate"] == pytest.approx(error.mean(), rel=1e-4, abs=1e-6)
    assert (rows["n_lesion_images"] == len(lesions)).all() and (rows["n_measured"] == len(measured)).all()
    assert (rows["ci_low"] <= rows["estimate"]).all() and (rows["estimate"] <= rows["ci_high"]).all()
    assert rows.loc["diameter_abs_error_mm", "true_diameter_median_mm"] == pytest.approx(lesions["lesion_diameter_mm_true"].median(), rel=1e-4)
    html = (out / "index.html").read_text()
    assert "Lesion size in mm" in html
    error = rows.loc["diameter_abs_error_mm"]
    assert f"Lesion size, unet: the longest diameter is off by {error['estimate']:.2f} [{error['ci_low']:.2f}, " in html


@pytest.mark.parametrize(("low", "high", "tendency"), [(0.2, 0.9, "it measures lesions too large"),
                                                       (-0.9, -0.2, "it measures lesions too small"),
                                                       (-0.3, 0.4, "no bias either way")])
def test_a_size_bias_is_called_only_when_its_interval_excludes_zero(low: float, high: float, tendency: str) -> None:
    from busflow.report.findings import lesion_sizes

    shared = {"model": "unet", "n_lesion_images": 40, "n_measured": 37, "true_diameter_median_mm": 9.84}
    table = pd.DataFrame([{**shared, "statistic": "diameter_abs_error_mm", "estimate": 1.3, "ci_low": 1.0, "ci_high": 1.6},
                          {**shared, "statistic": "diameter_error_mm", "estimate": (low + high) / 2, "ci_low": low, "ci_high": high}])
    (sentence,) = lesion_sizes(table)
    assert sentence.startswith("Lesion size, unet: the longest diameter is off by 1.30 [1.00, 1.60] mm on average")
    assert "median lesion 9.8 mm; 3 of 40 lesions missed" in sentence and tendency in sentence


def test_models_are_compared_with_the_reference_on_shared_metrics(full: tuple[Path, Path]) -> None:
    _, out = full
    comparisons = pd.read_csv(out / "tables" / "comparisons.csv")
    assert set(comparisons["reference"]) == {"unet"}  # the first model by default
    assert set(comparisons["model"]) == {"mtl"}  # resnet50 shares no metric with a segmenter
    dice = comparisons.set_index("metric").loc["segmentation.dice"]
    assert dice["difference"] == pytest.approx(dice["model_value"] - dice["reference_value"], abs=1e-5)
    assert dice["ci_low"] <= dice["difference"] <= dice["ci_high"] and 0 < dice["p_value"] <= 1


def test_calibration_bins_per_classifier(full: tuple[Path, Path]) -> None:
    results, out = full
    calibration = pd.read_csv(out / "tables" / "calibration.csv")
    assert set(calibration["model"]) == {"resnet50", "mtl"}
    mtl = calibration[calibration["model"] == "mtl"]
    tested = sum(len(pd.read_csv(results / "models" / "mtl" / f"fold{k}" / "predictions.csv")) for k in (0, 1))
    assert len(mtl) == 10 and mtl["n"].sum() == tested
    filled = mtl[mtl["n"] > 0]
    assert ((filled["confidence"] >= filled["bin_low"]) & (filled["confidence"] <= filled["bin_high"])).all()


def test_failure_gallery_lists_the_most_confident_errors(full: tuple[Path, Path]) -> None:
    results, out = full
    failures = pd.read_csv(out / "tables" / "failures.csv")
    assert set(failures["model"]) <= {"resnet50", "mtl"} and len(failures) > 0
    preds = pd.concat(pd.read_csv(results / "models" / "resnet50" / f"fold{k}" / "predictions.csv") for k in (0, 1))
    wrong = preds[preds["y_true"] != preds["y_pred"]]
    top = wrong[[f"prob_{c}" for c in CLASSES]].max(axis=1).sort_values(ascending=False)
    listed = failures[failures["model"] == "resnet50"]
    assert (listed["label"] != listed["predicted"]).all()
    assert listed["confidence"].tolist() == pytest.approx(top.head(len(listed)).tolist(), abs=1e-5)


def test_an_image_without_a_group_is_an_error(full: tuple[Path, Path]) -> None:
    results, _ = full
    run = load_results(results, ["unet"], [0, 1], CLASSES)
    tested = pd.read_csv(results / "models" / "unet" / "fold0" / "per_image.csv")["image_id"].astype(str)
    lost = sorted(tested)[:2]
    run = replace(run, folds_table=run.folds_table[~run.folds_table["image_id"].astype(str).isin(lost)])
    with pytest.raises(DatasetError, match="folds.csv") as error:
        model_cases(run, "unet")
    assert str(lost) in str(error.value) and "unet" in str(error.value)


def test_job_wall_times_come_from_the_job_logs(full: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    results = Path(shutil.copytree(full[0], tmp_path / "results"))
    (results / "logs" / "train").mkdir(parents=True, exist_ok=True)
    (results / "logs" / "train" / "unet_fold0.log").write_text("[unet fold0] epoch 1/1\nbusflow train: done in 12.5s\n")
    (results / "logs" / "report.log").write_text("still running\n")  # unfinished: not listed
    jobs = load_results(results, ["unet"], [0], CLASSES).job_times()
    assert jobs.to_dict("records") == [{"job": "train/unet_fold0", "stage": "train", "seconds": 12.5}]


def test_seg_only_model_has_na_classification(full: tuple[Path, Path]) -> None:
    _, out = full
    lb = pd.read_csv(out / "tables" / "leaderboard.csv").set_index("model")
    assert lb.loc["unet", "tasks"] == "seg"
    assert lb.loc["resnet50", "tasks"] == "cls" and lb.loc["mtl", "tasks"] == "cls+seg"
    for col in ("accuracy_mean", "accuracy_sd", "accuracy_pooled", "roc_auc_macro_mean"):
        assert math.isnan(lb.loc["unet", col])
    assert math.isnan(lb.loc["resnet50", "dice_mean"])
    assert set(pd.read_csv(out / "tables" / "classification.csv")["model"]) == {"resnet50", "mtl"}
    assert set(pd.read_csv(out / "tables" / "segmentation.csv")["model"]) == {"unet", "mtl"}
    per_class = pd.read_csv(out / "tables" / "per_class.csv")
    assert len(per_class) == 2 * 2 * len(CLASSES)
    assert per_class.loc[per_class["model"] == "resnet50", "roc_auc"].isna().sum() == len(CLASSES)


def test_split_table_carries_counts_and_audit_crossings(full: tuple[Path, Path]) -> None:
    results, out = full
    split = pd.read_csv(out / "tables" / "split.csv", keep_default_na=False)
    counts = pd.concat([pd.read_csv(results / SPLIT_FILES[key], keep_default_na=False) for key in ("counts", "leaky_counts")],
                       ignore_index=True)
    pd.testing.assert_frame_equal(split.drop(columns=["crossings", "source"]), counts)
    main, study = split[split["split"] == "main"], split[split["split"] == "leakage_study"]
    assert (main["crossings"] == "none").all() and set(main["protocol"]) == {"kfold"}
    audit = json.loads((results / SPLIT_FILES["leaky_audit"]).read_text())
    column = f"{leaky_stage(LEAKAGE_SEEDS[0])}0"
    fold0 = next(c for s in audit["splits"] if s["split"] == "leakage_study" for c in s["columns"] if c["column"] == column)
    n_patients = fold0["patients across test|train+val"]
    assert n_patients > 0  # the image-level split puts the two images of a patient on both sides
    assert set(study["column"]) == {f"{leaky_stage(s)}{k}" for s in LEAKAGE_SEEDS for k in range(2)}
    for text in study.loc[study["column"] == column, "crossings"]:
        assert f"{n_patients} patients across test|train+val" in text
    assert (main.groupby("column")["images"].sum() == N_IMAGES).all()
    html = (out / "index.html").read_text()
    assert "main split (kfold): no group, patient or identical image crosses a role boundary" in html
    assert "leakage_study split (random_image): leaky by design" in html


def test_failed_audit_is_shown(tmp_path: Path) -> None:
    results = make_results(tmp_path / "results", ["resnet50"], [0])
    audit = json.loads((results / SPLIT_FILES["audit"]).read_text())
    main = audit["splits"][0]
    main.update(passed=False, crossings=2)
    main["columns"][0].update({"groups across test|train+val": 1, "patients across test|train+val": 1})
    (results / SPLIT_FILES["audit"]).write_text(json.dumps(audit))
    build_report(results_dir=results, out_dir=tmp_path / "report", models=["resnet50"], folds=[0], run_info=run_info())
    split = pd.read_csv(tmp_path / "report" / "tables" / "split.csv").set_index(["split", "column"])
    assert set(split.loc[("main", "fold0"), "crossings"]) == {
        "1 groups across test|train+val; 1 patients across test|train+val"}
    assert (split.loc[("main", "fold1"), "crossings"] == "none").all()
    html = (tmp_path / "report" / "index.html").read_text()
    assert "main split (kfold): 2 crossings across role boundaries: the audit failed" in html


def test_groups_and_label_conflicts(full: tuple[Path, Path]) -> None:
    results, out = full
    index = pd.read_csv(results / "data" / "index.csv")
    clusters = _planted_clusters(index)
    groups = pd.read_csv(out / "tables" / "groups.csv", keep_default_na=False)
    assert groups.columns.tolist() == ["group_id", "n_images", "image_ids", "labels", "reasons", "min_score",
                                       "max_score", "label_conflict", "source"]
    # 15 two-image patients; the exact pair joins 2 patients, the conflict triple 3: 10 + 1 + 1 groups
    assert len(groups) == 12 and groups["n_images"].sum() == N_IMAGES
    conflict = groups[groups["label_conflict"]]
    assert len(conflict) == 1 and conflict["n_images"].iloc[0] == 6
    assert conflict["labels"].iloc[0] == "malignant; normal"
    assert conflict["reasons"].iloc[0] == "near-duplicate; patient"
    assert conflict["min_score"].iloc[0] == pytest.approx(0.88)
    table = pd.read_csv(out / "tables" / "label_conflicts.csv")
    assert table.columns.tolist() == ["group_id", "images", "labels", "n_images", "action", "source"]
    assert len(table) == 1 and table["images"].iloc[0] == "; ".join(sorted(clusters["conflict"]))
    html = (out / "index.html").read_text()
    assert "drop: 3 images excluded from every fold" in html
    assert "exact: 1, near-duplicate: 2, patient: 15" in html


def test_contact_sheets(full: tuple[Path, Path]) -> None:
    _, out = full
    assert REPORT_DIRS == ("clusters", "cards")
    sheets = sorted((out / "clusters").glob("*.png"))
    assert len(sheets) == 2 and sorted((out / "clusters").iterdir()) == sorted([*sheets, out / "clusters" / "index.csv"])
    listed = pd.read_csv(out / "clusters" / "index.csv")
    assert sorted(listed["sheet"]) == [s.name for s in sheets] and listed["images"].str.count(";").ge(1).all()
    red = []
    for sheet in sheets:
        with Image.open(sheet) as img:
            pixels = np.asarray(img.convert("RGB")).astype(int)
        assert pixels.shape[0] > 200  # tiles are 200 px high, plus titles
        red.append(bool(((pixels[..., 0] > 150) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)).any()))
    assert red == [True, False]  # the label-conflict cluster comes first and has a red title
    html = (out / "index.html").read_text()
    md = (out / "report.md").read_text()
    for sheet in sheets:
        assert f'<img src="clusters/{sheet.name}"' in html and f"(clusters/{sheet.name})" in md
    assert "LABEL CONFLICT" in html


def test_read_tile_scales_originals_and_survives_unreadable_files(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    _write_png(good, np.zeros((4, 4), np.uint8), (64, 40))
    bad.write_bytes(b"not an image")
    index = pd.DataFrame({"image_id": ["a", "b", "c"], "label": ["benign"] * 3,
                          "image_path": [str(good), str(bad), str(tmp_path / "missing.png")]}).set_index("image_id")
    tile = read_tile(index, "a")
    assert tile.pixels is not None and tile.pixels.shape == (200, 320) and "64×40 px" in tile.caption
    for image_id in ("b", "c", "not-in-index"):
        tile = read_tile(index, image_id)
        assert tile.pixels is None and tile.error, image_id


def test_unreadable_image_gives_an_error_tile_not_a_crash(tmp_path: Path) -> None:
    results = make_results(tmp_path / "results", ["unet"], [0])
    index = pd.read_csv(results / "data" / "index.csv")
    victim = _planted_clusters(index)["conflict"][1]
    Path(index.set_index("image_id").at[victim, "image_path"]).write_bytes(b"garbage")
    out = tmp_path / "report"
    build_report(results_dir=results, out_dir=out, models=["unet"], folds=[0], run_info=run_info())
    assert len(list((out / "clusters").glob("*.png"))) == 2
    html = (out / "index.html").read_text()
    assert "1 image(s) could not be read" in html and f"{victim}: UnidentifiedImageError" in html


def test_leakage_table_and_inflation(full: tuple[Path, Path]) -> None:
    results, out = full
    leakage = pd.read_csv(out / "tables" / "leakage.csv")
    assert set(leakage["model"]) == set(LEAKAGE)
    assert "roc_auc_macro" in set(leakage.loc[leakage["model"] == "resnet50", "metric"])
    unet = leakage[leakage["model"] == "unet"]
    assert unet["metric"].tolist() == ["dice", "iou_tumour"]
    for _, row in unet.iterrows():
        grouped = [json.loads((results / "models" / "unet" / f"fold{k}" / "metrics.json").read_text())
                   ["segmentation"][row["metric"]] for k in (0, 1)]
        leaky = [json.loads((results / "models" / "unet" / LEAKY_SPLIT / f"seed{s}" / f"fold{k}" / "metrics.json").read_text())
                 ["segmentation"][row["metric"]] for s in LEAKAGE_SEEDS for k in (0, 1)]
        assert row["grouped_mean"] == pytest.approx(np.mean(grouped), abs=1e-5)
        assert row["image_level_mean"] == pytest.approx(np.mean(leaky), abs=1e-5)
        assert row["image_level_sd"] == pytest.approx(np.std(leaky, ddof=1), abs=1e-5)
        assert row["inflation"] == pytest.approx(row["image_level_mean"] - row["grouped_mean"], abs=1e-5)
        assert row["inflation"] == pytest.approx(np.mean(leaky) - np.mean(grouped), abs=1e-5)
    html = (out / "index.html").read_text()
    assert "Leakage study" in html and "grouped (leak-free)" in html


def test_random_image_protocol_is_marked_leaky(tmp_path: Path) -> None:
    out = _report(tmp_path, ["resnet50"], [0], protocol="random_image")
    for name in ("leaderboard", "classification"):
        table = pd.read_csv(out / "tables" / f"{name}.csv")
        assert len(table) and (table["split"] == "random_image (LEAKY)").all(), name
    html = (out / "index.html").read_text()
    assert "random_image (LEAKY)" in html.split("<h2>")[0]  # title and the warning before the first section
    assert "WARNING: split.protocol is random_image (LEAKY)" in html
    leakage = pd.read_csv(out / "tables" / "leakage.csv")
    assert leakage.empty and "inflation" in leakage.columns
    assert "No leakage study configured" in html


def test_html_and_markdown_content(full: tuple[Path, Path]) -> None:
    _, out = full
    html = (out / "index.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    for model in ("unet", "resnet50", "mtl"):
        assert model in html and model in md
    for fig in FIGURES:
        assert f'src="{fig}"' in html and f"({fig})" in md
    assert "synthetic" in html and "ab" * 32 in html
    assert "Dice = 1 when both masks are empty" in html
    assert "<details>" in html and "lr: 0.001" in html
    assert " ± " in html and "n/a" in html
    assert "| model |" in md


def test_pngs_open_with_pillow(full: tuple[Path, Path]) -> None:
    _, out = full
    for fig in FIGURES:
        with Image.open(out / fig) as img:
            img.verify()
        with Image.open(out / fig) as img:
            assert img.format == "PNG"
            assert img.width >= 200 and img.height >= 100, (fig, img.size)


def test_output_is_deterministic(full: tuple[Path, Path], tmp_path: Path) -> None:
    results, out = full
    again = tmp_path / "again"
    build_report(results_dir=results, out_dir=again, models=["unet", "resnet50", "mtl"], folds=[0, 1],
                 run_info=run_info(leakage=LEAKAGE))
    sheets = [p.relative_to(out) for p in sorted((out / "clusters").glob("*.png"))]
    for rel in [*REPORT_FILES, *sheets]:
        if rel != "index.html":  # the HTML header carries a timestamp
            assert (again / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_single_fold_seg_only_run(tmp_path: Path) -> None:
    out = _report(tmp_path, ["unet"], [0], sized=False)
    for rel in REPORT_FILES:
        assert (out / rel).stat().st_size > 0, rel
    cls = pd.read_csv(out / "tables" / "classification.csv")
    assert cls.empty and "accuracy" in cls.columns
    assert pd.read_csv(out / "tables" / "per_class.csv").empty
    lb = pd.read_csv(out / "tables" / "leaderboard.csv")
    assert len(lb) == 1 and math.isnan(lb.loc[0, "dice_sd"]) and not math.isnan(lb.loc[0, "dice_mean"])
    html = (out / "index.html").read_text()
    assert "no classification models in this run" in html
    assert pd.read_csv(out / "tables" / "lesion_size.csv").empty and "lesion sizes are not measured in mm" in html
    with Image.open(out / "figures" / "roc.png") as img:
        assert img.width > 0


def _positions(text: str, markers: list[str]) -> list[int]:
    found = [text.find(marker) for marker in markers]
    assert all(position >= 0 for position in found), [m for m, p in zip(markers, found) if p < 0]
    return found


def test_the_report_reads_top_down_summary_first_appendix_folded(full: tuple[Path, Path]) -> None:
    _, out = full
    html = (out / "index.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    order = ['id="summary"', 'id="findings"', "Headline metrics pooled over all test folds", 'src="figures/metrics_bar.png"',
             'src="figures/roc.png"', 'src="figures/overlays.png"', 'id="leaderboard"', 'id="leakage-study"',
             '<details class="section">', 'id="split-audit"', 'id="per-fold-results"', 'id="metric-definitions"']
    positions = _positions(html, order)
    assert positions == sorted(positions)
    appendix = html.index('<details class="section">')
    assert html.index("</details>", html.rindex('id="parameters"')) > appendix  # the appendix holds the rest
    md_order = ["## Summary", "### Findings", "Headline metrics pooled", "(figures/metrics_bar.png)", "## Leaderboard",
                "## Appendix", "### Split audit", "### Per-fold results"]
    md_positions = _positions(md, md_order)
    assert md_positions == sorted(md_positions)
    contents = html[: html.index('id="summary"')]
    for anchor in ("summary", "leaderboard", "leakage-study", "external-validation", "appendix-provenance-data-split-per-fold-results-and-definitions"):
        assert f'href="#{anchor}"' in contents and f'id="{anchor}"' in html


def test_every_finding_says_what_its_table_says(full: tuple[Path, Path]) -> None:
    from busflow.report.findings import is_significant

    _, out = full
    html = (out / "index.html").read_text(encoding="utf-8")
    comparisons = pd.read_csv(out / "tables" / "comparisons.csv")
    keyed = comparisons[comparisons["metric"].isin(["classification.roc_auc_macro", "segmentation.dice"])].dropna(subset=["difference"])
    assert len(keyed) > 0
    for row in keyed.itertuples():
        verdict = "significant: the interval excludes 0" if is_significant(row.ci_low, row.ci_high) else "not significant"
        assert f"{row.model} − {row.reference}" in html and f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}], {verdict}" in html
    intervals = pd.read_csv(out / "tables" / "intervals.csv")
    auc = intervals[intervals["metric"] == "classification.roc_auc_macro"].sort_values("estimate", ascending=False)
    assert f"Best classifier by pooled macro ROC AUC: {auc.iloc[0]['model']}" in html


def _comparison(low: float, high: float) -> pd.DataFrame:
    return pd.DataFrame([{"model": "b", "reference": "a", "metric": "classification.roc_auc_macro", "difference": (low + high) / 2,
                          "ci_low": low, "ci_high": high, "p_value": 0.01}])


@pytest.mark.parametrize(("low", "high", "called"), [(0.01, 0.09, "significant: the interval excludes 0"),
                                                     (-0.09, -0.01, "significant: the interval excludes 0"),
                                                     (-0.02, 0.05, "not significant: the interval includes 0")])
def test_a_paired_difference_is_called_significant_only_when_its_interval_excludes_zero(low: float, high: float, called: str) -> None:
    from busflow.report.findings import paired_comparisons

    (sentence,) = paired_comparisons(_comparison(low, high))
    assert sentence.startswith("b − a, macro ROC AUC") and called in sentence


def test_best_model_leakage_and_external_findings() -> None:
    from busflow.report.findings import best_models, external_changes, leakage_effects

    intervals = pd.DataFrame([
        {"model": "a", "metric": "classification.roc_auc_macro", "estimate": 0.9, "ci_low": 0.85, "ci_high": 0.95},
        {"model": "b", "metric": "classification.roc_auc_macro", "estimate": 0.7, "ci_low": 0.6, "ci_high": 0.8},
        {"model": "u", "metric": "segmentation.dice", "estimate": 0.8, "ci_low": 0.7, "ci_high": 0.9},
        {"model": "v", "metric": "segmentation.dice", "estimate": 0.75, "ci_low": 0.65, "ci_high": 0.85}])
    classifier, segmenter = best_models(intervals)
    assert classifier.startswith("Best classifier by pooled macro ROC AUC: a, 0.900 [0.850, 0.950]") and "do not overlap" in classifier
    assert segmenter.startswith("Best segmenter by pooled Dice: u") and "the intervals overlap" in segmenter
    leakage = pd.DataFrame([{"model": "u", "metric": "dice", "grouped_mean": 0.70, "grouped_sd": 0.01, "image_level_mean": 0.75,
                             "image_level_sd": 0.02, "inflation": 0.05},
                            {"model": "a", "metric": "roc_auc_macro", "grouped_mean": 0.80, "grouped_sd": 0.05,
                             "image_level_mean": 0.81, "image_level_sd": 0.04, "inflation": 0.01},
                            {"model": "v", "metric": "dice", "grouped_mean": 0.70, "grouped_sd": 0.01, "image_level_mean": 0.60,
                             "image_level_sd": 0.02, "inflation": -0.10}])
    effect, none, lower = leakage_effects(leakage)
    assert "inflation +0.050, larger than the fold-to-fold sd: a leakage effect" in effect
    assert "within the fold-to-fold sd: no leakage effect was found" in none
    assert "inflation -0.100, lower on the image-level folds" in lower and "leakage effect" not in lower
    external = pd.DataFrame([{"dataset": "busbra", "model": "a", "metric": "roc_auc_macro", "in_domain_mean": 0.86,
                              "in_domain_sd": 0.02, "external_mean": 0.78, "external_sd": 0.03, "difference": -0.08}])
    assert external_changes(external) == ["On busbra, a's macro ROC AUC drops by 0.080 (in-domain 0.860 ± 0.020, external 0.780 ± 0.030)."]


def test_each_paired_leakage_score_gets_its_own_conclusion() -> None:
    from busflow.report.findings import paired_leakage_effects

    rows = [{"model": "resnet50", "score": score, "subset": "all", "n_images": 40, "n_seeds": 2, "difference": diff,
             "ci_low": low, "ci_high": high} for score, diff, low, high in
            (("p_true_class", 0.03, -0.004, 0.07), ("roc_auc_macro", 0.07, 0.03, 0.11))]
    per_image, pooled = paired_leakage_effects(pd.DataFrame(rows))
    assert per_image.startswith("Leakage, resnet50 probability of the true class on the same test images")
    assert per_image.endswith("all (40 images x 2 seeds) +0.030 [-0.004, +0.070], not significant: "
                              "no leakage effect was found in this score.")
    assert pooled.startswith("Leakage, resnet50 macro ROC AUC on the same test images")
    assert pooled.endswith("+0.070 [+0.030, +0.110], significant: a leakage effect.")


def test_a_leaked_sibling_is_a_group_mate_in_the_training_part_of_the_image_level_fold_that_tested_the_image() -> None:
    from busflow.report.leakage import leaked_siblings

    leaky = pd.DataFrame({"image_id": ["a1", "a2", "b1", "b2", "c1"],
                          "fold0": ["test", "train", "test", "test", "train"],
                          "fold1": ["train", "test", "val", "train", "test"]})
    groups = {"a1": "A", "a2": "A", "b1": "B", "b2": "B", "c1": "C"}
    # a1: a2 trains in fold0; a2: a1 trains in fold1; b1 and b2 share fold0's test part; c1 has no sibling.
    assert leaked_siblings(leaky, groups, ["a1", "a2", "b1", "b2", "c1"]).tolist() == [True, True, False, False, False]


def test_the_paired_leakage_table_is_the_mean_per_image_difference_on_shared_test_images(full: tuple[Path, Path]) -> None:
    """Every (image, seed) pair: the image's score from its image-level fold model of that seed minus its grouped
    score; a pair has a leaked sibling when that seed's split put a group mate into the training part."""
    from busflow.report.leakage import leaked_siblings, seed_folds

    results, out = full
    paired = pd.read_csv(out / "tables" / "leakage_paired.csv")
    rows = paired[paired["model"] == "unet"].set_index("subset")
    assert set(rows.index) == {"all", "with a leaked sibling", "without a leaked sibling"}
    grouped = pd.concat([pd.read_csv(results / f"models/unet/fold{k}/per_image.csv") for k in (0, 1)]).set_index("image_id")
    folds = pd.read_csv(results / "split/folds.csv")
    leaky_folds = pd.read_csv(results / "split/folds_random_image.csv")
    differences, exposures, images = [], [], set()
    for split_seed in LEAKAGE_SEEDS:
        leaky = pd.concat([pd.read_csv(results / f"models/unet/random_image/seed{split_seed}/fold{k}/per_image.csv")
                           for k in (0, 1)]).set_index("image_id")
        common = sorted(set(grouped.index) & set(leaky.index))
        images |= set(common)
        differences.append(leaky.loc[common, "dice"] - grouped.loc[common, "dice"])
        exposures.append(leaked_siblings(seed_folds(leaky_folds, split_seed), dict(zip(folds["image_id"], folds["group_id"])), common))
    difference, exposed = pd.concat(differences).to_numpy(), np.concatenate(exposures)
    assert rows.loc["all", "n_images"] == len(images) and rows.loc["all", "n_pairs"] == len(difference)
    assert rows.loc["all", "n_seeds"] == len(LEAKAGE_SEEDS)
    assert rows.loc["all", "difference"] == pytest.approx(difference.mean(), abs=1e-5)
    assert rows.loc["all", "ci_low"] <= rows.loc["all", "difference"] <= rows.loc["all", "ci_high"]
    assert rows.loc["with a leaked sibling", "n_pairs"] == exposed.sum()
    assert rows.loc["with a leaked sibling", "difference"] == pytest.approx(difference[exposed].mean(), abs=1e-5)
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "Leakage, unet Dice on the same test images, image-level minus grouped: all (" in html
    assert f"x {len(LEAKAGE_SEEDS)} seeds)" in html


def test_a_classifier_s_paired_leakage_auc_is_recomputed_on_the_same_pairs_under_both_splits(full: tuple[Path, Path]) -> None:
    """AUC is not a per-image score: the pooled row compares the macro AUC of the image-level models' probabilities
    with that of the grouped models' on the same (image, seed) pairs."""
    from sklearn.metrics import roc_auc_score

    results, out = full
    paired = pd.read_csv(out / "tables" / "leakage_paired.csv")
    rows = paired[(paired["model"] == "resnet50") & (paired["score"] == "roc_auc_macro")].set_index("subset")
    assert set(rows.index) == {"all", "with a leaked sibling", "without a leaked sibling"}
    assert set(paired.loc[paired["model"] == "unet", "score"]) == {"dice"}  # a segmenter has no AUC

    def predictions(folder: str) -> pd.DataFrame:
        return pd.concat([pd.read_csv(results / f"models/resnet50/{folder}fold{k}/predictions.csv") for k in (0, 1)]).set_index("image_id")

    probabilities = [f"prob_{c}" for c in CLASSES]
    grouped = predictions("")
    truth, grouped_rows, leaky_rows = [], [], []
    for split_seed in LEAKAGE_SEEDS:
        leaky = predictions(f"{LEAKY_SPLIT}/seed{split_seed}/")
        common = sorted(set(grouped.index) & set(leaky.index))
        truth += grouped.loc[common, "y_true"].tolist()
        grouped_rows.append(grouped.loc[common, probabilities])
        leaky_rows.append(leaky.loc[common, probabilities])
    grouped_auc = roc_auc_score(truth, pd.concat(grouped_rows).to_numpy(), multi_class="ovr")
    leaky_auc = roc_auc_score(truth, pd.concat(leaky_rows).to_numpy(), multi_class="ovr")
    overall = rows.loc["all"]
    assert overall["n_pairs"] == len(truth) and overall["n_seeds"] == len(LEAKAGE_SEEDS)
    assert overall["grouped_mean"] == pytest.approx(grouped_auc, abs=1e-5)
    assert overall["image_level_mean"] == pytest.approx(leaky_auc, abs=1e-5)
    assert overall["difference"] == pytest.approx(leaky_auc - grouped_auc, abs=1e-5)
    assert overall["ci_low"] < overall["difference"] < overall["ci_high"]
    assert rows["n_pairs"].loc[["with a leaked sibling", "without a leaked sibling"]].sum() == len(truth)


def test_every_model_has_a_card_with_its_panels(full: tuple[Path, Path]) -> None:
    _, out = full
    listed = pd.read_csv(out / "cards" / "index.csv")
    assert listed["model"].tolist() == ["unet", "resnet50", "mtl"]
    html = (out / "index.html").read_text(encoding="utf-8")
    sizes = {}
    for model, card in zip(listed["model"], listed["card"]):
        assert f'src="cards/{card}"' in html
        with Image.open(out / "cards" / card) as image:
            sizes[model] = image.size
            assert len(np.unique(np.asarray(image.convert("L")))) > 50  # drawn panels, not a blank page
    assert sizes["mtl"][0] > sizes["unet"][0]  # a multi-task card adds the confusion matrix and ROC
    assert sizes["unet"][1] > sizes["resnet50"][1]  # a segmenter's card adds a row of overlays


def test_the_settings_the_params_file_marks_are_in_the_report(tmp_path: Path) -> None:
    from busflow.report.content import settings_notes_blocks
    from busflow.report.render import render_markdown

    notes = [{"path": "models.unet.epochs", "value": "60", "kind": "deviation", "reason": "500 in the paper"}]
    text = render_markdown(settings_notes_blocks({"settings_notes": notes}))
    assert "| models.unet.epochs | 60 | deviation | 500 in the paper |" in text
    assert "marks no setting" in render_markdown(settings_notes_blocks({}))
