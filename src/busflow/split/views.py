"""Views of one lesion: links between images of one patient that are not copies of one frame.

Neighbouring frames of a sweep and other probe positions over the same lesion show the same anatomy moved,
rotated and zoomed, under fresh speckle; the near-duplicate detector (:mod:`busflow.split.dedup`) rightly
refuses them as copies. Here every image becomes a small band-pass thumbnail (a difference of Gaussians:
speckle below the band, the breast's layer layout above it), and two images of one class are a view pair
when one of them, rotated, scaled and shifted (phase correlation) onto the other, matches it well:

1. candidates: every pair of images of one class, or where ``max_number_gap`` is set, of one class and
   with file numbers at most that far apart (sources that number the frames of a sweep consecutively, as
   BUSI does; the cost grows with the square of a class's size otherwise);
2. alignment: a grid of rotations and scales, the shift from phase correlation, scored by the median
   normalised cross-correlation of small tiles of the overlap (local, so the layout that all scans share
   does not count);
3. a pair is linked when its overlap is large enough and either its score reaches ``strong_correlation``
   or it reaches ``min_correlation`` and each image ranks the other among its ``mutual_rank`` best-scoring
   candidates (a weaker match counts only as one of an image's nearest; the frames of a long sweep match
   each other strongly and chain);
4. capture geometry: two views of one lesion at one depth setting have the same height in pixels (the two
   halves of a dual-view screen, the frames of one sweep), and where the dataset's heights vary that is
   evidence of its own. Where equal heights are markedly likelier among candidates than among other pairs
   (``min_capture_enrichment``; not so where a source's crops merely have similar sizes), a pair of equal
   height (within ``capture_height_tolerance`` rows), a height shared by few images (``max_capture_share``),
   is also linked when each image is the other's best-scoring candidate of that height (``capture_rank``):
   orthogonal views of one lesion show different anatomy, so their correlation alone cannot tell them from a
   neighbour's scan. On such a source a pair of different heights comes from two captures, and only a strong
   correlation links it (a weaker match between captures is most often a neighbour's similar tissue).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from busflow.data.preprocess import load_grayscale
from busflow.split.dedup import LINK_COLUMNS, sorted_inputs, tile_correlation

VIEW_REASON = "same-lesion"
LOAD_THREADS = 2
NUMBER = re.compile(r"(\d+)\D*$")  # the last number in an image id: BUSI's "benign (131)", BUS-BRA's "bus_0003-l"


@dataclass(frozen=True)
class ViewSettings:
    """Thresholds of the view detector; the defaults are measured on phantoms with their patients hidden.

    Attributes:
        thumb_size: Longest side (pixels) of the thumbnail everything is measured on.
        fine_sigma: Gaussian sigma (thumbnail pixels) that removes speckle.
        coarse_sigma: Gaussian sigma of the background subtracted (the layer layout all scans share).
        max_number_gap: Only images whose ids' last numbers differ by at most this are paired (None: all).
        rotations: Rotations (degrees) of the alignment grid.
        scales: Scales of the alignment grid.
        tile_size: Side (thumbnail pixels) of the tiles whose correlations are pooled by the median.
        min_tiles: Fewer textured tiles inside the overlap than this gives a score of 0.
        min_correlation: Median tile correlation a view pair needs (with the mutual rank).
        strong_correlation: Median tile correlation that links a pair whatever its rank.
        min_overlap: Fraction of the smaller image the aligned other must cover.
        mutual_rank: Each image of a pair must rank the other among this many of its best candidates.
        capture_height_tolerance: Rows by which the original heights of one capture may differ (None: the
            capture geometry is not used).
        max_capture_share: Heights within the tolerance of a pair's must belong to at most this fraction of
            all images (a dataset of one image size, such as resized exports, gives no evidence).
        min_capture_enrichment: Equal heights must be at least this many times likelier among candidate pairs
            than among all other pairs (:func:`capture_enrichment`), or the source's heights are not used;
            1 - 1/enrichment estimates the share of equal-height candidates that are one capture.
        capture_rank: Each image of an equal-height pair must rank the other among this many of its
            equal-height candidates.
    """

    thumb_size: int = 64
    fine_sigma: float = 1.0
    coarse_sigma: float = 4.0
    max_number_gap: int | None = None
    rotations: tuple[float, ...] = (-15.0, -10.0, -5.0, 0.0, 5.0, 10.0, 15.0)
    scales: tuple[float, ...] = (0.77, 0.88, 1.0, 1.14, 1.3)
    tile_size: int = 8
    min_tiles: int = 6
    min_correlation: float = 0.65
    strong_correlation: float = 0.8
    min_overlap: float = 0.4
    mutual_rank: int = 2
    capture_height_tolerance: int | None = 0
    max_capture_share: float = 0.05
    min_capture_enrichment: float = 5.0
    capture_rank: int = 1


def band_pass_thumbnail(gray: np.ndarray, settings: ViewSettings) -> np.ndarray:
    """The image area-resized to ``thumb_size`` on its longest side, as a difference of Gaussians (float32)."""
    factor = settings.thumb_size / max(gray.shape)
    size = (max(1, round(gray.shape[1] * factor)), max(1, round(gray.shape[0] * factor)))
    small = cv2.resize(gray.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(small, (0, 0), settings.fine_sigma) - cv2.GaussianBlur(small, (0, 0), settings.coarse_sigma)


def file_number(image_id: str) -> int | None:
    """The last number in an image id, or None."""
    match = NUMBER.search(image_id)
    return int(match.group(1)) if match else None


def candidate_pairs(image_ids: Sequence[str], labels: Sequence[str], max_number_gap: int | None) -> list[tuple[int, int]]:
    """Index pairs (first < second) of images with one label and, when ``max_number_gap`` is set, numbers that
    close (an image without a number pairs with no one then)."""
    numbers = [file_number(i) for i in image_ids]
    by_label: dict[str, list[int]] = {}
    for position, label in enumerate(labels):
        by_label.setdefault(str(label), []).append(position)
    pairs = []
    for members in by_label.values():
        for k, a in enumerate(members):
            for b in members[k + 1:]:
                if max_number_gap is None or (numbers[a] is not None and numbers[b] is not None
                                              and abs(numbers[a] - numbers[b]) <= max_number_gap):
                    pairs.append((a, b))  # members ascend, so a < b
    return sorted(pairs)


def _padded(image: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    canvas, inside = np.zeros(shape, np.float32), np.zeros(shape, np.uint8)
    canvas[: image.shape[0], : image.shape[1]] = image
    inside[: image.shape[0], : image.shape[1]] = 1
    return canvas, inside


def _score(fixed: np.ndarray, fixed_inside: np.ndarray, moving: np.ndarray, transform: np.ndarray, floor: float,
           settings: ViewSettings) -> tuple[float, float]:
    """Tile correlation and overlap (fraction of the smaller image) of ``moving`` mapped by ``transform``."""
    height, width = fixed.shape
    warped = cv2.warpAffine(moving, transform, (width, height), flags=cv2.INTER_LINEAR)
    covered = cv2.warpAffine(np.ones(moving.shape, np.uint8), transform, (width, height), flags=cv2.INTER_NEAREST)
    inside = fixed_inside & covered
    scale = math.sqrt(abs(float(np.linalg.det(transform[:, :2]))))
    overlap = float(inside.sum()) / max(min(float(fixed_inside.sum()), moving.size * scale**2), 1.0)
    inside = cv2.erode(inside, np.ones((3, 3), np.uint8))
    return tile_correlation(fixed, warped, inside, settings.tile_size, floor, settings.min_tiles), min(overlap, 1.0)


def align_views(first: np.ndarray, second: np.ndarray, settings: ViewSettings) -> tuple[float, float, float, float]:
    """Best (score, overlap, scale, rotation) of ``second`` rotated and scaled about its centre, then shifted onto
    ``first`` by phase correlation: the grid of ``rotations`` x ``scales``, then half steps around its best."""
    shape = (max(first.shape[0], second.shape[0]), max(first.shape[1], second.shape[1]))
    fixed, fixed_inside = _padded(first, shape)
    window = cv2.createHanningWindow((shape[1], shape[0]), cv2.CV_32F)
    floor = 1e-3 * max(float(np.var(first)), float(np.var(second)), 1e-12)

    def attempt(rotation: float, scale: float) -> tuple[float, float, float, float]:
        transform = cv2.getRotationMatrix2D((second.shape[1] / 2, second.shape[0] / 2), rotation, scale)
        turned = cv2.warpAffine(second, transform, (shape[1], shape[0]), flags=cv2.INTER_LINEAR)
        (dx, dy), _ = cv2.phaseCorrelate(turned, fixed, window)
        transform[:, 2] += (dx, dy)
        return (*_score(fixed, fixed_inside, second, transform, floor, settings), scale, rotation)

    best = max((attempt(r, s) for r in settings.rotations for s in settings.scales), key=lambda found: found[0])
    rotation_step = _half_step(settings.rotations)
    scale_step = math.exp(_half_step(np.log(settings.scales)))  # half a step on the log scale
    refined = [attempt(best[3] + dr, best[2] * ds) for dr in (-rotation_step, 0.0, rotation_step)
               for ds in (1 / scale_step, 1.0, scale_step) if (dr, ds) != (0.0, 1.0)]
    return max([best, *refined], key=lambda found: found[0])


def _half_step(values: Sequence[float]) -> float:
    """Half the smallest spacing of a grid axis (0 for a single value)."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    return float(np.diff(ordered).min()) / 2 if len(ordered) > 1 else 0.0


