"""The ``ensemble`` stage: combine the predictions of trained members on every fold (after P001).

An ensemble is a model like any other for evaluation and the report, but it has no weights of its own: it
averages the probabilities of its members, per pixel for lesion masks and per class for classification.
``weights: equal`` is the plain mean (P001's ensemble); ``weights: validation`` weighs each member by its
score on the fold's validation images — mean Dice for masks, balanced accuracy for classes — which is our
reading of P001's weighted "Combined" variant; a list gives fixed weights in member order. Weights are
never fitted on test images. Only outputs every member has are combined.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from busflow.data.preprocess import load_arrays
from busflow.evaluate.metrics import per_image_overlap
from busflow.io import atomic_dir, read_table
from busflow.model_card import EnsembleCard, write_card
from busflow.predictions import (
    OUTPUT_KEYS,
    TASK_OF_OUTPUT,
    PartOutputs,
    combine,
    load_predictions,
    prediction_table,
    rows_of,
    save_predictions,
)
from busflow.split.protocols import group_ids_of
from busflow.stages.evaluate import evaluate_model, headline


def _validation_score(key: str, outputs: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    if key == "mask_probs":
        dice, _, _ = per_image_overlap(outputs >= threshold, truth > 0)
        return float(dice.mean())
    return float(balanced_accuracy_score(truth, outputs.argmax(1)))


def member_weights(
    key: str, members: Sequence[str], setting: str | Sequence[float], validation: Mapping[str, PartOutputs], truth: np.ndarray, threshold: float
) -> np.ndarray:
    """Normalised weight per member for one output (``class_probs`` or ``mask_probs``)."""
    if setting == "equal":
        raw = np.ones(len(members))
    elif setting == "validation":
        raw = np.array([_validation_score(key, validation[m].outputs[key], truth, threshold) for m in members])
        if raw.sum() <= 0:  # every member scored zero on validation: no member is preferable
            raw = np.ones(len(members))
    else:
        raw = np.asarray(setting, dtype=np.float64)
    return raw / raw.sum()


def shared_outputs(parts: Mapping[str, PartOutputs]) -> list[str]:
    return [key for key in OUTPUT_KEYS if all(key in p.outputs for p in parts.values())]


def _member_parts(members: Sequence[str], models_dir: Path, fold: int, part: str) -> dict[str, PartOutputs]:
    parts = {m: load_predictions(models_dir / m / f"fold{fold}" / "predictions.npz", part) for m in members}
    reference = parts[members[0]].image_ids
    return {m: p.aligned_to(reference, models_dir / m / f"fold{fold}" / "predictions.npz") for m, p in parts.items()}


def build_ensemble(params: Mapping[str, Any], name: str, fold: int, arrays_path: Path, folds_path: Path, models_dir: Path,
                   out_dir: Path) -> EnsembleCard:
    """Write predictions.npz, predictions.csv and model.json of ensemble ``name`` on test fold ``fold``
    into ``out_dir``; return its card (members and their weights per task)."""
    spec = params["ensembles"][name]
    members, threshold = list(spec["members"]), params["evaluate"]["threshold"]
    test, validation = _member_parts(members, models_dir, fold, "test"), _member_parts(members, models_dir, fold, "val")
    keys = shared_outputs(test)
    if not keys:
        raise ValueError(f"ensembles.{name}: members {members} share no output (all need masks or all class probabilities)")
    arrays = load_arrays(arrays_path)
    source = models_dir / members[0] / f"fold{fold}" / "predictions.npz"
    val_rows = rows_of(arrays["image_ids"], validation[members[0]].image_ids, source)
    truth = {"mask_probs": arrays["masks"][val_rows], "class_probs": arrays["labels"][val_rows]}
    weights = {key: member_weights(key, members, spec["weights"], validation, truth[key], threshold) for key in keys}
    outputs = combine([p.outputs for p in test.values()], weights)
    test_ids = test[members[0]].image_ids
    test_rows = rows_of(arrays["image_ids"], test_ids, source)
    classes = arrays["classes"].tolist()
    table = prediction_table(test_ids, group_ids_of(read_table(folds_path), test_ids), arrays["labels"][test_rows], classes, outputs, threshold)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_predictions(out_dir, table, outputs, validation=(validation[members[0]].image_ids, combine([p.outputs for p in validation.values()], weights)))
    card = EnsembleCard(members=members, weights_rule=spec["weights"],
                        weights={TASK_OF_OUTPUT[k]: dict(zip(members, map(float, w))) for k, w in weights.items()},
                        tasks=sorted(TASK_OF_OUTPUT[k] for k in keys), classes=classes, image_size=int(arrays["images"].shape[-1]))
    write_card(out_dir, card)
    return card


def run(params: Mapping[str, Any], *, arrays: Path, folds: Path, models: Path, out: Path, log: Callable[[str], None] = print) -> None:
    """Every ensemble of params on every fold of ``train.folds``, evaluated, in ``out/<name>/fold<k>/``.

    ``out`` is replaced as a whole only when all of them succeeded.
    """
    with atomic_dir(out) as staging:
        for name in params["ensembles"]:
            for fold in params["train"]["folds"]:
                out_dir = staging / name / f"fold{fold}"
                card = build_ensemble(params, name, fold, arrays, folds, models, out_dir)
                metrics = evaluate_model(params, name, fold, arrays, out_dir / "predictions.npz", out_dir)
                weights = "; ".join(f"{task}: " + ", ".join(f"{m} {w:.2f}" for m, w in ws.items()) for task, ws in card.weights.items())
                log(f"[{name} fold{fold}] weights {weights} | {headline(metrics)}")
