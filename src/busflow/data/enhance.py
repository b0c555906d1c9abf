"""Contrast enhancement used by the breast-ultrasound source papers, applied to normalised uint8 images.

Methods (``ENHANCEMENTS``):

``none``
    identity (a copy of the input).
``histeq``
    global histogram equalisation, ``cv2.equalizeHist``.
``clahe``
    contrast-limited adaptive histogram equalisation, ``cv2.createCLAHE`` with a clip limit and a
    ``tiles x tiles`` grid.
``mpghe``
    multi-peak generalised histogram equalisation (seed paper 004), implemented here by hand because no
    library offers it. It follows the multi-peak, brightness-preserving HE family (Wongsritong et al.,
    "Contrast enhancement using multipeak histogram equalization with brightness preserving", 1998) and adds
    a plateau (clip) limit on the counts, as in clipped / plateau-limited ("generalised") HE:

    1. the 256-bin grey-level histogram is smoothed with a 1-D Gaussian (``mpghe_smoothing`` = sigma in
       grey levels; 0 disables smoothing) so speckle noise and the comb of empty bins left by intensity
       rescaling do not create spurious peaks;
    2. significant peaks of the smoothed histogram are found with ``scipy.signal.find_peaks`` (at least
       ``mpghe_min_peak_distance`` grey levels apart, prominence >= ``PEAK_PROMINENCE`` x the highest smoothed
       bin); the histogram is zero-padded so a peak at grey level 0 or 255 (black background, saturation)
       counts too;
    3. the grey range ``[image min, image max]`` is split at the valleys: between consecutive peaks, the
       grey level of the smoothed histogram's minimum (the middle of it where the minimum is a flat run,
       e.g. an empty gap between two modes);
    4. each sub-histogram's counts are clipped at a plateau of ``mpghe_clip_limit`` x its mean count per grey
       level of its sub-range (no redistribution of the excess; ``mpghe_clip_limit <= 0`` or ``inf``
       disables clipping), which bounds how far a dominant mode is stretched;
    5. each sub-histogram is equalised within its own sub-range ``[lo, hi]``:
       ``lo + (hi - lo) * (C(x) - C(x_first)) / (C(x_last) - C(x_first))`` with ``C`` the cumulative clipped
       counts and ``x_first``/``x_last`` the sub-range's lowest/highest occupied grey levels (the
       OpenCV-style normalisation, so the sub-range is used in full). A sub-range with fewer than two
       occupied grey levels is left unchanged.

    Every sub-range maps into itself, so each mode keeps its brightness range (the mean brightness moves
    far less than with global HE) and the mapping is monotonic (non-decreasing) overall. With one peak it
    reduces to clipped HE over ``[min, max]``; with clipping disabled, to multi-peak HE.

    Relation to the paper: the paper's exact smoothing kernel, peak-significance rule and plateau formula
    are not reproduced from its text (they are not available here); this is the closest faithful
    equivalent of MPGHE built from its stated ingredients (histogram smoothing, multi-peak detection,
    valley partition, per-sub-histogram equalisation within its own range, and a generalised/clipped
    cumulative distribution), with the free choices exposed as parameters.

A constant image has no contrast to enhance and is returned unchanged by every method. All methods are
deterministic and work through a 256-entry lookup table or OpenCV, a few ms for a 700x1000 image.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

ENHANCEMENTS = ("none", "histeq", "clahe", "mpghe")

# A peak must stand out from its surroundings by this fraction of the highest smoothed bin.
PEAK_PROMINENCE = 0.05


def enhance(
    image: np.ndarray,
    method: str,
    *,
    clahe_clip_limit: float = 2.0,
    clahe_tiles: int = 8,
    mpghe_smoothing: float = 3.0,
    mpghe_min_peak_distance: int = 20,
    mpghe_clip_limit: float = 3.0,
) -> np.ndarray:
    """uint8 HxW in, uint8 HxW out. Raises ValueError for an unknown method or a non-2D/non-uint8 image."""
    if method not in ENHANCEMENTS:
        raise ValueError(f"unknown enhancement {method!r}; allowed: {', '.join(ENHANCEMENTS)}")
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"enhance expects a 2-D uint8 image, got shape {image.shape} dtype {image.dtype}")
    if method == "none" or image.size == 0 or image.min() == image.max():
        return image.copy()
    image = np.ascontiguousarray(image)
    if method == "histeq":
        return cv2.equalizeHist(image)
    if method == "clahe":
        if clahe_clip_limit <= 0 or clahe_tiles < 1:
            raise ValueError(f"clahe needs clip_limit > 0 and tiles >= 1, got {clahe_clip_limit}, {clahe_tiles}")
        clahe = cv2.createCLAHE(clipLimit=float(clahe_clip_limit), tileGridSize=(int(clahe_tiles), int(clahe_tiles)))
        return clahe.apply(image)
    lut = mpghe_lut(
        np.bincount(image.ravel(), minlength=256),
        smoothing=mpghe_smoothing,
        min_peak_distance=mpghe_min_peak_distance,
        clip_limit=mpghe_clip_limit,
    )
    return cv2.LUT(image, lut)


def mpghe_boundaries(hist: np.ndarray, smoothing: float, min_peak_distance: int) -> list[tuple[int, int]]:
    """Sub-ranges ``(lo, hi)`` (inclusive) partitioning ``[min, max]`` of the occupied grey levels at the
    valleys between the smoothed histogram's significant peaks."""
    occupied = np.flatnonzero(hist)
    low, high = int(occupied[0]), int(occupied[-1])
    counts = hist.astype(np.float64)
    smooth = gaussian_filter1d(counts, smoothing, mode="constant") if smoothing > 0 else counts
    padded = np.pad(smooth, 1)
    peaks, _ = find_peaks(
        padded, distance=max(int(min_peak_distance), 1), prominence=PEAK_PROMINENCE * float(smooth.max())
    )
    peaks = peaks - 1
    valleys: list[int] = []
    for left, right in zip(peaks[:-1], peaks[1:]):
        segment = smooth[left : right + 1]
        minima = np.flatnonzero(segment <= segment.min() * (1 + 1e-9) + 1e-12)
        valley = int(left + (minima[0] + minima[-1]) // 2)
        valley = min(max(valley, int(left)), int(right) - 1)  # peak `left` below, peak `right` above
        if low <= valley < high and (not valleys or valley > valleys[-1]):
            valleys.append(valley)
    edges = [low - 1, *valleys, high]
    return [(edges[i] + 1, edges[i + 1]) for i in range(len(edges) - 1)]


def mpghe_lut(
    hist: np.ndarray, *, smoothing: float, min_peak_distance: int, clip_limit: float
) -> np.ndarray:
    """256-entry uint8 lookup table of multi-peak clipped histogram equalisation for a 256-bin histogram."""
    lut = np.arange(256, dtype=np.float64)
    for lo, hi in mpghe_boundaries(hist, smoothing, min_peak_distance):
        counts = hist[lo : hi + 1].astype(np.float64)
        occupied = np.flatnonzero(counts)
        if occupied.size < 2:  # empty or single grey level: nothing to equalise, keep as is
            continue
        if clip_limit > 0 and math.isfinite(clip_limit):
            counts = np.minimum(counts, clip_limit * counts.sum() / counts.size)
        cumulative = np.cumsum(counts)
        first = cumulative[occupied[0]]
        span = cumulative[occupied[-1]] - first
        fraction = np.clip((cumulative - first) / span, 0.0, 1.0)
        lut[lo : hi + 1] = lo + (hi - lo) * fraction
    return np.round(lut).astype(np.uint8)
