"""Duplicate detection on BUSI: wall time, links, clusters, label conflicts, and what a plain hash finds.

    python benchmarks/dedup_busi.py [--root ../shared/datasets/busi/Dataset_BUSI_with_GT] [--near 0.2]

The plain baselines are a 16x16 average hash and exact equality of a 64x64 area-resized image, each
linking images whose keys are equal. The listing of candidates below the thresholds (``--near``) helps to
check them by eye.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from busflow.data.folder import ingest_folder
from busflow.data.preprocess import load_grayscale
from busflow.split.dedup import LINK_COLUMNS, DuplicateSettings, duplicate_clusters, screen_pairs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT"


def average_hash(gray: np.ndarray) -> str:
    """16x16 average hash: one bit per cell, set where the cell is brighter than the mean."""
    small = np.asarray(Image.fromarray(gray).resize((16, 16), Image.Resampling.BOX), dtype=np.float32)
    return np.packbits(small > small.mean()).tobytes().hex()


def resized_digest(gray: np.ndarray) -> str:
    """Digest of the image area-resized to 64x64 (exact equality of the small image)."""
    small = np.asarray(Image.fromarray(gray).resize((64, 64), Image.Resampling.BOX))
    return hashlib.sha256(small.tobytes()).hexdigest()


def baseline_links(index: pd.DataFrame, key: str) -> pd.DataFrame:
    """Links between images with equal keys (each image to the first of its key, by id)."""
    first = index.groupby(key, sort=False)["image_id"].transform("min")
    pairs = index[index["image_id"] != first]
    return pd.DataFrame({"image_a": first[pairs.index], "image_b": pairs["image_id"], "reason": key})


def cluster_summary(index: pd.DataFrame, links: pd.DataFrame) -> dict[str, object]:
    """Clusters of two or more images, images they cover, and those whose images carry different labels."""
    clusters = pd.Series(duplicate_clusters(index["image_id"].tolist(), links), name="cluster")
    table = index.set_index("image_id").join(clusters)
    groups = table.groupby("cluster")
    sizes = groups.size()
    labels = groups["label"].agg(lambda values: sorted(set(values)))
    conflicts = [(cluster, sorted(groups.get_group(cluster).index)) for cluster in labels.index if len(labels[cluster]) > 1]
    return {"clusters": int((sizes >= 2).sum()), "covered": int(sizes[sizes >= 2].sum()),
            "largest": int(sizes.max()), "conflicts": conflicts, "clusters_of": clusters}


def print_summary(name: str, links: pd.DataFrame, summary: dict[str, object], labels: pd.Series) -> None:
    counts = ", ".join(f"{reason} {count}" for reason, count in links["reason"].value_counts().sort_index().items())
    print(f"\n== {name}")
    print(f"links: {len(links)} ({counts or 'none'})")
    print(f"clusters with >= 2 images: {summary['clusters']}, images covered: {summary['covered']}, largest: {summary['largest']}")
    print(f"clusters spanning classes: {len(summary['conflicts'])}")
    for _, members in summary["conflicts"]:
        print("   " + ", ".join(f"{m} [{labels[m]}]" for m in members))


def missed_by(reference: pd.Series, other: pd.Series) -> int:
    """Images that share a cluster with another image in ``reference`` but in no way in ``other``."""
    grouped = reference.groupby(reference).transform("size") >= 2
    alone = other.groupby(other).transform("size") == 1
    return int((grouped & alone).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="BUSI folder with benign/, malignant/, normal/")
    parser.add_argument("--near", type=float, default=0.25, help="list rejected candidates scoring above this")
    args = parser.parse_args()
    index = ingest_folder(args.root)
    labels = index.set_index("image_id")["label"]
    settings = DuplicateSettings()

    started = time.perf_counter()
    screened = screen_pairs(index["image_id"].tolist(), index["image_path"].tolist(), settings)
    links = screened[screened["accepted"]][LINK_COLUMNS]
    seconds = time.perf_counter() - started
    detector = cluster_summary(index, links)
    print(f"images: {len(index)}; detector wall time {seconds:.1f} s (decode, features, candidates, verification)")
    print(f"settings: {settings}")
    print_summary("detector (exact + ORB/RANSAC/correlation)", links, detector, labels)
    rejected = screened[~screened["accepted"] & (screened["score"] >= args.near)]
    print(f"rejected candidates scoring >= {args.near}: {len(rejected)}")
    if len(rejected):
        print(rejected.drop(columns="accepted").to_string(index=False))

    grays = [load_grayscale(path).clip(0, 255).round().astype(np.uint8) for path in index["image_path"]]
    keyed = index.assign(ahash16=[average_hash(g) for g in grays], resized64=[resized_digest(g) for g in grays])
    for key in ("ahash16", "resized64"):
        plain = baseline_links(keyed, key)
        summary = cluster_summary(index, plain)
        print_summary(f"baseline {key}", plain, summary, labels)
        print(f"images the detector groups but {key} leaves alone: {missed_by(detector['clusters_of'], summary['clusters_of'])}; "
              f"the reverse: {missed_by(summary['clusters_of'], detector['clusters_of'])}")


if __name__ == "__main__":
    main()
