"""The metric catalogue lists exactly the scalar metrics the evaluate stage writes, each with a definition."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from busflow.evaluate.catalogue import CATALOGUE, CLASSIFICATION, PER_CLASS, SEGMENTATION, glossary
from busflow.predictions import save_predictions
from busflow.stages.evaluate import evaluate_model

CLASSES = ["normal", "benign", "malignant"]
PARAMS = {"evaluate": {"threshold": 0.5, "empty_mask": "match",
                       "operating_point": {"positive_class": "malignant", "rule": "youden", "target_sensitivity": 0.9}}}


def _outputs(rng: np.random.Generator, labels: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    probs = rng.dirichlet(np.ones(3), len(labels)) + np.eye(3)[labels]
    return {"class_probs": probs / probs.sum(1, keepdims=True),
            "mask_probs": np.clip(masks * 0.8 + rng.uniform(0, 0.6, masks.shape), 0, 1)}


@pytest.fixture(scope="module")
def metrics_json(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """metrics.json of a multi-task model, written by the evaluate stage from predictions on synthetic arrays."""
    tmp = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)
    labels = np.resize(np.arange(3), 24)
    masks = np.zeros((24, 16, 16), np.uint8)
    masks[labels > 0, 4:10, 5:12] = 1
    ids = np.array([f"img{i:02d}" for i in range(24)])
    np.savez(tmp / "arrays.npz", image_ids=ids, labels=labels, masks=masks, classes=np.array(CLASSES))
    test, val = np.arange(12), np.arange(12, 24)
    save_predictions(tmp, pd.DataFrame({"image_id": ids[test]}), _outputs(rng, labels[test], masks[test]),
                     validation=(ids[val], _outputs(rng, labels[val], masks[val])))
    evaluate_model(PARAMS, "mtl", 0, tmp / "arrays.npz", tmp / "predictions.npz", tmp / "out")
    return json.loads((tmp / "out" / "metrics.json").read_text())


def _scalars(block: dict) -> set[str]:
    """The keys of a metrics.json block holding a number (or null: undefined on this test part)."""
    return {k for k, v in block.items() if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}


def _catalogued(block: str) -> set[str]:
    return {m.name for m in CATALOGUE if m.block == block}


@pytest.mark.parametrize("block", [CLASSIFICATION, SEGMENTATION])
def test_every_scalar_metric_written_is_catalogued_and_vice_versa(metrics_json: dict, block: str) -> None:
    assert _scalars(metrics_json[block]) == _catalogued(block)


def test_every_per_class_metric_written_is_catalogued_and_vice_versa(metrics_json: dict) -> None:
    per_class = metrics_json[CLASSIFICATION]["per_class"]
    assert set(per_class) == set(CLASSES)
    for values in per_class.values():
        assert _scalars(values) == set(values) == _catalogued(PER_CLASS)


def test_every_metric_has_one_definition() -> None:
    assert len({(m.block, m.name) for m in CATALOGUE}) == len(CATALOGUE)
    assert all(m.definition.strip() for m in CATALOGUE)
    for term, text in glossary():  # metrics listed together share their definition
        assert {m.definition for m in CATALOGUE if m.glossary and m.name in term.split(" / ")} == {text}, term
