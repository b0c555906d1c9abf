"""Losses: weighted cross-entropy or weighted focal loss for classes; Dice + BCE, Dice or BCE for lesion masks
(MONAI losses)."""

from __future__ import annotations

import numpy as np
import torch
from monai.losses import DiceCELoss, DiceLoss, FocalLoss
from torch import nn


def inverse_frequency_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """w_c = N / (C * n_c), the usual 'balanced' weighting; absent classes get the largest weight seen."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    weights[counts == 0] = weights.max() if weights.max() > 0 else 1.0
    return torch.tensor(weights, dtype=torch.float32)


class FocalClassificationLoss(nn.Module):
    """Multi-class focal loss on logits (MONAI FocalLoss with softmax), optionally class-weighted."""

    def __init__(self, gamma: float, class_weights: torch.Tensor | None) -> None:
        super().__init__()
        self.focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=gamma, weight=class_weights)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.focal(logits, labels[:, None])


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
