"""Convert upstream LZN NCSN++ encoder/decoder weights to :mod:`lzn_hf.ncsnpp` modules (and back).

Upstream keeps every layer of its NCSN++ networks in one flat ``nn.ModuleList`` called
``all_modules`` (plus, in the encoder, ``spatial_transformations`` / ``latent_transformations`` for
the latent heads), so its parameter names are positional: ``all_modules.17.NIN_2.W``. The mapping is
not a hand-written table: :func:`encoder_key_mapping` / :func:`decoder_key_mapping` walk the lzn_hf
module in upstream *registration order* and number the blocks as upstream does, so the upstream key
list (and its order, which is also the order of the nameless EMA ``shadow_params`` list) follows from
the architecture itself.

Upstream layouts (``P`` = ``model.module.`` as stored in checkpoints; accepted with or without it):

* encoder: ``spatial_transformations.{slot}.0`` (1x1 conv of head ``slot``), then
  ``latent_transformations.{slot}.{2 i}`` (Linear ``i`` of that head), then ``all_modules.*``
  (stem conv, per level: res[, attn] x n, down-res[, combine], then mid res, attn, res).
* decoder: buffer ``sigmas`` (float64, unused, dropped), ``all_modules.*``: [Fourier ``W``],
  2 embedding Linears, stem conv, the down path as above, mid, per up level: res x (n + 1)[, attn]
  [, GroupNorm, conv3x3 (output skip)][, up-res], then [GroupNorm, conv3x3] unless output skip.
* Inside blocks: BigGAN res-block ``GroupNorm_0, Conv_0, Dense_0, GroupNorm_1, Conv_1, Conv_2``;
  attention ``GroupNorm_0, NIN_0..3`` where ``NIN_k.W`` is ``[in, out]`` (transposed relative to
  ``nn.Linear.weight``) and ``NIN_k.b`` the bias; input-skip combiner ``Conv_0``.
* EMA entries ``{"decay", "num_updates", "shadow_params"}``: ``shadow_params`` lists the upstream
  parameters in registration order, excluding the frozen Fourier ``W`` (taken from the raw state dict).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .ncsnpp import (
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

__all__ = [
    "UPSTREAM_PREFIX",
    "KeyMapping",
    "encoder_key_mapping",
    "decoder_key_mapping",
    "upstream_encoder_keys",
    "upstream_decoder_keys",
    "upstream_encoder_ema_keys",
    "upstream_decoder_ema_keys",
    "strip_upstream_prefix",
    "convert_encoder_state_dict",
    "convert_decoder_state_dict",
    "encoder_state_dict_from_ema",
    "decoder_state_dict_from_ema",
    "encoder_state_dict_to_upstream",
    "decoder_state_dict_to_upstream",
    "upstream_sigmas",
    "encoder_kwargs_from_upstream",
    "decoder_kwargs_from_upstream",
]

#: Prefix of every key in upstream checkpoints (outer wrapper ``.model`` -> DDP ``.module``).
UPSTREAM_PREFIX = "model.module."
_KNOWN_PREFIXES = ("model.module.", "module.")
#: Upstream decoder buffer that lzn_hf does not keep (geometric noise scales, unused by LZN configs).
_DROPPED_DECODER_KEYS = ("sigmas",)

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


@dataclass(frozen=True)
class KeyMapping:
    """One tensor: upstream key (no prefix) <-> lzn_hf state-dict key.

    ``transpose``: upstream stores the transpose (NIN ``W`` [in, out] vs ``nn.Linear.weight`` [out, in]).
    ``frozen``: not in upstream's EMA ``shadow_params`` (the Fourier ``W``).
    """

    upstream_key: str
    local_key: str
    transpose: bool = False
    frozen: bool = False


# --------------------------------------------------------------------------------------------------
# Structural walk
# --------------------------------------------------------------------------------------------------


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


def upstream_encoder_keys(module: NCSNppEncoder, prefix: str = "") -> List[str]:
    """Upstream encoder state-dict keys, in order (``prefix`` e.g. :data:`UPSTREAM_PREFIX`)."""
    return [prefix + m.upstream_key for m in encoder_key_mapping(module)]


def upstream_decoder_keys(module: NCSNppDecoder, prefix: str = "", include_sigmas: bool = False) -> List[str]:
    """Upstream decoder state-dict keys, in order; ``include_sigmas`` adds the leading ``sigmas`` buffer."""
    keys = [prefix + m.upstream_key for m in decoder_key_mapping(module)]
    return ([prefix + "sigmas"] if include_sigmas else []) + keys


def upstream_encoder_ema_keys(module: NCSNppEncoder, prefix: str = "") -> List[str]:
    """Upstream key of each entry of the encoder EMA ``shadow_params`` list."""
    return [prefix + m.upstream_key for m in encoder_key_mapping(module) if not m.frozen]


def upstream_decoder_ema_keys(module: NCSNppDecoder, prefix: str = "") -> List[str]:
    """Upstream key of each entry of the decoder EMA ``shadow_params`` list (no Fourier ``W``)."""
    return [prefix + m.upstream_key for m in decoder_key_mapping(module) if not m.frozen]


# --------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------


def strip_upstream_prefix(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Remove the ``model.module.`` (or ``module.``) prefix; all keys must share it (or none has one)."""
    keys = list(state_dict)
    for prefix in _KNOWN_PREFIXES:
        with_prefix = [k for k in keys if k.startswith(prefix)]
        if with_prefix and len(with_prefix) == len(keys):
            return OrderedDict((k[len(prefix) :], v) for k, v in state_dict.items())
        if with_prefix:
            other = [k for k in keys if not k.startswith(prefix)]
            raise ValueError(
                f"mixed key prefixes: {len(with_prefix)} keys start with {prefix!r} but {len(other)} do not "
                f"(e.g. {other[:3]})"
            )
    return OrderedDict(state_dict)


