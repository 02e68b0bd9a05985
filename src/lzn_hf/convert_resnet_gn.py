"""Convert upstream LZN case-study-2 ResNet-GN checkpoints to :class:`~lzn_hf.resnet_gn.ResNetGNEncoder`.

Upstream layout (keys as stored start with ``model.module.``, which this module strips)::

    net.0.0.weight                         stem conv            -> stem.conv.weight
    net.0.1.0.{weight,bias}                stem GroupNorm       -> stem.norm.*
    net.{s+1}.blocks.{b}.projection.shortcut.weight             -> stages.{s}.blocks.{b}.shortcut.conv.weight
    net.{s+1}.blocks.{b}.projection.bn.0.{weight,bias}          -> stages.{s}.blocks.{b}.shortcut.norm.*
    net.{s+1}.blocks.{b}.net.{0,2,4}.weight        convs 1-3    -> stages.{s}.blocks.{b}.conv{1,2,3}.weight
    net.{s+1}.blocks.{b}.net.{1,3,5}.0.{weight,bias}  GNs 1-3   -> stages.{s}.blocks.{b}.norm{1,2,3}.*
    head.layers.{3i}.weight                head Linear i        -> head.linears.{i}.weight
    head.layers.{3i+1}.{weight,bias}       head GroupNorm i     -> head.norms.{i}.*

(head index ``3i + 2`` is a parameter-free ReLU). The mapping is not hand-written: it is derived by
walking the target module in upstream order (:func:`upstream_resnet_keys`), which is also the
upstream ``parameters()`` order, i.e. the order of the unnamed EMA ``shadow_params`` list.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .resnet_gn import ResNetGNEncoder

__all__ = [
    "UPSTREAM_PREFIX",
    "strip_upstream_prefix",
    "upstream_resnet_keys",
    "convert_resnet_state_dict",
    "resnet_state_dict_from_ema",
    "convert_resnet_checkpoint",
]

#: Prefix of every key in the upstream state dicts (outer wrapper ``.model`` -> DDP ``.module``).
UPSTREAM_PREFIX = "model.module."

_MAX_LISTED = 20


def _leaf_pairs(module: ResNetGNEncoder) -> Iterator[Tuple[str, str, nn.Module]]:
    """Yield ``(upstream_prefix, local_prefix, leaf_module)`` for every parameterised leaf, in upstream order."""
    yield "net.0.0.", "stem.conv.", module.stem.conv
    yield "net.0.1.0.", "stem.norm.", module.stem.norm
    for s, stage in enumerate(module.stages):
        for b, block in enumerate(stage.blocks):
            up = f"net.{s + 1}.blocks.{b}."
            loc = f"stages.{s}.blocks.{b}."
            if block.shortcut is not None:
                yield up + "projection.shortcut.", loc + "shortcut.conv.", block.shortcut.conv
                yield up + "projection.bn.0.", loc + "shortcut.norm.", block.shortcut.norm
            for j, (conv, norm) in enumerate(
                ((block.conv1, block.norm1), (block.conv2, block.norm2), (block.conv3, block.norm3))
            ):
                yield f"{up}net.{2 * j}.", f"{loc}conv{j + 1}.", conv
                yield f"{up}net.{2 * j + 1}.0.", f"{loc}norm{j + 1}.", norm
    for i, (linear, norm) in enumerate(zip(module.head.linears, module.head.norms)):
        yield f"head.layers.{3 * i}.", f"head.linears.{i}.", linear
        yield f"head.layers.{3 * i + 1}.", f"head.norms.{i}.", norm


def upstream_resnet_keys(module: ResNetGNEncoder) -> List[Tuple[str, str]]:
    """``[(upstream_key, local_key), ...]`` for every parameter, in upstream ``parameters()`` order.

    Upstream keys are given without the ``model.module.`` prefix. The list covers every entry of
    ``module.state_dict()`` exactly once (the model has no buffers).
    """
    pairs: List[Tuple[str, str]] = []
    for up_prefix, loc_prefix, leaf in _leaf_pairs(module):
        for name, _ in leaf.named_parameters(recurse=False):
            pairs.append((up_prefix + name, loc_prefix + name))
    local_keys = set(module.state_dict().keys())
    mapped = {loc for _, loc in pairs}
    if mapped != local_keys or len(mapped) != len(pairs):  # internal consistency guard
        raise RuntimeError(
            "upstream key walk does not cover the module: "
            f"unmapped={sorted(local_keys - mapped)}, spurious={sorted(mapped - local_keys)}"
        )
    return pairs


def strip_upstream_prefix(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Remove the ``model.module.`` (or ``module.``) wrapper prefix if every key carries it."""
    for prefix in (UPSTREAM_PREFIX, "module."):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _fmt(keys: Sequence[str]) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"{len(keys)} [{shown}{more}]"


