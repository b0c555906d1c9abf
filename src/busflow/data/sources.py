"""Dataset sources: how the raw folder of each ``dataset`` comes to exist (the ``download`` stage)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def fetch_dataset(params: Mapping[str, Any], out_dir: Path) -> None:
    """Create the raw dataset folder for ``params['dataset']`` at ``out_dir``."""
    dataset = params["dataset"]
    settings = params["data"][dataset]
    if dataset == "synthetic":
        from busflow.data.synthetic import generate_phantoms

        generate_phantoms(
            out_dir,
            n_patients=settings["n_patients"],
            seed=params["seed"],
            image_size=(settings["image_height"], settings["image_width"]),
            class_mix=settings["class_mix"],
            views_per_patient=tuple(settings["views_per_patient"]),
        )
        return
    raise ValueError(f"dataset: no source for '{dataset}'")
