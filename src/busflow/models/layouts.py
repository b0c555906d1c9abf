"""Where a pretrained checkpoint's tensors go in a busflow network: one key mapping per network family.

Every pretrained encoder is described in *torchvision's* tensor names (the canonical layout of a family):
a network registers an :class:`EncoderLayout` whose ``to_canonical`` maps each of its state-dict keys to the
torchvision name of the same tensor, or to ``None`` for what no ImageNet checkpoint holds (decoders, new
heads, constant buffers). timm checkpoints are first renamed into torchvision's names
(:func:`timm_to_canonical`); busflow's own encoder files carry the keys of the network that wrote them and go
through that network's layout. The tests check every mapping against the real key lists of torchvision and
timm (``tests/fixtures/weight_layouts``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from busflow.weights import FAMILIES

# model key -> canonical key (None: not part of the pretrained encoder); the second argument is every key of
# the model, for layouts whose numbering depends on the network's structure.
Mapper = Callable[[str, Collection[str]], "str | None"]


@dataclass(frozen=True)
class EncoderLayout:
    """The pretrained part of one architecture.

    Attributes:
        family: Which checkpoints fit (one of :data:`FAMILIES`).
        to_canonical: Model key -> torchvision key, or ``None`` for tensors that start fresh.
    """

    family: str
    to_canonical: Mapper

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown encoder family {self.family!r}; known: {', '.join(FAMILIES)}")

    def canonical_names(self, model_keys: Collection[str]) -> dict[str, str]:
        """Model key -> canonical key for every key of the encoder, in the model's order."""
        keys = list(model_keys)
        names = {key: self.to_canonical(key, keys) for key in keys}
        return {key: name for key, name in names.items() if name is not None}


