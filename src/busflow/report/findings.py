"""The report's findings: a few sentences generated from its own tables, saying what the run shows.

Each sentence reads one table and says nothing the table does not: the best model per task with its
interval (and whether the runner-up's interval overlaps it), each paired comparison called significant only
when its interval excludes zero, the leakage effect paired on the same test images with its interval (or,
without per-image scores, the fold means' difference set against the fold-to-fold spread), and the change
on each external dataset, and how far each segmenter's lesion diameters are off in mm where the pixel spacing
is known. The key metric of a task is macro ROC AUC for classification, Dice for segmentation.
"""

from __future__ import annotations

import math

import pandas as pd

from busflow.report.render import fmt_interval, fmt_mean_sd, fmt_value

KEY_METRICS = {"classification": ("roc_auc_macro", "macro ROC AUC", "classifier"),
               "segmentation": ("dice", "Dice", "segmenter")}  # block: (metric, label, noun)
LABELS = {name: label for name, label, _ in KEY_METRICS.values()}


def _defined(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    return frame.dropna(subset=list(columns))


def best_models(intervals: pd.DataFrame) -> list[str]:
    """Per task, the model with the highest pooled key metric, and how far ahead of the next one it is."""
    sentences = []
    for block, (name, label, noun) in KEY_METRICS.items():
        rows = _defined(intervals[intervals["metric"] == f"{block}.{name}"], "estimate")
        if rows.empty:
            continue
        ranked = rows.sort_values("estimate", ascending=False, kind="stable")
        best = ranked.iloc[0]
        text = (f"Best {noun} by pooled {label}: {best['model']}, "
                f"{fmt_interval(best['estimate'], best['ci_low'], best['ci_high'])}")
        if len(ranked) > 1:
            second = ranked.iloc[1]
            overlap = not (second["ci_high"] < best["ci_low"])
            text += (f"; next {second['model']}, {fmt_interval(second['estimate'], second['ci_low'], second['ci_high'])}"
                     f" ({'the intervals overlap' if overlap else 'the intervals do not overlap'})")
        sentences.append(text + ".")
    return sentences


def is_significant(low: float, high: float) -> bool:
    """A paired difference whose interval excludes zero."""
    return not (math.isnan(low) or math.isnan(high)) and (low > 0 or high < 0)


def paired_comparisons(comparisons: pd.DataFrame) -> list[str]:
    """Each model minus the reference on the key metrics, significant or not at the interval's level."""
    if comparisons.empty:
        return []
    keys = {f"{block}.{name}" for block, (name, _, _) in KEY_METRICS.items()}
    sentences = []
    for row in _defined(comparisons[comparisons["metric"].isin(keys)], "difference").itertuples():
        label = LABELS[row.metric.split(".")[-1]]
        verdict = ("significant: the interval excludes 0" if is_significant(row.ci_low, row.ci_high)
                   else "not significant: the interval includes 0")
        sentences.append(f"{row.model} − {row.reference}, {label}: {row.difference:+.3f} "
                         f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}], {verdict} (p = {fmt_value(row.p_value)}).")
    return sentences


def leakage_effects(leakage: pd.DataFrame) -> list[str]:
    """Image-level minus grouped folds per leakage model, set against the larger of the two fold sds."""
    if leakage.empty:
        return []
    sentences = []
    for row in _defined(leakage[leakage["metric"].isin(LABELS)], "inflation").itertuples():
        spread = max(row.grouped_sd, row.image_level_sd) if not (math.isnan(row.grouped_sd) or math.isnan(row.image_level_sd)) else math.nan
        if math.isnan(spread):
            verdict = "no fold spread to set it against (one fold)"
        elif row.inflation > spread:
            verdict = "larger than the fold-to-fold sd: a leakage effect"
        elif row.inflation < -spread:
            verdict = "lower on the image-level folds by more than the fold-to-fold sd: no inflation, the two splits' test images differ"
        else:
            verdict = "within the fold-to-fold sd: no leakage effect was found"
        sentences.append(f"Leakage, {row.model} {LABELS[row.metric]}: image-level folds "
                         f"{fmt_mean_sd(row.image_level_mean, row.image_level_sd)} vs grouped "
                         f"{fmt_mean_sd(row.grouped_mean, row.grouped_sd)}, inflation {row.inflation:+.3f}, {verdict}.")
    return sentences


