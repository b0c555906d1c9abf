"""The ``group`` stage: which images must stay together in every split (split/groups.csv).

Images are linked when they share a patient (where the source knows patients), when they show the same
frame (exact or near-duplicate, :mod:`busflow.split.dedup`) and, on request, when they are views of one
lesion (neighbouring sweep frames, other probe positions: :mod:`busflow.split.views`); each connected
component is one group. ``split.grouping``:

- ``auto``: patients where every image has a known patient, near-duplicates otherwise (BUSI, plain folders);
- ``patient``, ``duplicates``, ``patient+duplicates``: as named;
- ``duplicates+views``, ``patient+duplicates+views``: the same with view links (``split.views``).

A duplicate cluster whose images are filed under different classes is a label conflict; ``split.label_conflicts``
(drop / keep / flag) decides what the split does with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from busflow.data.folder import patients_known
from busflow.split.dedup import LINK_COLUMNS, DuplicateSettings, duplicate_clusters, find_duplicate_links
from busflow.split.views import ViewSettings, find_view_links

GROUPS_COLUMNS = ["image_id", "group_id", "reason", "linked_to", "score", "label_conflict"]


def grouping_sources(grouping: str, index: pd.DataFrame) -> tuple[bool, bool, bool]:
    """(use patients, use duplicates, use views) for the ``split.grouping`` setting and this index."""
    if grouping == "auto":
        known = patients_known(index)
        return known, not known, False
    sources = set(grouping.split("+"))
    return "patient" in sources, "duplicates" in sources, "views" in sources


def duplicate_links(index: pd.DataFrame, settings: Mapping[str, Any]) -> pd.DataFrame:
    links = find_duplicate_links(index["image_id"].tolist(), index["image_path"].tolist(), DuplicateSettings(**settings))
    return links[LINK_COLUMNS]


def view_links(index: pd.DataFrame, settings: Mapping[str, Any]) -> pd.DataFrame:
    """Links between views of one lesion; the YAML lists of ``settings`` become the detector's tuples."""
    options = {key: tuple(value) if isinstance(value, list) else value for key, value in settings.items()}
    links = find_view_links(index["image_id"].tolist(), index["image_path"].tolist(), index["label"].astype(str).tolist(),
                            ViewSettings(**options))
    return links[LINK_COLUMNS]


def patient_links(index: pd.DataFrame) -> pd.DataFrame:
    """A chain of links joining the images of each patient (enough for connected components)."""
    rows = []
    for _, ids in index.groupby(index["patient_id"].astype(str), sort=True)["image_id"]:
        ordered = sorted(ids)
        rows += [{"image_a": a, "image_b": b, "reason": "patient", "score": 1.0, "scale": 1.0, "overlap": 1.0}
                 for a, b in zip(ordered, ordered[1:])]
    return pd.DataFrame(rows, columns=LINK_COLUMNS)


def strongest_links(links: pd.DataFrame) -> pd.DataFrame:
    """Per linked image: the reason, other image and score of its highest-scoring link (index: image_id)."""
    as_a = links.rename(columns={"image_a": "image_id", "image_b": "linked_to"})
    as_b = links.rename(columns={"image_b": "image_id", "image_a": "linked_to"})
    both = pd.concat([as_a, as_b], ignore_index=True)
    ordered = both.sort_values(["image_id", "score", "linked_to"], ascending=[True, False, True], kind="stable")
    return ordered.drop_duplicates("image_id").set_index("image_id")[["reason", "linked_to", "score"]]


def _group_names(index: pd.DataFrame, components: dict[str, str], use_patients: bool) -> dict[str, str]:
    """Name each component: its patient when it holds exactly one (and patients are used), its image when it
    is a lone image, ``dup:<first image>`` when duplicates joined it."""
    frame = index[["image_id", "patient_id"]].assign(component=index["image_id"].map(components))
    names = {}
    for component, part in frame.groupby("component", sort=True):
        patients = part["patient_id"].astype(str).unique()
        if use_patients and len(patients) == 1:
            names[component] = patients[0]
        else:
            names[component] = str(component) if len(part) == 1 else f"dup:{component}"
    return names


def label_conflicts(index: pd.DataFrame, duplicates: pd.DataFrame) -> pd.Series:
    """Per image: whether its duplicate cluster holds more than one class label."""
    clusters = pd.Series(duplicate_clusters(index["image_id"].tolist(), duplicates))
    labels = index.set_index("image_id")["label"]
    n_labels = labels.groupby(clusters.reindex(labels.index)).transform("nunique")
    return (n_labels > 1).reindex(index["image_id"]).reset_index(drop=True)


def build_groups(index: pd.DataFrame, split: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(groups table, links table) for the index under ``split.grouping``."""
    use_patients, use_duplicates, use_views = grouping_sources(split["grouping"], index)
    duplicates = duplicate_links(index, split["duplicates"]) if use_duplicates else pd.DataFrame(columns=LINK_COLUMNS)
    views = view_links(index, split.get("views") or {}) if use_views else None
    links = pd.concat([patient_links(index) if use_patients else None, duplicates, views], ignore_index=True)
    links = links.astype({"score": float, "scale": float, "overlap": float})
    components = duplicate_clusters(index["image_id"].tolist(), links)
    names = _group_names(index, components, use_patients)
    strongest = strongest_links(links).reindex(index["image_id"])
    groups = pd.DataFrame({
        "image_id": index["image_id"].to_numpy(),
        "group_id": [names[components[i]] for i in index["image_id"]],
        "reason": strongest["reason"].fillna("patient" if use_patients else "unique").to_numpy(),
        "linked_to": strongest["linked_to"].fillna("").to_numpy(),
        "score": strongest["score"].to_numpy(dtype=float),
        "label_conflict": label_conflicts(index, duplicates).to_numpy(),
    })
    return groups[GROUPS_COLUMNS], links.sort_values(["image_a", "image_b", "reason"], kind="stable").reset_index(drop=True)


def conflict_summary(groups: pd.DataFrame, index: pd.DataFrame, policy: str) -> pd.DataFrame:
    """One row per label-conflict cluster: its images, their filed labels and what the policy does to them."""
    conflicted = groups[groups["label_conflict"]].merge(index[["image_id", "label"]], on="image_id")
    action = {"drop": "excluded from every split", "keep": "kept as filed", "flag": "kept as filed, flagged"}[policy]
    rows = [{"group_id": group, "images": "; ".join(sorted(part["image_id"])),
             "labels": "; ".join(sorted(set(part["label"]))), "n_images": len(part), "action": action}
            for group, part in conflicted.groupby("group_id", sort=True)]
    return pd.DataFrame(rows, columns=["group_id", "images", "labels", "n_images", "action"])
