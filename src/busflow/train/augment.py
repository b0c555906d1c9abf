"""Training-time augmentation (train part only) with MONAI dictionary transforms.

Image and mask share one random affine draw; the mask is resampled by nearest neighbour. Borders are
filled by reflection, i.e. context extrapolation rather than black wedges.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, RandAffined, RandFlipd


def build_augmentation(settings: Mapping[str, Any], size: int, seed: int) -> Compose | None:
    """Compose flips and a random affine (rotation, zoom, shift); None when everything is switched off."""
    transforms = []
    if settings.get("flip", True):
        transforms.append(RandFlipd(keys=["image", "mask"], prob=0.5, spatial_axis=1))
    if settings.get("vertical_flip", False):  # P004; anatomically odd for ultrasound (skin line at the top)
        transforms.append(RandFlipd(keys=["image", "mask"], prob=0.5, spatial_axis=0))
    rotate, zoom, shift = settings.get("rotate_deg", 0), settings.get("zoom", 0), settings.get("shift", 0)
    if rotate or zoom or shift:
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
