"""Near-duplicate detection for leak-free splits: the same frame filed twice, cropped or rescaled.

Three stages, all deterministic:

1. exact duplicates: identical decoded grayscale pixels (hash of the array);
2. near duplicates: ORB keypoints on a working-resolution image; candidate pairs come from pooled
   descriptor matching (multi-index hashing over the whole collection, a ratio test against the k-th
   nearest *other image* so that text and calipers shared by many images cast no votes, vote counting);
   each candidate is verified by RANSAC on a similarity transform (scale allowed, rotation near zero)
   and photometrically: the finer image is warped onto the coarser one and the median normalised
   cross-correlation of small tiles of their overlap must be high (text, calipers and the layout all
   breast scans share cannot lift a median of local correlations), as must the overlap;
3. clusters: connected components (union-find) over the links.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from busflow.data.preprocess import load_grayscale

LOAD_THREADS = 2
LINK_COLUMNS = ["image_a", "image_b", "reason", "score", "scale", "overlap"]


@dataclass(frozen=True)
class DuplicateSettings:
    """Thresholds of the detector; the defaults are tuned on BUSI (780 images).

    Attributes:
        working_size: Longest side (pixels) of the image used for keypoints and correlation.
        n_features: ORB keypoints per image.
        patch_size: ORB patch size (working pixels); smaller patches give far less distinctive descriptors.
        key_bytes: Length of the descriptor substrings hashed to find pooled matches (2 to 4).
        max_hamming: Largest descriptor distance (bits of 256) that counts as a pooled match.
        max_bucket: Hash buckets larger than this are skipped (descriptors common to very many images).
        ratio: Pooled ratio test: a match votes if closer than ``ratio`` times the reference distance.
        ratio_rank: The reference distance is that of the ``ratio_rank``-th nearest other image, so up
            to ``ratio_rank - 1`` copies of a frame still vote for each other.
        min_votes: Votes an image pair needs to become a candidate.
        max_candidates: Most candidates kept per image (highest votes first).
        pair_ratio: Lowe ratio for the matches of one candidate pair.
        ransac_threshold: RANSAC reprojection threshold in working pixels.
        min_inliers: RANSAC inliers required.
        max_rotation: Largest rotation (degrees) of the similarity transform.
        max_scale: Largest relative scale between the two working images (either way).
        blur_sigma: Gaussian blur (working pixels) before correlation; absorbs resampling differences.
        tile_size: Side (working pixels) of the tiles whose correlations are pooled by the median.
        min_tile_std: Tiles flatter than this (gray levels) in either image are left out.
        min_tiles: Fewer usable tiles than this gives a correlation of 0.
        min_correlation: Median tile correlation required on the overlap.
        min_overlap: Fraction of the smaller image that the other must cover.
    """

    working_size: int = 320
    n_features: int = 500
    patch_size: int = 31
    key_bytes: int = 2
    max_hamming: int = 56
    max_bucket: int = 16
    ratio: float = 0.8
    ratio_rank: int = 3
    min_votes: int = 4
    max_candidates: int = 20
    pair_ratio: float = 0.8
    ransac_threshold: float = 3.0
    min_inliers: int = 10
    max_rotation: float = 3.0
    max_scale: float = 3.0
    blur_sigma: float = 1.0
    tile_size: int = 16
    min_tile_std: float = 2.0
    min_tiles: int = 8
    min_correlation: float = 0.75
    min_overlap: float = 0.5


@dataclass(frozen=True)
class _Features:
    """Working image, ORB keypoints and descriptors of one image."""

    image: np.ndarray
    factor: float
    points: np.ndarray
    descriptors: np.ndarray


def _to_uint8(gray: np.ndarray) -> np.ndarray:
    """8-bit images are kept as they are; deeper ones are scaled by their maximum."""
    peak = float(gray.max()) if gray.size else 0.0
    scaled = gray * (255.0 / peak) if peak > 255 else gray
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _digest(gray: np.ndarray) -> str:
    return hashlib.sha256(str(gray.shape).encode() + np.ascontiguousarray(gray).tobytes()).hexdigest()


def _features(gray: np.ndarray, settings: DuplicateSettings) -> _Features:
    """Resize (area average) to ``working_size`` on the longest side and detect ORB keypoints."""
    factor = settings.working_size / max(gray.shape)
    size = (max(1, round(gray.shape[1] * factor)), max(1, round(gray.shape[0] * factor)))
    image = cv2.resize(gray, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    orb = cv2.ORB_create(nfeatures=settings.n_features, edgeThreshold=settings.patch_size, patchSize=settings.patch_size)
    keypoints, descriptors = orb.detectAndCompute(image, None)
    points = np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2)
    if descriptors is None:
        descriptors = np.zeros((0, 32), dtype=np.uint8)
    return _Features(image, factor, points, descriptors)


def _bucket_pairs(order: np.ndarray, starts: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs inside the equal-size buckets beginning at ``starts``."""
    first, second = np.triu_indices(size, 1)
    return order[starts[:, None] + first].ravel(), order[starts[:, None] + second].ravel()


