"""The leakage study paired on the same test images: what the image-level split does to each image's score.

Under k-fold both splits test every image exactly once, so each test image has a score from the grouped
(leak-free) model of its fold and one from the image-level (leaky) model of its fold, for every seed of
``leakage.seeds`` the image-level split was drawn with. The difference of the two, image by image and seed
by seed, is the leakage effect; comparing two means over different test sets is not. An image "has a leaked
sibling" under a seed when, in that seed's image-level split, another image of its group (same patient or
duplicate cluster) sat in the training or validation part of the fold that tested it: that is where leakage
can act, so the effect is reported for those (image, seed) pairs and for the others separately. Intervals
come from the group bootstrap (whole groups resampled, with all their images under every seed), as every
interval of the report.

Per-image scores: ``dice`` for segmentation, ``p_true_class`` (the predicted probability of the true class)
for classification. AUC is not a per-image quantity, so a classifier also gets ``roc_auc_macro`` computed over
the same (image, seed) pairs under each split: the difference of the two AUCs, with both recomputed on every
bootstrap resample of the groups (a paired bootstrap).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from busflow.evaluate.statistics import GroupBootstrap, macro_auc, percentile_interval, two_sided_p, weighted_mean
from busflow.io import read_table
from busflow.layout import SPLIT_FILES
from busflow.report.loading import RunResults
from busflow.report.uncertainty import BootstrapSettings, results_cases
from busflow.split.protocols import leaky_stage

LEAKAGE_PAIRED_COLUMNS = ["model", "score", "subset", "n_images", "n_pairs", "n_seeds", "n_groups", "grouped_mean",
                          "image_level_mean", "difference", "ci_low", "ci_high", "p_value", "confidence", "resamples"]
LEAKED, NOT_LEAKED = "with a leaked sibling", "without a leaked sibling"
POOLED_AUC = "roc_auc_macro"  # a classifier's macro ROC AUC over the pairs, recomputed per resample
EXPOSED_ROLES = ("train", "val")


def leaked_siblings(leaky_folds: pd.DataFrame, group_of: Mapping[str, str], image_ids: Sequence[str]) -> np.ndarray:
    """For each image, whether another image of its group was in the training or validation part of the
    image-level fold that tested it.

    Args:
        leaky_folds: The image-level split (``image_id`` and one ``fold<k>`` role column per fold).
        group_of: image_id -> group_id of the grouped split (patients or duplicate clusters).
        image_ids: The images to answer for (each a test image of exactly one image-level fold).
    """
    columns = [c for c in leaky_folds.columns if c.startswith("fold") and c[4:].isdigit()]
    roles = leaky_folds.assign(image_id=leaky_folds["image_id"].astype(str)).set_index("image_id")[columns]
    members: dict[str, list[str]] = {}
    for image, group in group_of.items():
        members.setdefault(group, []).append(image)
    answers = []
    for image in image_ids:
        tested = [c for c in columns if roles.at[image, c] == "test"] if image in roles.index else []
        siblings = [s for s in members.get(group_of.get(image, image), []) if s != image and s in roles.index]
        answers.append(any(roles.at[s, c] in EXPOSED_ROLES for c in tested for s in siblings))
    return np.array(answers, dtype=bool)


def image_scores(cases: pd.DataFrame, classes: Sequence[str]) -> dict[str, pd.Series]:
    """Per-image scores of one split's pooled test cases, indexed by image_id."""
    indexed = cases.set_index("image_id")
    scores = {}
    if "dice" in indexed:
        scores["dice"] = indexed["dice"].astype(float)
    probabilities = class_probabilities(cases, classes)
    if probabilities is not None:
        truth = indexed["y_true"].to_numpy(int)
        scores["p_true_class"] = pd.Series(probabilities.to_numpy(float)[np.arange(len(truth)), truth], index=indexed.index)
    return scores


