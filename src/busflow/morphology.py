"""Connected-component helpers on boolean lesion masks (NumPy/SciPy only)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def largest_component(mask: np.ndarray, min_area: int = 0) -> np.ndarray:
    """The largest connected region of ``mask``; empty when there is none or it is smaller than ``min_area``."""
    labelled, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = ndimage.sum_labels(mask, labelled, index=np.arange(1, count + 1))
    best = int(np.argmax(sizes))
    return labelled == best + 1 if sizes[best] >= min_area else np.zeros(mask.shape, dtype=bool)
