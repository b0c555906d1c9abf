"""Pretrained encoders: the key layouts of torchvision and timm mapped onto busflow's networks, the exact
adaptations (3 -> 1 channel, ViT position grid, conv bias into BatchNorm), refusals, fine-tuning controls and
the input normalisation that predict applies too."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from busflow.config import validate_params
from busflow.errors import ModelFileError, ParamsError
from busflow.models import build_model
from busflow.models.layouts import timm_to_canonical
from busflow.models.pretrained import (
    NORMALIZATIONS,
    attach_input_normalization,
    encoder_layout,
    encoder_parameter_names,
    load_pretrained,
    read_weight_file,
    save_encoder,
    set_encoder_frozen,
)
from busflow.models.registry import available_architectures, get_entry

FIXTURES = Path(__file__).parent / "fixtures" / "weight_layouts"

# busflow architecture and options that equal a checkpoint's network, and that checkpoint's fixture.
FULL_SIZE = [
    ("resnet50", {}, "torchvision_resnet50"),
    ("mtl_resnet50", {}, "torchvision_resnet50"),
    ("unet_resnet50", {}, "torchvision_resnet50"),
    ("fcn_resnet50", {}, "torchvision_resnet50"),
    ("fpn", {}, "torchvision_resnet50"),
    ("deeplabv3", {}, "torchvision_resnet101"),
    ("deeplabv3plus", {}, "torchvision_resnet101"),
    ("vgg16", {}, "torchvision_vgg16"),
    ("vgg16", {"batch_norm": True}, "torchvision_vgg16_bn"),
    ("vgg19", {}, "torchvision_vgg19"),
    ("vgg19", {"batch_norm": True}, "torchvision_vgg19_bn"),
    ("unet_vgg19", {"batch_norm": False}, "torchvision_vgg19"),
    ("unet_vgg19", {}, "torchvision_vgg19_bn"),
    ("densenet121", {}, "torchvision_densenet121"),
    ("densenet201", {}, "torchvision_densenet201"),
    ("efficientnet_b0", {}, "torchvision_efficientnet_b0"),
    ("mobilenet_v2", {}, "torchvision_mobilenet_v2"),
    ("vit", {}, "torchvision_vit_b_16"),
    ("swin_tiny", {}, "torchvision_swin_t"),
    ("swin_unet", {}, "torchvision_swin_t"),  # P003: swin_tiny's encoder under the same names
    ("mtl_swin", {}, "torchvision_swin_t"),
]
# Tensors of a checkpoint that a busflow network does not take, by design: the class head, constant buffers,
# the classifier layers a U-Net has no use for, and conv biases that BatchNorm absorbs.
HEADS = ("fc.", "classifier.", "heads.", "head.")


def fixture_tensors(name: str) -> dict[str, tuple[int, ...]]:
    layout = json.loads((FIXTURES / f"{name}.json").read_text())
    return {key: tuple(shape) for key, shape in layout["tensors"]}


def full_size(arch: str, options: dict) -> nn.Module:
    try:
        with torch.device("meta"):  # no memory for the real sizes; MONAI's Swin needs real tensors to build
            return build_model(arch, in_channels=1, n_classes=2, options=options)
    except RuntimeError:
        return build_model(arch, in_channels=1, n_classes=2, options=options)


def expected_shape(canonical: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A checkpoint tensor's shape as busflow's gray network holds it."""
    if canonical == "encoder.pos_embedding":  # MONAI's ViT has no class-token position
        return (shape[0], shape[1] - 1, shape[2])
    if len(shape) == 4 and shape[1] == 3:  # the RGB stem
        return (shape[0], 1, *shape[2:])
    return shape


