"""Tests for busflow.models: registry contract and the four networks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from busflow.models import available_architectures, build_model, model_options, model_tasks, register
from busflow.models import registry
from busflow.models.cascade import ScatterMaxUnpool2d, SegNetClassifier

EXPECTED_TASKS = {
    "unet": {"seg"},
    "resnet50": {"cls"},
    "mtl_resnet50": {"cls", "seg"},
    "segnet_classifier": {"cls"},
}
# Small-but-faithful options so the whole matrix runs in seconds on 2 CPU cores.
FAST_OPTIONS = {
    "unet": {"features": [8, 8, 16, 32, 64, 8]},
    "resnet50": {"widen_factor": 0.25},
    "mtl_resnet50": {"widen_factor": 0.25, "decoder_channels": [32, 16, 16, 8, 8]},
    "segnet_classifier": {},
}
TASK_KEY = {"cls": "logits", "seg": "seg"}


pytestmark = pytest.mark.usefixtures("seeded_torch")


def _weighted_sum(out: dict[str, torch.Tensor]) -> torch.Tensor:
    # Random weights avoid the degenerate zero gradients a plain sum gives through BatchNorm.
    return sum((v * torch.randn_like(v)).sum() for v in out.values())


def _build(arch: str, in_channels: int = 1, n_classes: int = 3) -> nn.Module:
    return build_model(arch, in_channels=in_channels, n_classes=n_classes, options=FAST_OPTIONS[arch])


# --------------------------------------------------------------------------- registry


def test_registered_architectures_and_tasks() -> None:
    assert set(EXPECTED_TASKS) <= set(available_architectures())
    assert available_architectures() == sorted(available_architectures())
    for arch, tasks in EXPECTED_TASKS.items():
        assert model_tasks(arch) == frozenset(tasks)


def test_unknown_arch_lists_available_names() -> None:
    with pytest.raises((KeyError, ValueError)) as excinfo:
        build_model("vgg_nonexistent", in_channels=1, n_classes=3)
    message = str(excinfo.value)
    assert "vgg_nonexistent" in message
    for arch in EXPECTED_TASKS:
        assert arch in message
    with pytest.raises(KeyError):
        model_tasks("vgg_nonexistent")


def test_unknown_option_names_key_and_allowed() -> None:
    with pytest.raises(ValueError, match="bogus_option") as excinfo:
        build_model("resnet50", in_channels=1, n_classes=3, options={"widen_factor": 0.25, "bogus_option": 1})
    assert "widen_factor" in str(excinfo.value) and "dropout" in str(excinfo.value)


def test_option_defaults_exposed() -> None:
    assert model_options("resnet50") == {"widen_factor": 1.0, "dropout": 0.0, "no_max_pool": False}
    assert model_options("mtl_resnet50")["dropout"] == 0.2
    assert list(model_options("unet")["features"]) == [32, 32, 64, 128, 256, 32]
    assert list(model_options("segnet_classifier")["filters"]) == [16, 32, 48, 64]


def test_duplicate_registration_rejected() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @register("unet", tasks={"seg"}, description="dup")
        def _dup(*, in_channels: int, n_classes: int) -> nn.Module:
            return nn.Identity()


def test_register_validates_tasks_and_signature() -> None:
    with pytest.raises(ValueError):
        register("tmp_bad_task", tasks={"detect"}, description="x")
    with pytest.raises(TypeError):

        @register("tmp_positional", tasks={"cls"}, description="x")
        def _positional(in_channels: int, n_classes: int) -> nn.Module:
            return nn.Identity()

    assert "tmp_positional" not in available_architectures()


def test_new_builder_is_one_function() -> None:
    @register("tmp_linear", tasks={"cls"}, description="test-only")
    def _build_linear(*, in_channels: int, n_classes: int, hidden: int = 4) -> nn.Module:
        return nn.Linear(in_channels, hidden)

    try:
        assert model_options("tmp_linear") == {"hidden": 4}
        assert build_model("tmp_linear", in_channels=2, n_classes=2, options={"hidden": 7}).out_features == 7
    finally:
        registry._REGISTRY.pop("tmp_linear")


# One module per network family; the registry's schema `arch` enum is checked in test_config.py.
FAMILY_MODULES = frozenset(
    f"busflow.models.{name}"
    for name in ("cascade", "classical", "cnn", "deeplab", "densenet", "efficientnet", "fpn", "mobilenet",
                 "multitask", "resnet", "swin", "unets", "vgg", "vit")
)
REMOVED_MODULES = ("classifiers", "segmenters", "zoo_classifiers", "zoo_segmenters")


def test_every_builder_lives_in_a_family_module() -> None:
    """The per-family layout lost nothing: each architecture's builder is defined in a family module, and every
    family module registers at least one architecture."""
    import importlib.util

    modules = {arch: registry.get_entry(arch).builder.__module__ for arch in available_architectures()}
    assert {arch: m for arch, m in modules.items() if m not in FAMILY_MODULES} == {}
    assert set(modules.values()) == FAMILY_MODULES
    for name in REMOVED_MODULES:
        assert importlib.util.find_spec(f"busflow.models.{name}") is None, name


def test_invalid_counts_rejected() -> None:
    with pytest.raises(ValueError):
        build_model("resnet50", in_channels=0, n_classes=3)
    with pytest.raises(ValueError):
        build_model("segnet_classifier", in_channels=1, n_classes=1)


# --------------------------------------------------------------------------- all networks


# (in_channels, n_classes) pairs cover 1 and 3 channels, 2 and 3 classes at half the cost of the full grid.
@pytest.mark.parametrize(("in_channels", "n_classes"), [(1, 2), (3, 3)])
@pytest.mark.parametrize("arch", sorted(EXPECTED_TASKS))
def test_forward_backward_contract(arch: str, in_channels: int, n_classes: int) -> None:
    model = _build(arch, in_channels, n_classes)
    x = torch.randn(2, in_channels, 32, 64)  # non-square catches H/W mix-ups
    out = model.train()(x)
    assert set(out) == {TASK_KEY[t] for t in EXPECTED_TASKS[arch]}
    if "logits" in out:
        assert out["logits"].shape == (2, n_classes)
    if "seg" in out:
        assert out["seg"].shape == (2, 1, 32, 64)

    _weighted_sum(out).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{arch}: no gradient for {name}"
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, f"{arch}: zero gradient for {name}"

    model.eval()
    with torch.no_grad():
        out_eval = model(x)
        again = model(x)
    for key, value in out_eval.items():
        assert torch.isfinite(value).all()
        assert torch.equal(value, again[key]), "eval mode must be deterministic (no active dropout)"


@pytest.mark.parametrize("arch", sorted(EXPECTED_TASKS))
def test_default_options_build_and_run(arch: str) -> None:
    options = {"widen_factor": 0.25} if "widen_factor" in model_options(arch) else {}
    model = build_model(arch, in_channels=1, n_classes=3, options=options).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 64, 64))
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("arch", sorted(EXPECTED_TASKS))
def test_runs_under_deterministic_algorithms(arch: str) -> None:
    model = _build(arch)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        _weighted_sum(model(torch.randn(2, 1, 32, 32))).backward()
    finally:
        torch.use_deterministic_algorithms(previous)


# --------------------------------------------------------------------------- specific networks


def test_resnet50_parameter_count() -> None:
    model = build_model("resnet50", in_channels=1, n_classes=3)
    n_params = sum(p.numel() for p in model.parameters())
    # Standard ResNet-50 backbone (23.51 M) with a 1-channel stem and 3-class head: 23,507,907.
    assert abs(n_params - 23_507_907) / 23_507_907 < 0.002, n_params
    bottlenecks = [m for m in model.modules() if type(m).__name__ == "ResNetBottleneck"]
    assert len(bottlenecks) == 3 + 4 + 6 + 3
    assert model.net.conv1.stride == (2, 2)


def test_resnet50_dropout_option_wraps_head() -> None:
    model = build_model("resnet50", in_channels=1, n_classes=2, options={"widen_factor": 0.25, "dropout": 0.3})
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())


def test_multitask_encoder_is_shared() -> None:
    model = _build("mtl_resnet50").train()
    encoder_params = list(model.encoder.parameters())
    assert encoder_params
    x = torch.randn(2, 1, 32, 32)
    for key, other_head in (("logits", model.decoder), ("seg", model.classifier)):
        model.zero_grad(set_to_none=True)
        out = model(x)
        (out[key] * torch.randn_like(out[key])).sum().backward()
        for p in encoder_params:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"encoder not trained by {key} loss alone"
        assert all(p.grad is None for p in other_head.parameters()), f"{key} loss leaked into the other head"
    # Each decoder stage concatenates the matching encoder skip (layer3, layer2, layer1, stem, none).
    enc, dec = model.encoder.out_channels, FAST_OPTIONS["mtl_resnet50"]["decoder_channels"]
    expected_in = [enc[4] + enc[3], dec[0] + enc[2], dec[1] + enc[1], dec[2] + enc[0], dec[3]]
    assert [b.convs.conv_0.conv.in_channels for b in model.decoder.blocks] == expected_in


def test_scatter_unpool_matches_native() -> None:
    x = torch.randn(2, 3, 8, 12)
    pooled, idx = F.max_pool2d(x, 2, stride=2, return_indices=True)
    ours = ScatterMaxUnpool2d(2, stride=2)(pooled, idx, output_size=x.shape)
    assert torch.equal(ours, F.max_unpool2d(pooled, idx, 2, stride=2, output_size=x.shape[-2:]))
    assert isinstance(ScatterMaxUnpool2d(2), nn.MaxUnpool2d)


def test_segnet_uses_pooling_indices() -> None:
    model: SegNetClassifier = _build("segnet_classifier").eval()
    assert sum(isinstance(m, nn.MaxUnpool2d) for m in model.modules()) == 4
    with torch.no_grad():
        x1, x2 = torch.randn(2, 1, 1, 32, 32)
        code, indices, sizes = model.encode(x1)
        _, other_indices, _ = model.encode(x2)
        assert any(not torch.equal(a, b) for a, b in zip(indices, other_indices))
        # Same bottleneck values, different "where was the max" -> different decoded maps.
        assert not torch.allclose(model.decode(code, indices, sizes), model.decode(code, other_indices, sizes))
        # Unpooling puts each value exactly at its argmax position and zeros elsewhere.
        unpooled = model.unpools[0](code, indices[-1], output_size=sizes[-1])
        flat = unpooled.flatten(2)
        assert torch.equal(flat.gather(2, indices[-1].flatten(2)), code.flatten(2))
        assert (flat != 0).sum() <= code.numel()


def test_resnet50_without_max_pool_keeps_resolution() -> None:
    """no_max_pool drops the stem's pooling: the deepest feature map is twice as large per side."""
    pooled = build_model("resnet50", in_channels=1, n_classes=3, options={"widen_factor": 0.125})
    unpooled = build_model("resnet50", in_channels=1, n_classes=3, options={"widen_factor": 0.125, "no_max_pool": True})
    shapes = []
    for model in (pooled, unpooled):
        captured: list[torch.Size] = []
        model.net.layer4.register_forward_hook(lambda _m, _i, out, captured=captured: captured.append(out.shape))
        model.eval()(torch.zeros(1, 1, 64, 64))
        shapes.append(captured[0][-1])
    assert shapes == [2, 4]
