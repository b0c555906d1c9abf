"""Training-time augmentation (train part only) with MONAI dictionary transforms.

Image and mask share one random affine draw; the mask is resampled by nearest neighbour. Borders are
filled by reflection, i.e. context extrapolation rather than black wedges.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.transforms import Compose, RandAffined, RandFlipd

from busflow.train.spec import AugmentSpec


def build_augmentation(settings: AugmentSpec, size: int, seed: int) -> Compose | None:
    """Compose flips and a random affine (rotation, zoom, shift); None when everything is switched off."""
    transforms = []
    if settings.flip:
        transforms.append(RandFlipd(keys=["image", "mask"], prob=0.5, spatial_axis=1))
    if settings.vertical_flip:  # P004; anatomically odd for ultrasound (skin line at the top)
        transforms.append(RandFlipd(keys=["image", "mask"], prob=0.5, spatial_axis=0))
    rotate, zoom, shift = settings.rotate_deg, settings.zoom, settings.shift
    if settings.has_affine:
        transforms.append(
            RandAffined(
                keys=["image", "mask"],
                prob=0.8,
                rotate_range=math.radians(rotate),
                scale_range=(zoom, zoom),
                translate_range=(shift * size, shift * size),
                mode=("bilinear", "nearest"),
                padding_mode="reflection",
            )
        )
    if not transforms:
        return None
    compose = Compose(transforms)
    compose.set_random_state(seed=seed)
    return compose


def augment_batch(transform: Compose | None, images: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``transform`` sample by sample; inputs (B, H, W) float32, outputs (B, 1, H, W) tensors."""
    image_tensor = torch.from_numpy(images).unsqueeze(1)
    mask_tensor = torch.from_numpy(masks).unsqueeze(1)
    if transform is None:
        return image_tensor, mask_tensor
    pairs = [transform({"image": image, "mask": mask}) for image, mask in zip(image_tensor, mask_tensor)]
    images_out = torch.stack([torch.as_tensor(p["image"]) for p in pairs])
    masks_out = torch.stack([torch.as_tensor(p["mask"]) for p in pairs])
    return images_out.as_subclass(torch.Tensor), masks_out.as_subclass(torch.Tensor)


class BatchAugmentation:
    """The same flips and random affine as :func:`build_augmentation`, for a whole batch at once with tensor
    ops on the batch's own device (the fast path's GPU augmentation).

    One draw per sample from ``generator``: horizontal (and, if asked, vertical) flips with probability 0.5,
    then with probability 0.8 a rotation in ±rotate_deg, a zoom factor in 1 ± zoom and a shift in ±shift of
    the side, resampled with ``grid_sample`` (image bilinear, mask nearest, reflected borders). The draws
    differ from MONAI's, the distribution is the same. Nothing here waits for the device.
    """

    def __init__(self, settings: AugmentSpec) -> None:
        self.flip, self.vertical_flip, self.has_affine = settings.flip, settings.vertical_flip, settings.has_affine
        self.rotate = math.radians(settings.rotate_deg)
        self.zoom, self.shift = float(settings.zoom), float(settings.shift)

    @classmethod
    def build(cls, settings: AugmentSpec) -> BatchAugmentation | None:
        """None when everything is switched off (as :func:`build_augmentation`)."""
        return cls(settings) if settings.active else None

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` and ``masks`` (B, 1, H, W) float; returns both transformed by one draw per sample."""
        draws = torch.rand(images.shape[0], 7, generator=generator, device=images.device)
        for enabled, column, axis in ((self.flip, 0, -1), (self.vertical_flip, 1, -2)):
            if enabled:
                flipped = (draws[:, column] < 0.5)[:, None, None, None]
                images = torch.where(flipped, images.flip(axis), images)
                masks = torch.where(flipped, masks.flip(axis), masks)
        if not self.has_affine:
            return images, masks
        grid = torch.nn.functional.affine_grid(self._sampling_matrices(draws[:, 2:]), list(images.shape), align_corners=False)
        warped_images = torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        warped_masks = torch.nn.functional.grid_sample(masks, grid, mode="nearest", padding_mode="reflection", align_corners=False)
        applied = (draws[:, 2] < 0.8)[:, None, None, None]
        return torch.where(applied, warped_images, images), torch.where(applied, warped_masks, masks)

    def _sampling_matrices(self, draws: torch.Tensor) -> torch.Tensor:
        """(B, 2, 3) maps from output to input coordinates in [-1, 1]: rotation · zoom, then the shift."""
        signed = draws[:, 1:] * 2 - 1  # uniform in [-1, 1): angle, zoom, shift x, shift y
        angle, scale = signed[:, 0] * self.rotate, 1 + signed[:, 1] * self.zoom
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        shift = signed[:, 2:] * (2 * self.shift)  # a fraction of the side is twice that in [-1, 1] units
        return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
