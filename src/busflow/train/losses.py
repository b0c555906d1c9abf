"""Losses: weighted cross-entropy or weighted focal loss for classes; Dice + BCE, Dice or BCE for lesion masks
(MONAI losses)."""

from __future__ import annotations

import numpy as np
import torch
from monai.losses import DiceCELoss, DiceLoss
from torch import nn


def inverse_frequency_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """w_c = N / (C * n_c), the usual 'balanced' weighting; absent classes get the largest weight seen."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    weights[counts == 0] = weights.max() if weights.max() > 0 else 1.0
    return torch.tensor(weights, dtype=torch.float32)


class FocalClassificationLoss(nn.Module):
    """Multi-class focal loss on logits, optionally class-weighted: per image ``-w_t (1 - p_t)^gamma log p_t``
    (Lin et al., 2017), averaged over images x classes as MONAI's ``FocalLoss(use_softmax=True,
    to_onehot_y=True, weight=...)`` does (tests check the equality). Written out because MONAI's checks its
    class weights for negative values at every call, a host-device synchronisation per step on a GPU; here
    they are checked once."""

    def __init__(self, gamma: float, class_weights: torch.Tensor | None) -> None:
        super().__init__()
        if class_weights is not None and bool((class_weights < 0).any()):
            raise ValueError(f"class weights must be non-negative, got {class_weights.tolist()}")
        self.gamma = gamma
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_p = logits.float().log_softmax(1).gather(1, labels[:, None]).squeeze(1)  # log p_t, one per image
        loss = -(1 - log_p.exp()).pow(self.gamma) * log_p
        if self.class_weights is not None:
            loss = loss * self.class_weights[labels]
        return loss.sum() / logits.numel()


def classification_loss(kind: str, class_weights: torch.Tensor | None, gamma: float = 2.0) -> nn.Module:
    if kind == "focal":
        return FocalClassificationLoss(gamma, class_weights)
    return nn.CrossEntropyLoss(weight=class_weights)


def segmentation_loss(kind: str) -> nn.Module:
    # batch=True: Dice over the whole batch, so images with empty masks (normals) do not produce
    # a degenerate per-image Dice term.
    if kind == "dice":
        return DiceLoss(sigmoid=True, batch=True)
    if kind == "bce":
        return nn.BCEWithLogitsLoss()
    return DiceCELoss(sigmoid=True, batch=True)


class TaskLoss(nn.Module):
    """Sum of the losses of the outputs a network has: L_cls + seg_weight * L_seg."""

    def __init__(self, tasks: frozenset[str], class_weights: torch.Tensor | None, seg_weight: float, *,
                 cls_loss: str = "ce", seg_loss: str = "dice_ce", focal_gamma: float = 2.0) -> None:
        super().__init__()
        self.tasks = tasks
        self.seg_weight = seg_weight
        self.classification = classification_loss(cls_loss, class_weights, focal_gamma)
        self.segmentation = segmentation_loss(seg_loss)

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        loss = outputs[next(iter(outputs))].new_zeros(())
        if "cls" in self.tasks:
            loss = loss + self.classification(outputs["logits"].float(), labels)
        if "seg" in self.tasks:
            loss = loss + self.seg_weight * self.segmentation(outputs["seg"].float(), masks)
        return loss


def oversampled(rows: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``rows`` plus minority-class rows drawn with replacement until every class present is as frequent as
    the largest one (P002's minority oversampling); shuffled."""
    classes, counts = np.unique(labels[rows], return_counts=True)
    extra = [rng.choice(rows[labels[rows] == c], size=counts.max() - n, replace=True) for c, n in zip(classes, counts)]
    return rng.permutation(np.concatenate([rows, *extra]))