@pytest.mark.parametrize(("arch", "options", "fixture"), FULL_SIZE, ids=lambda v: v if isinstance(v, str) else "")
def test_every_encoder_tensor_maps_onto_the_checkpoint_with_its_shape(arch: str, options: dict, fixture: str) -> None:
    reference = fixture_tensors(fixture)
    state = full_size(arch, options).state_dict()
    names = encoder_layout(arch).canonical_names(state)
    assert names, f"{arch} maps no tensor"
    wrong = {key: name for key, name in names.items() if name not in reference}
    assert not wrong, f"{arch}: keys not in {fixture}: {list(wrong.items())[:5]}"
    shapes = {key: (tuple(state[key].shape), expected_shape(name, reference[name])) for key, name in names.items()}
    assert all(ours == theirs for ours, theirs in shapes.values()), [k for k, (a, b) in shapes.items() if a != b][:5]
    taken = set(names.values())
    left = [k for k in reference if k not in taken and not k.startswith(HEADS) and "relative_position_index" not in k]
    if arch == "unet_vgg19":  # conv biases (absorbed into BatchNorm, or none without it); no classifier
        left = [k for k in left if not (k.startswith("features.") and k.endswith(".bias"))]
    assert not left, f"{arch} leaves checkpoint tensors unused: {left[:5]}"


@pytest.mark.parametrize(("timm_fixture", "torchvision_fixture", "family"), [
    ("timm_resnet50", "torchvision_resnet50", "resnet"),
    ("timm_vit_base_patch16_224", "torchvision_vit_b_16", "vit"),
    ("timm_swin_tiny_patch4_window7_224", "torchvision_swin_t", "swin"),
])
def test_timm_layouts_rename_onto_torchvision_ones(timm_fixture: str, torchvision_fixture: str, family: str) -> None:
    timm, torchvision = fixture_tensors(timm_fixture), fixture_tensors(torchvision_fixture)
    renamed = timm_to_canonical(family, timm)
    assert set(renamed) == set(timm)
    assert {torchvision[name] for name in renamed.values()} and all(timm[k] == torchvision[v] for k, v in renamed.items())
    assert {k for k in torchvision if "relative_position_index" not in k} == set(renamed.values())


def test_every_catalogue_family_has_an_architecture() -> None:
    from busflow.weights import CHECKPOINTS

    families = {get_entry(a).encoder.family for a in available_architectures() if get_entry(a).encoder}
    assert {entry.family for entry in CHECKPOINTS.values()} <= families


# --------------------------------------------------------------------------- files built from the real layouts


def file_from_fixture(name: str, path: Path, *, drop: float = 0.0, prefix: str = "") -> Path:
    """A checkpoint with the fixture's tensor names and shapes (those starting with ``prefix``), random values;
    ``drop`` leaves out a share."""
    generator = torch.Generator().manual_seed(0)
    tensors = {key: torch.randn(shape, generator=generator) if shape else torch.tensor(0)
               for key, shape in fixture_tensors(name).items() if key.startswith(prefix)}
    kept = list(tensors)[: int(len(tensors) * (1 - drop))]
    torch.save({key: tensors[key] for key in kept}, path)
    return path


def test_a_file_with_the_real_resnet50_layout_loads_completely(tmp_path: Path) -> None:
    model = build_model("resnet50", in_channels=1, n_classes=3)
    path = file_from_fixture("torchvision_resnet50", tmp_path / "resnet50.pth")
    report = load_pretrained(model, "resnet50", path, "torchvision")
    assert report.matched_fraction == 1.0 and report.encoder_tensors == 265  # 318 less 53 BatchNorm counters
    assert report.unexpected == ["fc.weight", "fc.bias"] and not report.missing
    file = torch.load(path, weights_only=True)
    assert torch.equal(model.net.layer4[2].conv3.weight, file["layer4.2.conv3.weight"])
    assert torch.allclose(model.net.conv1.weight, file["conv1.weight"].sum(1, keepdim=True))


