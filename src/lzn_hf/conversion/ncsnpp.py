"""NCSN++ encoder and decoder: which upstream key is which :mod:`lzn_hf.ncsnpp` key, and the config from upstream's.

Upstream keeps every layer of its NCSN++ networks in one flat ``nn.ModuleList`` called ``all_modules`` (plus, in the
encoder, ``spatial_transformations`` / ``latent_transformations`` for the latent heads), so its parameter names are
positional: ``all_modules.17.NIN_2.W``. The mapping is not a hand-written table: :func:`encoder_key_mapping` /
:func:`decoder_key_mapping` walk the lzn_hf network in upstream *registration order* and number the blocks as upstream
does, so the upstream key list (and its order, which is also the order of the nameless EMA ``shadow_params`` list)
follows from the architecture itself.

Upstream layouts (keys as stored start with ``model.module.``):

* encoder: ``spatial_transformations.{slot}.0`` (1x1 conv of head ``slot``), then
  ``latent_transformations.{slot}.{2 i}`` (Linear ``i`` of that head), then ``all_modules.*``
  (stem conv, per level: res[, attn] x n, down-res[, combine], then mid res, attn, res).
* decoder: buffer ``sigmas`` (float64, unused, dropped), ``all_modules.*``: [Fourier ``W``],
  2 embedding Linears, stem conv, the down path as above, mid, per up level: res x (n + 1)[, attn]
  [, GroupNorm, conv3x3 (output skip)][, up-res], then [GroupNorm, conv3x3] unless output skip.
* Inside blocks: BigGAN res-block ``GroupNorm_0, Conv_0, Dense_0, GroupNorm_1, Conv_1, Conv_2``;
  attention ``GroupNorm_0, NIN_0..3`` where ``NIN_k.W`` is ``[in, out]`` (transposed relative to
  ``nn.Linear.weight``) and ``NIN_k.b`` the bias; input-skip combiner ``Conv_0``.
* EMA entries: ``shadow_params`` lists the upstream parameters in registration order, without the frozen Fourier
  ``W`` (taken from the raw state dict).

Config: upstream's NCSN++ ``model`` block uses the names lzn_hf's configs use (``nf``, ``ch_mult``, ...), so the
fields are read from the config classes (:mod:`lzn_hf.configuration_lzn`), never listed here; only the encoder
heads, which upstream configures under other names, are renamed (:data:`UPSTREAM_HEAD_NAMES`).
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple, Type

from torch import nn
from transformers import PreTrainedConfig

from ..configuration_lzn import LZNImageDecoderConfig, LZNImageEncoderConfig
from ..ncsnpp import (
    AttnBlock,
    ConditionEmbedding,
    GaussianFourierProjection,
    InputSkipCombine,
    LatentHead,
    NCSNppDecoder,
    NCSNppDownLevel,
    NCSNppEncoder,
    NCSNppMidBlock,
    ResnetBlockBigGAN,
)
from .mapping import KeyMapping

__all__ = [
    "encoder_key_mapping",
    "decoder_key_mapping",
    "DROPPED_DECODER_KEYS",
    "UPSTREAM_HEAD_NAMES",
    "encoder_config_from_upstream",
    "decoder_config_from_upstream",
]

#: Upstream decoder buffer that lzn_hf does not keep (geometric noise scales, unused by LZN's rectified flow).
DROPPED_DECODER_KEYS = ("sigmas",)

# Upstream child names of each block type, in upstream registration order -> lzn_hf attribute names.
_RESNET_CHILDREN = (
    ("GroupNorm_0", "norm1"),
    ("Conv_0", "conv1"),
    ("Dense_0", "time_emb_proj"),
    ("GroupNorm_1", "norm2"),
    ("Conv_1", "conv2"),
    ("Conv_2", "conv_shortcut"),
)
_ATTN_CHILDREN = (
    ("GroupNorm_0", "norm"),
    ("NIN_0", "to_q"),
    ("NIN_1", "to_k"),
    ("NIN_2", "to_v"),
    ("NIN_3", "to_out"),
)
_COMBINE_CHILDREN = (("Conv_0", "conv"),)


def _leaf_params(upstream_prefix: str, local_prefix: str, layer: nn.Module) -> List[KeyMapping]:
    """weight/bias of a Conv2d / Linear / GroupNorm, registration order."""
    return [
        KeyMapping(f"{upstream_prefix}.{name}", f"{local_prefix}.{name}")
        for name, _ in layer.named_parameters(recurse=False)
    ]


def _nin_params(upstream_prefix: str, local_prefix: str) -> List[KeyMapping]:
    """Upstream ``NIN`` (``W`` [in, out], ``b``) <-> ``nn.Linear`` (weight [out, in], bias)."""
    return [
        KeyMapping(f"{upstream_prefix}.W", f"{local_prefix}.weight", transpose=True),
        KeyMapping(f"{upstream_prefix}.b", f"{local_prefix}.bias"),
    ]


def _block_params(upstream_prefix: str, local_prefix: str, block: nn.Module) -> List[KeyMapping]:
    """Parameters of one upstream ``all_modules`` entry, in upstream order."""
    if isinstance(block, ResnetBlockBigGAN):
        children = _RESNET_CHILDREN
    elif isinstance(block, AttnBlock):
        children = _ATTN_CHILDREN
    elif isinstance(block, InputSkipCombine):
        children = _COMBINE_CHILDREN
    elif isinstance(block, GaussianFourierProjection):
        return [KeyMapping(f"{upstream_prefix}.W", f"{local_prefix}.W", frozen=True)]
    elif isinstance(block, (nn.Conv2d, nn.Linear, nn.GroupNorm)):
        return _leaf_params(upstream_prefix, local_prefix, block)
    else:
        raise TypeError(f"no upstream layout known for {type(block).__name__} at {local_prefix}")
    mappings = []
    for upstream_name, local_name in children:
        child = getattr(block, local_name)
        if child is None:
            continue
        if isinstance(block, AttnBlock) and upstream_name.startswith("NIN"):
            mappings += _nin_params(f"{upstream_prefix}.{upstream_name}", f"{local_prefix}.{local_name}")
        else:
            mappings += _leaf_params(f"{upstream_prefix}.{upstream_name}", f"{local_prefix}.{local_name}", child)
    return mappings


def _down_path_modules(down_blocks: nn.ModuleList) -> Iterator[Tuple[str, nn.Module]]:
    """(local name, module) of the down path, in upstream order (res, attn interleaved; down; combine)."""
    for level, block in enumerate(down_blocks):
        assert isinstance(block, NCSNppDownLevel)
        for i, resnet in enumerate(block.resnets):
            yield f"down_blocks.{level}.resnets.{i}", resnet
            if block.attentions is not None:
                yield f"down_blocks.{level}.attentions.{i}", block.attentions[i]
        if block.downsample is not None:
            yield f"down_blocks.{level}.downsample", block.downsample
        if block.input_skip is not None:
            yield f"down_blocks.{level}.input_skip", block.input_skip


def _mid_modules(mid_block: NCSNppMidBlock) -> Iterator[Tuple[str, nn.Module]]:
    yield "mid_block.resnet_1", mid_block.resnet_1
    yield "mid_block.attention", mid_block.attention
    yield "mid_block.resnet_2", mid_block.resnet_2


def _number(modules: Sequence[Tuple[str, nn.Module]], upstream_list: str = "all_modules") -> List[KeyMapping]:
    mappings = []
    for index, (local_prefix, module) in enumerate(modules):
        mappings += _block_params(f"{upstream_list}.{index}", local_prefix, module)
    return mappings


def encoder_key_mapping(module: NCSNppEncoder) -> List[KeyMapping]:
    """Every encoder parameter, in upstream state-dict (= ``parameters()`` = EMA) order."""
    if not isinstance(module, NCSNppEncoder):
        raise TypeError(f"expected an NCSNppEncoder, got {type(module).__name__}")
    mappings: List[KeyMapping] = []
    for j, (slot, head) in enumerate(zip(module.head_feature_indices, module.heads)):
        assert isinstance(head, LatentHead)
        mappings += _leaf_params(f"spatial_transformations.{slot}.0", f"heads.{j}.conv", head.conv)
    for j, (slot, head) in enumerate(zip(module.head_feature_indices, module.heads)):
        for i, layer in enumerate(head.layers):
            mappings += _leaf_params(f"latent_transformations.{slot}.{2 * i}", f"heads.{j}.layers.{i}", layer)
    trunk = [("conv_in", module.conv_in)]
    trunk += list(_down_path_modules(module.down_blocks))
    trunk += list(_mid_modules(module.mid_block))
    mappings += _number(trunk)
    return mappings


def decoder_key_mapping(module: NCSNppDecoder) -> List[KeyMapping]:
    """Every decoder parameter, in upstream ``parameters()`` order (the ``sigmas`` buffer is not listed)."""
    if not isinstance(module, NCSNppDecoder):
        raise TypeError(f"expected an NCSNppDecoder, got {type(module).__name__}")
    modules: List[Tuple[str, nn.Module]] = []
    if module.time_proj is not None:
        modules.append(("time_proj", module.time_proj))
    assert isinstance(module.cond_embedding, ConditionEmbedding)
    modules.append(("cond_embedding.linear_1", module.cond_embedding.linear_1))
    modules.append(("cond_embedding.linear_2", module.cond_embedding.linear_2))
    modules.append(("conv_in", module.conv_in))
    modules += list(_down_path_modules(module.down_blocks))
    modules += list(_mid_modules(module.mid_block))
    for level, block in enumerate(module.up_blocks):
        for i, resnet in enumerate(block.resnets):
            modules.append((f"up_blocks.{level}.resnets.{i}", resnet))
        if block.attention is not None:
            modules.append((f"up_blocks.{level}.attention", block.attention))
        if block.output_skip_conv is not None:
            modules.append((f"up_blocks.{level}.output_skip_norm", block.output_skip_norm))
            modules.append((f"up_blocks.{level}.output_skip_conv", block.output_skip_conv))
        if block.upsample is not None:
            modules.append((f"up_blocks.{level}.upsample", block.upsample))
    if module.conv_out is not None:
        modules.append(("norm_out", module.norm_out))
        modules.append(("conv_out", module.conv_out))
    return _number(modules)


# --------------------------------------------------------------------------------------------------
# Upstream config -> lzn_hf config fields
# --------------------------------------------------------------------------------------------------

#: Upstream's encoder-head settings (its ``encoder.params``) -> the lzn_hf encoder config fields they set.
UPSTREAM_HEAD_NAMES = {
    "num_base_channels": "head_channels",
    "num_base_units": "head_hidden_dim",
    "num_latent_transformation_layers": "head_num_layers",
    "latent_transformation_resolutions": "head_resolutions",
}
# Fields the caller passes explicitly (sizes of the data, the latent, the labels), not NCSN++ settings.
_GIVEN_FIELDS = ("encoder_type", "image_size", "num_channels", "latent_dim", "num_classes")


def _check_upstream_model_block(model_block: Mapping[str, Any]) -> None:
    """Upstream settings with no lzn_hf field: only their one supported value is accepted."""
    for name, supported in (("nonlinearity", "swish"), ("normalization", "GroupNorm"), ("attention_type", "ddpm"), ("conditional", True)):
        value = model_block.get(name, supported)
        if (value.lower() if name == "nonlinearity" and isinstance(value, str) else value) != supported:
            raise ValueError(f"the upstream NCSN++ config has {name}={value!r}; lzn_hf supports only {supported!r}")


def _ncsnpp_fields(config_class: Type[PreTrainedConfig], upstream: Mapping[str, Any], **config_kwargs) -> Dict[str, Any]:
    """The NCSN++ fields ``config_class`` declares, read from ``upstream``; an int where the field's default is a
    float becomes a float (upstream writes ``fourier_scale = 16``)."""
    base = PreTrainedConfig().to_dict()
    defaults = {name: value for name, value in config_class(**config_kwargs).to_dict().items() if name not in base and name not in _GIVEN_FIELDS}
    lacking = [name for name in defaults if name not in upstream]
    if lacking:
        raise ValueError(f"the upstream NCSN++ config lacks the settings {lacking}")
    return {
        name: float(upstream[name]) if isinstance(default, float) and type(upstream[name]) is int else upstream[name]
        for name, default in defaults.items()
    }


def encoder_config_from_upstream(
    model_block: Mapping[str, Any], heads: Mapping[str, Any], *, image_size: int, num_channels: int, latent_dim: int
) -> Dict[str, Any]:
    """:class:`~lzn_hf.LZNImageEncoderConfig` kwargs from upstream's NCSN++ ``model`` block and encoder-head settings
    (``num_base_channels``, ``num_base_units``, ``num_latent_transformation_layers``,
    ``latent_transformation_resolutions``).

    Raises:
        ValueError: on an upstream setting lzn_hf does not implement, or a missing one.
    """
    _check_upstream_model_block(model_block)
    renamed = {field: heads[name] for name, field in UPSTREAM_HEAD_NAMES.items() if name in heads}
    fields = _ncsnpp_fields(LZNImageEncoderConfig, {**model_block, **renamed}, encoder_type="ncsnpp")
    return {"encoder_type": "ncsnpp", "image_size": image_size, "num_channels": num_channels, "latent_dim": latent_dim, **fields}


def decoder_config_from_upstream(
    model_block: Mapping[str, Any], *, image_size: int, num_channels: int, latent_dim: int, num_classes: int = 0
) -> Dict[str, Any]:
    """:class:`~lzn_hf.LZNImageDecoderConfig` kwargs from upstream's NCSN++ ``model`` block.

    Raises:
        ValueError: on an upstream setting lzn_hf does not implement, or a missing one.
    """
    _check_upstream_model_block(model_block)
    fields = _ncsnpp_fields(LZNImageDecoderConfig, model_block)
    return {"image_size": image_size, "num_channels": num_channels, "latent_dim": latent_dim, "num_classes": num_classes, **fields}
