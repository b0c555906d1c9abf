"""Embedded synthetic breast-ultrasound (B-mode, linear probe) phantoms with lesion masks.

Phantom model
-------------
Each patient gets one *anatomy*, drawn on a canvas larger than the image so that several probe
positions ("views") can be cut from it:

* Tissue layers, top to bottom, with wavy boundaries and per-patient thicknesses: hypoechoic
  subcutaneous fat (lobulated texture, bright oblique Cooper's-ligament streaks), fibroglandular
  tissue of medium-high echogenicity (smoothed-noise texture with darker fat islands), a
  bright-ish pectoral muscle band with lateral striations and echogenic fasciae, dark chest wall.
  The skin line is drawn per view at the top rows because the probe always touches the skin.
* Lesions (benign/malignant) as ellipses with a radial perturbation ``r(theta)``: benign are oval,
  wider-than-tall, smooth (low harmonics), homogeneous and hypoechoic, sometimes with a thin
  echogenic rim, and cause posterior enhancement; malignant are irregular/spiculated (higher
  harmonics, narrow radial spikes), often taller-than-wide, heterogeneous, with indistinct margins,
  sometimes an echogenic halo and microcalcifications, and cause posterior shadowing. About 20 % of
  each class are drawn "atypical" (round/lobulated benign without enhancement, oval malignant with
  weak shadowing), sizes and contrasts vary, so the classes overlap on purpose.
* Lesion-like mimics that are never masked, in every class: fat lobules, a duct, and (normal only,
  ~15 %) a small cyst-like dark blob with faint enhancement, so normal-vs-lesion is not trivial.

Each view is an affine crop of the canvas; the mask is resampled with nearest neighbour. How a
patient's views relate is the ``acquisition``:

* ``sweep`` (the frames a clinic saves from one hand-held sweep, which is how one lesion ends up in
  several images of a dataset): the probe slides laterally by 1-4 % of the width from frame to frame,
  with a small axial (1 % of the height) and angular (1 degree) tremor, at one zoom (depth setting),
  one display gain and one skin line; the speckle is fixed to the tissue (drawn on the canvas and
  moved with it) and only partly renewed by the motion out of the plane (complex correlation 0.9).
* ``repositioned``: the probe is placed anew for every view (lateral shift up to 10 % of the width,
  axial up to 5 % of the height because the probe stays on the skin, zoom 0.85-1.15, rotation up to
  8 degrees) with fresh speckle and display gain.

Poses that lose more than 40 % of the lesion in any view are re-drawn (at most 12 times, then the
unshifted view is used). Per view the posterior enhancement/shadow is applied along the beam (image
columns), then the skin line, multiplicative Rayleigh speckle (magnitude of laterally elongated
smoothed complex Gaussian noise), exponential depth attenuation partly undone by time-gain
compensation, and a power-law (log-like) compression to 8 bits.

Randomness: every patient draws from ``SeedSequence(seed, spawn_key=(0, i, stream))``, so patient
``i``'s images depend only on ``seed``, ``i``, its class and the image settings, never on
``n_patients``; the class assignment is shuffled by its own stream. PNGs carry no metadata, so the
same arguments give byte-identical files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage as ndi

from busflow import CLASSES
from busflow.data.spacing import SPACING_COLUMN, SPACING_FILE
from busflow.io import atomic_dir

DEFAULT_CLASS_MIX: Mapping[str, float] = MappingProxyType({"normal": 0.17, "benign": 0.56, "malignant": 0.27})
PATIENT_COLUMNS: tuple[str, ...] = ("image_id", "patient_id", "label")
# A linear breast probe's field of view across the image at zoom 1; a view zoomed in by z has pixels z times smaller.
FIELD_OF_VIEW_MM = 40.0

MIN_SIZE = 32
_REF_SIZE = 160.0  # pixel-scale parameters (blur widths, speckle grain) are tuned at this size
_MAX_SHIFT = (0.05, 0.10)  # (axial fraction of height, lateral fraction of width)
_ZOOM = (0.85, 1.15)
_MAX_ROT = math.radians(8.0)
_MIN_KEEP = 0.6  # fraction of the lesion area a view must keep
_VIEW_RETRIES = 12
_SWEEP_STEP = (0.01, 0.04)  # lateral probe travel between neighbouring frames of a sweep, fraction of the width
_SWEEP_TREMOR = (0.01, math.radians(1.0))  # axial (fraction of height) and angular jitter of a hand-held sweep
_SWEEP_SPECKLE_CORRELATION = 0.9  # of the complex echo between frames: the speckle moves with the tissue
ACQUISITIONS = ("repositioned", "sweep")
_MIX_TOL = 1e-3
_F32 = np.float32
_Harmonics = tuple[tuple[int, float, float], ...]  # (order, amplitude, phase) terms of r(theta)
_Spikes = tuple[tuple[float, float, float], ...]     # (angle, amplitude, angular width) of radial spikes


# ----------------------------------------------------------------------------- validation


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _int_pair(name: str, value: object) -> tuple[int, int]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ValueError(f"{name} must be a pair of integers, got {value!r}")
    if not all(_is_int(v) for v in value):
        raise ValueError(f"{name} must hold integers, got {value!r}")
    return int(value[0]), int(value[1])


def _validate_mix(class_mix: object) -> dict[str, float]:
    if not isinstance(class_mix, Mapping) or not class_mix:
        raise ValueError(f"class_mix must be a non-empty mapping class -> fraction, got {class_mix!r}")
    unknown = sorted(str(k) for k in class_mix if k not in CLASSES)
    if unknown:
        raise ValueError(f"class_mix has unknown class name(s) {unknown}; expected some of {list(CLASSES)}")
    mix: dict[str, float] = {}
    for name in CLASSES:
        value = class_mix.get(name, 0.0)
        try:
            frac = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"class_mix[{name!r}] must be a number, got {value!r}") from None
        if not math.isfinite(frac) or frac < 0:
            raise ValueError(f"class_mix[{name!r}] must be a finite fraction >= 0, got {value!r}")
        mix[name] = frac
    total = sum(mix.values())
    if abs(total - 1.0) > _MIX_TOL:
        raise ValueError(f"class_mix fractions must sum to 1, got {total:.6g}")
    return mix


def _validate(n_patients: object, seed: object, image_size: object, class_mix: object,
              views_per_patient: object) -> tuple[int, int, tuple[int, int], dict[str, float], tuple[int, int]]:
    if not _is_int(n_patients) or n_patients < 1:
        raise ValueError(f"n_patients must be an integer >= 1, got {n_patients!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    size = _int_pair("image_size", image_size)
    if min(size) < MIN_SIZE:
        raise ValueError(f"image_size (height, width) must both be >= {MIN_SIZE}, got {size}")
    views = _int_pair("views_per_patient", views_per_patient)
    if views[0] < 1 or views[1] < views[0]:
        raise ValueError(f"views_per_patient must be (min, max) with 1 <= min <= max, got {views}")
    return int(n_patients), int(seed), size, _validate_mix(class_mix), views


# ----------------------------------------------------------------------------- class assignment


def _class_counts(n_patients: int, mix: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder rounding; every class with a positive fraction gets >= 1 patient if possible."""
    exact = [mix[c] / sum(mix.values()) * n_patients for c in CLASSES]
    counts = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(CLASSES)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in by_remainder[: n_patients - sum(counts)]:
        counts[k] += 1
    positive = [k for k, c in enumerate(CLASSES) if mix[c] > 0]
    if n_patients >= len(positive):
        for k in positive:
            if counts[k] == 0:
                donor = max(range(len(CLASSES)), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[k] += 1
    return dict(zip(CLASSES, counts))


def _assign_labels(n_patients: int, mix: Mapping[str, float], seed: int) -> list[str]:
    counts = _class_counts(n_patients, mix)
    labels = [c for c in CLASSES for _ in range(counts[c])]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    return [labels[k] for k in rng.permutation(n_patients)]


def _patient_rng(seed: int, index: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, index, *stream)))