def _hamming(descriptors: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    words = descriptors.view(np.uint64)
    return np.bitwise_count(words[left] ^ words[right]).sum(axis=1).astype(np.int32)


def _hash_keys(descriptors: np.ndarray, key_bytes: int) -> np.ndarray:
    """Integer keys of consecutive ``key_bytes``-byte substrings (the last one may overlap its neighbour)."""
    width = descriptors.shape[1]
    starts = list(range(0, width - key_bytes + 1, key_bytes))
    if starts[-1] + key_bytes < width:
        starts.append(width - key_bytes)
    chunks = [descriptors[:, start:start + key_bytes].astype(np.uint64) for start in starts]
    weights = np.uint64(256) ** np.arange(key_bytes, dtype=np.uint64)
    return np.stack([(chunk * weights).sum(axis=1) for chunk in chunks], axis=1)


def _near_descriptor_pairs(descriptors: np.ndarray, owner: np.ndarray, settings: DuplicateSettings) -> np.ndarray:
    """Descriptor pairs of different images within ``max_hamming``, by multi-index hashing.

    Two descriptors become a pair when they share one ``key_bytes``-byte substring exactly (buckets larger
    than ``max_bucket`` are skipped) and their full Hamming distance is small enough.

    Returns:
        int64 array (pairs, 3): first index, second index (first < second), Hamming distance.
    """
    count = len(descriptors)
    keys = _hash_keys(descriptors, settings.key_bytes)
    codes = [np.zeros(0, dtype=np.int64)]
    for column in range(keys.shape[1]):
        order = np.argsort(keys[:, column], kind="stable")
        sorted_keys = keys[order, column]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        sizes = np.diff(np.r_[starts, count])
        for size in np.unique(sizes[(sizes >= 2) & (sizes <= settings.max_bucket)]):
            left, right = _bucket_pairs(order, starts[sizes == size], int(size))
            keep = owner[left] != owner[right]
            left, right = left[keep], right[keep]
            near = _hamming(descriptors, left, right) <= settings.max_hamming
            low, high = np.minimum(left[near], right[near]), np.maximum(left[near], right[near])
            codes.append(low.astype(np.int64) * count + high)
    codes = np.unique(np.concatenate(codes))
    left, right = codes // count, codes % count
    return np.stack([left, right, _hamming(descriptors, left, right)], axis=1)


def _ratio_votes(pairs: np.ndarray, owner: np.ndarray, settings: DuplicateSettings) -> pd.DataFrame:
    """Votes per image pair: matches closer than ``ratio`` times the ``ratio_rank``-th other image's distance."""
    left, right, distance = pairs[:, 0], pairs[:, 1], pairs[:, 2]
    table = pd.DataFrame({
        "query": np.r_[left, right],
        "image": owner[np.r_[right, left]],
        "distance": np.r_[distance, distance],
    })
    best = table.groupby(["query", "image"], sort=True)["distance"].min().reset_index()
    best = best.sort_values(["query", "distance", "image"], kind="stable")
    best["rank"] = best.groupby("query").cumcount()
    reference = best[best["rank"] == settings.ratio_rank - 1].set_index("query")["distance"]
    best["reference"] = best["query"].map(reference).fillna(settings.max_hamming + 1)
    voting = best[(best["rank"] < settings.ratio_rank - 1) & (best["distance"] < settings.ratio * best["reference"])]
    first, second = owner[voting["query"].to_numpy()], voting["image"].to_numpy()
    votes = pd.DataFrame({"a": np.minimum(first, second), "b": np.maximum(first, second)})
    return votes.groupby(["a", "b"], sort=True).size().rename("votes").reset_index()


def _candidate_pairs(votes: pd.DataFrame, settings: DuplicateSettings) -> list[tuple[int, int]]:
    """Pairs with enough votes, at most ``max_candidates`` per image (most votes first)."""
    strong = votes[votes["votes"] >= settings.min_votes]
    both = pd.concat([strong.rename(columns={"a": "image", "b": "other"}), strong.rename(columns={"b": "image", "a": "other"})])
    both = both.sort_values(["image", "votes", "other"], ascending=[True, False, True], kind="stable")
    kept = both[both.groupby("image").cumcount() < settings.max_candidates]
    pairs = {(min(a, b), max(a, b)) for a, b in zip(kept["image"], kept["other"])}
    return sorted((int(a), int(b)) for a, b in pairs)


def _similarity(first: _Features, second: _Features, settings: DuplicateSettings) -> np.ndarray | None:
    """Similarity transform (2x3) mapping ``second`` onto ``first``, or None when RANSAC finds none."""
    if len(first.descriptors) < 2 or len(second.descriptors) < 2:
        return None
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    matches = [m[0] for m in matcher.knnMatch(second.descriptors, first.descriptors, k=2)
               if len(m) == 2 and m[0].distance < settings.pair_ratio * m[1].distance]
    if len(matches) < settings.min_inliers:
        return None
    source = second.points[[m.queryIdx for m in matches]]
    target = first.points[[m.trainIdx for m in matches]]
    transform, inliers = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=settings.ransac_threshold,
        maxIters=2000, confidence=0.995, refineIters=10)
    if transform is None or int(inliers.sum()) < settings.min_inliers:
        return None
    scale, rotation = _scale_rotation(transform)
    if abs(rotation) > settings.max_rotation or not 1 / settings.max_scale <= scale <= settings.max_scale:
        return None
    return transform


