"""Losses: weighted cross-entropy for classes, Dice + BCE (MONAI DiceCELoss) for lesion masks."""

from __future__ import annotations

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn


def inverse_frequency_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """w_c = N / (C * n_c), the usual 'balanced' weighting; absent classes get the largest weight seen."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    weights[counts == 0] = weights.max() if weights.max() > 0 else 1.0
    return torch.tensor(weights, dtype=torch.float32)


class TaskLoss(nn.Module):
    """Sum of the losses of the outputs a network has: CE_cls + seg_weight * (Dice + BCE)_seg."""

    def __init__(self, tasks: frozenset[str], class_weights: torch.Tensor | None, seg_weight: float) -> None:
        super().__init__()
        self.tasks = tasks
        self.seg_weight = seg_weight
        self.classification = nn.CrossEntropyLoss(weight=class_weights)
        # batch=True: Dice over the whole batch, so images with empty masks (normals) do not produce
        # a degenerate per-image Dice term.
        self.segmentation = DiceCELoss(sigmoid=True, batch=True)

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        loss = outputs[next(iter(outputs))].new_zeros(())
        if "cls" in self.tasks:
            loss = loss + self.classification(outputs["logits"].float(), labels)
        if "seg" in self.tasks:
            loss = loss + self.seg_weight * self.segmentation(outputs["seg"].float(), masks)
        return loss