def _thumbnail(path: str | Path, settings: ViewSettings) -> tuple[np.ndarray, float, int]:
    """The band-pass thumbnail, its size relative to the original (thumbnail pixels per image pixel) and the
    original's height."""
    gray = load_grayscale(path)
    return band_pass_thumbnail(gray, settings), settings.thumb_size / max(gray.shape), gray.shape[0]


def _images_within(heights: Sequence[int], tolerance: int) -> np.ndarray:
    """Per image, how many images (itself included) have a height within ``tolerance`` of its own."""
    values = np.asarray(heights)
    ordered = np.sort(values)
    return np.searchsorted(ordered, values + tolerance, "right") - np.searchsorted(ordered, values - tolerance, "left")


def capture_enrichment(heights: Sequence[int], pairs: Sequence[tuple[int, int]], tolerance: int) -> float:
    """How many times likelier equal heights (within ``tolerance``) are among the candidate pairs than among all
    other pairs of images (different classes, distant numbers): near 1 where equal heights are chance, as on a
    source whose crops have similar sizes; large where the views of one capture share theirs. 0 without any
    equal-height candidates, infinite where only candidates have them, NaN where every pair is a candidate."""
    others = len(heights) * (len(heights) - 1) // 2 - len(pairs)
    if not pairs or others <= 0:
        return math.nan
    equal = sum(abs(int(heights[a]) - int(heights[b])) <= tolerance for a, b in pairs)
    close_pairs = (int(_images_within(heights, tolerance).sum()) - len(heights)) // 2
    chance = (close_pairs - equal) / others
    if equal == 0:
        return 0.0
    return math.inf if chance == 0 else equal / len(pairs) / chance


