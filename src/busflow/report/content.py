"""Assemble the report's sections as renderer-neutral blocks."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from busflow.evaluate.catalogue import glossary, names
from busflow.layout import REPORT_TABLES, report_table
from busflow.report.cross_dataset import metric_label, tested_datasets
from busflow.report.findings import findings
from busflow.report.lesion_size import STATISTICS as SIZE_STATISTICS
from busflow.report.loading import RunResults
from busflow.report.render import (
    NA,
    SOURCE,
    Block,
    Bullets,
    Collapsed,
    Details,
    Figure,
    Gallery,
    Heading,
    KeyValues,
    Links,
    Para,
    Table,
    fmt_interval,
    fmt_mean_sd,
    fmt_value,
    format_frame,
    is_missing,
)
from busflow.report.reproduction import published
from busflow.report.tables import CARDS_DIR, DuplicateCluster, card_name, duplicate_links, excluded_images, split_label

MAX_SHEETS = 300  # contact sheets drawn and shown; label conflicts and larger clusters come first
MAX_GROUP_ROWS = 50  # rows of tables/groups.csv shown in the report

HEADLINE_METRICS = names("headline")
# How the report summarises the metrics, listed after their definitions.
CONVENTION_DOCS: tuple[tuple[str, str], ...] = (
    ("mean ± sd", "over the test folds (sample sd, ddof = 1; n/a with one fold); undefined fold values are skipped."),
    ("pooled", "computed once on all test images of all folds together (classification: pooled predictions; "
               "segmentation: mean of per-image values)."),
    ("[interval]", "percentile bootstrap interval that resamples groups (patients, or duplicate clusters where patients "
                   "are unknown) with replacement, never single images, so correlated images of one patient move together."),
)


@dataclass(frozen=True)
class ReportTables:
    """The report's tables by name (busflow.layout.REPORT_TABLES), and the duplicate clusters."""

    frames: Mapping[str, pd.DataFrame] = field(compare=False)
    clusters: tuple[DuplicateCluster, ...] = ()

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.frames[name]

    def files(self) -> dict[str, pd.DataFrame]:
        """Relative CSV path -> table."""
        return {report_table(name): self.frames[name] for name in REPORT_TABLES}

    @property
    def sheets(self) -> tuple[DuplicateCluster, ...]:
        """The clusters that get a contact sheet (at most MAX_SHEETS)."""
        return self.clusters[:MAX_SHEETS]


def library_versions() -> dict[str, str]:
    """Versions of the interpreter and the report's libraries (read at runtime)."""
    import matplotlib
    import numpy
    import seaborn
    import sklearn

    return {"python": platform.python_version(), "numpy": numpy.__version__, "pandas": pd.__version__,
            "scikit-learn": sklearn.__version__, "matplotlib": matplotlib.__version__,
            "seaborn": seaborn.__version__}


def build_blocks(run: RunResults, tables: ReportTables, run_info: Mapping[str, Any],
                 unreadable: Sequence[str] = ()) -> list[Block]:
    """All report sections in reading order: the summary (what ran, findings, headline table, reproduction, key
    figures), the results section by section, and an appendix (provenance, data, split, groups, per-fold tables,
    definitions, parameters) that the HTML folds away. ``unreadable`` lists images shown as error tiles."""
    notes_in_summary = not tables["reproduction"].empty  # beside the paper's numbers, else in the appendix
    summary = [*summary_blocks(run, tables, run_info), *(settings_notes_blocks(run_info, 3) if notes_in_summary else [])]
    sections = [summary, leaderboard_blocks(tables), card_blocks(run), lesion_size_blocks(tables), leakage_blocks(run, tables),
                external_blocks(tables), ablation_blocks(tables), figure_blocks(run)]
    appendix = [*provenance_blocks(run_info), *([] if notes_in_summary else settings_notes_blocks(run_info)),
                *dataset_blocks(tables), *split_blocks(run, tables),
                *grouping_blocks(run, tables, run_info), *cluster_blocks(tables, unreadable), *per_fold_blocks(run, tables),
                *metric_blocks(), *convention_blocks(run_info), *params_blocks(run_info), *file_blocks(tables)]
    appendix_heading = Heading(APPENDIX)
    headings = [block for blocks in sections for block in blocks if isinstance(block, Heading) and block.level == 2]
    contents = Links(tuple((f"#{h.anchor}", h.text) for h in (*headings, appendix_heading)), "toc")
    return [*leaky_warning_blocks(run), contents, *(block for blocks in sections for block in blocks),
            Collapsed(appendix_heading, tuple(_demoted(appendix)))]


