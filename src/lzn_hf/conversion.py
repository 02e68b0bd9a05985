"""Convert the authors' released LZN checkpoints (upstream `torch.save` dicts) into :class:`LZNModel` weights.

Upstream files hold `encoder`, `decoder`, `label_anchor` state dicts (keys prefixed `model.module.`) and
`*_ema` entries whose `shadow_params` are unnamed lists in `parameters()` order. The per-architecture key
maps live in :mod:`lzn_hf.convert_ncsnpp` and :mod:`lzn_hf.convert_resnet_gn`; this module picks the parts,
builds the model from a preset or a fixture's `reference_config.json`, and loads strictly.

Loading uses `torch.load(weights_only=True)`: nothing but tensors and plain containers is unpickled.
"""

from __future__ import annotations

import json
import os
import pickle
from typing import Any, Dict, Mapping, Union

import torch

from .configuration_lzn import LZN_PRESETS, LZNConfig
from .convert_ncsnpp import (
    convert_decoder_state_dict,
    convert_encoder_state_dict,
    decoder_state_dict_from_ema,
    encoder_state_dict_from_ema,
)
from .convert_resnet_gn import convert_resnet_state_dict, resnet_state_dict_from_ema
from .modeling_lzn import LZNModel

__all__ = ["load_upstream_checkpoint", "lzn_config_from_reference", "resolve_config", "convert_original_checkpoint"]

UPSTREAM_PREFIX = "model.module."


def load_upstream_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """`torch.load(path, weights_only=True)` with errors that say what went wrong."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} holds objects other than tensors and plain containers, which lzn_hf refuses to unpickle "
            f"(torch.load(weights_only=True)); only load it unsafely if you trust its source, then re-save its "
            f"state dicts. Original error: {error}"
        ) from error
    except (RuntimeError, EOFError) as error:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {error}") from error
    if not isinstance(checkpoint, dict) or "encoder" not in checkpoint:
        keys = list(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path} is not an upstream LZN checkpoint: expected an 'encoder' entry, found {keys}")
    return checkpoint


def lzn_config_from_reference(reference: Mapping[str, Any]) -> LZNConfig:
    """:class:`LZNConfig` from a parity fixture's `reference_config.json` (its `summary` block)."""
    summary = reference.get("summary", reference)
    latent_dim = summary["latent_dim"]
    flow = summary["image_latent_flow"]
    solver = "euler" if flow["solver"] == "euler" else "dpm_solver++"
    flow_settings = {
        "image_flow_solver": solver,
        "image_flow_num_steps": summary["image_latent_flow_num_steps"],
        "prior_noise_scale": summary.get("prior_data_scale", 1.0),
        "label_loss_cutoff": summary.get("label_loss_cut_off_step", summary.get("assignment_loss_cut_off_step", 0.2)),
    }
    if "resnet" in summary:
        resnet = summary["resnet"]
        encoder = {
            "encoder_type": "resnet_gn",
            "image_size": summary["image_size"],
            "num_channels": summary["image_channels"],
            "latent_dim": resnet["head_out_dim"],
            "depths": list(resnet["layers"]),
            "width_multiplier": resnet["width_multiplier"],
            "head_num_layers": resnet["head_num_layers"],
            "num_groups": resnet.get("groupnorm_groups", 32),
        }
        return LZNConfig(image_encoder_config=encoder, **flow_settings)

    model = summary["ncsnpp_model_shared_by_encoder_and_decoder"]
    heads = summary["encoder_heads"]
    trunk = {name: model[name] for name in (
        "nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resamp_with_conv", "fir", "fir_kernel",
        "skip_rescale", "resblock_type", "progressive_input", "progressive_combine", "init_scale",
    )}  # fmt: skip
    sizes = {"image_size": summary["image_size"], "num_channels": summary["image_channels"], "latent_dim": latent_dim}
    encoder = {
        **sizes,
        **trunk,
        "head_channels": heads["num_base_channels"],
        "head_hidden_dim": heads["num_base_units"],
        "head_num_layers": heads["num_latent_transformation_layers"],
        "head_resolutions": heads["latent_transformation_resolutions"],
    }
    num_classes = summary["num_classes"] if summary.get("conditional") else 0
    decoder = {
        **sizes,
        **trunk,
        "num_classes": num_classes,
        **{name: model[name] for name in ("progressive", "embedding_type", "fourier_scale", "scale_by_sigma")},
    }
    labels = None
    if num_classes:
        labels = {"num_classes": num_classes, "latent_dim": latent_dim, "flow_num_steps": summary["label_latent_flow_num_steps"]}
    return LZNConfig(image_encoder_config=encoder, image_decoder_config=decoder, label_anchors_config=labels, **flow_settings)