# ----------------------------------------------------------------------------- random fields


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int],
                  sigma: float | tuple[float, float]) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation (a tissue texture).

    Wide kernels are applied on a coarser grid and interpolated back: same look, a fraction of the cost.
    """
    sy, sx = (sigma, sigma) if np.isscalar(sigma) else sigma
    fy, fx = max(1, int(sy // 2)), max(1, int(sx // 2))
    coarse = (shape[0] // fy + 2, shape[1] // fx + 2)
    field = ndi.gaussian_filter(rng.standard_normal(coarse, dtype=_F32), (sy / fy, sx / fx), truncate=3.0)
    if fy > 1 or fx > 1:  # bilinear upsampling (Pillow is much faster than ndi.zoom here)
        size = (field.shape[1] * fx, field.shape[0] * fy)
        field = np.asarray(Image.fromarray(field).resize(size, Image.Resampling.BILINEAR))
    return _unit_sd(field[: shape[0], : shape[1]])


def _wavy_curve(rng: np.random.Generator, n: int, mean: float, amp: float, corr: float) -> np.ndarray:
    """A smooth random 1-D curve (layer boundary / thickness profile) of given mean and amplitude."""
    z = ndi.gaussian_filter1d(rng.standard_normal(n + int(6 * corr)), corr)[int(3 * corr):][:n]
    return (mean + amp * z / (z.std() + 1e-8)).astype(_F32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _speckle_components(rng: np.random.Generator, shape: tuple[int, int],
                        sigma: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary parts of a smoothed complex Gaussian field."""
    re = ndi.gaussian_filter(rng.standard_normal(shape, dtype=_F32), sigma)
    im = ndi.gaussian_filter(rng.standard_normal(shape, dtype=_F32), sigma)
    return re, im


def _unit_sd(field: np.ndarray) -> np.ndarray:
    return field / (field.std() + 1e-8)


def _speckle_grain(scale: float) -> tuple[float, float]:
    """Speckle grain (axial, lateral) in pixels: laterally elongated, because the lateral resolution of a
    linear probe is coarser than the axial one."""
    return 0.7 * scale, 1.8 * scale


def _rayleigh(re: np.ndarray, im: np.ndarray) -> np.ndarray:
    """Speckle intensity with unit mean: the magnitude of the complex field."""
    amp = np.hypot(re, im)
    return amp / amp.mean()