def _format_problems(what: str, missing: List[str], unexpected: List[str], shapes: List[str]) -> str:
    lines = [f"cannot convert the upstream {what} state dict:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {missing}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {unexpected}")
    if shapes:
        lines.append(f"  shape mismatches ({len(shapes)}): {shapes}")
    return "\n".join(lines)


def _convert(
    what: str,
    upstream_state_dict: Mapping[str, torch.Tensor],
    module: nn.Module,
    mappings: List[KeyMapping],
    droppable: Sequence[str] = (),
) -> "OrderedDict[str, torch.Tensor]":
    source = strip_upstream_prefix(upstream_state_dict)
    target_shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    expected = {m.upstream_key for m in mappings}
    missing = [m.upstream_key for m in mappings if m.upstream_key not in source]
    unexpected = [k for k in source if k not in expected and k not in droppable]
    shape_errors = []
    converted: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for m in mappings:
        if m.upstream_key not in source:
            continue
        tensor = source[m.upstream_key]
        if m.transpose:
            if tensor.dim() != 2:
                shape_errors.append(f"{m.upstream_key}: expected a 2-D NIN weight, got {tuple(tensor.shape)}")
                continue
            tensor = tensor.t()
        want = target_shapes.get(m.local_key)
        if tuple(tensor.shape) != want:
            shown = tuple(tensor.t().shape) if m.transpose else tuple(tensor.shape)
            expected_shape = tuple(reversed(want)) if (m.transpose and want is not None) else want
            shape_errors.append(f"{m.upstream_key}: checkpoint {shown} vs model {expected_shape}")
            continue
        converted[m.local_key] = tensor
    if missing or unexpected or shape_errors:
        raise ValueError(_format_problems(what, missing, unexpected, shape_errors))
    # back-check: the mapping covers the module's state dict exactly
    local_missing = sorted(set(target_shapes) - set(converted))
    local_extra = sorted(set(converted) - set(target_shapes))
    if local_missing or local_extra:
        raise ValueError(
            f"internal {what} mapping error: module keys not produced {local_missing}, "
            f"produced but unknown {local_extra}"
        )
    return OrderedDict((k, converted[k]) for k in target_shapes)


def convert_encoder_state_dict(
    upstream_state_dict: Mapping[str, torch.Tensor], module: NCSNppEncoder
) -> "OrderedDict[str, torch.Tensor]":
    """Upstream encoder state dict (prefixed or not) -> ``module.load_state_dict``-ready dict.

    Raises ``ValueError`` listing missing / unexpected keys and shape mismatches.
    """
    return _convert("encoder", upstream_state_dict, module, encoder_key_mapping(module))


