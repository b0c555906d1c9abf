"""The cross-dataset matrix: a run's row in its report, and the full matrix of several runs (busflow cross-matrix)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_report import CLASSES, make_results, run_info

from busflow.cli import main
from busflow.report.build import build_report
from busflow.report.cross_dataset import combine_runs, read_run_table

MODEL, FOLDS = "mtl", [0, 1]
DICE, AUC = "segmentation.dice", "classification.per_class.malignant.roc_auc"
# An external dataset of two patients with two images each, and what the two fold models made of them.
EXTERNAL = pd.DataFrame({"image_id": ["e0", "e1", "e2", "e3"], "group_id": ["Q0", "Q0", "Q1", "Q1"],
                         "label": ["malignant", "benign", "malignant", "benign"]})
MALIGNANT_PROB = {0: [0.9, 0.2, 0.6, 0.4], 1: [0.7, 0.5, 0.3, 0.1]}
IMAGE_DICE = {0: [0.8, 0.6, 0.4, 0.2], 1: [0.7, 0.5, 0.3, 0.1]}
# Pooled over both fold models: 14 of the 16 malignant-benign pairs ranked right; the mean of the 8 Dice values.
EXPECTED = {AUC: 14 / 16, DICE: 0.45}


def _write_external_fold(out: Path, fold: int) -> None:
    """per_image.csv, predictions.csv and metrics.json of one fold model on the external dataset."""
    out.mkdir(parents=True)
    malignant = np.array(MALIGNANT_PROB[fold])
    probs = np.column_stack([np.full(4, 0.05), 0.95 - malignant, malignant])
    y_true, y_pred = EXTERNAL["label"].map(CLASSES.index).to_numpy(), probs.argmax(1)
    EXTERNAL.assign(y_true=y_true, y_pred=y_pred, pred=[CLASSES[p] for p in y_pred],
                    **{f"prob_{c}": probs[:, i] for i, c in enumerate(CLASSES)}).to_csv(out / "predictions.csv", index=False)
    EXTERNAL[["image_id", "label"]].assign(y_true=y_true, y_pred=y_pred, confidence=probs.max(1), dice=IMAGE_DICE[fold],
                                           iou=IMAGE_DICE[fold], area_true=10, area_pred=8).to_csv(out / "per_image.csv", index=False)
    metrics = {"model": MODEL, "fold": fold, "tasks": ["cls", "seg"], "n_test_images": 4,
               "classification": {"classes": CLASSES, "accuracy": float((y_true == y_pred).mean())},
               "segmentation": {"dice": float(np.mean(IMAGE_DICE[fold]))}}
    (out / "metrics.json").write_text(json.dumps(metrics))


def _run(root: Path, dataset: str, external: str | None, seed: int) -> Path:
    """A tiny run trained on ``dataset`` (external validation on ``external``) with its report built."""
    make_results(root, [MODEL], FOLDS, seed=seed)
    info = run_info()
    info["params"].update(dataset=dataset, external={"datasets": [external] if external else [],
                                                     "models": [MODEL] if external else []})
    for fold in FOLDS if external else ():
        _write_external_fold(root / "external" / external / MODEL / f"fold{fold}", fold)
    build_report(results_dir=root, out_dir=root / "report", models=[MODEL], folds=FOLDS, run_info=info)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Trained on busi and tested on busbra, and the reverse."""
    tmp = tmp_path_factory.mktemp("cross")
    return _run(tmp / "busi", "busi", "busbra", seed=0), _run(tmp / "busbra", "busbra", "busi", seed=1)