def test_a_timm_swin_file_loads_into_swin_tiny(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(1)
    tensors = {k: torch.randn(s, generator=generator) for k, s in fixture_tensors("timm_swin_tiny_patch4_window7_224").items()}
    save_file(tensors, str(tmp_path / "swin.safetensors"))
    model = build_model("swin_tiny", in_channels=1, n_classes=2)
    report = load_pretrained(model, "swin_tiny", tmp_path / "swin.safetensors", "timm")
    assert report.matched_fraction == 1.0
    assert torch.equal(model.backbone.layers2[0].downsample.reduction.weight, tensors["layers.2.downsample.reduction.weight"])
    assert torch.equal(model.backbone.layers3[0].blocks[5].mlp.linear2.bias, tensors["layers.2.blocks.5.mlp.fc2.bias"])


def test_a_torchvision_swin_t_file_loads_into_p003s_swin_unet_and_multitask_network(tmp_path: Path) -> None:
    path = file_from_fixture("torchvision_swin_t", tmp_path / "swin_t.pth")
    file = torch.load(path, weights_only=True)
    for arch in ("swin_unet", "mtl_swin"):
        model = build_model(arch, in_channels=1, n_classes=2)
        report = load_pretrained(model, arch, path, "torchvision")
        assert report.matched_fraction == 1.0, (arch, report.summary())  # the loader demands >= 95 %
        assert all(key.startswith("head.") or "relative_position_index" in key for key in report.unexpected)
        assert torch.equal(model.backbone.layers3[0].blocks[5].attn.qkv.weight, file["features.5.5.attn.qkv.weight"])
        assert torch.equal(model.norm.weight, file["norm.weight"])


def test_loading_refuses_a_file_below_the_match_threshold(tmp_path: Path) -> None:
    path = file_from_fixture("torchvision_resnet50", tmp_path / "partial.pth", drop=0.1)
    with pytest.raises(ModelFileError, match=r"partial\.pth: only \d+ of the 265 tensors .* match"):
        load_pretrained(build_model("resnet50", in_channels=1, n_classes=2), "resnet50", path, "torchvision")


def test_loading_refuses_another_family_and_mismatched_widths(tmp_path: Path) -> None:
    path = file_from_fixture("torchvision_resnet50", tmp_path / "resnet50.pth")
    small = build_model("resnet50", in_channels=1, n_classes=2, options={"widen_factor": 0.5})
    with pytest.raises(ModelFileError, match="resnet50.pth: only 0 of the 265"):
        load_pretrained(small, "resnet50", path, "torchvision")
    with pytest.raises(ModelFileError, match="has no pretrained encoder"):
        load_pretrained(build_model("unet", in_channels=1, n_classes=2), "unet", path, "torchvision")


class Planted:
    def __reduce__(self):  # would run code when unpickled
        return (print, ("pwned",))


def test_a_pickled_object_is_never_unpickled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "planted.pth"
    with path.open("wb") as handle:
        pickle.dump({"conv1.weight": torch.zeros(1), "payload": Planted()}, handle)
    with pytest.raises(ModelFileError, match=r"planted\.pth: refused to load"):
        read_weight_file(path)
    assert "pwned" not in capsys.readouterr().out


def test_nested_and_data_parallel_checkpoints_are_unwrapped(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "state_dict": {"module.conv1.weight": torch.ones(2)}}, tmp_path / "wrapped.pth")
    tensors, _ = read_weight_file(tmp_path / "wrapped.pth")
    assert list(tensors) == ["conv1.weight"]


# --------------------------------------------------------------------------- exact adaptations


def gray_and_rgb(arch: str, options: dict, tmp_path: Path) -> tuple[nn.Module, nn.Module]:
    """The same network with three input channels (saved as a torchvision-layout file) and loaded gray."""
    torch.manual_seed(0)
    rgb = build_model(arch, in_channels=3, n_classes=2, options=options).eval()
    names = encoder_layout(arch).canonical_names(rgb.state_dict())
    torch.save({names[k]: v for k, v in rgb.state_dict().items() if k in names}, tmp_path / "rgb.pth")
    gray = build_model(arch, in_channels=1, n_classes=2, options=options)
    load_pretrained(gray, arch, tmp_path / "rgb.pth", "torchvision")
    state = gray.state_dict()
    state.update({k: v for k, v in rgb.state_dict().items() if k not in names})  # the fresh head, for comparing
    gray.load_state_dict(state)
    return rgb, gray.eval()


@pytest.mark.parametrize(("arch", "options"), [("resnet50", {"widen_factor": 0.125}), ("mobilenet_v2", {"width_mult": 0.25}),
                                               ("vit", {"img_size": 32, "hidden_size": 32, "mlp_dim": 64, "num_layers": 2, "num_heads": 2})])
