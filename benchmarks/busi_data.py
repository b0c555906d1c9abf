"""Wall time of the data stages on the full BUSI (ingest, preprocess, grouping) and what the grouping finds.

    python benchmarks/busi_data.py [--root ../shared/datasets/busi/Dataset_BUSI_with_GT] [--size 128]

Prints seconds per stage, the duplicate clusters (count, images covered, links by reason) and the label
conflicts, i.e. the clusters filed under more than one class.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from busflow.config import load_params
from busflow.data.folder import ingest_folder
from busflow.data.preprocess import preprocess_index
from busflow.split.groups import build_groups, conflict_summary

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT")
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    split = load_params(REPO / "params.yaml", check_registry=False)["split"]

    started = time.perf_counter()
    index = ingest_folder(args.root)
    ingested = time.perf_counter()
    preprocess_index(index, args.size)
    preprocessed = time.perf_counter()
    groups, links = build_groups(index.assign(patient_known=False), split)
    grouped = time.perf_counter()

    sizes = groups.groupby("group_id").size()
    clusters = sizes[sizes > 1]
    conflicts = conflict_summary(groups, index, "drop")
    print(f"images                 {len(index)} ({index['label'].value_counts().to_dict()})")
    print(f"ingest                 {ingested - started:7.1f} s")
    print(f"preprocess ({args.size} px)    {preprocessed - ingested:7.1f} s")
    print(f"grouping               {grouped - preprocessed:7.1f} s")
    print(f"total                  {grouped - started:7.1f} s")
    print(f"links by reason        {links['reason'].value_counts().to_dict()}")
    print(f"duplicate clusters     {len(clusters)} covering {int(clusters.sum())} images (largest {int(clusters.max()) if len(clusters) else 0})")
    print(f"label conflicts        {len(conflicts)} clusters, {int(conflicts['n_images'].sum())} images")
    for row in conflicts.itertuples():
        print(f"  {row.images}  ({row.labels})")


if __name__ == "__main__":
    main()