def _scale_rotation(transform: np.ndarray) -> tuple[float, float]:
    """Scale and rotation (degrees) of a similarity transform."""
    return math.hypot(transform[0, 0], transform[1, 0]), math.degrees(math.atan2(transform[1, 0], transform[0, 0]))


def _photometric(first: _Features, second: _Features, transform: np.ndarray,
                 settings: DuplicateSettings) -> tuple[float, float]:
    """Tile correlation on the overlap and overlap fraction of the smaller image, ``second`` mapped onto ``first``.

    The finer image is warped (anti-aliased) into the frame of the coarser one, so no image is upsampled.
    """
    scale, _ = _scale_rotation(transform)
    if scale > 1:  # second is coarser: bring first into second's frame
        first, second, transform, scale = second, first, cv2.invertAffineTransform(transform), 1 / scale
    height, width = first.image.shape
    anti_alias = 0.5 * math.sqrt(max(1 / scale**2 - 1, 0.0))
    source_sigma = math.hypot(anti_alias, settings.blur_sigma) / scale
    source = cv2.GaussianBlur(second.image.astype(np.float32), (0, 0), source_sigma)
    target = cv2.GaussianBlur(first.image.astype(np.float32), (0, 0), settings.blur_sigma)
    warped = cv2.warpAffine(source, transform, (width, height), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.ones_like(second.image), transform, (width, height), flags=cv2.INTER_NEAREST)
    overlap = float(inside.sum()) / min(first.image.size, second.image.size * scale**2)
    inside = cv2.erode(inside, np.ones((5, 5), np.uint8))
    correlation = tile_correlation(warped, target, inside, settings.tile_size, settings.min_tile_std**2,
                                   settings.min_tiles)
    return correlation, min(overlap, 1.0)


