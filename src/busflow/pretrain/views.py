"""Random views of gray ultrasound images for contrastive pretraining, a whole batch at once.

Every operation is a batched tensor op on the images' own device, and every image gets its own random
draw from the caller's ``torch.Generator`` (same generator state, same views). In order:

1. random resized crop: area fraction uniform in [``crop_scale``, 1], aspect ratio log-uniform in [3/4, 4/3]
   (narrowed where the area leaves no room for it, so the crop always lies inside the image), resampled
   bilinearly to ``view_size`` (the input size by default);
2. horizontal flip with probability 1/2. Never a vertical one: depth runs from the skin line at the top
   down to the chest wall, and posterior enhancement or shadowing only ever falls below a lesion;
3. with probability 0.8, gain (brightness) and contrast jitter, then a gamma curve (the scanner's gain and
   display compression differ between machines and operators);
4. with probability 1/2, multiplicative speckle noise ``x * (1 + s * n)``, ``n`` standard normal per pixel;
5. with probability 1/2, a Gaussian blur (a coarser probe resolution).

No colour transform: the images have one channel. The output stays in [0, 1].

Written here rather than composed from MONAI: its random intensity transforms draw and run sample by sample
on the host, and it has no multiplicative speckle noise.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from busflow.pretrain.spec import PretrainSpec

ASPECT_RANGE = (3 / 4, 4 / 3)
FLIP_PROBABILITY = 0.5
JITTER_PROBABILITY = 0.8
SPECKLE_PROBABILITY = 0.5
BLUR_PROBABILITY = 0.5
MIN_BLUR_SIGMA = 0.1  # pixels
_DRAWS = 13  # uniform numbers per image: crop and flip 5, intensity 4, speckle 2, blur 2


def random_view(images: torch.Tensor, spec: PretrainSpec, generator: torch.Generator) -> torch.Tensor:
    """One random view of each image.

    Args:
        images: (B, 1, H, W) float tensor in [0, 1].
        spec: The augmentation strengths (``crop_scale``, ``brightness``, ``contrast``, ``gamma``, ``speckle``,
            ``blur_sigma``).
        generator: Seeded generator on the images' device; every draw comes from it.

    Returns:
        A (B, 1, S, S) tensor of the same dtype, in [0, 1]: S is ``spec.view_size``, or (H, W) when it is None.
    """
    batch, channels, height, width = images.shape
    view_shape = (batch, channels, spec.view_size, spec.view_size) if spec.view_size else (batch, channels, height, width)
    draws = torch.rand(batch, _DRAWS, generator=generator, device=images.device, dtype=images.dtype)
    noise = torch.randn(view_shape, generator=generator, device=images.device, dtype=images.dtype)
    view = _crop_and_flip(images, draws[:, 0:5], spec.crop_scale, view_shape)
    view = _intensity(view, draws[:, 5:9], spec.brightness, spec.contrast, spec.gamma)
    view = _speckle(view, draws[:, 9:11], noise, spec.speckle)
    view = _blur(view, draws[:, 11:13], spec.blur_sigma)
    return view.clamp_(0.0, 1.0)


def _gate(view: torch.Tensor, changed: torch.Tensor, draw: torch.Tensor, probability: float) -> torch.Tensor:
    """``changed`` for the images whose ``draw`` falls below ``probability``, ``view`` for the others."""
    return torch.where((draw < probability)[:, None, None, None], changed, view)


def _crop_and_flip(images: torch.Tensor, draws: torch.Tensor, min_scale: float, view_shape: tuple[int, ...]) -> torch.Tensor:
    """Random resized crop and horizontal flip as one ``grid_sample`` (coordinates in [-1, 1]) onto ``view_shape``."""
    area = min_scale + (1.0 - min_scale) * draws[:, 0]
    # Only aspects with width and height <= 1 fit: r in [area, 1 / area].
    log_low = torch.clamp(torch.log(area), min=math.log(ASPECT_RANGE[0]))
    log_high = torch.clamp(-torch.log(area), max=math.log(ASPECT_RANGE[1]))
    aspect = torch.exp(log_low + (log_high - log_low) * draws[:, 1])
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = (1.0 - width) * (2.0 * draws[:, 2] - 1.0)
    centre_y = (1.0 - height) * (2.0 * draws[:, 3] - 1.0)
    mirror = torch.where(draws[:, 4] < FLIP_PROBABILITY, -1.0, 1.0).to(width.dtype)
    zero = torch.zeros_like(width)
    theta = torch.stack([torch.stack([width * mirror, zero, centre_x], 1), torch.stack([zero, height, centre_y], 1)], 1)
    grid = F.affine_grid(theta, list(view_shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _intensity(view: torch.Tensor, draws: torch.Tensor, brightness: float, contrast: float, gamma: float) -> torch.Tensor:
    """Gain in 1 ± brightness, contrast about the image mean in 1 ± contrast, exponent in [1/gamma, gamma]."""
    gain = 1.0 + brightness * (2.0 * draws[:, 0] - 1.0)
    stretch = 1.0 + contrast * (2.0 * draws[:, 1] - 1.0)
    exponent = torch.exp(math.log(gamma) * (2.0 * draws[:, 2] - 1.0))
    mean = view.mean(dim=(1, 2, 3), keepdim=True)
    jittered = ((view - mean) * stretch[:, None, None, None] + mean) * gain[:, None, None, None]
    jittered = jittered.clamp(0.0, 1.0) ** exponent[:, None, None, None]
    return _gate(view, jittered, draws[:, 3], JITTER_PROBABILITY)


def _speckle(view: torch.Tensor, draws: torch.Tensor, noise: torch.Tensor, strength: float) -> torch.Tensor:
    """Multiplicative Gaussian noise of standard deviation uniform in [0, strength] per image."""
    sigma = strength * draws[:, 0]
    speckled = (view * (1.0 + sigma[:, None, None, None] * noise)).clamp(0.0, 1.0)
    return _gate(view, speckled, draws[:, 1], SPECKLE_PROBABILITY)


def _blur(view: torch.Tensor, draws: torch.Tensor, sigma_fraction: float) -> torch.Tensor:
    """Separable Gaussian blur, sigma uniform in [0.1 px, ``sigma_fraction`` of the side] per image.

    The batch becomes the channels of one grouped convolution, so each image keeps its own kernel.
    """
    batch, _, height, width = view.shape
    max_sigma = sigma_fraction * max(height, width)
    if max_sigma <= MIN_BLUR_SIGMA:
        return view
    radius = min(math.ceil(3.0 * max_sigma), height - 1, width - 1)
    sigma = MIN_BLUR_SIGMA + (max_sigma - MIN_BLUR_SIGMA) * draws[:, 0]
    offsets = torch.arange(-radius, radius + 1, device=view.device, dtype=view.dtype)
    kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    size = 2 * radius + 1
    planes = view.reshape(1, batch, height, width)
    planes = F.conv2d(F.pad(planes, (radius, radius, 0, 0), mode="reflect"), kernel.view(batch, 1, 1, size), groups=batch)
    planes = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode="reflect"), kernel.view(batch, 1, size, 1), groups=batch)
    return _gate(view, planes.reshape(batch, 1, height, width), draws[:, 1], BLUR_PROBABILITY)
