"""Contrastive pretraining (busflow.pretrain): every classifier loses exactly its class head, the views keep the
ultrasound geometry, the NT-Xent loss falls on phantoms, a seed repeats a CPU run bit for bit, bad input is refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from busflow.models import available_architectures, build_model, model_tasks
from busflow.pretrain import PretrainSpec, feature_extractor, pretrain, random_view

CPU = torch.device("cpu")
# Every classifier of the registry, built tiny for 32 px inputs, with the width of its pooled features.
CLASSIFIERS: dict[str, tuple[dict, int]] = {
    "custom_cnn": ({"channels": (8, 16, 16, 32), "dense_units": 24}, 24),
    "densenet121": ({}, 1024),
    "densenet201": ({}, 1920),
    "efficientnet_b0": ({}, 1280),
    "mobilenet_v2": ({"width_mult": 0.25}, 1280),
    "resnet50": ({"widen_factor": 0.125}, 256),
    "segnet_classifier": ({"filters": (4, 8, 8, 12)}, 12),
    "segnet_classifier_p002": ({"filters": (4, 8, 8, 12)}, 4),  # GAP of the decoded map: filters[0] wide
    "swin_tiny": ({"embed_dim": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 2, 4), "window_size": 4}, 96),
    "vgg16": ({"width_factor": 0.125, "classifier_width": 40}, 40),
    "vgg19": ({"width_factor": 0.125, "classifier_width": 40}, 40),
    "vit": ({"img_size": 32, "hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 4}, 48),
}
TINY_RESNET = {"widen_factor": 0.125}
SMALL_CNN = {"channels": (16, 32, 32, 64), "dense_units": 64}
# No view changes but the horizontal flip: each view is the image or its mirror image.
FLIP_ONLY = PretrainSpec(crop_scale=1.0, brightness=0.0, contrast=0.0, gamma=1.0, speckle=0.0, blur_sigma=0.0)


def _classifier(arch: str, options: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, in_channels=1, n_classes=2, options=options)


def _quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def images(phantom_split) -> np.ndarray:
    """35 phantom scans of 32 px (uint8), views of 16 patients."""
    return phantom_split[0].images


def test_the_table_covers_every_registered_classifier() -> None:
    assert sorted(CLASSIFIERS) == [arch for arch in available_architectures() if model_tasks(arch) == {"cls"}]


@pytest.mark.parametrize("arch", sorted(CLASSIFIERS))
def test_feature_extractor_removes_exactly_the_class_head(arch: str, single_thread_torch: None) -> None:
    options, width = CLASSIFIERS[arch]
    model = _classifier(arch, options).eval()
    inputs = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(inputs)["logits"]
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    names = set(model.state_dict())

    extracted, features = feature_extractor(model)

    assert extracted is model and features == width
    removed = [name for name in linears if not isinstance(model.get_submodule(name), nn.Linear)]
    assert len(removed) == 1
    assert set(model.state_dict()) == names - {f"{removed[0]}.weight", f"{removed[0]}.bias"}
    with torch.no_grad():
        pooled = model(inputs)["logits"]
        assert pooled.shape == (3, width)
        # The removed layer applied to the features gives the classifier's logits back: it was the head.
        torch.testing.assert_close(linears[removed[0]](pooled), logits, rtol=1e-4, atol=1e-5)
    assert feature_extractor(model) == (model, width)  # idempotent: a second call removes nothing more
    assert set(model.state_dict()) == names - {f"{removed[0]}.weight", f"{removed[0]}.bias"}


def test_feature_extractor_refuses_a_network_without_a_class_head() -> None:
    with pytest.raises(ValueError, match="no linear class head"):
        feature_extractor(build_model("unet", in_channels=1, n_classes=1, options={"features": (4, 4, 8, 8, 8, 4)}))


def _depth_phantom(count: int, size: int = 32, marker: bool = True) -> torch.Tensor:
    """Brightness rising with depth (top to bottom) and, with ``marker``, a bright block top left: every flip shows."""
    image = torch.linspace(0.1, 0.8, size)[:, None].expand(size, size).clone()
    if marker:
        image[4:12, 2:10] = 1.0
    return image.expand(count, 1, size, size).clone()


def test_views_keep_shape_dtype_and_range_and_differ_between_the_two_views() -> None:
    images = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(0)
    first, second = random_view(images, PretrainSpec(), generator), random_view(images, PretrainSpec(), generator)
    for view in (first, second):
        assert view.shape == images.shape and view.dtype == images.dtype
        assert torch.isfinite(view).all() and view.min() >= 0 and view.max() <= 1
    assert all(not torch.allclose(a, b) for a, b in zip(first, second))
    repeated = random_view(images, PretrainSpec(), torch.Generator().manual_seed(0))
    assert torch.equal(repeated, first)  # one generator state, one set of views


def test_views_flip_horizontally_but_never_vertically() -> None:
    images = _depth_phantom(count=64)
    views = random_view(images, FLIP_ONLY, torch.Generator().manual_seed(3))
    same = [torch.allclose(v, images[0], atol=1e-5) for v in views]
    mirrored = [torch.allclose(v, images[0].flip(-1), atol=1e-5) for v in views]
    assert all(s or m for s, m in zip(same, mirrored)) and 16 < sum(mirrored) < 48
    assert not any(torch.allclose(v, images[0].flip(-2), atol=0.1) for v in views)


def test_smaller_views_are_the_resampled_image_and_every_augmentation_works_at_their_size() -> None:
    images = _depth_phantom(count=64)
    half = dataclasses.replace(FLIP_ONLY, view_size=16)
    views = random_view(images, half, torch.Generator().manual_seed(3))
    assert views.shape == (64, 1, 16, 16)
    downsampled = torch.nn.functional.interpolate(images[:1], size=(16, 16), mode="bilinear", align_corners=False)[0]
    assert all(torch.allclose(v, downsampled, atol=1e-5) or torch.allclose(v, downsampled.flip(-1), atol=1e-5) for v in views)
    augmented = random_view(images, dataclasses.replace(PretrainSpec(), view_size=48), torch.Generator().manual_seed(4))
    assert augmented.shape == (64, 1, 48, 48) and augmented.min() >= 0 and augmented.max() <= 1


@pytest.mark.parametrize("view_size", [8, 16.0, True])
def test_a_view_size_below_16_or_not_an_integer_is_refused(view_size: object) -> None:
    with pytest.raises(ValueError, match="view_size"):
        PretrainSpec(view_size=view_size)


def test_views_with_every_augmentation_keep_depth_top_to_bottom() -> None:
    views = random_view(_depth_phantom(count=64, marker=False), PretrainSpec(), torch.Generator().manual_seed(4))
    top, bottom = views[:, 0, :10].mean(dim=(1, 2)), views[:, 0, -10:].mean(dim=(1, 2))
    assert (bottom > top + 0.05).all()


def test_contrastive_loss_falls_on_phantoms(images: np.ndarray, single_thread_torch: None) -> None:
    # Milder crops than the default and no intensity changes: 80 steps on 32 px phantoms are enough to learn from
    # (seeds 0-2 end 0.6-0.85 below the start; an epoch's mean varies by about 0.05 at chance).
    spec = dataclasses.replace(FLIP_ONLY, epochs=20, batch_size=8, lr=2e-3, warmup_epochs=1, crop_scale=0.8)
    lines: list[str] = []
    history = pretrain(_classifier("custom_cnn", SMALL_CNN), images, spec, device=CPU, seed=0, log=lines.append)
    assert [row["epoch"] for row in history] == list(range(1, 21)) and len(lines) == 21
    assert all(set(row) == {"epoch", "loss", "seconds", "images_per_s"} for row in history)
    losses = [round(row["loss"], 3) for row in history]
    chance = np.log(2 * 8 - 1)  # every view equally similar to the other 15 of its batch
    assert abs(losses[0] - chance) < 0.15, losses
    assert losses[-1] < losses[0] - 0.4, losses


def test_pretraining_trains_the_encoder_only_and_a_seed_repeats_it_bit_for_bit(images: np.ndarray, single_thread_torch: None) -> None:
    spec = PretrainSpec(epochs=2, batch_size=64)  # capped at the 35 images: one batch per epoch
    runs = []
    for _ in range(2):
        model = _classifier("resnet50", TINY_RESNET)
        head = model.net.fc[1]
        initial = {name: value.clone() for name, value in model.state_dict().items()}
        pretrain(model, images, spec, device=CPU, seed=7, log=_quiet)
        runs.append(model.state_dict())
    assert torch.equal(head.weight, initial["net.fc.1.weight"]) and torch.equal(head.bias, initial["net.fc.1.bias"])
    assert set(runs[0]) == set(initial) - {"net.fc.1.weight", "net.fc.1.bias"}
    assert not torch.equal(runs[0]["net.conv1.weight"], initial["net.conv1.weight"])
    assert all(torch.equal(runs[0][name], runs[1][name]) for name in runs[0])
    other_seed = _classifier("resnet50", TINY_RESNET)
    pretrain(other_seed, images, spec, device=CPU, seed=8, log=_quiet)
    assert not torch.equal(other_seed.state_dict()["net.conv1.weight"], runs[0]["net.conv1.weight"])


@pytest.mark.parametrize(("change", "message"), [
    (lambda x: x.astype(np.float32) / 255, "uint8"),
    (lambda x: x[:, :, :30], r"\(N, S, S\).*shape \(35, 32, 30\)"),
    (lambda x: x[0], r"shape \(32, 32\)"),
    (lambda x: x[:3], "at least 4 images"),
])
def test_pretrain_refuses_bad_images(images: np.ndarray, change, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pretrain(_classifier("resnet50", TINY_RESNET), change(images), PretrainSpec(epochs=1), device=CPU, seed=0, log=_quiet)


@pytest.mark.parametrize(("field", "value"), [("batch_size", 1), ("crop_scale", 0.0), ("temperature", 0.0), ("gamma", 0.5),
                                              ("epochs", 0)])
def test_spec_refuses_unusable_settings(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        PretrainSpec(**{field: value})