SCORE_LABELS = {"dice": "Dice", "p_true_class": "probability of the true class", "roc_auc_macro": "macro ROC AUC"}


def paired_leakage_effects(paired: pd.DataFrame) -> list[str]:
    """Image-level minus grouped on the same test images, overall and by leaked sibling, with intervals."""
    if paired.empty:
        return []
    sentences = []
    for (model, score), rows in paired.groupby(["model", "score"], sort=False):
        parts = []
        for row in rows.itertuples():
            verdict = "significant" if is_significant(row.ci_low, row.ci_high) else "not significant"
            seeds = f" x {row.n_seeds} seeds" if row.n_seeds > 1 else ""
            parts.append(f"{row.subset} ({row.n_images} images{seeds}) {row.difference:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}], {verdict}")
        overall = rows[rows["subset"] == "all"]
        found = not overall.empty and overall["ci_low"].iloc[0] > 0
        conclusion = "a leakage effect" if found else "no leakage effect was found in this score"
        sentences.append(f"Leakage, {model} {SCORE_LABELS.get(score, score)} on the same test images, image-level minus "
                         f"grouped: {'; '.join(parts)}: {conclusion}.")
    return sentences


def external_changes(external: pd.DataFrame) -> list[str]:
    """Each model's key metrics on each external dataset against its in-domain test value."""
    if external.empty:
        return []
    sentences = []
    for row in _defined(external[external["metric"].isin(LABELS)], "difference").itertuples():
        direction = "drops" if row.difference < 0 else "rises"
        sentences.append(f"On {row.dataset}, {row.model}'s {LABELS[row.metric]} {direction} by {abs(row.difference):.3f} "
                         f"(in-domain {fmt_mean_sd(row.in_domain_mean, row.in_domain_sd)}, external "
                         f"{fmt_mean_sd(row.external_mean, row.external_sd)}).")
    return sentences


def lesion_sizes(lesion_size: pd.DataFrame) -> list[str]:
    """Per segmenter: its mean absolute error of the longest diameter, and whether it measures lesions too large or
    too small (a bias whose interval excludes zero)."""
    sentences = []
    for model, rows in lesion_size.groupby("model", sort=False):
        by_statistic = rows.set_index("statistic")
        if not {"diameter_abs_error_mm", "diameter_error_mm"} <= set(by_statistic.index):
            continue
        error, bias = by_statistic.loc["diameter_abs_error_mm"], by_statistic.loc["diameter_error_mm"]
        if is_significant(bias["ci_low"], bias["ci_high"]):
            tendency = f"it measures lesions too {'large' if bias['estimate'] > 0 else 'small'}"
        else:
            tendency = "no bias either way: the interval includes 0"
        sentences.append(f"Lesion size, {model}: the longest diameter is off by "
                         f"{fmt_interval(error['estimate'], error['ci_low'], error['ci_high'], 2)} mm on average (median "
                         f"lesion {error['true_diameter_median_mm']:.1f} mm; {int(error['n_lesion_images'] - error['n_measured'])} "
                         f"of {int(error['n_lesion_images'])} lesions missed); mean difference "
                         f"{bias['estimate']:+.2f} [{bias['ci_low']:+.2f}, {bias['ci_high']:+.2f}] mm, {tendency}.")
    return sentences


def findings(intervals: pd.DataFrame, comparisons: pd.DataFrame, leakage: pd.DataFrame, leakage_paired: pd.DataFrame,
             external: pd.DataFrame, lesion_size: pd.DataFrame) -> list[str]:
    """Every finding of the run, in the report's order; the leakage study paired on the same test images where
    the run has it, else its fold means."""
    leakage_sentences = paired_leakage_effects(leakage_paired) or leakage_effects(leakage)
    return [*best_models(intervals), *paired_comparisons(comparisons), *leakage_sentences, *external_changes(external),
            *lesion_sizes(lesion_size)]