def _block_sums(image: np.ndarray, size: int) -> np.ndarray:
    """Sums over the non-overlapping ``size`` x ``size`` tiles (a partial last row or column of tiles is dropped)."""
    rows, columns = image.shape[0] // size, image.shape[1] // size
    return image[: rows * size, : columns * size].reshape(rows, size, columns, size).sum(axis=(1, 3), dtype=np.float64)


def tile_correlation(x: np.ndarray, y: np.ndarray, inside: np.ndarray, size: int, floor: float, min_tiles: int) -> float:
    """Median normalised cross-correlation of the ``size`` x ``size`` tiles lying wholly inside the overlap whose
    variance exceeds ``floor`` in both images; 0 with fewer than ``min_tiles`` such tiles.

    Local rather than global: shared text or calipers sway a few tiles only, and the coarse layout that
    all breast scans share (bright skin on top, dark shadow below) does not count.
    """
    area = float(size * size)
    full = _block_sums(inside.astype(np.float32), size) >= area
    mean_x, mean_y = _block_sums(x, size) / area, _block_sums(y, size) / area
    var_x = _block_sums(x * x, size) / area - mean_x**2
    var_y = _block_sums(y * y, size) / area - mean_y**2
    valid = full & (var_x > floor) & (var_y > floor)
    if int(valid.sum()) < min_tiles:
        return 0.0
    cov = _block_sums(x * y, size) / area - mean_x * mean_y
    return float(np.median(cov[valid] / np.sqrt(var_x[valid] * var_y[valid])))


def _verify(first: _Features, second: _Features, settings: DuplicateSettings) -> dict[str, float] | None:
    """Correlation, original-pixel scale and overlap of a geometrically consistent pair, else None."""
    transform = _similarity(first, second, settings)
    if transform is None:
        return None
    correlation, overlap = _photometric(first, second, transform, settings)
    scale = _scale_rotation(transform)[0] * second.factor / first.factor
    return {"score": correlation, "scale": scale, "overlap": overlap}


def _prepare(path: str | Path, settings: DuplicateSettings) -> tuple[str, _Features]:
    gray = _to_uint8(load_grayscale(path))
    return _digest(gray), _features(gray, settings)


def _load(paths: Sequence[str | Path], settings: DuplicateSettings) -> tuple[list[str], list[_Features]]:
    """Pixel digest and features of every image, two threads (decoding releases the GIL); in input order.

    DatasetError from ``load_grayscale`` propagates for unreadable files.
    """
    with ThreadPoolExecutor(max_workers=LOAD_THREADS) as pool:
        prepared = list(pool.map(lambda path: _prepare(path, settings), paths))
    return [digest for digest, _ in prepared], [features for _, features in prepared]


def _exact_groups(digests: Sequence[str]) -> dict[int, int]:
    """Index -> index of the first image with identical pixels."""
    first: dict[str, int] = {}
    return {index: first.setdefault(digest, index) for index, digest in enumerate(digests)}


def _candidates_for(features: Sequence[_Features], indices: Sequence[int],
                    settings: DuplicateSettings) -> list[tuple[int, int]]:
    """Candidate pairs (global indices) among ``indices`` from pooled descriptor votes."""
    used = [i for i in indices if len(features[i].descriptors)]
    if len(used) < 2:
        return []
    descriptors = np.ascontiguousarray(np.vstack([features[i].descriptors for i in used]))
    owner = np.repeat(np.arange(len(used)), [len(features[i].descriptors) for i in used])
    votes = _ratio_votes(_near_descriptor_pairs(descriptors, owner, settings), owner, settings)
    return [(used[a], used[b]) for a, b in _candidate_pairs(votes, settings)]


def _verified(ids: Sequence[str], features: Sequence[_Features], indices: Sequence[int],
              settings: DuplicateSettings) -> list[dict[str, object]]:
    """Metrics of every candidate pair that passes RANSAC, accepted or not."""
    rows = []
    for a, b in _candidates_for(features, indices, settings):
        metrics = _verify(features[a], features[b], settings)  # a < b, so ids[a] < ids[b]
        if metrics is not None:
            accepted = metrics["score"] >= settings.min_correlation and metrics["overlap"] >= settings.min_overlap
            rows.append({"image_a": ids[a], "image_b": ids[b], "reason": "near-duplicate", **metrics, "accepted": accepted})
    return rows


