"""Contrast enhancement: histeq, CLAHE and the hand-written multi-peak generalised HE (MPGHE)."""

from __future__ import annotations

import numpy as np
import pytest

from busflow.data.enhance import ENHANCEMENTS, enhance, mpghe_boundaries


def _low_contrast(seed: int = 1, shape: tuple[int, int] = (120, 160)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.normal(120, 8, shape)), 0, 255).astype(np.uint8)


def _bimodal(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A dark mode (mean 60, 65 % of pixels) left and a bright mode (mean 170) right; returns image, dark mask."""
    rng = np.random.default_rng(seed)
    dark = np.zeros((140, 200), dtype=bool)
    dark[:, :130] = True
    image = np.empty(dark.shape, dtype=np.uint8)
    image[dark] = np.clip(np.round(rng.normal(60, 10, dark.sum())), 0, 255)
    image[~dark] = np.clip(np.round(rng.normal(170, 12, (~dark).sum())), 0, 255)
    return image, dark


def _cdf_deviation(image: np.ndarray) -> float:
    cdf = np.cumsum(np.bincount(image.ravel(), minlength=256)) / image.size
    return float(np.abs(cdf - np.arange(1, 257) / 256).max())


def _mapping(image: np.ndarray, output: np.ndarray) -> np.ndarray:
    """Output grey level per input grey level for a point-wise method; asserts it is a function."""
    values = np.unique(image)
    mapped = np.array([np.unique(output[image == value]) for value in values], dtype=object)
    assert all(len(m) == 1 for m in mapped), "a point-wise method maps one input level to one output level"
    return np.array([int(m[0]) for m in mapped])


@pytest.mark.parametrize("method", ENHANCEMENTS)
def test_shape_and_dtype_preserved_and_deterministic(method):
    image = _low_contrast(shape=(37, 53))
    first, second = enhance(image, method), enhance(image, method)
    assert first.shape == image.shape and first.dtype == np.uint8
    np.testing.assert_array_equal(first, second)


def test_none_is_identity_copy():
    image = _low_contrast()
    output = enhance(image, "none")
    np.testing.assert_array_equal(output, image)
    assert output is not image


def test_unknown_method_and_bad_images_raise():
    with pytest.raises(ValueError) as error:
        enhance(_low_contrast(), "gamma")
    for name in ENHANCEMENTS:
        assert name in str(error.value)
    with pytest.raises(ValueError, match="uint8"):
        enhance(_low_contrast().astype(np.float32), "histeq")
    with pytest.raises(ValueError, match="2-D"):
        enhance(np.zeros((4, 4, 3), np.uint8), "clahe")


def test_histeq_flattens_cumulative_histogram():
    image = _low_contrast()
    before, after = _cdf_deviation(image), _cdf_deviation(enhance(image, "histeq"))
    assert before > 0.3
    assert after < 0.25 * before


def test_clahe_raises_local_contrast():
    y, x = np.mgrid[:128, :128]
    texture = np.round(128 + 4 * np.sin(x / 2.0) * np.cos(y / 3.0) + 0.2 * x).astype(np.uint8)

    def local_contrast(a: np.ndarray) -> float:  # mean standard deviation over 8x8 blocks
        return float(a.astype(float).reshape(16, 8, 16, 8).std(axis=(1, 3)).mean())

    assert local_contrast(enhance(texture, "clahe", clahe_clip_limit=2.0, clahe_tiles=8)) > 2 * local_contrast(texture)


def test_mpghe_keeps_each_mode_in_its_own_range():
    image, dark = _bimodal()
    ranges = mpghe_boundaries(np.bincount(image.ravel(), minlength=256), 3.0, 20)
    assert len(ranges) == 2
    valley = ranges[0][1]
    assert 60 + 3 * 10 < valley < 170 - 3 * 12  # split between the two modes

    output = enhance(image, "mpghe", mpghe_smoothing=3.0, mpghe_min_peak_distance=20)
    assert output[dark].max() <= valley < output[~dark].min()  # no pixel crosses the valley
    assert output[dark].mean() < valley < output[~dark].mean()

    global_he = enhance(image, "histeq")
    mpghe_shift = abs(output.mean() - image.mean())
    histeq_shift = abs(global_he.mean() - image.mean())
    assert mpghe_shift < 0.5 * histeq_shift
    # And it does enhance: each mode is spread wider than in the input.
    assert output[dark].std() > 1.5 * image[dark].std()
    assert output[~dark].std() > 1.5 * image[~dark].std()


def test_mpghe_clip_limit_bounds_stretch_of_dominant_mode():
    image, dark = _bimodal()
    unclipped = enhance(image, "mpghe", mpghe_clip_limit=0.0)
    clipped = enhance(image, "mpghe", mpghe_clip_limit=1.0)
    assert clipped[dark].std() < 0.9 * unclipped[dark].std()


@pytest.mark.parametrize("method", ["histeq", "mpghe"])
def test_monotonic_mapping(method):
    rng = np.random.default_rng(3)
    data = np.concatenate(
        [np.arange(256), rng.normal(30, 6, 4000), rng.normal(110, 15, 6000), rng.normal(220, 5, 2000)]
    )
    image = rng.permutation(np.clip(np.round(data), 0, 255).astype(np.uint8)).reshape(-1, 16)  # 12256 = 766 x 16
    mapping = _mapping(image, enhance(image, method))
    assert len(mapping) == 256
    assert np.all(np.diff(mapping) >= 0)
    assert mapping[-1] - mapping[0] >= 200  # not trivially constant


@pytest.mark.parametrize("method", ENHANCEMENTS)
@pytest.mark.parametrize("value", [0, 93, 255])
def test_constant_image_stays_valid(method, value):
    image = np.full((30, 40), value, dtype=np.uint8)
    output = enhance(image, method)
    assert output.dtype == np.uint8 and output.shape == image.shape
    np.testing.assert_array_equal(output, image)


@pytest.mark.parametrize(
    "levels",
    [
        [100, 101],  # two adjacent levels, a single peak
        [10, 128, 250],  # three spikes: sub-ranges with one level each, empty bins between
        [0, 255],  # extremes only
    ],
)
def test_mpghe_degenerate_histograms(levels):
    rng = np.random.default_rng(5)
    image = rng.choice(np.array(levels, dtype=np.uint8), size=(50, 60))
    output = enhance(image, "mpghe")
    assert output.dtype == np.uint8 and output.shape == image.shape
    mapping = _mapping(image, output)
    assert np.all(np.diff(mapping) >= 0)
    assert image.min() <= output.min() and output.max() <= image.max()  # stays in the input's grey range