def _speckle(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Rayleigh speckle with unit mean, drawn afresh for one image."""
    return _rayleigh(*_speckle_components(rng, shape, _speckle_grain(scale)))


# ----------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class _Canvas:
    shape: tuple[int, int]
    top: float       # canvas row seen at the top of an unshifted view (the skin)
    center_x: float  # canvas column at the centre of an unshifted view
    scale: float     # pixel-scale factor relative to _REF_SIZE


@dataclass(frozen=True)
class _Layers:
    echo: np.ndarray
    fat_bottom: np.ndarray    # per canvas column: fat / gland boundary row
    gland_bottom: np.ndarray  # per canvas column: gland / muscle boundary row
    fat_level: float
    gland_level: float


@dataclass(frozen=True)
class _LesionSpec:
    major: float            # major axis, fraction of image width
    aspect: float           # width / height
    angle: float            # radians, orientation of the ellipse
    harmonics: _Harmonics
    spikes: _Spikes
    contrast: float         # interior echogenicity relative to glandular tissue
    texture: float          # relative interior heterogeneity
    margin_blur: float      # px at reference size; larger = indistinct margin
    posterior_gain: float   # >1 enhancement, <1 shadowing
    rim: float              # thin echogenic capsule (benign)
    halo: float             # thick echogenic halo (malignant)
    calcifications: int


@dataclass(frozen=True)
class _Anatomy:
    echo: np.ndarray        # canvas echogenicity (before speckle / attenuation)
    lesion: np.ndarray      # canvas lesion mask (float 0/1); all zero for normal
    posterior: np.ndarray   # canvas mask of the structure casting a posterior effect
    posterior_gain: float
    posterior_length: float  # decay length of the posterior effect, fraction of height
    canvas: _Canvas
    skin_frac: float
    attenuation: float      # nepers over the image depth
    tgc: float              # fraction of the attenuation compensated by time-gain control


def _canvas_for(h: int, w: int) -> _Canvas:
    """Canvas big enough for any view transform: shift, zoom-out and rotation about the view centre."""
    span = 1.0 / _ZOOM[0]
    sin_r = math.sin(_MAX_ROT)
    top = math.ceil(_MAX_SHIFT[0] * h + 0.5 * w * span * sin_r) + 4
    height = top + math.ceil(_MAX_SHIFT[0] * h + h * span + 0.5 * w * span * sin_r) + 4
    half_w = 0.5 * w * span + 0.5 * h * span * sin_r + _MAX_SHIFT[1] * w + 4
    width = 2 * math.ceil(half_w)
    return _Canvas((height, width), float(top), (width - 1) / 2.0, min(h, w) / _REF_SIZE)


def _cooper_ligaments(rng: np.random.Generator, cv: _Canvas, fat_bottom: np.ndarray, h: int) -> np.ndarray:
    """Thin bright curved streaks rising obliquely from the gland surface towards the skin."""
    hc, wc = cv.shape
    lig = np.zeros(cv.shape, _F32)
    t = np.linspace(0.0, 1.0, 4 * h)
    for _ in range(int(rng.integers(2, 7))):
        x0 = rng.uniform(0, wc - 1)
        y0 = fat_bottom[int(x0)]
        y = y0 + t * (cv.top + rng.uniform(-0.05, 0.08) * h - y0)  # up to (about) the skin
        x = x0 + rng.choice([-1, 1]) * rng.uniform(0.4, 2.0) * (y0 - y) + rng.normal(0, 0.15) * h * t * (1 - t)
        iy, ix = np.round(y).astype(int), np.round(x).astype(int)
        ok = (iy >= 0) & (iy < hc) & (ix >= 0) & (ix < wc)
        lig[iy[ok], ix[ok]] = rng.uniform(0.5, 1.0)
    lig = ndi.gaussian_filter(lig, (0.6 * cv.scale, 0.8 * cv.scale))
    return lig / (lig.max() + 1e-8)


def _muscle_fibres(rng: np.random.Generator, cv: _Canvas, fascia: np.ndarray) -> np.ndarray:
    """Striations in [0, 1]: long lateral streaks that follow the (wavy) pectoral fascia."""
    hc, wc = cv.shape
    lift = int(np.ceil(fascia.max() - fascia.min())) + 2
    strip = _smooth_noise(rng, (hc + lift, wc), (1.0 * cv.scale, 14 * cv.scale))
    depth = np.arange(hc, dtype=_F32)[:, None] - (fascia - fascia.min())[None, :] + 1  # depth along the fibres
    i0 = np.clip(np.floor(depth).astype(int), 0, hc + lift - 2)
    frac = np.clip(depth - i0, 0, 1)
    along = np.take_along_axis(strip, i0, 0) * (1 - frac) + np.take_along_axis(strip, i0 + 1, 0) * frac
    return _sigmoid((along - 0.5) / 0.25)


def _tissue_layers(rng: np.random.Generator, cv: _Canvas, h: int, w: int) -> _Layers:
    """Echogenicity of fat, fibroglandular tissue, pectoral muscle and chest wall with wavy boundaries."""
    hc, wc = cv.shape
    s = cv.scale
    corr = rng.uniform(0.12, 0.3) * w
    fat_bottom = cv.top + _wavy_curve(rng, wc, rng.uniform(0.12, 0.24) * h, rng.uniform(0.015, 0.04) * h, corr)
    gland_th = _wavy_curve(rng, wc, rng.uniform(0.26, 0.42) * h, rng.uniform(0.02, 0.04) * h, corr)
    gland_th = np.maximum(gland_th, 0.15 * h)
    gland_bottom = fat_bottom + gland_th
    muscle_th = np.maximum(_wavy_curve(rng, wc, rng.uniform(0.13, 0.22) * h, 0.015 * h, 2 * corr), 0.08 * h)
    muscle_bottom = gland_bottom + muscle_th

    fat_level, gland_level = rng.uniform(0.15, 0.25), rng.uniform(0.6, 0.85)
    lobular = _smooth_noise(rng, cv.shape, (3 * s, 6 * s))  # shared by fat and chest wall (disjoint)
    fat = fat_level * (1 + 0.3 * lobular)
    fat += rng.uniform(0.5, 0.9) * gland_level * _cooper_ligaments(rng, cv, fat_bottom, h)
    gland = gland_level * (1 + 0.15 * _smooth_noise(rng, cv.shape, (1.0 * s, 2.5 * s))
                           + 0.12 * _smooth_noise(rng, cv.shape, (4 * s, 10 * s)))
    islands = _sigmoid((_smooth_noise(rng, cv.shape, (5 * s, 12 * s)) - rng.uniform(0.8, 1.6)) / 0.15)
    gland = gland * (1 - islands) + fat * islands  # interspersed fat inside the gland
    muscle = gland_level * rng.uniform(0.3, 0.42) * (1 + 2.0 * _muscle_fibres(rng, cv, gland_bottom))
    deep = rng.uniform(0.05, 0.11) * (1 + 0.3 * lobular)

    rows = np.arange(hc, dtype=_F32)[:, None]
    edge = 1.0 * s
    w1, w2, w3 = (_sigmoid((rows - b[None, :]) / edge) for b in (fat_bottom, gland_bottom, muscle_bottom))
    echo = fat * (1 - w1) + gland * (w1 - w2) + muscle * (w2 - w3) + deep * w3
    # echogenic fasciae: anterior mammary fascia, pectoral fascia (strong), deep fascia
    for bound, amp in ((fat_bottom, 0.2), (gland_bottom, 0.5), (muscle_bottom, 0.35)):
        echo += amp * gland_level * np.exp(-0.5 * ((rows - bound[None, :]) / (0.9 * s)) ** 2)
    echo = np.clip(echo, 0.01, None)  # textures are Gaussian: keep echogenicity positive
    return _Layers(echo.astype(_F32), fat_bottom, gland_bottom, float(fat_level), float(gland_level))


def _harmonics(rng: np.random.Generator, kmax: int, strength: float, decay: float) -> _Harmonics:
    return tuple((k, float(strength * rng.normal() / (k - 1) ** decay), float(rng.uniform(0, 2 * np.pi)))
                 for k in range(2, kmax + 1))


def _spikes(rng: np.random.Generator, count: int, amp: tuple[float, float]) -> _Spikes:
    return tuple((float(rng.uniform(-np.pi, np.pi)), float(rng.uniform(*amp)), float(rng.uniform(0.05, 0.11)))
                 for _ in range(count))


def _benign_spec(rng: np.random.Generator) -> _LesionSpec:
    atypical = rng.random() < 0.2  # rounder, lobulated, little enhancement
    small = rng.random() < 0.25
    return _LesionSpec(
        major=rng.uniform(0.10, 0.16) if small else rng.uniform(0.14, 0.35),
        aspect=rng.uniform(0.9, 1.35) if atypical else rng.uniform(1.2, 2.0),
        angle=rng.normal(0, 0.12),
        harmonics=_harmonics(rng, 7, rng.uniform(0.04, 0.09), 0.8) if atypical
        else _harmonics(rng, 4, rng.uniform(0.0, 0.05), 1.5),
        spikes=(),
        contrast=rng.uniform(0.12, 0.4) if atypical else rng.uniform(0.04, 0.3),
        texture=rng.uniform(0.2, 0.4) if atypical else rng.uniform(0.05, 0.2),
        margin_blur=rng.uniform(0.5, 0.9),
        posterior_gain=rng.uniform(0.85, 1.1) if atypical else rng.uniform(1.1, 1.8),
        rim=rng.uniform(0.3, 0.6) if rng.random() < 0.3 else 0.0,
        halo=0.0,
        calcifications=int(rng.integers(1, 3)) if rng.random() < 0.05 else 0,
    )


def _malignant_spec(rng: np.random.Generator) -> _LesionSpec:
    atypical = rng.random() < 0.2  # oval-ish, circumscribed-looking, weak shadow
    spiculated = not atypical and rng.random() < 0.6
    return _LesionSpec(
        major=rng.uniform(0.13, 0.35),
        aspect=rng.uniform(1.15, 1.7) if atypical else rng.uniform(0.7, 1.3),
        angle=rng.normal(0, 0.3),
        harmonics=_harmonics(rng, 6, rng.uniform(0.02, 0.06), 1.0) if atypical
        else _harmonics(rng, 12, rng.uniform(0.05, 0.12), 0.6),
        spikes=_spikes(rng, int(rng.integers(5, 13)), (0.12, 0.4)) if spiculated else (),
        contrast=rng.uniform(0.1, 0.35) if atypical else rng.uniform(0.12, 0.4),
        texture=rng.uniform(0.2, 0.4) if atypical else rng.uniform(0.35, 0.6),
        margin_blur=rng.uniform(0.7, 1.1) if atypical else rng.uniform(0.9, 1.5),
        posterior_gain=rng.uniform(0.8, 1.05) if atypical else rng.uniform(0.25, 0.8),
        rim=0.0,
        halo=rng.uniform(0.25, 0.5) if not atypical and rng.random() < 0.45 else 0.0,
        calcifications=int(rng.integers(2, 8)) if rng.random() < 0.35 else 0,
    )


def _cyst_mimic_spec(rng: np.random.Generator) -> _LesionSpec:
    """A small benign-looking dark blob that stays unmasked in normal images."""
    return _LesionSpec(
        major=rng.uniform(0.07, 0.14), aspect=rng.uniform(1.2, 1.9), angle=rng.normal(0, 0.12),
        harmonics=_harmonics(rng, 4, rng.uniform(0.0, 0.05), 1.5), spikes=(),
        contrast=rng.uniform(0.05, 0.3), texture=rng.uniform(0.05, 0.2), margin_blur=rng.uniform(0.6, 1.2),
        posterior_gain=rng.uniform(1.05, 1.35), rim=0.0, halo=0.0, calcifications=0,
    )


def _lesion_shape(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float,
                  spec: _LesionSpec) -> np.ndarray:
    """Boolean mask of an ellipse whose normalised radius is perturbed by harmonics and spikes."""
    reach = max(ry, rx) * (1 + sum(abs(a) for _, a, _ in spec.harmonics)
                           + max((a for _, a, _ in spec.spikes), default=0.0)) + 2
    y0, y1 = max(0, int(cy - reach)), min(shape[0], int(cy + reach) + 2)
    x0, x1 = max(0, int(cx - reach)), min(shape[1], int(cx + reach) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(_F32)
    dy, dx = yy - cy, xx - cx
    c, s = math.cos(spec.angle), math.sin(spec.angle)
    u, v = (dx * c + dy * s) / rx, (-dx * s + dy * c) / ry
    theta = np.arctan2(v, u)
    radius = np.ones_like(theta)
    for k, amp, phase in spec.harmonics:
        radius += amp * np.cos(k * theta + phase)
    for centre, amp, width in spec.spikes:
        diff = np.angle(np.exp(1j * (theta - centre)))  # wrapped angular distance
        radius += amp * np.exp(-0.5 * (diff / width) ** 2)
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = np.hypot(u, v) <= np.maximum(radius, 0.35)
    return mask


def _place_lesion(rng: np.random.Generator, spec: _LesionSpec, cv: _Canvas, layers: _Layers,
                  h: int, w: int) -> np.ndarray:
    """Put the lesion inside the glandular layer and inside an unshifted view."""
    half_major = 0.5 * spec.major * w
    rx, ry = (half_major, half_major / spec.aspect) if spec.aspect >= 1 else (half_major * spec.aspect, half_major)
    if ry > 0.3 * h:  # very tall lesions in short images: shrink to fit the depth
        rx, ry = rx * 0.3 * h / ry, 0.3 * h
    lateral = min(max(0.0, 0.5 * w - 1.15 * rx - 3), 0.25 * w)
    cx = cv.center_x + rng.uniform(-1, 1) * lateral
    col = int(round(cx))
    lo, hi = layers.fat_bottom[col] + 0.2 * ry, layers.gland_bottom[col] - 0.2 * ry
    cy = rng.uniform(lo, hi) if hi > lo else 0.5 * (lo + hi)
    top, bottom = cv.top + 0.1 * h + 1.2 * ry, cv.top + 0.8 * h - 1.2 * ry
    cy = float(np.clip(cy, top, bottom)) if bottom > top else 0.5 * (top + bottom)
    return _lesion_shape(cv.shape, cy, cx, ry, rx, spec)


def _paint_lesion(rng: np.random.Generator, echo: np.ndarray, mask: np.ndarray, spec: _LesionSpec,
                  layers: _Layers, s: float) -> None:
    """Hypoechoic interior blended with a soft margin, plus rim / halo / microcalcifications."""
    win = _window(mask, 12 * s + 4)  # covers margin blur, rim and halo; work there only
    echo, mask = echo[win], mask[win]  # views: in-place updates reach the canvas
    soft = ndi.gaussian_filter(mask.astype(_F32), spec.margin_blur * s)
    interior = layers.gland_level * spec.contrast * (1 + spec.texture * _smooth_noise(rng, mask.shape, 1.2 * s))
    echo *= 1 - soft
    echo += np.clip(interior, 0.01, None) * soft
    outside = ndi.distance_transform_edt(~mask)
    if spec.rim > 0:
        ring = ndi.gaussian_filter(((outside > 0) & (outside <= 1.5 * s + 0.5)).astype(_F32), 0.6 * s)
        echo += spec.rim * layers.gland_level * ring
    if spec.halo > 0:
        ring = (outside > 0) & (outside <= rng.uniform(2, 5) * s + 1)
        echo += spec.halo * layers.gland_level * ndi.gaussian_filter(ring.astype(_F32), 1.5 * s)
    if spec.calcifications:
        ys, xs = np.nonzero(mask)
        dots = np.zeros(echo.shape, _F32)
        pick = rng.choice(len(ys), size=min(spec.calcifications, len(ys)), replace=False)
        dots[ys[pick], xs[pick]] = 1.0
        dots = ndi.gaussian_filter(dots, 0.6 * s)
        echo += 1.2 * layers.gland_level * dots / (dots.max() + 1e-8)


def _window(mask: np.ndarray, pad: float) -> tuple[slice, slice]:
    """Bounding box of a non-empty mask grown by ``pad`` pixels (numpy clips the stop)."""
    ys, xs = np.nonzero(mask)
    p = int(math.ceil(pad))
    return slice(max(0, ys.min() - p), ys.max() + p + 1), slice(max(0, xs.min() - p), xs.max() + p + 1)


def _distance_outside(mask: np.ndarray, reach: float) -> np.ndarray:
    """Euclidean distance to ``mask``, exact up to ``reach`` pixels (computed on the bounding box only)."""
    out = np.full(mask.shape, np.inf, _F32)
    ys, xs = np.nonzero(mask)
    if len(ys):
        pad = int(math.ceil(reach)) + 1
        y0, y1 = max(0, ys.min() - pad), min(mask.shape[0], ys.max() + pad + 1)
        x0, x1 = max(0, xs.min() - pad), min(mask.shape[1], xs.max() + pad + 1)
        out[y0:y1, x0:x1] = ndi.distance_transform_edt(~mask[y0:y1, x0:x1])
    return out


def _free(mask: np.ndarray, avoid: np.ndarray) -> bool:
    return not np.any(mask & avoid)


def _fat_lobules(rng: np.random.Generator, echo: np.ndarray, avoid: np.ndarray, cv: _Canvas,
                 layers: _Layers, h: int, w: int) -> None:
    """Unmasked hypoechoic oval fat lobules inside the gland (lesion look-alikes)."""
    for _ in range(int(rng.poisson(1.2))):
        spec = _LesionSpec(rng.uniform(0.05, 0.12), rng.uniform(1.3, 2.5), rng.normal(0, 0.2),
                           _harmonics(rng, 5, 0.06, 1.0), (), 0, 0, 0, 1, 0, 0, 0)
        rx = 0.5 * spec.major * w
        cx = cv.center_x + rng.uniform(-0.45, 0.45) * w
        col = int(np.clip(round(cx), 0, cv.shape[1] - 1))
        cy = rng.uniform(layers.fat_bottom[col], layers.gland_bottom[col])
        lobule = _lesion_shape(cv.shape, cy, cx, rx / spec.aspect, rx, spec)
        if lobule.any() and _free(lobule, avoid):
            win = _window(lobule, 5 * cv.scale + 2)
            soft = ndi.gaussian_filter(lobule[win].astype(_F32), 1.5 * cv.scale)
            level = layers.fat_level * rng.uniform(0.8, 1.2)
            echo[win] *= 1 - soft
            echo[win] += level * soft


def _duct(rng: np.random.Generator, echo: np.ndarray, avoid: np.ndarray, cv: _Canvas, layers: _Layers,
          h: int, w: int) -> None:
    """An unmasked dilated duct: a long, slightly curved dark tube with echogenic walls."""
    hc, wc = cv.shape
    cx = cv.center_x + rng.uniform(-0.3, 0.3) * w
    col = int(round(cx))
    cy = rng.uniform(layers.fat_bottom[col] + 0.05 * h, layers.gland_bottom[col] - 0.05 * h)
    half_len, radius = rng.uniform(0.1, 0.2) * w, rng.uniform(1.2, 3.0) * cv.scale + 0.5
    xs = np.arange(wc, dtype=_F32)
    centre = cy + rng.uniform(-0.3, 0.3) * (xs - cx) + rng.normal(0, 0.002) * (xs - cx) ** 2
    dist = np.abs(np.arange(hc, dtype=_F32)[:, None] - centre[None, :])
    inside_x = (np.abs(xs - cx) <= half_len)[None, :]
    lumen = (dist <= radius) & inside_x
    wall = (dist > radius) & (dist <= radius + 1.2 * cv.scale + 0.5) & inside_x
    if wall.any() and _free(lumen | wall, avoid):
        win = _window(wall, 3 * cv.scale + 2)
        soft = ndi.gaussian_filter(lumen[win].astype(_F32), 0.7 * cv.scale)
        echo[win] *= 1 - soft
        echo[win] += layers.gland_level * rng.uniform(0.08, 0.3) * soft
        echo[win] += 0.4 * layers.gland_level * ndi.gaussian_filter(wall[win].astype(_F32), 0.6 * cv.scale)


def _draw_anatomy(rng: np.random.Generator, label: str, h: int, w: int) -> _Anatomy:
    """Everything about a patient that all of its views share."""
    cv = _canvas_for(h, w)
    layers = _tissue_layers(rng, cv, h, w)
    echo = layers.echo
    if label == "benign":
        spec = _benign_spec(rng)
    elif label == "malignant":
        spec = _malignant_spec(rng)
    else:
        spec = _cyst_mimic_spec(rng) if rng.random() < 0.15 else None
    blob = _place_lesion(rng, spec, cv, layers, h, w) if spec else np.zeros(cv.shape, bool)
    avoid = _distance_outside(blob, 0.04 * w) <= 0.04 * w
    _fat_lobules(rng, echo, avoid, cv, layers, h, w)
    if rng.random() < 0.3:
        _duct(rng, echo, avoid, cv, layers, h, w)
    if spec:
        _paint_lesion(rng, echo, blob, spec, layers, cv.scale)
    blob_f = blob.astype(_F32)
    return _Anatomy(
        echo=echo, lesion=blob_f if label != "normal" else np.zeros(cv.shape, _F32), posterior=blob_f,
        posterior_gain=spec.posterior_gain if spec else 1.0, posterior_length=rng.uniform(0.4, 0.8),
        canvas=cv, skin_frac=rng.uniform(0.01, 0.03), attenuation=rng.uniform(1.0, 2.5),
        tgc=rng.uniform(0.5, 0.8),
    )


# ----------------------------------------------------------------------------- views


@dataclass(frozen=True)
class _Pose:
    """Where the probe sits relative to the unshifted view: shift (pixels), zoom and rotation (radians)."""

    dy: float = 0.0
    dx: float = 0.0
    zoom: float = 1.0
    angle: float = 0.0


def _random_pose(rng: np.random.Generator, h: int, w: int) -> _Pose:
    """A new probe placement anywhere within the view limits."""
    return _Pose(dy=rng.uniform(-1, 1) * _MAX_SHIFT[0] * h, dx=rng.uniform(-1, 1) * _MAX_SHIFT[1] * w,
                 zoom=rng.uniform(*_ZOOM), angle=rng.uniform(-1, 1) * _MAX_ROT)


def _sweep_start(rng: np.random.Generator, n_frames: int, h: int, w: int) -> tuple[_Pose, float]:
    """The first frame's pose and the lateral step per frame of a sweep that stays within the view limits."""
    step = rng.uniform(*_SWEEP_STEP) * w * rng.choice([-1.0, 1.0])
    travel, reach = abs(step) * (n_frames - 1), _MAX_SHIFT[1] * w
    first = rng.uniform(-reach, reach - travel)
    start = _Pose(dy=rng.uniform(-0.5, 0.5) * _MAX_SHIFT[0] * h, dx=first if step > 0 else -first,
                  zoom=rng.uniform(*_ZOOM), angle=rng.uniform(-0.5, 0.5) * _MAX_ROT)
    return start, float(step)


def _sweep_frame(rng: np.random.Generator, start: _Pose, step: float, frame: int, h: int) -> _Pose:
    """Frame ``frame`` of a sweep: the probe slid by ``frame`` steps, with a hand's small axial and angular tremor."""
    return _Pose(dy=start.dy + rng.uniform(-1, 1) * _SWEEP_TREMOR[0] * h, dx=start.dx + frame * step,
                 zoom=start.zoom, angle=start.angle + rng.uniform(-1, 1) * _SWEEP_TREMOR[1])


def _view_affine(pose: _Pose, cv: _Canvas, h: int, w: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Matrix/offset mapping view pixels to canvas pixels for a probe at ``pose``."""
    span = 1.0 / pose.zoom  # canvas pixels per view pixel
    c, s = math.cos(pose.angle), math.sin(pose.angle)
    matrix = span * np.array([[c, -s], [s, c]])
    view_centre = np.array([(h - 1) / 2, (w - 1) / 2])
    canvas_centre = np.array([cv.top + pose.dy + view_centre[0] * span, cv.center_x + pose.dx])
    return matrix, canvas_centre - matrix @ view_centre, span


def _warp(field: np.ndarray, matrix: np.ndarray, offset: np.ndarray, shape: tuple[int, int],
          order: int) -> np.ndarray:
    mode = "nearest" if order else "constant"
    return ndi.affine_transform(field, matrix, offset, output_shape=shape, order=order, mode=mode, cval=0.0)


def _posterior_factor(mask: np.ndarray, gain: float, length: float, scale: float) -> np.ndarray:
    """Multiplicative enhancement (>1) or shadow (<1) below a structure, along the beam (columns)."""
    below = np.maximum.accumulate(mask, axis=0) & ~mask
    depth = np.cumsum(below, axis=0, dtype=_F32)  # rows travelled below the structure
    profile = below * np.exp(-depth / (length * mask.shape[0]))
    profile = ndi.gaussian_filter(profile.astype(_F32), (1.5 * scale, 3.0 * scale))
    return 1.0 + (gain - 1.0) * profile


def _skin(rng: np.random.Generator, echo: np.ndarray, frac: float, scale: float) -> np.ndarray:
    """Bright skin line in the top rows, thickness wobbling slowly along the probe."""
    h, w = echo.shape
    thick = max(2.0, frac * h) + 0.3 * scale * _wavy_curve(rng, w, 0.0, 1.0, 0.1 * w)
    rows = min(h, int(math.ceil(thick.max())) + 5)  # the skin weight is ~0 below this
    weight = _sigmoid((thick[None, :] - np.arange(rows, dtype=_F32)[:, None]) / 0.4)
    level = rng.uniform(0.9, 1.2) * (1 + 0.15 * _smooth_noise(rng, (rows, w), (0.5, 3.0)))
    echo = echo.copy()
    echo[:rows] = echo[:rows] * (1 - weight) + level * weight
    return echo


def _depth_gain(h: int, attenuation: float, tgc: float) -> np.ndarray:
    """Exponential attenuation with depth, partly compensated by time-gain control."""
    depth = (np.arange(h, dtype=_F32) + 0.5) / h
    return np.exp(-attenuation * (1.0 - tgc) * depth)[:, None]


def _compress(envelope: np.ndarray, gamma: float, gain: float) -> np.ndarray:
    """Power-law (log-like) display compression to 8 bits with the display's gain and contrast (``gamma``)."""
    ref = np.percentile(envelope, 99.7)
    out = 255.0 * gain * (envelope / ref) ** gamma
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class _SweepLook:
    """What the frames of one sweep share besides the anatomy: speckle fixed to the tissue (canvas components),
    the skin line and the display settings."""

    speckle_re: np.ndarray
    speckle_im: np.ndarray
    skin_seed: int
    gamma: float
    gain: float


def _sweep_look(rng: np.random.Generator, anatomy: _Anatomy, zoom: float) -> _SweepLook:
    grain = tuple(g / zoom for g in _speckle_grain(anatomy.canvas.scale))  # canvas pixels per view grain
    re, im = _speckle_components(rng, anatomy.canvas.shape, grain)
    return _SweepLook(re, im, int(rng.integers(2**32)), float(rng.uniform(0.45, 0.6)), float(rng.uniform(0.92, 1.02)))


def _sweep_speckle(rng: np.random.Generator, look: _SweepLook, matrix: np.ndarray, offset: np.ndarray,
                   shape: tuple[int, int], scale: float) -> np.ndarray:
    """The tissue's speckle seen by this frame, partly decorrelated by the probe's motion out of the plane."""
    fresh = _speckle_components(rng, shape, _speckle_grain(scale))
    kept, new = math.sqrt(_SWEEP_SPECKLE_CORRELATION), math.sqrt(1.0 - _SWEEP_SPECKLE_CORRELATION)
    parts = []
    for canvas_part, fresh_part in zip((look.speckle_re, look.speckle_im), fresh):
        seen = _warp(canvas_part, matrix, offset, shape, order=1)
        parts.append(kept * _unit_sd(seen) + new * _unit_sd(fresh_part))
    return _rayleigh(*parts)


def _keeps_lesion(anatomy: _Anatomy, pose: _Pose, h: int, w: int) -> bool:
    """Whether a view at ``pose`` keeps at least ``_MIN_KEEP`` of the lesion (always true without one)."""
    area = float(anatomy.lesion.sum())
    if area == 0:
        return True
    matrix, offset, span = _view_affine(pose, anatomy.canvas, h, w)
    return float((_warp(anatomy.lesion, matrix, offset, (h, w), order=0) > 0.5).sum()) * span**2 >= _MIN_KEEP * area


def _repositioned_pose(rng: np.random.Generator, anatomy: _Anatomy, h: int, w: int) -> _Pose:
    """A random probe placement that keeps the lesion (the unshifted view after ``_VIEW_RETRIES`` failures)."""
    for _ in range(_VIEW_RETRIES):
        pose = _random_pose(rng, h, w)
        if _keeps_lesion(anatomy, pose, h, w):
            return pose
    return _Pose()


def _sweep_poses(rng: np.random.Generator, anatomy: _Anatomy, n_frames: int, h: int, w: int) -> list[_Pose]:
    """The probe poses of ``n_frames`` neighbouring frames of one sweep, every frame keeping the lesion (a sweep
    that starts unshifted and does not move after ``_VIEW_RETRIES`` failures)."""
    for _ in range(_VIEW_RETRIES):
        start, step = _sweep_start(rng, n_frames, h, w)
        poses = [_sweep_frame(rng, start, step, frame, h) for frame in range(n_frames)]
        if all(_keeps_lesion(anatomy, pose, h, w) for pose in poses):
            return poses
    return [_Pose()] * n_frames


def _render_view(rng: np.random.Generator, anatomy: _Anatomy, pose: _Pose, h: int, w: int,
                 sweep: _SweepLook | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One image + mask: a transformed crop of the canvas, then beam effects, speckle and display. A frame of a
    sweep (``sweep``) shares the sweep's speckle, skin and display settings; any other view draws its own."""
    cv, shape = anatomy.canvas, (h, w)
    matrix, offset, _ = _view_affine(pose, cv, h, w)
    mask = _warp(anatomy.lesion, matrix, offset, shape, order=0) > 0.5
    echo = _warp(anatomy.echo, matrix, offset, shape, order=1)
    if anatomy.posterior_gain != 1.0:
        casting = _warp(anatomy.posterior, matrix, offset, shape, order=0) > 0.5
        echo *= _posterior_factor(casting, anatomy.posterior_gain, anatomy.posterior_length, cv.scale)
    skin_rng = rng if sweep is None else np.random.default_rng(sweep.skin_seed)
    echo = np.clip(_skin(skin_rng, echo, anatomy.skin_frac, cv.scale), 0.005, None)
    if sweep is None:
        speckle = _speckle(rng, shape, cv.scale)
        gamma, gain = rng.uniform(0.45, 0.6), rng.uniform(0.92, 1.02)
    else:
        speckle = _sweep_speckle(rng, sweep, matrix, offset, shape, cv.scale)
        gamma, gain = sweep.gamma, sweep.gain
    envelope = echo * speckle * _depth_gain(h, anatomy.attenuation, anatomy.tgc)
    return _compress(envelope, gamma, gain), mask.astype(np.uint8) * 255


def _render_patient(seed: int, index: int, label: str, h: int, w: int, views: tuple[int, int],
                    acquisition: str) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Every view of one patient: image, mask and pixel spacing in mm."""
    n_views = int(_patient_rng(seed, index, 2).integers(views[0], views[1] + 1))
    anatomy = _draw_anatomy(_patient_rng(seed, index, 0), label, h, w)
    frame_rngs = [_patient_rng(seed, index, 1, v) for v in range(n_views)]
    look = None
    if acquisition == "repositioned":  # each view's own generator draws its pose, then renders it
        poses = [_repositioned_pose(rng, anatomy, h, w) for rng in frame_rngs]
    else:
        sweep_rng = _patient_rng(seed, index, 3)
        poses = _sweep_poses(sweep_rng, anatomy, n_views, h, w)
        look = _sweep_look(sweep_rng, anatomy, poses[0].zoom)
    return [(*_render_view(rng, anatomy, pose, h, w, look), FIELD_OF_VIEW_MM / (w * pose.zoom))
            for rng, pose in zip(frame_rngs, poses)]


def _write_png(path: Path, pixels: np.ndarray) -> None:
    # fixed encoder settings and no metadata chunks: identical pixels give identical bytes
    Image.fromarray(pixels).save(path, format="PNG", optimize=False, compress_level=6)


# ----------------------------------------------------------------------------- public API


def generate_phantoms(out_dir: Path, *, n_patients: int, seed: int, image_size: tuple[int, int] = (160, 200),
                      class_mix: Mapping[str, float] = DEFAULT_CLASS_MIX,
                      views_per_patient: tuple[int, int] = (1, 3), acquisition: str = "repositioned") -> pd.DataFrame:
    """Write a synthetic BUS data set to ``out_dir`` (replaced atomically) and return its patients table.

    Layout: ``<out_dir>/<class>/<image_id>.png`` (8-bit grayscale), ``<image_id>_mask.png`` (0/255,
    all zero for normal), ``patients.csv`` with columns image_id, patient_id, label sorted by
    image_id, and ``pixel_spacing.csv`` (image_id, pixel_spacing_mm: :data:`FIELD_OF_VIEW_MM` across the
    width at the view's zoom). ``image_size`` is (height, width); patients are ``p0000``, ``p0001``, ... and their
    views ``<patient>_v0``, ``<patient>_v1``, ...
    """
    n, seed, (h, w), mix, views = _validate(n_patients, seed, image_size, class_mix, views_per_patient)
    if acquisition not in ACQUISITIONS:
        raise ValueError(f"acquisition must be one of {list(ACQUISITIONS)}, got {acquisition!r}")
    labels = _assign_labels(n, mix, seed)
    digits = max(4, len(str(n - 1)))
    rows: list[tuple[str, str, str]] = []
    spacing: dict[str, float] = {}
    with atomic_dir(out_dir) as tmp:
        os.chmod(tmp, 0o755)  # mkdtemp makes a private (0700) folder; the data set is ordinary output
        # Only classes that received patients get a folder: ingest treats an empty class folder as an error.
        for name in sorted(set(labels)):
            (tmp / name).mkdir()
        for index, label in enumerate(labels):
            patient = f"p{index:0{digits}d}"
            for v, (image, mask, pixel_mm) in enumerate(_render_patient(seed, index, label, h, w, views, acquisition)):
                image_id = f"{patient}_v{v}"
                _write_png(tmp / label / f"{image_id}.png", image)
                _write_png(tmp / label / f"{image_id}_mask.png", mask)
                rows.append((image_id, patient, label))
                spacing[image_id] = round(pixel_mm, 6)
        table = pd.DataFrame(rows, columns=list(PATIENT_COLUMNS))
        table = table.sort_values("image_id", kind="stable").reset_index(drop=True)
        table.to_csv(tmp / "patients.csv", index=False, lineterminator="\n")
        spacings = pd.DataFrame({"image_id": table["image_id"], SPACING_COLUMN: table["image_id"].map(spacing)})
        spacings.to_csv(tmp / SPACING_FILE, index=False, lineterminator="\n")
    return table