APPENDIX = "Appendix: provenance, data, split, per-fold results and definitions"


def _demoted(blocks: Sequence[Block]) -> list[Block]:
    """The appendix's own sections one heading level down."""
    return [replace(b, level=b.level + 1) if isinstance(b, Heading) else b for b in blocks]


def split_params(run_info: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``split`` section of the run's params (empty when not recorded)."""
    return (run_info.get("params") or {}).get("split") or {}


def leaky_warning_blocks(run: RunResults) -> list[Block]:
    """A warning at the top when the models were trained and tested on the image-level (leaky) split."""
    if not run.leaky:
        return []
    return [Para(f"WARNING: split.protocol is {split_label(run)}. Its folds ignore patients and duplicate "
                 "frames, so images of one patient or copies of one frame can sit in train and test: every metric "
                 "of this report is optimistically biased. Use this protocol only for the leakage study.", "bad")]


def _ensemble_note(spec: Mapping[str, Any] | None) -> str:
    if not spec:
        return ""
    weights = spec["weights"] if isinstance(spec["weights"], str) else "fixed " + "/".join(f"{w:g}" for w in spec["weights"])
    return f", ensemble of {', '.join(spec['members'])} ({weights} weights)"


def _init_note(run: RunResults, model: str) -> str:
    """Where the model's encoder started, from its model.json (networks only; ensembles have none)."""
    cards = [r.description for r in run.results if r.model == model and r.description.get("arch") not in (None, "ensemble")]
    if not cards:
        return ""
    init = cards[0].get("init")
    if not init:
        return ", from scratch"
    return f", encoder from {init['source']} ({init['loaded']}/{init['encoder_tensors']} tensors loaded)"


def _training_devices(run: RunResults) -> str:
    devices = {f"{d['device']} ({d['device_name']}), torch {d['torch']}"
               for r in run.results if (d := r.description.get("trained_on"))}
    return "; ".join(sorted(devices)) or "n/a"


def _determinism(run: RunResults) -> str:
    """Whether rerunning this params file reproduces the results bit for bit, from what each model recorded."""
    trained = [r.description.get("trained_on") or {} for r in run.results if r.description.get("arch") != "ensemble"]
    if not trained or any("deterministic" not in t for t in trained):
        return "unknown (models trained by an older busflow)"
    unsure = sorted({f"{t['device']}" for t in trained if not t["deterministic"]})
    threads = sorted({int(t["threads"]) for t in trained})
    if not unsure:
        return (f"yes: every model trained on the CPU with seeded draws ({'/'.join(map(str, threads))} torch thread(s) per job); "
                "retraining with the same params, torch build and thread count gives bit-identical weights and metrics")
    return (f"no: {sum(not t['deterministic'] for t in trained)} of {len(trained)} training jobs ran on {', '.join(unsure)} "
            "without forced deterministic algorithms; a rerun agrees within floating-point noise, not bit for bit")


def _skipped_samples(run: RunResults) -> str:
    path = run.root / "data" / "skipped.csv"
    if not path.is_file():
        return "n/a"
    count = len(pd.read_csv(path))
    return "none" if count == 0 else f"{count} left out under data.on_bad_sample: skip (data/skipped.csv lists each with its problem)"


def _wall_time(jobs: pd.DataFrame) -> str:
    """Total and slowest job from the jobs' logs; sums job times, so parallel runs took less on the clock."""
    if jobs.empty:
        return "n/a (no job logs)"
    slowest = jobs.loc[jobs["seconds"].idxmax()]
    return (f"{jobs['seconds'].sum():.0f} s summed over {len(jobs)} jobs; slowest {slowest['job']} "
            f"{slowest['seconds']:.0f} s (tables/jobs.csv)")


def summary_blocks(run: RunResults, tables: ReportTables, run_info: Mapping[str, Any]) -> list[Block]:
    """What ran, what it shows (findings), the headline table, the reproduction table and the key figures."""
    index = run.index
    pairs = (
        ("dataset", str(run_info.get("dataset", "n/a"))),
        ("classes", ", ".join(run.classes)),
        ("images / patients", f"{len(index)} / {index['patient_id'].nunique() if 'patient_id' in index else 'n/a'}"),
        ("bad samples skipped", _skipped_samples(run)),
        ("split protocol", split_label(run)),
        ("folds", ", ".join(str(f) for f in run.folds)),
        ("trained on", _training_devices(run)),
        ("deterministic", _determinism(run)),
        ("pipeline wall time", _wall_time(tables["jobs"])),
    )
    ensembles = (run_info.get("params") or {}).get("ensembles") or {}
    models = tuple(f"{row.model}: {row.tasks} ({row.n_folds} folds){_init_note(run, row.model)}{_ensemble_note(ensembles.get(row.model))}"
                   for row in tables["leaderboard"].itertuples())
    confidence, resamples = _bootstrap_of(tables["intervals"])
    sentences = findings(tables["intervals"], tables["comparisons"], tables["leakage"], tables["leakage_paired"],
                         tables["external"], tables["lesion_size"])
    return [
        Heading("Summary"), KeyValues(pairs), Para("Models:"), Bullets(models or ("no models in this run",)),
        Heading("Findings", 3), Bullets(tuple(sentences) or ("no pooled results in this run",)),
        Table(leaderboard_display(tables["leaderboard"], "pooled"),
              f"Headline metrics pooled over all test folds [{confidence} bootstrap interval, {resamples} resamples of "
              "patients/duplicate groups]", "no models"),
        *reproduction_blocks(tables),
        *(Figure(path, caption) for path, caption in KEY_FIGURES),
    ]


def settings_notes_blocks(run_info: Mapping[str, Any], level: int = 2) -> list[Block]:
    """The settings the params file marks as busflow's choice (the paper is silent) or as a deviation from the
    paper, with the reasons written beside them (busflow.settings_notes)."""
    notes = pd.DataFrame(run_info.get("settings_notes") or [], columns=["path", "value", "kind", "reason"])
    return [Heading("Choices and deviations", level),
            Table(notes.rename(columns={"path": "setting"}),
                  "Settings the params file marks '# busflow's choice' (the paper leaves them open) or '# deviation' "
                  "(the paper says otherwise), with the reason given there",
                  "the params file marks no setting as busflow's choice or as a deviation")]


def provenance_blocks(run_info: Mapping[str, Any]) -> list[Block]:
    """Versions, hashes and machine: what it takes to repeat the run."""
    pairs = (
        ("params sha256", str(run_info.get("params_sha256", "n/a"))),
        ("busflow", str(run_info.get("busflow_version", "n/a"))),
        *library_versions().items(),
        ("report built on", f"{platform.platform()}, {os.cpu_count()} CPU(s)"),
    )
    return [Heading("Provenance"), KeyValues(pairs)]


def dataset_blocks(tables: ReportTables) -> list[Block]:
    frame = format_frame(tables["dataset"], count_columns=("images", "patients"))
    return [Heading("Dataset"), Table(frame, "Images and patients per class (tables/dataset.csv)")]


def split_blocks(run: RunResults, tables: ReportTables) -> list[Block]:
    """Protocol, the audit verdict per split and the role-by-role counts with their crossings."""
    passed = bool(run.audit.get("passed"))
    blocks: list[Block] = [
        Heading("Split audit"),
        KeyValues((("protocol", split_label(run)), ("audit (split/audit.json)", "passed" if passed else "FAILED"))),
        *(audit_verdict(split) for split in run.audit.get("splits", [])),
    ]
    labels = ("split", "protocol", "column", "role", "crossings", SOURCE)
    counts = [c for c in tables["split"].columns if c not in labels]
    blocks.append(Table(format_frame(tables["split"], count_columns=counts),
                        "Images, groups, patients and classes per split, role column and role, with the groups, "
                        "patients and identical images the audit found across role boundaries (tables/split.csv)",
                        "no split counts"))
    return blocks


def audit_verdict(split: Mapping[str, Any]) -> Para:
    """One line per audited split: clean, leaky by design, or failed."""
    name, crossings = f"{split['split']} split ({split['protocol']})", int(split.get("crossings", 0))
    if split.get("leaky"):
        return Para(f"{name}: leaky by design, {crossings} crossings recorded (the leak the leakage study "
                    "measures)", "note")
    if crossings == 0:
        return Para(f"{name}: no group, patient or identical image crosses a role boundary", "ok")
    return Para(f"{name}: {crossings} crossings across role boundaries: the audit failed", "bad")


def grouping_blocks(run: RunResults, tables: ReportTables, run_info: Mapping[str, Any]) -> list[Block]:
    """How images were grouped, what linked them, and the label-conflict policy with its effect."""
    sizes = run.groups.groupby("group_id").size()
    reasons = run.links["reason"].astype(str).value_counts().sort_index()
    duplicates = duplicate_links(run.links)
    in_clusters = len(set(duplicates["image_a"]) | set(duplicates["image_b"]))
    conflicts = tables["label_conflicts"]
    pairs = (
        ("grouping (split.grouping)", grouping_mode(run, run_info)),
        ("groups", f"{len(sizes)} ({int((sizes >= 2).sum())} with ≥ 2 images)"),
        ("links", ", ".join(f"{reason}: {n}" for reason, n in reasons.items()) or "none"),
        ("images in duplicate clusters", f"{in_clusters} of {len(run.index)} ({len(tables.clusters)} clusters)"),
        ("label-conflict clusters", f"{len(conflicts)} ({int(conflicts['n_images'].sum())} images)"),
        ("label-conflict policy (split.label_conflicts)",
         f"{split_params(run_info).get('label_conflicts', 'n/a')}: {excluded_images(run.folds_table)} images "
         "excluded from every fold"),
    )
    groups = tables["groups"]
    shown = format_frame(groups.head(MAX_GROUP_ROWS), count_columns=("n_images",))
    more = f"; the first {MAX_GROUP_ROWS} of {len(groups)} shown" if len(groups) > MAX_GROUP_ROWS else ""
    return [
        Heading("Grouping and duplicates"),
        KeyValues(pairs),
        Table(format_frame(conflicts, count_columns=("n_images",)),
              "Duplicate clusters filed under several classes (tables/label_conflicts.csv)", "no label conflicts"),
        Table(shown, f"Groups of several images (tables/groups.csv{more})", "every group holds a single image"),
    ]


def grouping_mode(run: RunResults, run_info: Mapping[str, Any]) -> str:
    """``split.grouping``, with what ``auto`` resolved to for this dataset."""
    from busflow.split.groups import grouping_sources

    mode = split_params(run_info).get("grouping")
    if mode is None:
        return "n/a"
    if mode != "auto":
        return str(mode)
    use_patients, _, _ = grouping_sources(mode, run.index)
    return f"auto → {'patients' if use_patients else 'near-duplicates'}"


def cluster_blocks(tables: ReportTables, unreadable: Sequence[str]) -> list[Block]:
    """The contact sheets of the duplicate clusters (capped at MAX_SHEETS)."""
    blocks: list[Block] = [Heading("Duplicate-cluster contact sheets")]
    if not tables.clusters:
        return [*blocks, Para("no exact, near-duplicate or same-lesion links: no contact sheets", "note")]
    blocks.append(Para("One sheet per cluster of images joined by exact, near-duplicate or same-lesion (view) links "
                       "(patient links aside), each image at its original resolution scaled to a common height; the "
                       "titles of label-conflict clusters are red. Files: clusters/."))
    if len(tables.clusters) > MAX_SHEETS:
        blocks.append(Para(f"Capped: {MAX_SHEETS} of {len(tables.clusters)} clusters have a sheet (label conflicts "
                           "and larger clusters first); all are listed in tables/groups.csv.", "bad"))
    if unreadable:
        blocks.append(Para(f"{len(unreadable)} image(s) could not be read; their tiles name the error: "
                           + "; ".join(unreadable[:10]) + (" …" if len(unreadable) > 10 else ""), "bad"))
    return [*blocks, Gallery(tuple((c.sheet, c.caption) for c in tables.sheets))]


def leaderboard_display(leaderboard: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Headline metrics per model as ``mean ± sd`` (kind="mean_sd") or pooled values with their bootstrap
    interval (kind="pooled")."""
    rows = []
    for _, row in leaderboard.iterrows():
        out = {"model": row["model"], "split": row["split"], "tasks": row["tasks"], "folds": fmt_value(row["n_folds"])}
        for metric in HEADLINE_METRICS:
            out[metric] = (fmt_mean_sd(row[f"{metric}_mean"], row[f"{metric}_sd"]) if kind == "mean_sd"
                           else fmt_interval(row[f"{metric}_pooled"], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]))
        out[SOURCE] = row.get(SOURCE, "")
        rows.append(out)
    return pd.DataFrame(rows, columns=["model", "split", "tasks", "folds", *HEADLINE_METRICS, SOURCE])


def leaderboard_blocks(tables: ReportTables) -> list[Block]:
    """Headline metrics as mean ± sd over folds, and the paired comparisons with the reference model."""
    return [
        Heading("Leaderboard"),
        Table(leaderboard_display(tables["leaderboard"], "mean_sd"), "Headline metrics, mean ± sd over folds", "no models"),
        Para("All leaderboard metrics (mean, sd, pooled value and interval) are in tables/leaderboard.csv; every "
             "pooled statistic with its interval, per class as well, in tables/intervals.csv.", "note"),
        *comparison_blocks(tables),
    ]


def lesion_size_blocks(tables: ReportTables) -> list[Block]:
    """Each segmenter's lesion size errors in mm, where the pixel spacing of the images is known."""
    table = tables["lesion_size"]
    if table.empty:
        return [Heading("Lesion size in mm"),
                Para("The pixel spacing of this run's images is not known (pixel_spacing_mm in data/index.csv), or no "
                     "segmenter found a lesion: lesion sizes are not measured in mm.", "note")]
    confidence = f"{float(table['confidence'].iloc[0]):.0%}"
    display = pd.DataFrame({
        "model": table["model"], "statistic": table["statistic"].map(SIZE_STATISTICS),
        f"value [{confidence} interval]": [fmt_interval(e, lo, hi, 2) for e, lo, hi in zip(table["estimate"], table["ci_low"], table["ci_high"])],
        "lesions measured": [f"{m} of {n}" for m, n in zip(table["n_measured"], table["n_lesion_images"])],
        SOURCE: table.get(SOURCE, ""),
    })
    median = float(table["true_diameter_median_mm"].iloc[0])
    return [Heading("Lesion size in mm"),
            Para("The longest diameter (maximum Feret diameter) and the area of each test image's largest predicted and "
                 "true lesion, measured on the model-size masks with the image's own pixel spacing "
                 f"(median true diameter {median:.1f} mm). The error is predicted − true: above 0 the model measures lesions "
                 "too large. A lesion the model missed has no predicted size: it is counted, not compared. Intervals "
                 "resample patients or duplicate groups."),
            Table(display, "Lesion size errors per segmenter, test folds pooled (tables/lesion_size.csv)", "no sizes")]


def card_blocks(run: RunResults) -> list[Block]:
    """One card per model: pooled metrics with intervals, confusion matrix, ROC, training curves, overlays."""
    return [Heading("Model cards"),
            *(Figure(f"{CARDS_DIR}/{card_name(model)}", f"{model}: pooled metrics [95 % interval], confusion matrix and ROC "
                                                        "(classifiers), training and validation loss per fold, best, median "
                                                        "and worst test image by Dice (segmenters).") for model in run.models)]


def _bootstrap_of(intervals: pd.DataFrame) -> tuple[str, str]:
    if intervals.empty:
        return "95 %", "n/a"
    return f"{float(intervals['confidence'].iloc[0]):.0%}", str(int(intervals["resamples"].iloc[0]))


def comparison_blocks(tables: ReportTables) -> list[Block]:
    """Each model against the reference model on the same test images (paired group bootstrap)."""
    table = tables["comparisons"]
    if table.empty:
        return [Para("No paired comparison: the run has one model, or no test images that two models share.", "note"),
                Figure("figures/comparisons.png", "Paired comparisons: none in this run.")]
    display = pd.DataFrame({
        "model": table["model"], "metric": table["metric"].str.split(".").str[-1],
        "model value": [fmt_value(v) for v in table["model_value"]],
        "reference value": [fmt_value(v) for v in table["reference_value"]],
        "difference [interval]": [fmt_interval(d, lo, hi) for d, lo, hi in zip(table["difference"], table["ci_low"], table["ci_high"])],
        "p": [fmt_value(v) for v in table["p_value"]], "images": table["n_images"], SOURCE: table.get(SOURCE, ""),
    })
    reference = str(table["reference"].iloc[0])
    return [Table(display, f"Paired comparison with {reference} on the test images both predicted: the same "
                           "resampled groups enter both models; p is the two-sided bootstrap p-value of no difference "
                           "(tables/comparisons.csv)", "no comparison"),
            Figure("figures/comparisons.png", f"Forest plot of the key metrics' paired differences with {reference}: "
                                              "95 % interval, filled where it excludes 0.")]


def reproduction_blocks(tables: ReportTables) -> list[Block]:
    """The reproduced paper's published numbers beside ours, protocols named (nothing when none is set)."""
    table = tables["reproduction"]
    if table.empty:
        return []
    paper = str(table["paper"].iloc[0])
    display = pd.DataFrame({
        "model": table["model"], "metric": table["metric"], "paper": [f"{v:g}" for v in table["paper_value"]],
        "ours (mean ± sd)": [fmt_mean_sd(m, s) if status == "ok" else status
                             for m, s, status in zip(table["ours_mean"], table["ours_sd"], table["status"])],
        "ours best fold": [fmt_value(v) for v in table["ours_best"]],
        "delta": [NA if is_missing(v) else f"{v:+.3f}" for v in table["delta"]],
        "ours pooled [interval]": [fmt_interval(e, lo, hi) for e, lo, hi in zip(table["ours_pooled"], table["ci_low"], table["ci_high"])],
        "definition (paper / ours)": table["definition"], "paper's source": table["paper_source"],
        SOURCE: table.get(SOURCE, ""),
    })
    if table["ours_best"].isna().all():
        display = display.drop(columns="ours best fold")
    missing = published()[paper].get("missing") or []
    return [Heading(f"Reproduction of {paper}: {published()[paper]['title']}", 3),
            Para(f"Ours: {table['our_protocol'].iloc[0]}. Paper: {table['paper_protocol'].iloc[0]}. "
                 "A drop from the published value is expected where the paper's split let duplicates leak; delta "
                 "is our mean minus the paper's value."),
            *([Para(f"Not in the paper's text (lost in conversion or given only as figures): {'; '.join(missing)}.")]
              if missing else []),
            Table(display, "Published vs reproduced (tables/reproduction.csv)", "no published values")]


def leakage_blocks(run: RunResults, tables: ReportTables) -> list[Block]:
    """Grouped vs image-level results of the leakage models, with the inflation."""
    blocks: list[Block] = [Heading("Leakage study")]
    if not run.leakage_models:
        return [*blocks, Para("No leakage study configured (leakage.models is empty).", "note"),
                Figure("figures/leakage.png", "Leakage study: not configured.")]
    seeds = sorted({r.split_seed for r in run.leaky_results if r.split_seed is not None})
    drawn = f"drawn with {len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})" if seeds else "not found"
    blocks.append(Para(f"{', '.join(run.leakage_models)} also trained on image-level folds "
                       f"(split/folds_random_image.csv, {drawn}) that ignore patients and duplicate clusters; the "
                       "inflation is the image-level minus the grouped (leak-free) score."))
    missing = [m for m in run.leakage_models if m not in run.models]
    if missing:
        blocks.append(Para(f"No grouped results for {', '.join(missing)} (not in this run's models): "
                           "their inflation is n/a.", "bad"))
    return [*blocks, Table(leakage_paired_display(tables["leakage_paired"]),
                           "Paired on the same test images: each image's score from its image-level (leaky) fold model "
                           "of each seed minus that from its grouped fold model, mean over the (image, seed) pairs with "
                           "the group-bootstrap interval (roc_auc_macro: the AUC over the same pairs under each split, "
                           "both recomputed on every resample); an image has a leaked sibling under a seed when another image "
                           "of its group was in the training part of that seed's image-level fold that tested it "
                           "(tables/leakage_paired.csv)", "no per-image scores in the leakage runs"),
            Table(leakage_display(tables["leakage"]), "Grouped folds vs image-level folds of every seed, mean ± sd over "
                                                      "folds of different test sets (tables/leakage.csv)",
                  "no headline metrics in the leakage runs"),
            Figure("figures/leakage.png", "Left: grouped (leak-free) vs image-level (leaky) folds per model and "
                                          "metric, mean ± sd over folds; the numbers are the inflation. Right: the "
                                          "paired differences on the same test images with their 95 % intervals.")]


def leakage_paired_display(paired: pd.DataFrame) -> pd.DataFrame:
    """tables/leakage_paired.csv with the difference and its interval in one cell."""
    return pd.DataFrame({
        "model": paired["model"], "score": paired["score"], "test images": paired["subset"], "images": paired["n_images"],
        "seeds": paired["n_seeds"],
        "grouped": [fmt_value(v) for v in paired["grouped_mean"]],
        "image-level": [fmt_value(v) for v in paired["image_level_mean"]],
        "difference [interval]": [fmt_interval(d, lo, hi) for d, lo, hi in zip(paired["difference"], paired["ci_low"], paired["ci_high"])],
        "p": [fmt_value(v) for v in paired["p_value"]], SOURCE: paired.get(SOURCE, ""),
    })


def leakage_display(leakage: pd.DataFrame) -> pd.DataFrame:
    """tables/leakage.csv with ``mean ± sd`` cells."""
    return pd.DataFrame({
        "model": leakage["model"], "metric": leakage["metric"],
        "grouped (leak-free)": [fmt_mean_sd(m, s) for m, s in zip(leakage["grouped_mean"], leakage["grouped_sd"])],
        "image-level (leaky)": [fmt_mean_sd(m, s) for m, s in zip(leakage["image_level_mean"], leakage["image_level_sd"])],
        "inflation": [NA if is_missing(v) else f"{v:+.3f}" for v in leakage["inflation"]],
        SOURCE: leakage.get(SOURCE, ""),
    })


def external_blocks(tables: ReportTables) -> list[Block]:
    """External validation: each fold model on every image of another dataset, beside its in-domain test score."""
    table = tables["external"]
    if table.empty:
        return [Heading("External validation"),
                Para("No external dataset configured (external.datasets in params.yaml).", "note"),
                Figure("figures/cross_dataset.png", "Cross-dataset matrix: no external dataset in this run.")]
    display = pd.DataFrame({
        "dataset": table["dataset"], "model": table["model"], "metric": table["metric"],
        "in-domain (mean ± sd)": [fmt_mean_sd(m, s) for m, s in zip(table["in_domain_mean"], table["in_domain_sd"])],
        "external (mean ± sd)": [fmt_mean_sd(m, s) for m, s in zip(table["external_mean"], table["external_sd"])],
        "difference": [NA if is_missing(v) else f"{v:+.3f}" for v in table["difference"]],
        "external images": table["external_images"],
        SOURCE: table.get(SOURCE, ""),
    })
    return [Heading("External validation"),
            Para("Every fold model is tested on all images of the external dataset, preprocessed like this run's; its "
                 "operating threshold stays the one chosen on its in-domain validation images."),
            Table(display, "In-domain test vs external dataset (tables/external.csv)", "no external results"),
            *cross_dataset_blocks(tables["cross_dataset"])]


def cross_dataset_blocks(cross: pd.DataFrame) -> list[Block]:
    """The run's row of the cross-dataset matrix as a table and a heat map."""
    confidence = f"{float(cross['confidence'].iloc[0]):.0%}" if not cross.empty else "95%"
    return [Heading("Cross-dataset matrix", 3),
            Para("Trained on this run's dataset (row), tested on each dataset (column): the in-domain column pools the "
                 "model's own test folds, an external column every fold model's predictions on every image of that "
                 "dataset. Runs on other datasets (with external.datasets set) give the other rows: "
                 "busflow cross-matrix --runs results/A results/B --out DIR joins them into the full matrix."),
            Table(cross_dataset_display(cross), f"Pooled value [{confidence} interval resampling patients or duplicate "
                                                "groups] per model, metric and tested dataset (tables/cross_dataset.csv)",
                  "no cross-dataset cells"),
            Figure("figures/cross_dataset.png", "Cross-dataset heat map per model and metric: pooled value on a 0-1 "
                                                "colour scale with its interval; outlined cells are in-domain.")]


def cross_dataset_display(cross: pd.DataFrame) -> pd.DataFrame:
    """tables/cross_dataset.csv as a matrix: one row per model, metric and training dataset, one column per tested
    dataset holding the pooled value with its interval."""
    trained = set(cross["trained_on"])
    header = {d: f"{d} (in-domain)" if trained == {d} else d for d in tested_datasets(cross)}
    rows = []
    for (model, metric, trained_on), cells in cross.groupby(["model", "metric", "trained_on"], sort=False):
        values = {c.tested_on: fmt_interval(c.estimate, c.ci_low, c.ci_high) for c in cells.itertuples()}
        rows.append({"model": model, "metric": metric_label(metric), "trained on": trained_on,
                     **{label: values.get(dataset, "not tested") for dataset, label in header.items()},
                     SOURCE: "; ".join(str(v) for v in cells.get(SOURCE, ()) if v)})
    return pd.DataFrame(rows, columns=["model", "metric", "trained on", *header.values(), SOURCE])


def ablation_blocks(tables: ReportTables) -> list[Block]:
    """The ablation grid as a heat map and a table."""
    table = tables["ablation"]
    if table.empty:
        return [Heading("Ablation"), Para("No ablation grid configured (ablation.model is null).", "note"),
                Figure("figures/ablation.png", "Ablation heat map (empty in this run).")]
    display = pd.DataFrame({"lr": [f"{v:g}" for v in table["lr"]], "options": table["options"], "metric": table["metric"],
                            "mean ± sd": [fmt_mean_sd(m, s) for m, s in zip(table["mean"], table["sd"])],
                            "folds": table["folds"], SOURCE: table.get(SOURCE, "")})
    return [Heading(f"Ablation: {table['model'].iloc[0]}, learning rate × options"),
            Figure("figures/ablation.png", "Mean over folds of the headline metric per grid cell (annotated mean ± sd)."),
            Table(display, "Every grid cell and metric (tables/ablation.csv)", "no ablation results")]


KEY_FIGURES = (
    ("figures/metrics_bar.png", "Key metrics per model pooled over all test images; error bars: the 95 % bootstrap interval."),
    ("figures/roc.png", "One-vs-rest ROC curves per class, test predictions pooled over folds."),
    ("figures/overlays.png", ("Best, median and worst test image by Dice per segmentation model: ground truth in sky "
                              "blue, prediction (p ≥ 0.5) in orange.")),
)


def figure_blocks(run: RunResults) -> list[Block]:
    """The figures beyond the summary's key ones, with captions (a message figure says when one does not apply)."""
    return [
        Heading("More figures"),
        Figure("figures/pr.png", "One-vs-rest precision-recall curves per class (AP: average precision), pooled over folds."),
        Figure("figures/confusion.png", "Confusion matrices summed over folds (rows: true class)."),
        Figure("figures/training_curves.png", "Training (solid) and validation (dashed) loss per epoch and fold."),
        Figure("figures/failures.png", "Failure gallery: per classifier, the misclassified test images with the highest "
                                       "confidence in the wrong class (tables/failures.csv)."),
        Figure("figures/calibration.png", "Reliability diagram per classifier (pooled over folds): accuracy against "
                                          "mean confidence in ten confidence bins; the legend gives the ECE."),
    ]


def per_fold_blocks(run: RunResults, tables: ReportTables) -> list[Block]:
    """Per model x fold metric tables."""
    no_cls, no_seg = "no classification models in this run", "no segmentation models in this run"
    counts = ("fold", "n_test_images", *names("count"))
    return [
        Heading("Per-fold results"),
        Table(format_frame(tables["classification"], counts), "Classification (tables/classification.csv)", no_cls),
        Table(format_frame(tables["segmentation"], counts), "Segmentation (tables/segmentation.csv)", no_seg),
        Table(format_frame(tables["per_class"], counts), "Per-class classification metrics (tables/per_class.csv)",
              no_cls),
    ]


def metric_blocks() -> list[Block]:
    return [Heading("Metric definitions"),
            Bullets(tuple(f"{term}: {text}" for term, text in (*glossary(), *CONVENTION_DOCS)))]


def convention_blocks(run_info: Mapping[str, Any]) -> list[Block]:
    """The empty-mask convention as recorded by the run, with context."""
    value = run_info.get("empty_mask_convention")
    recorded = "not recorded" if value is None else (value if isinstance(value, str) else _dump(value))
    return [
        Heading("Empty-mask convention"),
        Para(f"Recorded convention: {recorded}"),
        Para("Normal images contain no lesion, so their ground-truth mask is empty and Dice/IoU are 0/0 when the "
             "prediction is empty too; the convention above states how such images are scored in 'dice' and "
             "'iou_tumour'. dice_lesion_images and iou_lesion_images use lesion images only, "
             "empty_image_false_positive_rate reports how often a lesion-free image receives a predicted lesion, and "
             "the pixel-pooled pooled_* metrics need no convention (a lesion-free image adds only false positives)."),
    ]


def params_blocks(run_info: Mapping[str, Any]) -> list[Block]:
    params = run_info.get("params")
    text = _dump(params) if params is not None else "params not recorded"
    return [Heading("Parameters"), Details("params.yaml (click to expand)", text)]


def file_blocks(tables: ReportTables) -> list[Block]:
    return [Heading("Tables"), Links(tuple((path, path) for path in tables.files()))]


def _dump(value: Any) -> str:
    """YAML dump (sorted keys); JSON fallback for objects YAML cannot represent."""
    try:
        import yaml

        return yaml.safe_dump(value, sort_keys=True, default_flow_style=False, allow_unicode=True)
    except Exception:  # noqa: BLE001 - any representer error falls back to JSON
        return json.dumps(value, indent=2, sort_keys=True, default=str)
