"""What every architecture's conversion shares: the upstream key prefix, key-mapping records, turning an upstream
state dict or EMA list into a module's state dict, the dtype policy and the error messages.

An architecture module (:mod:`.ncsnpp`, :mod:`.resnet_gn`) only says which upstream key is which lzn_hf key, as a
list of :class:`KeyMapping` in upstream ``parameters()`` order; the functions here do the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence

import torch
from torch import nn

__all__ = [
    "UPSTREAM_PREFIX",
    "CONVERTED_DTYPE",
    "KeyMapping",
    "strip_upstream_prefix",
    "convert_state_dict",
    "state_dict_from_ema",
    "format_keys",
]

#: Prefix of every key in upstream checkpoints: the trainer's wrapper (attribute ``model``) around DDP (``module``).
UPSTREAM_PREFIX = "model.module."
#: Prefixes a state dict may carry: upstream's, or a bare DDP's.
_WRAPPER_PREFIXES = (UPSTREAM_PREFIX, "module.")
#: dtype of converted floating tensors (lzn_hf models are float32; the contrastive fixture stores float16).
CONVERTED_DTYPE = torch.float32
#: How many keys an error message lists before it says "+N more".
_MAX_LISTED = 20


@dataclass(frozen=True)
class KeyMapping:
    """One tensor: upstream key (without prefix) <-> lzn_hf state-dict key.

    ``transpose``: upstream stores the transpose (NCSN++ ``NIN.W`` is ``[in, out]``, ``nn.Linear.weight`` ``[out, in]``).
    ``frozen``: a parameter upstream's EMA list leaves out (``requires_grad=False``, the Fourier ``W``): EMA
    conversion takes it from the raw state dict.
    """

    upstream_key: str
    local_key: str
    transpose: bool = False
    frozen: bool = False


def format_keys(keys: Sequence[str]) -> str:
    """``"3: [a, b, c]"``, or the first 20 and ``"... (+N more)"``."""
    keys = list(keys)
    more = f", ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"{len(keys)}: [{', '.join(keys[:_MAX_LISTED])}{more}]"


def _checked_state_dict(what: str, state_dict: Any) -> Mapping[str, torch.Tensor]:
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"the upstream {what} entry should be a state dict (names -> tensors), got a {type(state_dict).__name__}")
    not_tensors = [str(key) for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"the upstream {what} state dict holds values that are not tensors at keys {format_keys(not_tensors)}")
    return state_dict


def strip_upstream_prefix(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """``state_dict`` with keys relative to the bare network: the ``model.module.`` prefix of upstream checkpoints
    (or a bare DDP's ``module.``) removed. Keys without a prefix are returned as they are.

    Raises:
        ValueError: when only some keys carry a prefix (a state dict stitched from two sources would otherwise
            show up as a confusing list of missing and unexpected keys).
    """
    keys = [str(key) for key in state_dict]
    for prefix in _WRAPPER_PREFIXES:
        carrying = [key for key in keys if key.startswith(prefix)]
        if not carrying:
            continue
        if len(carrying) < len(keys):
            others = [key for key in keys if not key.startswith(prefix)]
            raise ValueError(f"mixed key prefixes: {len(carrying)} keys start with {prefix!r} but {format_keys(others)} do not")
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return dict(state_dict)


def _converted(tensor: torch.Tensor) -> torch.Tensor:
    """The dtype policy: floating tensors become :data:`CONVERTED_DTYPE` (a copy when the dtype changes, otherwise
    the same memory: load the result with ``load_state_dict``, which copies); other tensors are kept as they are."""
    tensor = tensor.detach()
    return tensor.to(CONVERTED_DTYPE) if tensor.is_floating_point() else tensor


def _check_mapping_covers(what: str, mappings: Sequence[KeyMapping], target_shapes: Mapping[str, tuple]) -> None:
    local = [m.local_key for m in mappings]
    if sorted(local) != sorted(target_shapes):  # a bug in an architecture module, never the user's input
        raise RuntimeError(
            f"internal {what} key mapping error: module keys not mapped {sorted(set(target_shapes) - set(local))}, "
            f"mapped but unknown {sorted(set(local) - set(target_shapes))}, mapped twice {len(local) - len(set(local))}"
        )


def convert_state_dict(
    what: str,
    upstream_state_dict: Mapping[str, torch.Tensor],
    module: nn.Module,
    mappings: Sequence[KeyMapping],
    ignored: Sequence[str] = (),
) -> Dict[str, torch.Tensor]:
    """An upstream state dict (keys with or without :data:`UPSTREAM_PREFIX`) -> a dict ``module.load_state_dict``
    takes with ``strict=True``.

    Args:
        what: the part, for error messages (``"encoder"``, ``"decoder EMA"``, ...).
        module: the target network (only its state-dict keys and shapes are used).
        mappings: every parameter of ``module`` (see :class:`KeyMapping`).
        ignored: upstream keys accepted and dropped (buffers lzn_hf does not keep, e.g. the decoder's ``sigmas``).

    Raises:
        ValueError: listing every missing key, unexpected key and shape mismatch at once; or the tensors holding NaN
            or Inf values.
    """
    source = strip_upstream_prefix(_checked_state_dict(what, upstream_state_dict))
    target_shapes = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    _check_mapping_covers(what, mappings, target_shapes)
    expected = {m.upstream_key for m in mappings}
    missing = [m.upstream_key for m in mappings if m.upstream_key not in source]
    unexpected = [key for key in source if key not in expected and key not in ignored]
    mismatched, converted = [], {}
    for m in mappings:
        if m.upstream_key not in source:
            continue
        tensor = source[m.upstream_key]
        stored_shape = tuple(reversed(target_shapes[m.local_key])) if m.transpose else target_shapes[m.local_key]
        if tuple(tensor.shape) != stored_shape:
            mismatched.append(f"{m.upstream_key}: checkpoint {tuple(tensor.shape)} vs model {stored_shape}")
            continue
        converted[m.local_key] = _converted(tensor.t() if m.transpose else tensor)
    if missing or unexpected or mismatched:
        problems = [
            f"{label} {format_keys(keys)}"
            for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
            if keys
        ]
        raise ValueError(f"the upstream {what} state dict does not fit the model: " + "; ".join(problems))
    nonfinite = [m.upstream_key for m in mappings if converted[m.local_key].is_floating_point() and not bool(torch.isfinite(converted[m.local_key]).all())]
    if nonfinite:
        raise ValueError(f"the upstream {what} state dict holds NaN or Inf values in {format_keys(nonfinite)}: a damaged file or a diverged run")
    return converted


def _shadow_params(what: str, ema_entry: Any) -> List[torch.Tensor]:
    shadow = ema_entry.get("shadow_params") if isinstance(ema_entry, Mapping) else ema_entry
    if not isinstance(shadow, (list, tuple)):
        found = sorted(map(str, ema_entry)) if isinstance(ema_entry, Mapping) else type(ema_entry).__name__
        raise ValueError(f"the upstream {what} EMA entry should be a dict with a 'shadow_params' list of tensors, found {found}")
    not_tensors = [str(i) for i, value in enumerate(shadow) if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"the upstream {what} EMA shadow_params holds values that are not tensors at positions {format_keys(not_tensors)}")
    return list(shadow)


def state_dict_from_ema(
    what: str,
    ema_entry: Any,
    raw_upstream_state_dict: Mapping[str, torch.Tensor],
    module: nn.Module,
    mappings: Sequence[KeyMapping],
) -> Dict[str, torch.Tensor]:
    """An upstream EMA entry -> a dict ``module.load_state_dict`` takes with ``strict=True``.

    Upstream EMA entries are ``{"decay", "num_updates", "shadow_params"}`` where ``shadow_params`` is a list *without
    names*, in upstream ``parameters()`` order, of the parameters that had ``requires_grad=True`` (``ema_entry`` may
    also be that list). The names follow from ``mappings``; frozen parameters come from ``raw_upstream_state_dict``.

    Raises:
        ValueError: when the list's length does not match the model, a frozen parameter is missing from the raw
            state dict, or a shape does not fit (see :func:`convert_state_dict`).
    """
    shadow = _shadow_params(what, ema_entry)
    trainable = [m.upstream_key for m in mappings if not m.frozen]
    if len(shadow) != len(trainable):
        raise ValueError(
            f"the upstream {what} EMA's shadow_params holds {len(shadow)} tensors but the model has {len(trainable)} "
            "trainable parameters: the checkpoint was made for another architecture or config"
        )
    named = dict(zip(trainable, shadow))
    frozen = [m.upstream_key for m in mappings if m.frozen]
    if frozen:
        raw = strip_upstream_prefix(_checked_state_dict(what, raw_upstream_state_dict))
        lacking = [key for key in frozen if key not in raw]
        if lacking:
            raise ValueError(
                f"the frozen {what} parameters {lacking} are not in upstream's EMA list and the raw {what} state dict "
                "lacks them too"
            )
        named.update((key, raw[key]) for key in frozen)
    return convert_state_dict(f"{what} EMA", named, module, mappings)
