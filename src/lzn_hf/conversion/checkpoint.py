"""A whole upstream checkpoint -> an :class:`~lzn_hf.LZNModel` holding its weights.

Upstream files hold ``encoder``, ``decoder``, ``label_anchor`` state dicts (keys prefixed ``model.module.``) and
``*_ema`` entries whose ``shadow_params`` are unnamed lists in ``parameters()`` order. This module checks that the
checkpoint's parts and architecture fit the config, converts each part with its architecture's key mapping
(:mod:`.ncsnpp`, :mod:`.resnet_gn`) and loads the result strictly.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import torch
from torch import nn

from ..configuration_lzn import LZN_PRESETS, LZNConfig
from ..modeling_lzn import LZNLabelAnchors, LZNModel
from ..ncsnpp import NCSNppDecoder, NCSNppEncoder
from ..resnet_gn import ResNetGNEncoder
from . import ncsnpp, resnet_gn
from .configs import resolve_config
from .files import load_upstream_checkpoint
from .mapping import KeyMapping, convert_state_dict, format_keys, state_dict_from_ema, strip_upstream_prefix

__all__ = ["convert_original_checkpoint", "network_key_mapping"]

#: Upstream's label-anchor model: one parameter ``anchor`` ``[num_classes, d]``.
_LABEL_ANCHOR_MAPPING = [KeyMapping("anchor", "anchors")]
#: First key component of each upstream encoder architecture (after the prefix).
_ENCODER_KEY_ROOTS = {"ncsnpp": ("all_modules", "spatial_transformations", "latent_transformations"), "resnet_gn": ("net", "head")}
_ARCHITECTURE_NAMES = {"ncsnpp": "an NCSN++ encoder", "resnet_gn": "a ResNet-GN encoder"}
_PART_NAMES = {"encoder": "an image encoder", "decoder": "an image decoder", "label_anchor": "label anchors"}


def network_key_mapping(network: nn.Module) -> Tuple[List[KeyMapping], Sequence[str]]:
    """The key mapping of one part's network (an NCSN++ encoder or decoder, a ResNet-GN encoder, the label anchors)
    and the upstream keys it drops."""
    if isinstance(network, NCSNppEncoder):
        return ncsnpp.encoder_key_mapping(network), ()
    if isinstance(network, NCSNppDecoder):
        return ncsnpp.decoder_key_mapping(network), ncsnpp.DROPPED_DECODER_KEYS
    if isinstance(network, ResNetGNEncoder):
        return resnet_gn.encoder_key_mapping(network), ()
    if isinstance(network, LZNLabelAnchors):
        return _LABEL_ANCHOR_MAPPING, ()
    raise TypeError(f"no upstream layout known for a {type(network).__name__}")


def _presets_with_encoder(encoder_type: str) -> List[str]:
    return sorted(name for name in LZN_PRESETS if LZNConfig.from_preset(name).image_encoder_config.encoder_type == encoder_type)


def _check_parts(checkpoint: Mapping[str, Any], needed: Sequence[str], use_ema: bool) -> None:
    """Every part the config needs is there (with its EMA entry), and no model part is left over."""
    held = [part for part in _PART_NAMES if part in checkpoint]
    for part in needed:
        if part not in checkpoint:
            raise ValueError(
                f"the checkpoint has no {part!r} entry ({_PART_NAMES[part]}), which this config needs; it holds "
                f"{held}: choose the config of the checkpoint's case study"
            )
        if use_ema and f"{part}_ema" not in checkpoint:
            raise ValueError(f"the checkpoint has no {part}_ema entry; pass use_ema=False (--no_ema) to convert the raw weights")
    unused = [part for part in held if part not in needed]
    if unused:
        raise ValueError(
            f"the checkpoint also holds {unused} ({', '.join(_PART_NAMES[part] for part in unused)}), which this config "
            "has no place for: choose the config of the checkpoint's case study"
        )


def _check_encoder_architecture(encoder_state_dict: Any, encoder_type: str) -> None:
    """A clear error when the checkpoint's encoder is of another architecture than the config's."""
    if not isinstance(encoder_state_dict, Mapping):
        return  # convert_state_dict says what is wrong with it
    roots = {str(key).split(".")[0] for key in strip_upstream_prefix(encoder_state_dict)}
    for other, other_roots in _ENCODER_KEY_ROOTS.items():
        if other != encoder_type and roots and roots <= set(other_roots):
            raise ValueError(
                f"the checkpoint's encoder is {_ARCHITECTURE_NAMES[other]} (keys {sorted(roots)}) but the config builds "
                f"{_ARCHITECTURE_NAMES[encoder_type]} (encoder_type={encoder_type!r}); choose a config with "
                f"encoder_type={other!r}, e.g. one of the presets {_presets_with_encoder(other)}"
            )


def convert_original_checkpoint(
    checkpoint: Union[str, os.PathLike, Mapping[str, Any]],
    config: Union[str, os.PathLike, LZNConfig, Mapping[str, Any]],
    use_ema: bool = True,
) -> LZNModel:
    """Build an :class:`LZNModel` holding an upstream checkpoint's weights (float32).

    Args:
        checkpoint: path of the upstream ``.pt`` file (read with :func:`~.files.load_upstream_checkpoint`), or the
            loaded dict.
        config: preset name (e.g. ``"cifar10-joint"``), path to a fixture's ``reference_config.json``, or a config
            (see :func:`~.configs.resolve_config`).
        use_ema: take the EMA weights (what upstream evaluates with; default) instead of the raw ones.

    Raises:
        ValueError: on a part the config needs that the checkpoint lacks (or one it holds that the config has no
            place for), an encoder of another architecture, or any missing / unexpected key or shape mismatch (all
            listed), before any weight is loaded.
    """
    config = resolve_config(config)
    if not isinstance(checkpoint, Mapping):
        checkpoint = load_upstream_checkpoint(checkpoint)
    needed = ["encoder"] + ["decoder"] * (config.image_decoder_config is not None) + ["label_anchor"] * (config.label_anchors_config is not None)
    _check_parts(checkpoint, needed, use_ema)  # before the (large) model is built
    _check_encoder_architecture(checkpoint["encoder"], config.image_encoder_config.encoder_type)
    model = LZNModel(config).eval()
    parts: Dict[str, Tuple[str, nn.Module]] = {"encoder": ("image_encoder.network.", model.image_encoder.network)}
    if model.image_decoder is not None:
        parts["decoder"] = ("image_decoder.network.", model.image_decoder.network)
    if model.label_anchors is not None:
        parts["label_anchor"] = ("label_anchors.", model.label_anchors)

    state_dict: Dict[str, torch.Tensor] = {}
    for part, (prefix, network) in parts.items():
        mappings, dropped = network_key_mapping(network)
        if use_ema:
            weights = state_dict_from_ema(part, checkpoint[f"{part}_ema"], checkpoint[part], network, mappings)
        else:
            weights = convert_state_dict(part, checkpoint[part], network, mappings, ignored=dropped)
        state_dict.update((prefix + key, value) for key, value in weights.items())
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:  # the key mappings cover every network: this is a bug, not the user's input
        raise RuntimeError(f"converted weights do not cover the model: missing keys {format_keys(missing)}, unexpected keys {format_keys(unexpected)}")
    return model
