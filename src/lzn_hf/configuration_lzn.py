"""Configurations of Latent Zoning Network models, with presets for the paper's released models.

Four configs, one per part plus the composite:

* :class:`LZNImageEncoderConfig` -- image -> anchor. ``encoder_type="ncsnpp"`` is the NCSN++ down path with
  multi-scale latent heads (case studies 1 and 3); ``encoder_type="resnet_gn"`` is ResNet-50 with GroupNorm
  and a GroupNorm projection head (case study 2).
* :class:`LZNImageDecoderConfig` -- the NCSN++ rectified-flow U-Net conditioned on the LZN latent (and a
  one-hot label when ``num_classes > 0``).
* :class:`LZNLabelAnchorsConfig` -- the ``[num_classes, latent_dim]`` table of label anchors.
* :class:`LZNConfig` -- the parts plus the latent-flow settings.

NCSN++ fields keep the names of the score_sde / Rectified Flow code base (``nf``, ``ch_mult``, ...), so a
reader can compare them with the papers' configs directly. Every config validates itself and raises a
``ValueError`` naming the bad field.

Presets (DiT-style): ``LZNConfig.from_preset("cifar10-joint")``; see :data:`LZN_PRESETS`.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional

from transformers import PreTrainedConfig

from .latent_flow import SOLVERS

__all__ = [
    "LZNImageEncoderConfig",
    "LZNImageDecoderConfig",
    "LZNLabelAnchorsConfig",
    "LZNConfig",
    "LZN_PRESETS",
]

# NCSN++ trunk shared by encoder and decoder (the CIFAR-10 settings of the paper).
NCSNPP_TRUNK_DEFAULTS: Dict[str, Any] = {
    "nf": 128,
    "ch_mult": [1, 2, 2, 2],
    "num_res_blocks": 4,
    "attn_resolutions": [16],
    "dropout": 0.0,
    "resamp_with_conv": True,
    "fir": False,
    "fir_kernel": [1, 3, 3, 1],
    "skip_rescale": True,
    "resblock_type": "biggan",
    "progressive_input": "none",
    "progressive_combine": "sum",
    "init_scale": 0.0,
}
ENCODER_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "ncsnpp": {
        **NCSNPP_TRUNK_DEFAULTS,
        "head_channels": 20,  # 1x1 conv of each latent head
        "head_hidden_dim": 200,  # width of the head MLPs
        "head_num_layers": 2,  # Linear layers per head
        "head_resolutions": None,  # None = a head on every stored feature map
    },
    "resnet_gn": {
        "depths": [3, 4, 6, 3],  # ResNet-50
        "width_multiplier": 1,
        "head_num_layers": 2,
        "num_groups": 32,
        "norm_eps": 1e-5,
    },
}
DECODER_DEFAULTS: Dict[str, Any] = {
    **NCSNPP_TRUNK_DEFAULTS,
    "progressive": "none",
    "embedding_type": "positional",
    "fourier_scale": 16.0,
    "scale_by_sigma": False,
}
_CHOICES = {
    "resblock_type": ("biggan",),
    "progressive": ("none", "output_skip"),
    "progressive_input": ("none", "input_skip"),
    "progressive_combine": ("sum", "cat"),
    "embedding_type": ("positional", "fourier"),
}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _positive_int(config, *names) -> None:
    for name in names:
        value = getattr(config, name)
        _require(isinstance(value, int) and not isinstance(value, bool) and value > 0, f"`{name}` must be a positive integer, got {value!r}")


def _validate_ncsnpp_trunk(config) -> None:
    _positive_int(config, "nf", "num_res_blocks", "image_size", "num_channels")
    _require(
        isinstance(config.ch_mult, (list, tuple)) and len(config.ch_mult) > 0 and all(isinstance(m, int) and m > 0 for m in config.ch_mult),
        f"`ch_mult` must be a non-empty list of positive integers, got {config.ch_mult!r}",
    )
    levels = len(config.ch_mult)
    _require(
        config.image_size % 2 ** (levels - 1) == 0,
        f"`image_size` {config.image_size} must be divisible by 2**(len(ch_mult) - 1) = {2 ** (levels - 1)}",
    )
    _require(
        all(config.nf * m % 4 == 0 for m in config.ch_mult),
        f"`nf` * `ch_mult` must be divisible by 4 (GroupNorm uses min(C // 4, 32) groups), got nf={config.nf}",
    )
    _require(0.0 <= config.dropout < 1.0, f"`dropout` must be in [0, 1), got {config.dropout}")
    for name, allowed in _CHOICES.items():
        if hasattr(config, name):
            _require(getattr(config, name) in allowed, f"`{name}` must be one of {allowed}, got {getattr(config, name)!r}")


class LZNImageEncoderConfig(PreTrainedConfig):
    r"""Configuration of :class:`~lzn_hf.LZNImageEncoder` (image -> anchor).

    Args:
        encoder_type (`str`, defaults to `"ncsnpp"`): `"ncsnpp"` (NCSN++ down path + multi-scale latent heads)
            or `"resnet_gn"` (ResNet with GroupNorm + projection head).
        image_size (`int`): input resolution (the ResNet pools globally and takes any size).
        num_channels (`int`): input channels.
        latent_dim (`int`): anchor / latent dimension `d`.
        NCSN++ fields (`encoder_type="ncsnpp"`): `nf`, `ch_mult`, `num_res_blocks`, `attn_resolutions`,
            `dropout`, `resamp_with_conv`, `fir`, `fir_kernel`, `skip_rescale`, `resblock_type`,
            `progressive_input`, `progressive_combine`, `init_scale`, and the heads: `head_channels`,
            `head_hidden_dim`, `head_num_layers`, `head_resolutions` (list, or `None` for all).
        ResNet fields (`encoder_type="resnet_gn"`): `depths`, `width_multiplier`, `head_num_layers`,
            `num_groups`, `norm_eps`.

    Fields of the other encoder type are not stored.
    """

    model_type = "lzn_image_encoder"

    def __init__(self, encoder_type: str = "ncsnpp", image_size: int = 32, num_channels: int = 3, latent_dim: int = 200, **kwargs):
        if encoder_type not in ENCODER_DEFAULTS:
            raise ValueError(f"`encoder_type` must be one of {tuple(ENCODER_DEFAULTS)}, got {encoder_type!r}")
        self.encoder_type = encoder_type
        self.image_size = image_size
        self.num_channels = num_channels
        self.latent_dim = latent_dim
        for name, default in ENCODER_DEFAULTS[encoder_type].items():
            setattr(self, name, copy.deepcopy(kwargs.pop(name, default)))
        super().__init__(**kwargs)
        self.validate_lzn()

    def validate_lzn(self) -> None:
        _positive_int(self, "latent_dim", "head_num_layers")
        if self.encoder_type == "ncsnpp":
            _validate_ncsnpp_trunk(self)
            _positive_int(self, "head_channels", "head_hidden_dim")
        else:
            _positive_int(self, "image_size", "num_channels", "width_multiplier", "num_groups")
            _require(
                isinstance(self.depths, (list, tuple)) and len(self.depths) > 0 and all(isinstance(n, int) and n > 0 for n in self.depths),
                f"`depths` must be a non-empty list of positive integers, got {self.depths!r}",
            )


class LZNImageDecoderConfig(PreTrainedConfig):
    r"""Configuration of :class:`~lzn_hf.LZNImageDecoder`, the rectified-flow velocity network.

    Args:
        image_size (`int`), num_channels (`int`): generated image shape.
        latent_dim (`int`): dimension of the LZN latent the decoder is conditioned on.
        num_classes (`int`, defaults to 0): > 0 adds a one-hot label to the conditioning (case study 3).
        NCSN++ fields: the trunk fields of :class:`LZNImageEncoderConfig` plus `progressive`
            (`"none"` | `"output_skip"`), `embedding_type` (`"positional"` | `"fourier"`), `fourier_scale`,
            `scale_by_sigma` (divide the output by 999 t, as the 256-px models do).
    """

    model_type = "lzn_image_decoder"

    def __init__(self, image_size: int = 32, num_channels: int = 3, latent_dim: int = 200, num_classes: int = 0, **kwargs):
        self.image_size = image_size
        self.num_channels = num_channels
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        for name, default in DECODER_DEFAULTS.items():
            setattr(self, name, copy.deepcopy(kwargs.pop(name, default)))
        super().__init__(**kwargs)
        _validate_ncsnpp_trunk(self)
        _positive_int(self, "latent_dim")
        _require(isinstance(num_classes, int) and num_classes >= 0, f"`num_classes` must be an integer >= 0, got {num_classes!r}")


class LZNLabelAnchorsConfig(PreTrainedConfig):
    r"""Configuration of :class:`~lzn_hf.LZNLabelAnchors`: one learnable anchor per class, `[num_classes, latent_dim]`.

    Args:
        num_classes (`int`), latent_dim (`int`): the table's shape.
        flow_num_steps (`int`, defaults to 100): Euler steps of the label flows (label -> latent and back).

    `id2label` / `label2id` name the classes (used by the pipelines to accept class names).
    """

    model_type = "lzn_label_anchors"

    def __init__(self, num_classes: int = 10, latent_dim: int = 200, flow_num_steps: int = 100, **kwargs):
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.flow_num_steps = flow_num_steps
        if kwargs.get("id2label") is None:
            kwargs["id2label"] = {i: str(i) for i in range(num_classes)} if isinstance(num_classes, int) and num_classes > 0 else None
        if kwargs.get("label2id") is None and kwargs.get("id2label"):
            kwargs["label2id"] = {name: int(i) for i, name in kwargs["id2label"].items()}
        super().__init__(**kwargs)
        _positive_int(self, "num_classes", "latent_dim", "flow_num_steps")
        _require(len(self.id2label) == num_classes, f"`id2label` has {len(self.id2label)} entries, expected num_classes={num_classes}")


def _sub_config(value, config_class, name):
    if value is None or isinstance(value, config_class):
        return value
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k != "model_type"}
        return config_class(**value)
    raise ValueError(f"`{name}` must be a dict or a {config_class.__name__}, got {type(value).__name__}")


class LZNConfig(PreTrainedConfig):
    r"""Configuration of a Latent Zoning Network (:class:`~lzn_hf.LZNModel`).

    Args:
        image_encoder_config (`dict` or `LZNImageEncoderConfig`): the image encoder (always present).
        image_decoder_config (`dict` or `LZNImageDecoderConfig`, *optional*): the image decoder (generation).
        label_anchors_config (`dict` or `LZNLabelAnchorsConfig`, *optional*): label anchors (classification
            and label-conditional generation).
        image_flow_solver (`str`, defaults to `"dpm_solver++"`): forward flow of image anchors, `"dpm_solver++"`
            or `"euler"` (case study 2).
        image_flow_num_steps (`int`, defaults to 20): steps of that flow.
        image_flow_eps (`float`, *optional*): its start offset; `None` = the solver's upstream default
            (1e-3 for DPM-Solver++, 1e-4 for Euler).
        prior_noise_scale (`float`, defaults to 1.0): scale of the prior noise of image latents (0.45 in case
            study 2; 0 gives the deterministic zone centre).
        label_loss_cutoff (`float`, defaults to 0.2): fraction of the first reverse-flow steps ignored by the
            alignment / assignment losses.
        anchor_bank_size (`int`, defaults to 0): rows of the reference-anchor bank stored with
            `LZNForImageClassification` for batch-independent classification (set by `build_anchor_bank`).
    """

    model_type = "lzn"
    sub_configs = {
        "image_encoder_config": LZNImageEncoderConfig,
        "image_decoder_config": LZNImageDecoderConfig,
        "label_anchors_config": LZNLabelAnchorsConfig,
    }

    def __init__(
        self,
        image_encoder_config=None,
        image_decoder_config=None,
        label_anchors_config=None,
        image_flow_solver: str = "dpm_solver++",
        image_flow_num_steps: int = 20,
        image_flow_eps: Optional[float] = None,
        prior_noise_scale: float = 1.0,
        label_loss_cutoff: float = 0.2,
        anchor_bank_size: int = 0,
        **kwargs,
    ):
        self.image_encoder_config = _sub_config(image_encoder_config or {}, LZNImageEncoderConfig, "image_encoder_config")
        self.image_decoder_config = _sub_config(image_decoder_config, LZNImageDecoderConfig, "image_decoder_config")
        self.label_anchors_config = _sub_config(label_anchors_config, LZNLabelAnchorsConfig, "label_anchors_config")
        self.image_flow_solver = image_flow_solver
        self.image_flow_num_steps = image_flow_num_steps
        self.image_flow_eps = image_flow_eps
        self.prior_noise_scale = prior_noise_scale
        self.label_loss_cutoff = label_loss_cutoff
        self.anchor_bank_size = anchor_bank_size
        if self.label_anchors_config is not None and kwargs.get("id2label") is None:
            kwargs["id2label"] = dict(self.label_anchors_config.id2label)
            kwargs["label2id"] = dict(self.label_anchors_config.label2id)
        super().__init__(**kwargs)
        self.validate_lzn()

    def validate_lzn(self) -> None:
        _require(self.image_flow_solver in SOLVERS, f"`image_flow_solver` must be one of {SOLVERS}, got {self.image_flow_solver!r}")
        _positive_int(self, "image_flow_num_steps")
        _require(self.image_flow_eps is None or 0.0 < self.image_flow_eps < 1.0, f"`image_flow_eps` must be in (0, 1), got {self.image_flow_eps}")
        _require(self.prior_noise_scale >= 0.0, f"`prior_noise_scale` must be >= 0, got {self.prior_noise_scale}")
        _require(0.0 <= self.label_loss_cutoff < 1.0, f"`label_loss_cutoff` must be in [0, 1), got {self.label_loss_cutoff}")
        _require(isinstance(self.anchor_bank_size, int) and self.anchor_bank_size >= 0, f"`anchor_bank_size` must be an integer >= 0, got {self.anchor_bank_size!r}")
        latent_dim = self.image_encoder_config.latent_dim
        for name in ("image_decoder_config", "label_anchors_config"):
            part = getattr(self, name)
            if part is not None:
                _require(part.latent_dim == latent_dim, f"`{name}.latent_dim` is {part.latent_dim} but the image encoder's is {latent_dim}")
        decoder, labels = self.image_decoder_config, self.label_anchors_config
        if decoder is not None and decoder.num_classes > 0:
            _require(labels is not None, "a label-conditional image decoder (num_classes > 0) needs `label_anchors_config`")
            _require(labels.num_classes == decoder.num_classes, f"decoder has num_classes={decoder.num_classes} but label anchors have {labels.num_classes}")

    @property
    def latent_dim(self) -> int:
        return self.image_encoder_config.latent_dim

    @property
    def num_classes(self) -> int:
        return 0 if self.label_anchors_config is None else self.label_anchors_config.num_classes

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "LZNConfig":
        """Build the config of a named preset (see :data:`LZN_PRESETS`); `overrides` replace top-level fields."""
        if name not in LZN_PRESETS:
            raise ValueError(f"unknown preset {name!r}; available: {sorted(LZN_PRESETS)}")
        return cls(**{**copy.deepcopy(LZN_PRESETS[name]), **overrides})


# ----------------------------------------------------------------------------------------------------------
# presets: the paper's six released models (lzn-method.md §4) and small ones for CPU demos and tests
# ----------------------------------------------------------------------------------------------------------
_CIFAR_TRUNK = {"image_size": 32, "num_channels": 3, "latent_dim": 200, "dropout": 0.15}
_HIRES_TRUNK = {
    "image_size": 256,
    "num_channels": 3,
    "latent_dim": 200,
    "ch_mult": [1, 1, 2, 2, 2, 2, 2],
    "num_res_blocks": 2,
    "fir": True,
    "progressive_input": "input_skip",
}
_HIRES_GENERATION = {
    "image_encoder_config": {**_HIRES_TRUNK, "head_resolutions": [64, 32, 16, 8, 4]},
    "image_decoder_config": {
        **_HIRES_TRUNK,
        "progressive": "output_skip",
        "embedding_type": "fourier",
        "fourier_scale": 16.0,
        "scale_by_sigma": True,
    },
}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_TINY_TRUNK = {"image_size": 8, "num_channels": 1, "latent_dim": 16, "nf": 16, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4]}

LZN_PRESETS: Dict[str, Dict[str, Any]] = {
    # case study 1: unconditional generation (Rectified Flow + LZN latent)
    "cifar10-generation": {"image_encoder_config": dict(_CIFAR_TRUNK), "image_decoder_config": dict(_CIFAR_TRUNK)},
    "afhq-cat-generation": copy.deepcopy(_HIRES_GENERATION),
    "celebahq-generation": copy.deepcopy(_HIRES_GENERATION),
    "lsun-bedroom-generation": copy.deepcopy(_HIRES_GENERATION),
    # case study 2: unsupervised representation learning (ResNet-50-GN)
    "imagenet-representation": {
        "image_encoder_config": {"encoder_type": "resnet_gn", "image_size": 224, "num_channels": 3, "latent_dim": 256},
        "image_flow_solver": "euler",
        "prior_noise_scale": 0.45,
    },
    # case study 3: joint conditional generation + classification
    "cifar10-joint": {
        "image_encoder_config": dict(_CIFAR_TRUNK),
        "image_decoder_config": {**_CIFAR_TRUNK, "num_classes": 10},
        "label_anchors_config": {"num_classes": 10, "latent_dim": 200, "id2label": dict(enumerate(CIFAR10_CLASSES))},
    },
    # the CPU demo: 8x8 scikit-learn digits, joint generation + classification
    # (0.17 M-parameter encoder, 0.43 M-parameter decoder, d = 32; its training recipe is in training_utils)
    "digits-joint": {
        "image_encoder_config": {**_TINY_TRUNK, "latent_dim": 32, "head_channels": 8, "head_hidden_dim": 64},
        "image_decoder_config": {**_TINY_TRUNK, "latent_dim": 32, "nf": 24, "num_classes": 10},
        "label_anchors_config": {"num_classes": 10, "latent_dim": 32},
    },
    # CPU-scale reproductions of case studies 1 and 2 on the digits (docs/results.md): the demo's encoder and
    # decoder sizes, without labels
    "digits-generation": {
        "image_encoder_config": {**_TINY_TRUNK, "latent_dim": 32, "head_channels": 8, "head_hidden_dim": 64},
        "image_decoder_config": {**_TINY_TRUNK, "latent_dim": 32, "nf": 24},
    },
    "digits-representation": {
        "image_encoder_config": {**_TINY_TRUNK, "latent_dim": 32, "head_channels": 8, "head_hidden_dim": 64},
        "image_flow_solver": "euler",
        "prior_noise_scale": 0.45,
    },
    # tests: the smallest models of each kind
    "tiny-joint": {
        "image_encoder_config": {**_TINY_TRUNK, "head_channels": 4, "head_hidden_dim": 16},
        "image_decoder_config": {**_TINY_TRUNK, "num_classes": 3},
        "label_anchors_config": {"num_classes": 3, "latent_dim": 16, "id2label": {0: "zero", 1: "one", 2: "two"}},
    },
    "tiny-generation": {
        "image_encoder_config": {**_TINY_TRUNK, "head_channels": 4, "head_hidden_dim": 16},
        "image_decoder_config": {**_TINY_TRUNK, "embedding_type": "fourier", "scale_by_sigma": True, "progressive": "output_skip", "fir": True, "progressive_input": "input_skip"},
    },
    "tiny-representation": {
        "image_encoder_config": {"encoder_type": "resnet_gn", "image_size": 32, "num_channels": 3, "latent_dim": 128, "depths": [1, 1, 1, 1]},
        "image_flow_solver": "euler",
        "prior_noise_scale": 0.45,
    },
}