def capture_flags(heights: Sequence[int], pairs: Sequence[tuple[int, int]], settings: ViewSettings) -> tuple[list[bool], list[bool]]:
    """Per pair, (same capture, other capture). Only on a source whose equal heights are at least
    ``min_capture_enrichment`` times likelier among candidates than among other pairs do heights tell captures
    apart; there a pair is one capture when its heights are equal (within the tolerance) at a height few images
    share, and two captures when its heights differ. Elsewhere both are False."""
    tolerance = settings.capture_height_tolerance
    if tolerance is None or not pairs or not capture_enrichment(heights, pairs, tolerance) >= settings.min_capture_enrichment:
        return [False] * len(pairs), [False] * len(pairs)
    share = _images_within(heights, tolerance) / len(heights)
    equal = [abs(heights[a] - heights[b]) <= tolerance for a, b in pairs]
    rare = [max(share[a], share[b]) <= settings.max_capture_share for a, b in pairs]
    return [e and r for e, r in zip(equal, rare)], [not e for e in equal]


def screen_views(image_ids: Sequence[str], image_paths: Sequence[str | Path], labels: Sequence[str],
                 settings: ViewSettings = ViewSettings()) -> pd.DataFrame:
    """Every aligned candidate pair with its score, overlap, ranks and an ``accepted`` flag (sorted by ids).

    Raises:
        ValueError: Ids, paths and labels differ in length, or ids are not unique.
        DatasetError: An image cannot be decoded.
    """
    if len(image_paths) != len(labels):
        raise ValueError(f"{len(image_paths)} paths but {len(labels)} labels")
    ids, items = sorted_inputs(image_ids, list(zip(image_paths, labels)))
    paths, classes = [path for path, _ in items], [str(label) for _, label in items]
    with ThreadPoolExecutor(max_workers=LOAD_THREADS) as pool:
        loaded = list(pool.map(lambda path: _thumbnail(path, settings), paths))
    thumbnails, factors, heights = ([item[k] for item in loaded] for k in range(3))
    pairs = candidate_pairs(ids, classes, settings.max_number_gap)
    aligned = [align_views(thumbnails[a], thumbnails[b], settings) for a, b in pairs]
    rows = [{"image_a": ids[a], "image_b": ids[b], "reason": VIEW_REASON, "score": score,
             "scale": scale * factors[b] / factors[a], "overlap": overlap, "same_capture": same, "other_capture": other}
            for (a, b), (score, overlap, scale, _), same, other in zip(pairs, aligned, *capture_flags(heights, pairs, settings))]
    table = pd.DataFrame(rows, columns=[*LINK_COLUMNS, "same_capture", "other_capture"]).astype(
        {"score": float, "scale": float, "overlap": float, "same_capture": bool, "other_capture": bool})
    return _accept(table, settings)