def resolve_config(config: Union[str, os.PathLike, LZNConfig, Mapping[str, Any]]) -> LZNConfig:
    """A preset name, a `reference_config.json` path or dict, or an :class:`LZNConfig`."""
    if isinstance(config, LZNConfig):
        return config
    if isinstance(config, Mapping):
        return lzn_config_from_reference(config)
    if str(config) in LZN_PRESETS:
        return LZNConfig.from_preset(str(config))
    if os.path.isfile(config):
        with open(config) as handle:
            return lzn_config_from_reference(json.load(handle))
    raise ValueError(f"--config must be a preset ({', '.join(sorted(LZN_PRESETS))}) or a reference_config.json path, got {config!r}")


def _part(checkpoint: Mapping[str, Any], name: str, use_ema: bool):
    if name not in checkpoint:
        raise ValueError(f"the checkpoint has no {name!r} entry, which this config needs (entries: {list(checkpoint)})")
    if use_ema and f"{name}_ema" not in checkpoint:
        raise ValueError(f"the checkpoint has no {name}_ema entry; pass use_ema=False (--no_ema) to convert the raw weights")
    return checkpoint[name], checkpoint.get(f"{name}_ema")


def _prefixed(prefix: str, state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {f"{prefix}{key}": value.float() for key, value in state_dict.items()}


def convert_original_checkpoint(
    checkpoint: Union[str, os.PathLike, Mapping[str, Any]],
    config: Union[str, os.PathLike, LZNConfig, Mapping[str, Any]],
    use_ema: bool = True,
) -> LZNModel:
    """Build an :class:`LZNModel` holding an upstream checkpoint's weights.

    Args:
        checkpoint: path of the upstream `.pt` file (or the loaded dict).
        config: preset name (e.g. `"cifar10-joint"`), path to a fixture's `reference_config.json`, or a config.
        use_ema: take the EMA weights (what upstream evaluates with; default) instead of the raw ones.

    Raises:
        ValueError: on a missing part, or any missing / unexpected key or shape mismatch (listed).
    """
    config = resolve_config(config)
    if not isinstance(checkpoint, Mapping):
        checkpoint = load_upstream_checkpoint(checkpoint)
    needed = ["encoder"] + ["decoder"] * (config.image_decoder_config is not None) + ["label_anchor"] * (config.label_anchors_config is not None)
    for name in needed:  # fail before converting anything
        _part(checkpoint, name, use_ema)
    model = LZNModel(config).eval()

    raw, ema = _part(checkpoint, "encoder", use_ema)
    encoder = model.image_encoder.network
    if config.image_encoder_config.encoder_type == "resnet_gn":
        weights = resnet_state_dict_from_ema(ema, encoder) if use_ema else convert_resnet_state_dict(raw, encoder)
    else:
        weights = encoder_state_dict_from_ema(ema, raw, encoder) if use_ema else convert_encoder_state_dict(raw, encoder)
    state_dict = _prefixed("image_encoder.network.", weights)

    if model.image_decoder is not None:
        raw, ema = _part(checkpoint, "decoder", use_ema)
        decoder = model.image_decoder.network
        weights = decoder_state_dict_from_ema(ema, raw, decoder) if use_ema else convert_decoder_state_dict(raw, decoder)
        state_dict.update(_prefixed("image_decoder.network.", weights))

    if model.label_anchors is not None:
        raw, ema = _part(checkpoint, "label_anchor", use_ema)
        keys = sorted(raw)
        if len(keys) != 1 or not keys[0].endswith("anchor"):
            raise ValueError(f"the 'label_anchor' entry should hold one 'anchor' tensor, found keys {keys}")
        table = ema["shadow_params"][0] if use_ema else raw[keys[0]]
        expected = tuple(model.label_anchors.anchors.shape)
        if tuple(table.shape) != expected:
            raise ValueError(f"label anchors have shape {tuple(table.shape)}, the config expects {expected}")
        state_dict["label_anchors.anchors"] = table.float()

    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the config: missing keys {missing}, unexpected keys {unexpected}")
    return model