def _table(run: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(run / "report" / "tables" / f"{name}.csv")


def _in_domain(run: Path, metric: str) -> pd.Series:
    intervals = _table(run, "intervals")
    return intervals[(intervals["model"] == MODEL) & (intervals["metric"] == metric)].iloc[0]


def test_a_run_reports_its_row_of_the_matrix(runs: tuple[Path, Path]) -> None:
    busi, _ = runs
    table = _table(busi, "cross_dataset")
    assert list(zip(table["metric"], table["tested_on"])) == [(DICE, "busi"), (DICE, "busbra"), (AUC, "busi"), (AUC, "busbra")]
    assert set(table["trained_on"]) == {"busi"} and set(table["model"]) == {MODEL} and set(table["run"]) == {"busi"}
    for row in table.itertuples():
        if row.in_domain:  # the diagonal is the run's own pooled test folds, interval and all
            expected = _in_domain(busi, row.metric)
            assert (row.estimate, row.ci_low, row.ci_high, row.n_images) == (expected.estimate, expected.ci_low,
                                                                             expected.ci_high, expected.n_images)
            assert row.source.startswith(f"models/{MODEL}/fold0/per_image.csv")
        else:  # every fold model's predictions on every external image, resampled by external patient
            assert row.estimate == pytest.approx(EXPECTED[row.metric])
            assert (row.n_images, row.n_groups, row.confidence) == (8, 2, 0.95)
            assert row.ci_low <= row.estimate <= row.ci_high
            assert f"external/busbra/{MODEL}/fold1/predictions.csv" in row.source


def test_the_report_shows_the_row_as_a_table_and_a_heat_map(runs: tuple[Path, Path]) -> None:
    busi, _ = runs
    html = (busi / "report" / "index.html").read_text(encoding="utf-8")
    section = html[html.index('id="external-validation"'):]
    assert 'id="cross-dataset-matrix"' in section and 'src="figures/cross_dataset.png"' in section
    dice = _table(busi, "cross_dataset").query("tested_on == 'busbra' and metric == @DICE").iloc[0]
    assert f"0.450 [{dice.ci_low:.3f}, {dice.ci_high:.3f}]" in section and "malignant vs rest ROC AUC" in section
    with Image.open(busi / "report" / "figures" / "cross_dataset.png") as image:
        assert image.width >= 400 and image.height >= 200
        assert len(image.convert("RGB").getcolors(1 << 20)) > 50  # drawn cells, text and colour bars


def test_cross_matrix_joins_the_rows_of_several_runs(runs: tuple[Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    busi, busbra = runs
    out = tmp_path / "matrix"
    assert main(["cross-matrix", "--runs", str(busi), str(busbra), "--out", str(out)]) == 0
    assert "cross-dataset matrix of 2 run(s)" in capsys.readouterr().out
    table = pd.read_csv(out / "tables" / "cross_dataset.csv")
    for metric in (DICE, AUC):
        cells = table[table["metric"] == metric].set_index(["trained_on", "tested_on"])
        assert sorted(cells.index) == [("busbra", "busbra"), ("busbra", "busi"), ("busi", "busbra"), ("busi", "busi")]
        for run, dataset in ((busi, "busi"), (busbra, "busbra")):
            diagonal = cells.loc[(dataset, dataset)]
            assert bool(diagonal["in_domain"]) and diagonal["run"] == run.as_posix()
            assert diagonal["estimate"] == pytest.approx(_in_domain(run, metric).estimate)
        for cell in (("busi", "busbra"), ("busbra", "busi")):
            assert not cells.loc[cell, "in_domain"] and cells.loc[cell, "estimate"] == pytest.approx(EXPECTED[metric])
    with Image.open(out / "figures" / "cross_dataset.png") as image:
        assert image.width >= 400 and image.height >= 400  # one panel per metric
        assert len(image.convert("RGB").getcolors(1 << 20)) > 50


def test_a_run_without_external_datasets_has_no_row(tmp_path: Path) -> None:
    run = _run(tmp_path / "busi", "busi", None, seed=2)
    assert _table(run, "cross_dataset").empty
    html = (run / "report" / "index.html").read_text(encoding="utf-8")
    assert "No external dataset configured" in html and 'id="cross-dataset-matrix"' not in html
    assert "Cross-dataset matrix: no external dataset in this run." in html
    with pytest.raises(ValueError, match="tests on no external dataset"):
        read_run_table(run)


def test_two_runs_giving_one_cell_are_refused(runs: tuple[Path, Path]) -> None:
    busi, _ = runs
    with pytest.raises(ValueError, match="busi in .*busi"):
        combine_runs([read_run_table(busi), read_run_table(busi)])


def test_a_run_without_a_report_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cross-matrix", "--runs", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "nowhere/report/tables/cross_dataset.csv: no cross-dataset table" in capsys.readouterr().err