def class_probabilities(cases: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame | None:
    """The class probabilities of a classifier's cases indexed by image_id (None for a segmenter)."""
    columns = [f"prob_{c}" for c in classes]
    if "y_true" not in cases or not set(columns) <= set(cases.columns):
        return None
    return cases.set_index("image_id")[columns]


def seed_folds(leaky_folds: pd.DataFrame, split_seed: int) -> pd.DataFrame:
    """The image-level folds drawn with ``split_seed``, as a folds table with ``fold<k>`` columns."""
    stem = leaky_stage(split_seed)
    columns = {c: f"fold{c[len(stem):]}" for c in leaky_folds.columns if c.startswith(stem) and c[len(stem):].isdigit()}
    return leaky_folds[["image_id", *columns]].rename(columns=columns)


@dataclass
class _Pairs:
    """(image, seed) pairs of one model and score: the grouped and the image-level score, group, exposure."""

    images: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    grouped: list[float] = field(default_factory=list)
    image_level: list[float] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    exposed: list[bool] = field(default_factory=list)
    truth: list[int] = field(default_factory=list)  # classes, for a pooled score
    grouped_probabilities: list[np.ndarray] = field(default_factory=list)  # one row per pair, for a pooled score
    image_level_probabilities: list[np.ndarray] = field(default_factory=list)


def _model_pairs(run: RunResults, model: str, leaky_folds: pd.DataFrame, group_of: Mapping[str, str]) -> dict[str, _Pairs]:
    """Per score, every test image paired with itself under each seed's image-level split."""
    grouped = results_cases(run, model, run.of_model(model))
    if grouped.empty:
        return {}
    grouped_scores = image_scores(grouped, run.classes)
    grouped_probabilities = class_probabilities(grouped, run.classes)
    pairs: dict[str, _Pairs] = {}
    for split_seed in sorted({r.split_seed for r in run.leaky_results if r.model == model and r.split_seed is not None}):
        leaky = results_cases(run, model, [r for r in run.leaky_results if r.model == model and r.split_seed == split_seed])
        if leaky.empty:
            continue
        leaky_scores = image_scores(leaky, run.classes)
        common = sorted(set(grouped["image_id"]) & set(leaky["image_id"]))
        exposed = leaked_siblings(seed_folds(leaky_folds, split_seed), group_of, common)
        for score in sorted(set(grouped_scores) & set(leaky_scores)):
            _add_pairs(pairs.setdefault(score, _Pairs()), common, split_seed, grouped_scores[score].loc[common],
                       leaky_scores[score].loc[common], group_of, exposed)
        leaky_probabilities = class_probabilities(leaky, run.classes)
        if grouped_probabilities is not None and leaky_probabilities is not None:
            found = pairs.setdefault(POOLED_AUC, _Pairs())
            no_per_image_score = pd.Series(np.nan, index=common)  # the pooled score has the probabilities instead
            _add_pairs(found, common, split_seed, no_per_image_score, no_per_image_score, group_of, exposed)
            found.truth += grouped.set_index("image_id")["y_true"].loc[common].astype(int).tolist()
            found.grouped_probabilities += list(grouped_probabilities.loc[common].to_numpy(float))
            found.image_level_probabilities += list(leaky_probabilities.loc[common].to_numpy(float))
    return pairs


def _add_pairs(pairs: _Pairs, images: list[str], split_seed: int, grouped: pd.Series, image_level: pd.Series,
               group_of: Mapping[str, str], exposed: np.ndarray) -> None:
    pairs.images += images
    pairs.seeds += [split_seed] * len(images)
    pairs.grouped += grouped.tolist()
    pairs.image_level += image_level.tolist()
    pairs.groups += [group_of.get(i, i) for i in images]
    pairs.exposed += exposed.tolist()


def leakage_paired_table(run: RunResults, settings: BootstrapSettings) -> pd.DataFrame:
    """Per leakage model, score and subset (all test images, with and without a leaked sibling): the mean
    score under each split and the paired difference, image-level minus grouped, over every (image, seed)
    pair, with its interval."""
    if not run.leakage_models or not (run.root / SPLIT_FILES["leaky"]).is_file():
        return pd.DataFrame(columns=LEAKAGE_PAIRED_COLUMNS)
    leaky_folds = read_table(run.root / SPLIT_FILES["leaky"])
    leaky_folds["image_id"] = leaky_folds["image_id"].astype(str)
    group_of = dict(zip(run.folds_table["image_id"].astype(str), run.folds_table["group_id"].astype(str)))
    rows = []
    for number, model in enumerate(run.leakage_models):
        for score, pairs in _model_pairs(run, model, leaky_folds, group_of).items():
            exposed = np.array(pairs.exposed, dtype=bool)
            for subset, chosen in (("all", np.ones(len(exposed), bool)), (LEAKED, exposed), (NOT_LEAKED, ~exposed)):
                if chosen.any():
                    picked = np.asarray(pairs.images)[chosen]
                    rows.append({"model": model, "score": score, "subset": subset,
                                 "n_images": len(set(picked)), "n_pairs": int(chosen.sum()),
                                 "n_seeds": len(set(np.asarray(pairs.seeds)[chosen].tolist())),
                                 **_paired(pairs, score, chosen, settings, settings.seed + number)})
    return pd.DataFrame(rows, columns=LEAKAGE_PAIRED_COLUMNS)


Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (values of the pairs, B x n weights) -> B values


def _score_under_both_splits(pairs: _Pairs, score: str, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray, Statistic]:
    """The ``chosen`` pairs' values under the grouped and the image-level split, and the statistic over them: the
    weighted mean of a per-image score, or the macro AUC of the class probabilities for the pooled score."""
    if score != POOLED_AUC:
        return np.asarray(pairs.grouped, float)[chosen], np.asarray(pairs.image_level, float)[chosen], weighted_mean
    truth = np.asarray(pairs.truth)[chosen]
    return (np.asarray(pairs.grouped_probabilities)[chosen], np.asarray(pairs.image_level_probabilities)[chosen],
            lambda probabilities, weights: macro_auc(truth, probabilities, weights))


def _paired(pairs: _Pairs, score: str, chosen: np.ndarray, settings: BootstrapSettings, seed: int) -> dict[str, float]:
    """The score under both splits over the ``chosen`` pairs and the paired difference (image-level minus
    grouped), its interval from the same group resamples entering both splits."""
    grouped, image_level, statistic = _score_under_both_splits(pairs, score, chosen)
    draw = GroupBootstrap.draw(list(np.asarray(pairs.groups)[chosen]), settings.resamples, seed)
    samples = statistic(image_level, draw.weights) - statistic(grouped, draw.weights)
    low, high = percentile_interval(samples, settings.confidence)
    ones = np.ones((1, int(chosen.sum())))
    grouped_value, image_level_value = float(statistic(grouped, ones)[0]), float(statistic(image_level, ones)[0])
    return {"n_groups": draw.n_groups, "grouped_mean": grouped_value, "image_level_mean": image_level_value,
            "difference": image_level_value - grouped_value, "ci_low": low, "ci_high": high,
            "p_value": two_sided_p(samples), "confidence": settings.confidence, "resamples": settings.resamples}
