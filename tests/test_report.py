"""Tests of the report stage on a small synthetic results tree."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from busflow.report import REPORT_FILES, build_report

CLASSES = ["normal", "benign", "malignant"]
SIZE = 32
N_IMAGES = 30
TASKS = {"unet": ["seg"], "resnet50": ["cls"], "mtl": ["cls", "seg"]}
FIGURES = [f for f in REPORT_FILES if f.startswith("figures/")]


# --------------------------------------------------------------------------- fake results tree


def _write_data(root: Path, rng: np.random.Generator) -> pd.DataFrame:
    """index.csv + arrays.npz: 15 patients with 2 images each; normal images have empty masks."""
    patient_labels = rng.permutation(np.resize(np.arange(3), 15))
    rows, images, masks = [], [], []
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(N_IMAGES):
        label = int(patient_labels[i // 2])
        cy, cx, r = rng.integers(10, 22), rng.integers(10, 22), rng.integers(4, 8)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2).astype(np.uint8) * (label > 0)
        image = np.clip(rng.normal(90, 25, (SIZE, SIZE)) + 80 * mask, 0, 255).astype(np.uint8)
        rows.append({"image_id": f"img{i:03d}", "patient_id": f"P{i // 2:02d}", "label": CLASSES[label],
                     "image_path": f"raw/img{i:03d}.png", "mask_paths": f"raw/img{i:03d}_mask.png",
                     "width": 500, "height": 400})
        images.append(image)
        masks.append(mask)
    index = pd.DataFrame(rows)
    (root / "data").mkdir(parents=True)
    index.to_csv(root / "data" / "index.csv", index=False)
    np.savez(root / "data" / "arrays.npz", images=np.stack(images), masks=np.stack(masks),
             labels=index["label"].map(CLASSES.index).to_numpy(np.int64),
             image_ids=index["image_id"].to_numpy(str), classes=np.array(CLASSES))
    return index


def _write_split(root: Path, index: pd.DataFrame, folds: list[int], leak: bool) -> pd.DataFrame:
    """groups.csv + folds.csv with patient-level folds; optionally plant a train/test leak in fold 0."""
    n_folds = max(len(folds), 2)
    patient_no = index["patient_id"].str[1:].astype(int)
    table = pd.DataFrame({"image_id": index["image_id"], "group_id": index["patient_id"], "label": index["label"],
                          "kfold": patient_no % n_folds})
    for k in folds:
        others = sorted(set(patient_no[table["kfold"] != k]))
        val = set(others[:2])
        table[f"fold{k}"] = ["test" if kf == k else ("val" if p in val else "train")
                             for kf, p in zip(table["kfold"], patient_no)]
    if leak:  # one image of a test patient of fold 0 is put in train
        first_test = table.index[table[f"fold{folds[0]}"] == "test"][0]
        table.loc[first_test, f"fold{folds[0]}"] = "train"
    (root / "split").mkdir(parents=True)
    table[["image_id", "group_id"]].assign(reason="patient_id").to_csv(root / "split" / "groups.csv", index=False)
    table.to_csv(root / "split" / "folds.csv", index=False)
    return table


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
                      arrays: dict[str, np.ndarray], nan_auc: bool) -> None:
    out = root / "models" / model / f"fold{fold}"
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
        per_image = per_image.assign(dice=dice, iou=iou, area_true=area_t.astype(int), area_pred=area_p.astype(int))
        with open(out / "predictions.npz", "wb") as fh:
            np.savez(fh, image_ids=test["image_id"].to_numpy(str), mask_probs=(prob * 255).astype(np.uint8))
        metrics["segmentation"] = _seg_metrics(rng, int((area_t > 0).sum()), int((area_t == 0).sum()))
    per_image.to_csv(out / "per_image.csv", index=False)
    epochs = np.arange(1, 6)
    pd.DataFrame({"epoch": epochs, "train_loss": 1 / epochs + rng.uniform(0, 0.1, 5),
                  "val_loss": 1.2 / epochs + rng.uniform(0, 0.1, 5), "val_score": rng.uniform(0, 1, 5),
                  "lr": 1e-3, "seconds": 1.0}).to_csv(out / "history.csv", index=False)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))


def make_results(root: Path, models: list[str], folds: list[int], leak: bool = False, seed: int = 0) -> Path:
    """Write a complete fake results tree under ``root`` and return it."""
    rng = np.random.default_rng(seed)
    index = _write_data(root, rng)
    table = _write_split(root, index, folds, leak)
    with np.load(root / "data" / "arrays.npz") as npz:
        arrays = {"masks": npz["masks"], "row": {str(i): k for k, i in enumerate(npz["image_ids"])}}
    for model in models:
        for j, fold in enumerate(folds):
            test = table[table[f"fold{fold}"] == "test"]
            _write_model_fold(root, rng, model, fold, test, arrays, nan_auc=(model == "resnet50" and j == 1))
    return root


def run_info(dataset: str = "synthetic") -> dict:
    return {"dataset": dataset, "params_sha256": "ab" * 32, "busflow_version": "0.1.0", "classes": CLASSES,
            "empty_mask_convention": "Dice = 1 when both masks are empty", "params": {"seed": 1, "train": {"lr": 0.001}}}


def _report(tmp: Path, models: list[str], folds: list[int], leak: bool = False) -> Path:
    results = make_results(tmp / "results", models, folds, leak)
    out = tmp / "report"
    build_report(results_dir=results, out_dir=out, models=models, folds=folds, run_info=run_info())
    return out


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("full")
    out = _report(tmp, ["unet", "resnet50", "mtl"], [0, 1])
    return tmp / "results", out


# --------------------------------------------------------------------------- tests


def test_every_report_file_is_written(full: tuple[Path, Path]) -> None:
    _, out = full
    for rel in REPORT_FILES:
        assert (out / rel).is_file(), rel
        assert (out / rel).stat().st_size > 0, rel
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


def test_split_audit_without_leak(full: tuple[Path, Path]) -> None:
    _, out = full
    split = pd.read_csv(out / "tables" / "split.csv")
    assert set(split["role"]) == {"train", "val", "test"}
    assert (split["patient_overlap"] == "none").all()
    assert split.groupby("fold")["images"].sum().tolist() == [N_IMAGES, N_IMAGES]
    assert (split[CLASSES].sum(axis=1) == split["images"]).all()
    dataset = pd.read_csv(out / "tables" / "dataset.csv").set_index("class")
    assert dataset.loc["all", "images"] == N_IMAGES and dataset.loc["all", "patients"] == 15
    assert "patient overlap: none" in (out / "index.html").read_text()


def test_split_audit_flags_planted_leak(tmp_path: Path) -> None:
    out = _report(tmp_path, ["resnet50"], [0, 1], leak=True)
    split = pd.read_csv(out / "tables" / "split.csv")
    fold0 = split.loc[split["fold"] == 0, "patient_overlap"].unique()
    assert len(fold0) == 1 and fold0[0] != "none" and "train/test" in fold0[0]
    assert (split.loc[split["fold"] == 1, "patient_overlap"] == "none").all()
    html = (out / "index.html").read_text()
    assert f"fold 0: patient overlap: {fold0[0]}" in html


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
                 run_info=run_info())
    for rel in REPORT_FILES:
        if rel != "index.html":  # the HTML header carries a timestamp
            assert (again / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_single_fold_seg_only_run(tmp_path: Path) -> None:
    out = _report(tmp_path, ["unet"], [0])
    for rel in REPORT_FILES:
        assert (out / rel).stat().st_size > 0, rel
    cls = pd.read_csv(out / "tables" / "classification.csv")
    assert cls.empty and "accuracy" in cls.columns
    assert pd.read_csv(out / "tables" / "per_class.csv").empty
    lb = pd.read_csv(out / "tables" / "leaderboard.csv")
    assert len(lb) == 1 and math.isnan(lb.loc[0, "dice_sd"]) and not math.isnan(lb.loc[0, "dice_mean"])
    html = (out / "index.html").read_text()
    assert "no classification models in this run" in html
    with Image.open(out / "figures" / "roc.png") as img:
        assert img.width > 0