def renamed(rules: Sequence[tuple[str, str]]) -> Mapper:
    """A mapper from regex rules ``(pattern, replacement)``: the first pattern matching the whole key wins;
    a key that none matches is not part of the encoder."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]

    def to_canonical(key: str, keys: Collection[str]) -> str | None:
        for pattern, replacement in compiled:
            if pattern.fullmatch(key):
                return pattern.sub(replacement, key)
        return None

    return to_canonical


def _first_rule(rules: Sequence[tuple[str, Callable[[re.Match[str]], str]]], key: str) -> str | None:
    """The name the first rule whose pattern matches the whole key builds from the match, or None."""
    for pattern, build in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return build(match)
    return None


# --------------------------------------------------------------------------- ResNet, DenseNet, MobileNetV2, VGG


def resnet_layout(prefix: str) -> EncoderLayout:
    """A MONAI ResNet under ``prefix`` (``conv1``/``bn1``/``layer1..4``, torchvision's own names)."""
    return EncoderLayout("resnet", renamed([(rf"{re.escape(prefix)}\.(conv1|bn1|layer[1-4])\.(.+)", r"\1.\2")]))


def resnet_encoder_layout(prefix: str) -> EncoderLayout:
    """A :class:`~busflow.models.resnet.ResNetEncoder` under ``prefix`` (its stem is ``stem.0``/``stem.1``)."""
    p = re.escape(prefix)
    return EncoderLayout("resnet", renamed([(rf"{p}\.stem\.0\.(.+)", r"conv1.\1"), (rf"{p}\.stem\.1\.(.+)", r"bn1.\1"),
                                            (rf"{p}\.(layer[1-4]\..+)", r"\1")]))


# MONAI's dense layer wraps its norm/conv modules in ``layers``; torchvision's has them directly.
DENSENET = EncoderLayout("densenet", renamed([
    (r"net\.features\.(denseblock\d+\.denselayer\d+)\.layers\.(.+)", r"features.\1.\2"),
    (r"net\.(features\..+)", r"\1"),
]))

MOBILENET_V2 = EncoderLayout("mobilenet_v2", renamed([(r"(features\..+)", r"\1")]))

# busflow's VGG numbers its layers as torchvision does; the classifier's two hidden layers are pretrained too.
VGG_CLASSIFIER = EncoderLayout("vgg", renamed([(r"(features\..+)", r"\1"), (r"(classifier\.[03]\..+)", r"\1")]))


def _vgg_blocks_to_canonical(key: str, keys: Collection[str]) -> str | None:
    """``encoder.blocks.<block>.<conv>.<0 conv | 1 BN>`` -> torchvision's flat ``features.<index>``.

    torchvision's trunk is one Sequential: per conv layer conv (+ BN) + ReLU, and a max-pool after each block.
    """
    match = re.fullmatch(r"encoder\.blocks\.(\d+)\.(\d+)\.([01])\.(.+)", key)
    if match is None:
        return None
    block, layer, part, leaf = int(match[1]), int(match[2]), int(match[3]), match[4]
    per_layer = 3 if "encoder.blocks.0.0.1.weight" in keys else 2  # conv, (BN,) ReLU
    layers_per_block = [len({k.split(".")[3] for k in keys if k.startswith(f"encoder.blocks.{b}.")}) for b in range(block)]
    index = sum(n * per_layer + 1 for n in layers_per_block) + layer * per_layer + part
    return f"features.{index}.{leaf}"


VGG19_ENCODER = EncoderLayout("vgg", _vgg_blocks_to_canonical)


# --------------------------------------------------------------------------- EfficientNet


_EFFICIENTNET_PARTS = {  # MONAI MBConv module -> (torchvision sub-block offset, name inside it)
    "_expand_conv": (0, "0"), "_bn0": (0, "1"), "_depthwise_conv": (1, "0"), "_bn1": (1, "1"),
    "_se_reduce": (2, "fc1"), "_se_expand": (2, "fc2"), "_project_conv": (3, "0"), "_bn2": (3, "1"),
}


def _efficientnet_to_canonical(key: str, keys: Collection[str]) -> str | None:
    """MONAI ``EfficientNetBN`` -> torchvision ``efficientnet_b*``.

    MONAI numbers blocks globally (``_blocks.<stage>.<global index>``), torchvision per stage
    (``features.<stage + 1>.<index in stage>.block.<k>``); a block without expansion has no torchvision
    sub-block for it, so its other sub-blocks shift down by one.
    """
    match = re.fullmatch(r"net\.(_conv_stem|_bn0|_conv_head|_bn1)\.(.+)", key)
    if match:
        head = len({k.split(".")[2] for k in keys if k.startswith("net._blocks.")}) + 1
        outer = {"_conv_stem": "features.0.0", "_bn0": "features.0.1", "_conv_head": f"features.{head}.0", "_bn1": f"features.{head}.1"}
        return f"{outer[match[1]]}.{match[2]}"
    match = re.fullmatch(r"net\._blocks\.(\d+)\.(\d+)\.(_[a-z_]+\d?)\.(.+)", key)
    if match is None or match[3] not in _EFFICIENTNET_PARTS:
        return None
    stage, block, module, leaf = int(match[1]), int(match[2]), match[3], match[4]
    first_of_stage = min(int(k.split(".")[3]) for k in keys if k.startswith(f"net._blocks.{stage}."))
    offset, name = _EFFICIENTNET_PARTS[module]
    expands = any(k.startswith(f"net._blocks.{stage}.{block}._expand_conv.") for k in keys)
    return f"features.{stage + 1}.{block - first_of_stage}.block.{offset - (0 if expands else 1)}.{name}.{leaf}"


EFFICIENTNET = EncoderLayout("efficientnet", _efficientnet_to_canonical)


# --------------------------------------------------------------------------- ViT and Swin


_VIT_BLOCK = {"norm1": "ln_1", "norm2": "ln_2", "attn.out_proj": "self_attention.out_proj", "mlp.linear1": "mlp.0",
              "mlp.linear2": "mlp.3"}
VIT = EncoderLayout("vit", renamed([
    (r"net\.cls_token", "class_token"),
    (r"net\.patch_embedding\.patch_embeddings\.(weight|bias)", r"conv_proj.\1"),
    (r"net\.patch_embedding\.position_embeddings", "encoder.pos_embedding"),
    (r"net\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.encoder_layer_\1.self_attention.in_proj_\2"),
    *[(rf"net\.blocks\.(\d+)\.{re.escape(ours)}\.(weight|bias)", rf"encoder.layers.encoder_layer_\1.{theirs}.\2")
      for ours, theirs in _VIT_BLOCK.items()],
    (r"net\.norm\.(weight|bias)", r"encoder.ln.\1"),
]))


def _swin_to_canonical(key: str, keys: Collection[str]) -> str | None:
    """MONAI ``SwinTransformer`` (``backbone.layers<s>.0.blocks`` / ``.downsample`` at the end of stage s) ->
    torchvision ``swin_t`` (``features.<2s - 1>`` blocks, ``features.<2s>`` patch merging)."""
    if key.endswith("relative_position_index"):  # a constant recomputed by both libraries, not a weight
        return None
    rules = [(r"backbone\.patch_embed\.proj\.(.+)", lambda m: f"features.0.0.{m[1]}"),
             (r"backbone\.patch_embed\.norm\.(.+)", lambda m: f"features.0.2.{m[1]}"),
             (r"backbone\.layers(\d)\.0\.blocks\.(\d+)\.(.+)",
              lambda m: f"features.{2 * int(m[1]) - 1}.{m[2]}.{m[3].replace('mlp.linear1', 'mlp.0').replace('mlp.linear2', 'mlp.3')}"),
             (r"backbone\.layers(\d)\.0\.downsample\.(.+)", lambda m: f"features.{2 * int(m[1])}.{m[2]}"),
             (r"norm\.(weight|bias)", lambda m: f"norm.{m[1]}")]
    return _first_rule(rules, key)


SWIN = EncoderLayout("swin", _swin_to_canonical)


# --------------------------------------------------------------------------- timm -> torchvision names


_TIMM_VIT = renamed([
    (r"cls_token", "class_token"), (r"pos_embed", "encoder.pos_embedding"),
    (r"patch_embed\.proj\.(.+)", r"conv_proj.\1"),
    (r"blocks\.(\d+)\.norm1\.(.+)", r"encoder.layers.encoder_layer_\1.ln_1.\2"),
    (r"blocks\.(\d+)\.norm2\.(.+)", r"encoder.layers.encoder_layer_\1.ln_2.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.encoder_layer_\1.self_attention.in_proj_\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(.+)", r"encoder.layers.encoder_layer_\1.self_attention.out_proj.\2"),
    (r"blocks\.(\d+)\.mlp\.fc1\.(.+)", r"encoder.layers.encoder_layer_\1.mlp.0.\2"),
    (r"blocks\.(\d+)\.mlp\.fc2\.(.+)", r"encoder.layers.encoder_layer_\1.mlp.3.\2"),
    (r"norm\.(.+)", r"encoder.ln.\1"), (r"head\.(.+)", r"heads.head.\1"),
])


def _timm_swin(key: str, keys: Collection[str]) -> str | None:
    """timm >= 0.9 puts each patch merging at the start of the next stage (``layers.<s>.downsample``)."""
    rules = [(r"patch_embed\.proj\.(.+)", lambda m: f"features.0.0.{m[1]}"),
             (r"patch_embed\.norm\.(.+)", lambda m: f"features.0.2.{m[1]}"),
             (r"layers\.(\d)\.blocks\.(\d+)\.(.+)",
              lambda m: f"features.{2 * int(m[1]) + 1}.{m[2]}.{m[3].replace('mlp.fc1', 'mlp.0').replace('mlp.fc2', 'mlp.3')}"),
             (r"layers\.(\d)\.downsample\.(.+)", lambda m: f"features.{2 * int(m[1])}.{m[2]}"),
             (r"norm\.(.+)", lambda m: f"norm.{m[1]}"), (r"head\.fc\.(.+)", lambda m: f"head.{m[1]}")]
    return _first_rule(rules, key)


_TIMM_TO_CANONICAL: dict[str, Mapper] = {
    "resnet": lambda key, keys: key,  # timm's ResNets use torchvision's names
    "vit": _TIMM_VIT,
    "swin": _timm_swin,
}


def timm_to_canonical(family: str, keys: Collection[str]) -> dict[str, str]:
    """timm key -> torchvision key for the families whose timm checkpoints busflow reads."""
    if family not in _TIMM_TO_CANONICAL:
        raise ValueError(f"no timm layout for the {family} family; timm layouts: {', '.join(sorted(_TIMM_TO_CANONICAL))}")
    mapper, names = _TIMM_TO_CANONICAL[family], list(keys)
    mapped = {key: mapper(key, names) for key in names}
    return {key: name for key, name in mapped.items() if name is not None}
