"""P001's classical segmenter: thresholding and morphological operations, no training.

Breast lesions are mostly hypoechoic (darker than the surrounding tissue), so per image: Gaussian smoothing,
Otsu's threshold selecting the dark side, morphological opening (removes speckle) and closing (bridges gaps),
hole filling, removal of components touching the image border (the dark background below the tissue and the
side bands), and the largest remaining component is the lesion. Thresholding and labelling have no
differentiable form, so the module has no parameters; the training loop then only evaluates it.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from busflow.data.rois import largest_component
from busflow.models.registry import register

LESION_LOGIT = 12.0  # sigmoid(12) > 0.99999: a hard mask expressed as logits


def otsu_threshold(image: np.ndarray, bins: int = 256) -> float:
    """Grey level maximising the between-class variance of the two sides (Otsu, 1979)."""
    counts, edges = np.histogram(image, bins=bins, range=(float(image.min()), float(image.max()) + 1e-6))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(counts * centres) / np.maximum(weight_low, 1)
    mean_high = (np.sum(counts * centres) - np.cumsum(counts * centres)) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[int(np.argmax(between))])


def _disc(radius: int) -> np.ndarray:
    grid = np.arange(-radius, radius + 1)
    return (grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2


def _without_border_components(mask: np.ndarray) -> np.ndarray:
    labelled, _ = ndimage.label(mask)
    border = np.unique(np.concatenate([labelled[0], labelled[-1], labelled[:, 0], labelled[:, -1]]))
    return mask & ~np.isin(labelled, border[border > 0])


def segment_dark_lesion(image: np.ndarray, *, sigma: float, opening_radius: int, closing_radius: int,
                        drop_border: bool, min_area_fraction: float) -> np.ndarray:
    """Boolean lesion mask of one grayscale image (any scale)."""
    smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma) if sigma > 0 else image.astype(np.float32)
    mask = smooth < otsu_threshold(smooth)
    if opening_radius:
        mask = ndimage.binary_opening(mask, structure=_disc(opening_radius))
    if closing_radius:
        mask = ndimage.binary_closing(mask, structure=_disc(closing_radius))
    mask = ndimage.binary_fill_holes(mask)
    if drop_border:
        mask = _without_border_components(mask)
    return largest_component(mask, int(min_area_fraction * mask.size))


class ThresholdMorphologySegmenter(nn.Module):
    """Forward returns ``{"seg": ±LESION_LOGIT}`` per pixel; computed on the CPU, returned on the input's device."""

    def __init__(self, sigma: float, opening_radius: int, closing_radius: int, drop_border: bool,
                 min_area_fraction: float) -> None:
        super().__init__()
        self.settings = {"sigma": sigma, "opening_radius": opening_radius, "closing_radius": closing_radius,
                         "drop_border": drop_border, "min_area_fraction": min_area_fraction}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        images = x.detach().float().mean(dim=1).cpu().numpy()
        masks = np.stack([segment_dark_lesion(image, **self.settings) for image in images])
        logits = torch.from_numpy(np.where(masks, LESION_LOGIT, -LESION_LOGIT).astype(np.float32))
        return {"seg": logits[:, None].to(x.device)}


@register("classical_threshold", tasks={"seg"},
          description="P001 classical segmenter: smoothing, Otsu (dark side), opening/closing, largest inner component")
def build_classical_threshold(
    *,
    in_channels: int,  # grayscale: channels are averaged
    n_classes: int,  # unused: the lesion mask is binary
    sigma: float = 2.0,
    opening_radius: int = 2,
    closing_radius: int = 3,
    drop_border: bool = True,
    min_area_fraction: float = 0.005,
) -> nn.Module:
    """Build the untrained threshold + morphology segmenter (options are its image-processing settings)."""
    return ThresholdMorphologySegmenter(sigma, opening_radius, closing_radius, drop_border, min_area_fraction)