def screen_pairs(image_ids: Sequence[str], image_paths: Sequence[str | Path],
                 settings: DuplicateSettings = DuplicateSettings()) -> pd.DataFrame:
    """Every exact pair and every candidate pair that passed RANSAC, with an ``accepted`` flag.

    Near-duplicate candidates are searched among one representative per group of identical images.
    Useful to inspect the pairs just below the thresholds; ``find_duplicate_links`` keeps the accepted ones.

    Returns:
        Columns of ``find_duplicate_links`` plus ``accepted`` (bool), sorted by image_a, image_b.
    """
    ids, paths = sorted_inputs(image_ids, image_paths)
    digests, features = _load(paths, settings)
    groups = _exact_groups(digests)
    exact = [_exact_row(ids[rep], ids[index]) for index, rep in groups.items() if rep != index]
    rows = exact + _verified(ids, features, sorted(set(groups.values())), settings)
    table = pd.DataFrame(rows, columns=[*LINK_COLUMNS, "accepted"])
    table = table.astype({"score": float, "scale": float, "overlap": float, "accepted": bool})
    return table.sort_values(["image_a", "image_b"], kind="stable").reset_index(drop=True)


def find_duplicate_links(image_ids: Sequence[str], image_paths: Sequence[str | Path],
                         settings: DuplicateSettings = DuplicateSettings()) -> pd.DataFrame:
    """Exact and near-duplicate links between images.

    Args:
        image_ids: Unique id of each image.
        image_paths: Image file of each id (any mode ``load_grayscale`` decodes).
        settings: Detector thresholds.

    Returns:
        One row per linked pair, sorted: image_a < image_b, reason ('exact' or 'near-duplicate'), score
        (1.0 for exact, else the median tile correlation), scale (size of one image_b pixel in image_a
        pixels), overlap (fraction of the smaller image covered by the other).

    Raises:
        ValueError: Ids are not unique or ids and paths differ in length.
        DatasetError: An image cannot be decoded.
    """
    table = screen_pairs(image_ids, image_paths, settings)
    return table[table["accepted"]][LINK_COLUMNS].reset_index(drop=True)


def sorted_inputs(image_ids: Sequence[str], image_paths: Sequence[Any]) -> tuple[list[str], list[Any]]:
    """The ids as strings and their paths (or any per-image items), ordered by id; ids must be unique."""
    if len(image_ids) != len(image_paths):
        raise ValueError(f"{len(image_ids)} image ids but {len(image_paths)} paths")
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("image ids are not unique")
    order = sorted(range(len(image_ids)), key=lambda i: str(image_ids[i]))
    return [str(image_ids[i]) for i in order], [image_paths[i] for i in order]


def _exact_row(first: str, second: str) -> dict[str, object]:
    return {"image_a": first, "image_b": second, "reason": "exact", "score": 1.0, "scale": 1.0, "overlap": 1.0, "accepted": True}


def duplicate_clusters(image_ids: Sequence[str], links: pd.DataFrame) -> dict[str, str]:
    """Connected components over the links.

    Args:
        image_ids: All images; those without links are singletons.
        links: Table with columns image_a, image_b (as returned by ``find_duplicate_links``).

    Returns:
        Image id -> cluster id, the smallest image id of its component.
    """
    parent = {str(i): str(i) for i in image_ids}
    for a, b in zip(links["image_a"].astype(str), links["image_b"].astype(str)):
        root_a, root_b = _root(parent, a), _root(parent, b)
        parent[max(root_a, root_b)] = min(root_a, root_b)
    return {str(image_id): _root(parent, str(image_id)) for image_id in image_ids}


def _root(parent: dict[str, str], node: str) -> str:
    parent.setdefault(node, node)
    while parent[node] != node:
        parent[node] = parent[parent[node]]
        node = parent[node]
    return node
