"""Per-paper training options: focal loss, segmentation losses, minority oversampling, step schedule, betas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from busflow.config import load_params
from busflow.train.losses import TaskLoss, classification_loss, oversampled, segmentation_loss
from conftest import TINY_PARAMS


def test_focal_loss_without_focusing_is_cross_entropy_per_class() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 3), torch.tensor([0, 1, 2, 1, 0, 2, 2, 1])
    focal = classification_loss("focal", None, gamma=0.0)(logits, labels)
    cross_entropy = nn.functional.cross_entropy(logits, labels)
    assert float(focal) * 3 == pytest.approx(float(cross_entropy), rel=1e-5)  # MONAI averages over classes too
    focused = classification_loss("focal", None, gamma=2.0)(logits, labels)
    assert float(focused) < float(focal)  # easy examples are down-weighted


def test_class_weights_reach_the_focal_loss() -> None:
    logits, labels = torch.zeros(4, 2), torch.tensor([0, 0, 1, 1])
    plain = classification_loss("focal", None)(logits, labels)
    weighted = classification_loss("focal", torch.tensor([1.0, 3.0]))(logits, labels)
    assert float(weighted) == pytest.approx(2 * float(plain), rel=1e-5)


@pytest.mark.parametrize("weights", [None, torch.tensor([0.5, 2.0, 1.25])])
@pytest.mark.parametrize("gamma", [0.0, 2.0, 3.5])
def test_the_focal_loss_equals_monais_with_and_without_class_weights(weights: torch.Tensor | None, gamma: float) -> None:
    from monai.losses import FocalLoss

    torch.manual_seed(1)
    logits, labels = torch.randn(16, 3, requires_grad=True), torch.randint(0, 3, (16,))
    ours = classification_loss("focal", weights, gamma=gamma)(logits, labels)
    monai = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=gamma, weight=weights)(logits, labels[:, None])
    assert float(ours) == pytest.approx(float(monai), rel=1e-6)
    (ours_grad,) = torch.autograd.grad(ours, logits)
    (monai_grad,) = torch.autograd.grad(monai, logits)
    assert torch.allclose(ours_grad, monai_grad, atol=1e-7)


def test_negative_focal_class_weights_are_refused_once_at_construction() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        classification_loss("focal", torch.tensor([1.0, -0.5]))


@pytest.mark.parametrize("kind", ["dice_ce", "dice", "bce"])
def test_segmentation_losses_reward_the_right_mask(kind: str) -> None:
    masks = torch.zeros(2, 1, 8, 8)
    masks[:, :, 2:6, 2:6] = 1
    loss = segmentation_loss(kind)
    good, bad = loss(masks * 20 - 10, masks), loss(10 - masks * 20, masks)
    assert torch.isfinite(good) and float(good) < float(bad)


def test_task_loss_combines_the_configured_losses() -> None:
    outputs = {"logits": torch.randn(4, 3), "seg": torch.randn(4, 1, 8, 8)}
    labels, masks = torch.tensor([0, 1, 2, 1]), (torch.rand(4, 1, 8, 8) > 0.5).float()
    both = TaskLoss(frozenset({"cls", "seg"}), None, 2.0, cls_loss="focal", seg_loss="dice")
    expected = classification_loss("focal", None)(outputs["logits"], labels) + 2.0 * segmentation_loss("dice")(outputs["seg"], masks)
    assert float(both(outputs, labels, masks)) == pytest.approx(float(expected), rel=1e-6)


def test_oversampling_balances_classes_and_keeps_every_image() -> None:
    labels = np.array([0] * 10 + [1] * 3 + [2] * 1)
    rows = np.arange(14)
    drawn = oversampled(rows, labels, np.random.default_rng(0))
    assert np.bincount(labels[drawn]).tolist() == [10, 10, 10]
    assert set(rows) <= set(drawn)
    np.testing.assert_array_equal(drawn, oversampled(rows, labels, np.random.default_rng(0)))


def test_step_schedule_lowers_the_lr_each_step() -> None:
    from busflow.train.loop import ArrayData, FitRun, fit
    from busflow.train.spec import TrainSpec

    spec = dict(load_params(TINY_PARAMS)["models"]["resnet50"], epochs=3, patience=0, lr=1e-2,
                lr_step={"epochs": 1, "gamma": 0.1}, betas=[0.9, 0.99], oversample=True, cls_loss="focal")
    rng = np.random.default_rng(0)
    data = ArrayData(rng.integers(0, 255, (12, 32, 32), dtype=np.uint8), np.zeros((12, 32, 32), np.uint8),
                     np.array([0, 1, 1, 1, 2, 2] * 2))
    model = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 3))
    wrapped = _DictModel(model)
    history = fit(wrapped, TrainSpec.of(spec), data, np.arange(8), np.arange(8, 12), tasks=frozenset({"cls"}), n_classes=3,
        run=FitRun(device=torch.device("cpu"), seed=0, log=lambda line: None))
    assert history["lr"].tolist() == pytest.approx([1e-2, 1e-3, 1e-4])


class _DictModel(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.inner(x)}


def test_adam_betas_come_from_the_spec() -> None:
    from busflow.train.loop import _optimizer
    from busflow.train.spec import TrainSpec

    spec = TrainSpec.of(dict(load_params(TINY_PARAMS)["models"]["resnet50"], betas=[0.9, 0.99]))
    assert _optimizer(nn.Linear(2, 2), spec).param_groups[0]["betas"] == (0.9, 0.99)