def convert_decoder_state_dict(
    upstream_state_dict: Mapping[str, torch.Tensor], module: NCSNppDecoder
) -> "OrderedDict[str, torch.Tensor]":
    """Upstream decoder state dict (prefixed or not) -> ``module.load_state_dict``-ready dict.

    The float64 ``sigmas`` buffer is accepted and dropped. Raises ``ValueError`` on any mismatch.
    """
    return _convert(
        "decoder", upstream_state_dict, module, decoder_key_mapping(module), droppable=_DROPPED_DECODER_KEYS
    )


def _ema_to_upstream_state_dict(
    what: str,
    ema_entry: Mapping[str, Any],
    raw_upstream_state_dict: Optional[Mapping[str, torch.Tensor]],
    mappings: List[KeyMapping],
) -> "OrderedDict[str, torch.Tensor]":
    if not isinstance(ema_entry, Mapping) or "shadow_params" not in ema_entry:
        raise ValueError(f"{what} EMA entry must be a dict with 'shadow_params', got {type(ema_entry).__name__}")
    shadow = list(ema_entry["shadow_params"])
    ema_keys = [m.upstream_key for m in mappings if not m.frozen]
    if len(shadow) != len(ema_keys):
        raise ValueError(
            f"{what} EMA holds {len(shadow)} shadow params but the model has {len(ema_keys)} trainable upstream "
            "parameters (was the EMA built for a different architecture?)"
        )
    state = OrderedDict()
    frozen = [m.upstream_key for m in mappings if m.frozen]
    raw = strip_upstream_prefix(raw_upstream_state_dict) if raw_upstream_state_dict is not None else {}
    missing_frozen = [k for k in frozen if k not in raw]
    if missing_frozen:
        raise ValueError(
            f"{what} EMA does not hold the frozen parameters {missing_frozen}; pass the raw upstream state dict"
        )
    shadow_iter = iter(shadow)
    for m in mappings:
        state[m.upstream_key] = raw[m.upstream_key] if m.frozen else next(shadow_iter)
    return state


def encoder_state_dict_from_ema(
    ema_entry: Mapping[str, Any],
    raw_upstream_state_dict: Optional[Mapping[str, torch.Tensor]],
    module: NCSNppEncoder,
) -> "OrderedDict[str, torch.Tensor]":
    """Upstream ``encoder_ema`` entry -> ``module.load_state_dict``-ready dict of the EMA weights.

    ``raw_upstream_state_dict`` is only needed for frozen parameters (the encoder has none).
    """
    mappings = encoder_key_mapping(module)
    upstream = _ema_to_upstream_state_dict("encoder", ema_entry, raw_upstream_state_dict, mappings)
    return _convert("encoder EMA", upstream, module, mappings)


def decoder_state_dict_from_ema(
    ema_entry: Mapping[str, Any],
    raw_upstream_state_dict: Optional[Mapping[str, torch.Tensor]],
    module: NCSNppDecoder,
) -> "OrderedDict[str, torch.Tensor]":
    """Upstream ``decoder_ema`` entry -> ``module.load_state_dict``-ready dict of the EMA weights.

    The frozen Fourier ``W`` is not in the EMA list and is taken from ``raw_upstream_state_dict``.
    """
    mappings = decoder_key_mapping(module)
    upstream = _ema_to_upstream_state_dict("decoder", ema_entry, raw_upstream_state_dict, mappings)
    return _convert("decoder EMA", upstream, module, mappings)


def _to_upstream(
    module: nn.Module, mappings: List[KeyMapping], prefix: str
) -> "OrderedDict[str, torch.Tensor]":
    local = module.state_dict()
    out = OrderedDict()
    for m in mappings:
        tensor = local[m.local_key]
        out[prefix + m.upstream_key] = tensor.t().contiguous() if m.transpose else tensor
    return out


def encoder_state_dict_to_upstream(
    module: NCSNppEncoder, prefix: str = UPSTREAM_PREFIX
) -> "OrderedDict[str, torch.Tensor]":
    """lzn_hf encoder -> upstream-layout state dict (keys in upstream order)."""
    return _to_upstream(module, encoder_key_mapping(module), prefix)


