"""The :class:`~lzn_hf.LZNConfig` a conversion builds: a preset name, a parity fixture's ``reference_config.json``,
an lzn_hf ``config.json``, or a config object."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Union

from ..configuration_lzn import LZN_PRESETS, LZNConfig
from . import ncsnpp, resnet_gn

__all__ = ["lzn_config_from_reference", "resolve_config"]


def _flow_settings(summary: Mapping[str, Any]) -> dict:
    cutoff = summary.get("label_loss_cut_off_step", summary.get("assignment_loss_cut_off_step", 0.2))
    return {
        "image_flow_solver": "euler" if summary["image_latent_flow"]["solver"] == "euler" else "dpm_solver++",
        "image_flow_num_steps": summary["image_latent_flow_num_steps"],
        "prior_noise_scale": summary.get("prior_data_scale", 1.0),
        "label_loss_cutoff": cutoff,
    }


def _config_from_summary(summary: Mapping[str, Any]) -> LZNConfig:
    sizes = {"image_size": summary["image_size"], "num_channels": summary["image_channels"]}
    if "resnet" in summary:
        encoder = resnet_gn.encoder_config_from_upstream(summary["resnet"], **sizes)
        return LZNConfig(image_encoder_config=encoder, **_flow_settings(summary))
    model_block = summary["ncsnpp_model_shared_by_encoder_and_decoder"]
    latent_dim = summary["latent_dim"]
    num_classes = summary["num_classes"] if summary.get("conditional") else 0
    labels = None
    if num_classes:
        labels = {"num_classes": num_classes, "latent_dim": latent_dim, "flow_num_steps": summary["label_latent_flow_num_steps"]}
    return LZNConfig(
        image_encoder_config=ncsnpp.encoder_config_from_upstream(model_block, summary["encoder_heads"], latent_dim=latent_dim, **sizes),
        image_decoder_config=ncsnpp.decoder_config_from_upstream(model_block, latent_dim=latent_dim, num_classes=num_classes, **sizes),
        label_anchors_config=labels,
        **_flow_settings(summary),
    )


def lzn_config_from_reference(reference: Mapping[str, Any]) -> LZNConfig:
    """:class:`LZNConfig` from a parity fixture's ``reference_config.json`` (its ``summary`` block, see FORMAT.md).

    Raises:
        ValueError: naming a missing setting, or one lzn_hf does not implement.
    """
    summary = reference.get("summary", reference)
    try:
        return _config_from_summary(summary)
    except KeyError as error:
        raise ValueError(f"the reference config lacks the setting {error.args[0]!r} (expected a parity fixture's reference_config.json)") from None


def resolve_config(config: Union[str, os.PathLike, LZNConfig, Mapping[str, Any]]) -> LZNConfig:
    """``config`` as an :class:`LZNConfig`: a preset name (:data:`~lzn_hf.LZN_PRESETS`), the path of a parity
    fixture's ``reference_config.json`` or of an lzn_hf ``config.json`` (``model_type`` ``"lzn"``), such a dict, or
    an :class:`LZNConfig`.

    Raises:
        ValueError: naming ``config`` when it is none of these.
    """
    if isinstance(config, LZNConfig):
        return config
    if isinstance(config, Mapping):
        return LZNConfig.from_dict(dict(config)) if config.get("model_type") == LZNConfig.model_type else lzn_config_from_reference(config)
    if str(config) in LZN_PRESETS:
        return LZNConfig.from_preset(str(config))
    if not os.path.isfile(config):
        what = "a folder" if os.path.isdir(config) else "neither a preset nor an existing file"
        raise ValueError(f"config {str(config)!r} is {what}: pass a preset ({', '.join(sorted(LZN_PRESETS))}) or a reference_config.json path")
    try:
        with open(config, encoding="utf-8") as handle:
            loaded = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"config {str(config)!r} is not a JSON file ({error})") from None
    if not isinstance(loaded, Mapping):
        raise ValueError(f"config {str(config)!r} holds a JSON {type(loaded).__name__}, not a config object")
    return resolve_config(loaded)