def _cast(tensor: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    tensor = torch.as_tensor(tensor).detach()
    if dtype is not None and tensor.is_floating_point():
        # copy=True: the fixture's raw and EMA tensors may share storage; never alias them.
        return tensor.to(dtype=dtype, copy=True)
    return tensor.clone()


def convert_resnet_state_dict(
    upstream_sd: Mapping[str, torch.Tensor],
    module: ResNetGNEncoder,
    dtype: Optional[torch.dtype] = torch.float32,
) -> Dict[str, torch.Tensor]:
    """Map an upstream encoder state dict to ``module``'s state-dict keys.

    Args:
        upstream_sd: upstream ``encoder`` state dict, keys with or without ``model.module.``.
        module: the target :class:`ResNetGNEncoder` (used for key names and shapes only).
        dtype: floating tensors are cast (and copied) to this dtype (float16 fixture -> float32);
            ``None`` keeps the stored dtype.

    Returns:
        A dict loadable with ``module.load_state_dict(..., strict=True)``.

    Raises:
        ValueError: listing missing keys, unexpected keys and shape mismatches.
    """
    sd = strip_upstream_prefix(upstream_sd)
    pairs = upstream_resnet_keys(module)
    expected_shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = [up for up, _ in pairs if up not in sd]
    unexpected = sorted(set(sd) - {up for up, _ in pairs})
    mismatched = [
        f"{up}: checkpoint {tuple(sd[up].shape)} vs model {expected_shapes[loc]} ({loc})"
        for up, loc in pairs
        if up in sd and tuple(sd[up].shape) != expected_shapes[loc]
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_fmt(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {_fmt(mismatched)}")
        raise ValueError("upstream ResNet-GN state dict does not match the model; " + "; ".join(parts))
    return {loc: _cast(sd[up], dtype) for up, loc in pairs}


def resnet_state_dict_from_ema(
    ema_entry: Union[Mapping[str, Any], Sequence[torch.Tensor]],
    module: ResNetGNEncoder,
    dtype: Optional[torch.dtype] = torch.float32,
) -> Dict[str, torch.Tensor]:
    """State dict for ``module`` from an upstream EMA entry.

    Args:
        ema_entry: ``{"decay", "num_updates", "shadow_params"}`` (``shadow_params`` an unnamed list in
            upstream ``parameters()`` order) or the list itself. Every ResNet-GN parameter is trainable
            upstream, so the list has one tensor per state-dict key.
        module: target :class:`ResNetGNEncoder`.
        dtype: as in :func:`convert_resnet_state_dict`.

    Raises:
        ValueError: on a length mismatch or a shape mismatch (naming the key each shadow maps to).
    """
    if isinstance(ema_entry, Mapping):
        if "shadow_params" not in ema_entry:
            raise ValueError(f"EMA entry has no 'shadow_params' (keys: {sorted(ema_entry)})")
        shadow = list(ema_entry["shadow_params"])
    else:
        shadow = list(ema_entry)
    pairs = upstream_resnet_keys(module)
    if len(shadow) != len(pairs):
        raise ValueError(
            f"EMA shadow_params holds {len(shadow)} tensors but the model has {len(pairs)} parameters "
            f"(depths={module.depths}, width_multiplier={module.width_multiplier}, "
            f"head_num_layers={module.head_num_layers})"
        )
    named = {up: tensor for (up, _), tensor in zip(pairs, shadow)}
    return convert_resnet_state_dict(named, module, dtype=dtype)


def convert_resnet_checkpoint(
    checkpoint: Mapping[str, Any],
    module: ResNetGNEncoder,
    use_ema: bool = True,
    dtype: Optional[torch.dtype] = torch.float32,
) -> Dict[str, torch.Tensor]:
    """State dict from a whole upstream checkpoint dict (``encoder`` / ``encoder_ema`` entries)."""
    key = "encoder_ema" if use_ema else "encoder"
    if key not in checkpoint:
        raise ValueError(f"checkpoint has no {key!r} entry (keys: {list(checkpoint)})")
    if use_ema:
        return resnet_state_dict_from_ema(checkpoint[key], module, dtype=dtype)
    return convert_resnet_state_dict(checkpoint[key], module, dtype=dtype)