def decoder_state_dict_to_upstream(
    module: NCSNppDecoder, prefix: str = UPSTREAM_PREFIX, sigmas: Optional[torch.Tensor] = None
) -> "OrderedDict[str, torch.Tensor]":
    """lzn_hf decoder -> upstream-layout state dict; ``sigmas`` (see :func:`upstream_sigmas`) is put first if given."""
    body = _to_upstream(module, decoder_key_mapping(module), prefix)
    if sigmas is None:
        return body
    out = OrderedDict([(prefix + "sigmas", sigmas)])
    out.update(body)
    return out


def upstream_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> torch.Tensor:
    """The float64 geometric ``sigmas`` buffer upstream's decoder carries (unused by the forward pass)."""
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), num_scales, dtype=torch.float64))


# --------------------------------------------------------------------------------------------------
# Upstream config -> constructor kwargs
# --------------------------------------------------------------------------------------------------

_TRUNK_FIELDS = (
    "nf",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
    "dropout",
    "resamp_with_conv",
    "fir",
    "fir_kernel",
    "skip_rescale",
    "resblock_type",
    "progressive_input",
    "progressive_combine",
    "init_scale",
)


def _check_upstream_model_config(model_config: Mapping[str, Any]) -> None:
    if str(model_config.get("nonlinearity", "swish")).lower() != "swish":
        raise ValueError(f"only nonlinearity='swish' is supported, got {model_config['nonlinearity']!r}")
    if str(model_config.get("normalization", "GroupNorm")) != "GroupNorm":
        raise ValueError(f"only normalization='GroupNorm' is supported, got {model_config['normalization']!r}")
    if str(model_config.get("attention_type", "ddpm")) != "ddpm":
        raise ValueError(f"only attention_type='ddpm' is supported, got {model_config['attention_type']!r}")


def _trunk_kwargs(model_config: Mapping[str, Any]) -> Dict[str, Any]:
    _check_upstream_model_config(model_config)
    kwargs = {name: model_config[name] for name in _TRUNK_FIELDS}
    kwargs["ch_mult"] = tuple(kwargs["ch_mult"])
    kwargs["attn_resolutions"] = tuple(kwargs["attn_resolutions"])
    kwargs["fir_kernel"] = tuple(kwargs["fir_kernel"])
    return kwargs


def encoder_kwargs_from_upstream(
    model_config: Mapping[str, Any],
    *,
    image_size: int,
    num_channels: int,
    latent_dim: int,
    num_base_channels: int,
    num_base_units: int,
    num_latent_transformation_layers: int,
    latent_transformation_resolutions: Optional[Sequence[int]] = None,
) -> Dict[str, Any]:
    """:class:`NCSNppEncoder` kwargs from upstream's NCSN++ ``config.model`` block and encoder params."""
    kwargs = _trunk_kwargs(model_config)
    kwargs.update(
        image_size=image_size,
        in_channels=num_channels,
        head_channels=num_base_channels,
        head_hidden_dim=num_base_units,
        head_num_layers=num_latent_transformation_layers,
        head_resolutions=None
        if latent_transformation_resolutions is None
        else tuple(latent_transformation_resolutions),
        latent_dim=latent_dim,
    )
    return kwargs


def decoder_kwargs_from_upstream(
    model_config: Mapping[str, Any],
    *,
    image_size: int,
    num_channels: int,
    latent_dim: int,
    num_classes: int = 0,
) -> Dict[str, Any]:
    """:class:`NCSNppDecoder` kwargs from upstream's NCSN++ ``config.model`` block and decoder params."""
    if not model_config.get("conditional", True):
        raise ValueError("upstream decoders are always time-conditional (model.conditional=True)")
    kwargs = _trunk_kwargs(model_config)
    kwargs.update(
        image_size=image_size,
        in_channels=num_channels,
        progressive=model_config["progressive"],
        embedding_type=model_config["embedding_type"],
        fourier_scale=model_config["fourier_scale"],
        scale_by_sigma=model_config["scale_by_sigma"],
        latent_dim=latent_dim,
        num_classes=num_classes,
    )
    return kwargs