def test_summed_rgb_kernels_on_the_gray_image_equal_the_rgb_network_on_the_replicated_image(arch: str, options: dict, tmp_path: Path) -> None:
    rgb, gray = gray_and_rgb(arch, options, tmp_path)
    image = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected, got = rgb(image.expand(-1, 3, -1, -1))["logits"], gray(image)["logits"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_vit_positions_are_resampled_and_the_class_position_moves_into_the_class_token(tmp_path: Path) -> None:
    small = {"hidden_size": 32, "mlp_dim": 64, "num_layers": 1, "num_heads": 2}
    # torchvision layout: class position first, then a 2 x 2 patch grid, here one vector everywhere, which any
    # resampling must keep
    grid = torch.cat([torch.randn(1, 1, 32), torch.randn(1, 1, 32).expand(1, 4, 32)], dim=1)
    tensors = {"class_token": torch.randn(1, 1, 32), "encoder.pos_embedding": grid}
    source = build_model("vit", in_channels=1, n_classes=2, options={"img_size": 32, **small})
    names = encoder_layout("vit").canonical_names(source.state_dict())
    tensors.update({name: source.state_dict()[key] for key, name in names.items() if name not in tensors})
    torch.save(tensors, tmp_path / "vit.pth")
    model = build_model("vit", in_channels=1, n_classes=2, options={"img_size": 64, **small})
    report = load_pretrained(model, "vit", tmp_path / "vit.pth", "torchvision")
    assert report.matched_fraction == 1.0
    assert model.net.patch_embedding.position_embeddings.shape == (1, 16, 32)
    torch.testing.assert_close(model.net.patch_embedding.position_embeddings[0], grid[0, 1:2].expand(16, 32))
    torch.testing.assert_close(model.net.cls_token, tensors["class_token"] + grid[:, :1])
    assert any("resampled" in line for line in report.adapted)


def test_conv_bias_before_batchnorm_is_absorbed_into_its_running_mean(tmp_path: Path) -> None:
    path = file_from_fixture("torchvision_vgg19_bn", tmp_path / "vgg19_bn.pth", prefix="features.")  # no 0.5 GB classifier
    model = build_model("unet_vgg19", in_channels=1, n_classes=2)
    report = load_pretrained(model, "unet_vgg19", path, "torchvision")
    file = torch.load(path, weights_only=True)
    bn = model.encoder.blocks[1][0][1]  # features.8: the BatchNorm after the third conv (features.7)
    torch.testing.assert_close(bn.running_mean, file["features.8.running_mean"] - file["features.7.bias"])
    assert sum("absorbed" in line for line in report.adapted) == 16
    assert report.unexpected == [] and report.matched_fraction == 1.0


# --------------------------------------------------------------------------- busflow's own files, fine-tuning


def test_a_busflow_encoder_file_moves_between_networks_of_one_family(tmp_path: Path) -> None:
    torch.manual_seed(0)
    classifier = build_model("resnet50", in_channels=1, n_classes=2, options={"widen_factor": 0.125})
    written = save_encoder(classifier, "resnet50", tmp_path / "encoder.safetensors", {"method": "test"})
    assert written == 318
    multitask = build_model("mtl_resnet50", in_channels=1, n_classes=3, options={"widen_factor": 0.125})
    report = load_pretrained(multitask, "mtl_resnet50", tmp_path / "encoder.safetensors", "busflow")
    assert report.matched_fraction == 1.0
    assert torch.equal(multitask.encoder.stem[0].weight, classifier.net.conv1.weight)
    assert torch.equal(multitask.encoder.layer3[1].bn2.running_var, classifier.net.layer3[1].bn2.running_var)
    with pytest.raises(ModelFileError, match="holds a resnet encoder"):
        load_pretrained(build_model("densenet121", in_channels=1, n_classes=2), "densenet121", tmp_path / "encoder.safetensors", "busflow")


def test_freezing_keeps_the_encoder_and_its_batchnorm_statistics_bit_identical(seeded_torch: None) -> None:
    from busflow.train.loop import ArrayData, FitRun, fit
    from busflow.train.spec import TrainSpec

    rng = np.random.default_rng(0)
    data = ArrayData(rng.integers(0, 255, (24, 32, 32), dtype=np.uint8), np.zeros((24, 32, 32), np.uint8), np.arange(24) % 2)
    train, val = np.arange(16), np.arange(16, 24)

    def fitted(freeze: int) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = build_model("resnet50", in_channels=1, n_classes=2, options={"widen_factor": 0.125})
        before = {k: v.clone() for k, v in model.state_dict().items()}
        spec = TrainSpec(arch="resnet50", epochs=2, batch_size=8, lr=1e-2, patience=0, init={"weights": "x", "format": "busflow"},
                         freeze_encoder_epochs=freeze, options={"widen_factor": 0.125})
        fit(model, spec, data, train, val, tasks=frozenset({"cls"}), n_classes=2, run=FitRun(device=torch.device("cpu"), seed=0))
        return model, before

    model, before = fitted(freeze=2)
    encoder = encoder_layout("resnet50").canonical_names(before)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in encoder)
    assert not torch.equal(model.state_dict()["net.fc.1.weight"], before["net.fc.1.weight"])
    assert all(p.requires_grad for p in model.parameters())  # released after training
    model, before = fitted(freeze=1)
    assert not torch.equal(model.state_dict()["net.layer1.0.conv1.weight"], before["net.layer1.0.conv1.weight"])


