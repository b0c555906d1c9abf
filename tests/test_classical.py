"""P001's classical segmenter: finds a dark lesion with a bright rim, ignores the dark border bands, and the
training loop evaluates it without optimising anything."""

from __future__ import annotations

import numpy as np
import torch

from busflow.models import build_model, model_tasks
from busflow.models.classical import otsu_threshold, segment_dark_lesion


def _rimmed_disc(size: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    radius = np.hypot(yy - 50, xx - 42)
    image = rng.normal(130, 12, (size, size))
    image[radius < 22] = rng.normal(205, 12, (size, size))[radius < 22]  # bright (echogenic) rim
    lesion = radius < 16
    image[lesion] = rng.normal(45, 12, (size, size))[lesion]  # dark (hypoechoic) mass
    image[:, :6] = 20  # dark side band touching the border: must not be taken for the lesion
    return np.clip(image, 0, 255).astype(np.uint8), lesion


def test_finds_the_bright_rimmed_dark_disc() -> None:
    image, lesion = _rimmed_disc()
    found = segment_dark_lesion(image, sigma=1.5, opening_radius=2, closing_radius=3, drop_border=True, min_area_fraction=0.005)
    dice = 2 * (found & lesion).sum() / (found.sum() + lesion.sum())
    assert dice > 0.9
    assert not found[:, :6].any()


def test_otsu_separates_two_populations() -> None:
    values = np.concatenate([np.full(500, 40.0), np.full(500, 200.0)])
    assert 40 < otsu_threshold(values) < 200


def test_registered_module_returns_hard_logits_and_has_nothing_to_train() -> None:
    model = build_model("classical_threshold", in_channels=1, n_classes=3)
    assert model_tasks("classical_threshold") == {"seg"} and not list(model.parameters())
    image, lesion = _rimmed_disc()
    batch = torch.from_numpy(np.stack([image, image])[:, None].astype(np.float32) / 255.0)
    seg = model(batch)["seg"]
    assert seg.shape == (2, 1, 96, 96)
    assert ((torch.sigmoid(seg[0, 0]) > 0.5).numpy() & lesion).sum() > 0.8 * lesion.sum()


def test_training_loop_evaluates_it_once() -> None:
    from busflow.config import load_params
    from busflow.train.loop import ArrayData, FitRun, fit
    from busflow.train.spec import TrainSpec
    from conftest import TINY_PARAMS

    image, lesion = _rimmed_disc()
    data = ArrayData(np.stack([image] * 4), np.stack([lesion.astype(np.uint8)] * 4), np.array([1, 1, 2, 2]))
    spec = dict(load_params(TINY_PARAMS)["models"]["unet"], arch="classical_threshold", options={})
    history = fit(build_model("classical_threshold", in_channels=1, n_classes=3), TrainSpec.of(spec), data, np.arange(2), np.arange(2, 4), tasks=frozenset({"seg"}), n_classes=3,
        run=FitRun(device=torch.device("cpu"), seed=0, log=lambda _: None))
    assert history["epoch"].tolist() == [0] and history["val_score"].iloc[0] > 0.9