def _mutual_rank(table: pd.DataFrame) -> pd.Series:
    """Per pair of ``table``, the worse of the two ranks each image gives the other among its pairs (best score first)."""
    as_a = table[["image_a", "image_b", "score"]].rename(columns={"image_a": "image", "image_b": "other"})
    as_b = table[["image_b", "image_a", "score"]].rename(columns={"image_b": "image", "image_a": "other"})
    both = pd.concat([as_a, as_b], ignore_index=True).sort_values(["image", "score", "other"], ascending=[True, False, True],
                                                                   kind="stable")
    both["rank"] = both.groupby("image").cumcount() + 1
    rank = both.set_index(["image", "other"])["rank"]
    rank_a = rank.reindex(pd.MultiIndex.from_arrays([table["image_a"], table["image_b"]])).to_numpy()
    rank_b = rank.reindex(pd.MultiIndex.from_arrays([table["image_b"], table["image_a"]])).to_numpy()
    return pd.Series(np.maximum(rank_a, rank_b), index=table.index, dtype="Int64")


def _accept(table: pd.DataFrame, settings: ViewSettings) -> pd.DataFrame:
    """Rank each pair among both images' candidates (and among their equal-height ones) and flag the accepted ones:
    strong matches, mutually near matches not known to span two captures, and mutually best ones of one capture."""
    table = table.assign(mutual_rank=_mutual_rank(table),
                         capture_rank=_mutual_rank(table[table["same_capture"]]).reindex(table.index))
    near = (table["score"] >= settings.min_correlation) & (table["mutual_rank"] <= settings.mutual_rank) & ~table["other_capture"]
    aligned = (near | (table["score"] >= settings.strong_correlation)) & (table["overlap"] >= settings.min_overlap)
    captured = table["same_capture"] & (table["capture_rank"] <= settings.capture_rank).fillna(False)
    table["accepted"] = aligned | captured
    return table.sort_values(["image_a", "image_b"], kind="stable").reset_index(drop=True)


def find_view_links(image_ids: Sequence[str], image_paths: Sequence[str | Path], labels: Sequence[str],
                    settings: ViewSettings = ViewSettings()) -> pd.DataFrame:
    """Links (``LINK_COLUMNS``, reason ``same-lesion``) between views of one lesion; see :func:`screen_views`."""
    table = screen_views(image_ids, image_paths, labels, settings)
    return table[table["accepted"]][LINK_COLUMNS].reset_index(drop=True)