def test_encoder_lr_factor_gives_the_encoder_its_own_rate() -> None:
    from busflow.train.loop import _optimizer
    from busflow.train.spec import TrainSpec

    model = build_model("resnet50", in_channels=1, n_classes=2, options={"widen_factor": 0.125})
    encoder = encoder_parameter_names(model, "resnet50")
    spec = TrainSpec(arch="resnet50", epochs=1, batch_size=2, lr=1e-3, encoder_lr_factor=0.1)
    groups = _optimizer(model, spec, encoder=encoder).param_groups
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(groups[1]["params"]) == len(encoder) and {"net.fc.1.weight", "net.fc.1.bias"}.isdisjoint(encoder)


def test_set_encoder_frozen_puts_its_batchnorm_in_eval_mode() -> None:
    model = build_model("resnet50", in_channels=1, n_classes=2, options={"widen_factor": 0.125}).train()
    set_encoder_frozen(model, encoder_parameter_names(model, "resnet50"), frozen=True)
    assert not model.net.bn1.training and not model.net.conv1.weight.requires_grad and model.net.fc[1].weight.requires_grad


def test_input_normalisation_is_applied_by_the_rebuilt_network() -> None:
    from busflow.model_card import NetworkCard
    from busflow.train.outputs import build_described

    imagenet = NORMALIZATIONS["imagenet"]
    assert (imagenet.mean, imagenet.std) == (0.449, 0.226)
    card = NetworkCard(arch="resnet50", options={"widen_factor": 0.125}, in_channels=1, n_classes=2, classes=["a", "b"],
                       tasks=["cls"], input_normalization=imagenet.as_dict())
    torch.manual_seed(0)
    rebuilt = build_described(card, Path("model.json")).eval()
    plain = build_model("resnet50", in_channels=1, n_classes=2, options={"widen_factor": 0.125}).eval()
    plain.load_state_dict(rebuilt.state_dict())
    image = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(image)["logits"], plain((image - 0.449) / 0.226)["logits"])
    assert attach_input_normalization(plain, None) is plain


# --------------------------------------------------------------------------- params


def params_with(tiny_params: dict, **entry: object) -> dict:
    params = json.loads(json.dumps(tiny_params))
    params["models"]["resnet50"].update(entry)
    return params


@pytest.fixture
def tiny_params() -> dict:
    import yaml

    return yaml.safe_load((Path(__file__).parent / "data" / "tiny_params.yaml").read_text())


@pytest.mark.parametrize(("entry", "message"), [
    ({"init": {"weights": "torchvision_densenet121"}}, "is a densenet checkpoint, resnet50 has a resnet encoder"),
    ({"init": {"weights": "resnet_from_nowhere"}}, "is not a checkpoint of `busflow weights list`"),
    ({"freeze_encoder_epochs": 2}, "fine-tune a pretrained encoder, but init is scratch"),
    ({"arch": "unet", "options": {}, "init": {"weights": "x.pth", "format": "torchvision"}}, "unet has no pretrained encoder"),
    ({"init": {"weights": "x.pth", "format": "onnx"}}, "init"),
])
def test_bad_init_settings_are_refused(tiny_params: dict, entry: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        validate_params(params_with(tiny_params, **entry), "tiny")


def test_good_init_settings_are_accepted(tiny_params: dict) -> None:
    params = validate_params(params_with(tiny_params, init={"weights": "torchvision_resnet50"}, freeze_encoder_epochs=1,
                                         encoder_lr_factor=0.1), "tiny")
    assert params["models"]["unet"]["init"] == "scratch" and params["weights"] == {"dir": None}
