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
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from transformers import PreTrainedConfig

from .latent_flow import SOLVERS

__all__ = [
    "LZNImageEncoderConfig",
    "LZNImageDecoderConfig",
    "LZNLabelAnchorsConfig",
    "LZNConfig",
    "LZN_PRESETS",
]

@dataclass(frozen=True)
class FieldSpec:
    """Default, type and range of one config field; :meth:`check` raises a `ValueError` naming the field.

    kind: `"int"`, `"float"` (ints accepted), `"bool"`, `"str"`, `"int_list"` or `"float_list"` (a list or tuple;
    `low`/`high` then bound every item). Booleans never count as numbers and numbers given as strings are
    rejected (a JSON `"false"` must not read as true).
    """

    default: Any
    kind: str
    low: Optional[float] = None
    high: Optional[float] = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    choices: Optional[Tuple[str, ...]] = None
    optional: bool = False  # None allowed
    min_length: int = 0  # lists

    def _describe(self) -> str:
        words = {"int": "an integer", "float": "a number", "bool": "a boolean (true / false)", "str": "a string"}
        if self.choices is not None:
            return f"one of {self.choices}"
        item = "integers" if self.kind == "int_list" else "numbers"
        text = words.get(self.kind) or f"a list of {'at least ' + str(self.min_length) + ' ' if self.min_length else ''}{item}"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>=' if self.low_inclusive else '>'} {self.low}")
        if self.high is not None:
            bounds.append(f"{'<=' if self.high_inclusive else '<'} {self.high}")
        if bounds:
            text += (" each " if self.kind.endswith("_list") else " ") + " and ".join(bounds)
        return text + (", or null" if self.optional else "")

    def _number_ok(self, value, integer: bool) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float) if not integer else int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return False
        return not (self.high is not None and (value > self.high or (value == self.high and not self.high_inclusive)))

    def check(self, name: str, value: Any) -> None:
        if value is None and self.optional:
            return
        if self.kind == "bool":
            ok = isinstance(value, bool)
        elif self.kind == "str":
            ok = isinstance(value, str) and (self.choices is None or value in self.choices)
        elif self.kind in ("int", "float"):
            ok = self._number_ok(value, integer=self.kind == "int")
        else:
            integer = self.kind == "int_list"
            ok = isinstance(value, (list, tuple)) and len(value) >= self.min_length and all(self._number_ok(v, integer) for v in value)
        if not ok:
            raise ValueError(f"`{name}` must be {self._describe()}, got {value!r} ({type(value).__name__})")


def _int(default, low=None, high=None, **kwargs) -> FieldSpec:
    return FieldSpec(default, "int", low, high, **kwargs)


def _float(default, low=None, high=None, **kwargs) -> FieldSpec:
    return FieldSpec(default, "float", low, high, **kwargs)


def _bool(default) -> FieldSpec:
    return FieldSpec(default, "bool")


def _choice(default, *choices) -> FieldSpec:
    return FieldSpec(default, "str", choices=choices)


MAX_FLOW_STEPS = 10_000  # solver steps of a latent flow (upstream uses 20 and 100)
MAX_SIZE = 8192  # image size, channels, widths: far above any LZN model, far below an accidental 1e9

# Every architecture field, once: default, type and range (the torch modules read the config's attributes and
# repeat none of them: `NCSNppEncoder(config)`, `NCSNppDecoder(config)`, `ResNetGNEncoder(config)`).
# NCSN++ trunk shared by encoder and decoder (the CIFAR-10 settings of the paper); names of the score_sde code.
NCSNPP_TRUNK_FIELDS: Dict[str, FieldSpec] = {
    "nf": _int(128, 1, MAX_SIZE),
    "ch_mult": FieldSpec([1, 2, 2, 2], "int_list", 1, 64, min_length=1),
    "num_res_blocks": _int(4, 1, 64),
    "attn_resolutions": FieldSpec([16], "int_list", 1, MAX_SIZE),
    "dropout": _float(0.0, 0.0, 1.0, high_inclusive=False),
    "resamp_with_conv": _bool(True),
    "fir": _bool(False),
    "fir_kernel": FieldSpec([1, 3, 3, 1], "float_list", 0.0, None, low_inclusive=False, min_length=1),
    "skip_rescale": _bool(True),
    "resblock_type": _choice("biggan", "biggan"),
    "progressive_input": _choice("none", "none", "input_skip"),
    "progressive_combine": _choice("sum", "sum", "cat"),
    "init_scale": _float(0.0, 0.0),
}
ENCODER_FIELDS: Dict[str, Dict[str, FieldSpec]] = {
    "ncsnpp": {
        **NCSNPP_TRUNK_FIELDS,
        "head_channels": _int(20, 1, MAX_SIZE),  # 1x1 conv of each latent head
        "head_hidden_dim": _int(200, 1, 65536),  # width of the head MLPs
        "head_num_layers": _int(2, 1, 64),  # Linear layers per head
        "head_resolutions": FieldSpec(None, "int_list", 1, MAX_SIZE, optional=True, min_length=1),  # None = every map
    },
    "resnet_gn": {
        "depths": FieldSpec([3, 4, 6, 3], "int_list", 1, 256, min_length=1),  # ResNet-50
        "width_multiplier": _int(1, 1, 64),
        "head_num_layers": _int(2, 1, 64),
        "num_groups": _int(32, 1, MAX_SIZE),
        "norm_eps": _float(1e-5, 0.0, 1.0, low_inclusive=False),
    },
}
DECODER_FIELDS: Dict[str, FieldSpec] = {
    **NCSNPP_TRUNK_FIELDS,
    "progressive": _choice("none", "none", "output_skip"),
    "embedding_type": _choice("positional", "positional", "fourier"),
    "fourier_scale": _float(16.0, 0.0, None, low_inclusive=False),
    "scale_by_sigma": _bool(False),
}
# fields every part has (image shape, latent size), and the top-level ones
SHAPE_FIELDS: Dict[str, FieldSpec] = {
    "image_size": _int(32, 1, MAX_SIZE),
    "num_channels": _int(3, 1, MAX_SIZE),
    "latent_dim": _int(200, 1, 65536),
}
LABEL_FIELDS: Dict[str, FieldSpec] = {
    "num_classes": _int(10, 1, 1_000_000),
    "latent_dim": SHAPE_FIELDS["latent_dim"],
    "flow_num_steps": _int(100, 1, MAX_FLOW_STEPS),
}
FLOW_FIELDS: Dict[str, FieldSpec] = {
    "image_flow_solver": _choice("dpm_solver++", *SOLVERS),
    "image_flow_num_steps": _int(20, 1, MAX_FLOW_STEPS),
    "image_flow_eps": _float(None, 0.0, 1.0, low_inclusive=False, high_inclusive=False, optional=True),
    "prior_noise_scale": _float(1.0, 0.0),
    "label_loss_cutoff": _float(0.2, 0.0, 1.0, high_inclusive=False),
    "anchor_bank_size": _int(0, 0),
}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_fields(config, fields: Dict[str, FieldSpec]) -> None:
    for name, spec in fields.items():
        spec.check(name, getattr(config, name))


def _set_fields(config, fields: Dict[str, FieldSpec], kwargs: Dict[str, Any]) -> None:
    """Set every field from `kwargs` (popped) or its default (copied)."""
    for name, spec in fields.items():
        setattr(config, name, copy.deepcopy(kwargs.pop(name, spec.default)))


def _validate_ncsnpp_trunk(config) -> None:
    """Relations between NCSN++ fields (each field's own type and range is checked by its FieldSpec)."""
    levels = len(config.ch_mult)
    _require(
        config.image_size % 2 ** (levels - 1) == 0,
        f"`image_size` {config.image_size} must be divisible by 2**(len(ch_mult) - 1) = {2 ** (levels - 1)}",
    )
    _require(
        all(config.nf * m % 4 == 0 for m in config.ch_mult),
        f"`nf` * `ch_mult` must be divisible by 4 (GroupNorm uses min(C // 4, 32) groups), got nf={config.nf}",
    )


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

    def __init__(self, encoder_type: str = "ncsnpp", **kwargs):
        _choice("ncsnpp", *ENCODER_FIELDS).check("encoder_type", encoder_type)
        self.encoder_type = encoder_type
        _set_fields(self, self.lzn_fields(), kwargs)
        super().__init__(**kwargs)
        self.validate_lzn()

    def lzn_fields(self) -> Dict[str, FieldSpec]:
        """The architecture fields of this encoder type (image shape, latent size, network)."""
        return {**SHAPE_FIELDS, **ENCODER_FIELDS[self.encoder_type]}

    def validate_lzn(self) -> None:
        _check_fields(self, self.lzn_fields())
        if self.encoder_type == "ncsnpp":
            _validate_ncsnpp_trunk(self)


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

    def __init__(self, **kwargs):
        _set_fields(self, self.lzn_fields(), kwargs)
        super().__init__(**kwargs)
        self.validate_lzn()

    @staticmethod
    def lzn_fields() -> Dict[str, FieldSpec]:
        """The architecture fields: image shape, latent size, `num_classes` (0 = unconditional), network."""
        return {**SHAPE_FIELDS, "num_classes": _int(0, 0, LABEL_FIELDS["num_classes"].high), **DECODER_FIELDS}

    def validate_lzn(self) -> None:
        _check_fields(self, self.lzn_fields())
        _validate_ncsnpp_trunk(self)


class LZNLabelAnchorsConfig(PreTrainedConfig):
    r"""Configuration of :class:`~lzn_hf.LZNLabelAnchors`: one learnable anchor per class, `[num_classes, latent_dim]`.

    Args:
        num_classes (`int`), latent_dim (`int`): the table's shape.
        flow_num_steps (`int`, defaults to 100): Euler steps of the label flows (label -> latent and back).

    `id2label` / `label2id` name the classes (used by the pipelines to accept class names).
    """

    model_type = "lzn_label_anchors"

    def __init__(self, **kwargs):
        _set_fields(self, LABEL_FIELDS, kwargs)
        _check_fields(self, LABEL_FIELDS)
        num_classes = self.num_classes
        if kwargs.get("id2label") is None:
            kwargs["id2label"] = {i: str(i) for i in range(num_classes)}
        if kwargs.get("label2id") is None:
            kwargs["label2id"] = {name: int(i) for i, name in kwargs["id2label"].items()}
        super().__init__(**kwargs)
        _require(
            set(self.id2label) == set(range(num_classes)),
            f"`id2label` must name the {num_classes} classes (keys 0..{num_classes - 1}), got keys {sorted(self.id2label)}",
        )


def _sub_config(value, config_class, name):
    if value is None or isinstance(value, config_class):
        return value
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k != "model_type"}
        try:
            return config_class(**value)
        except ValueError as error:
            raise ValueError(f"in `{name}`: {error}") from error
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

    def __init__(self, image_encoder_config=None, image_decoder_config=None, label_anchors_config=None, **kwargs):
        self.image_encoder_config = _sub_config(image_encoder_config or {}, LZNImageEncoderConfig, "image_encoder_config")
        self.image_decoder_config = _sub_config(image_decoder_config, LZNImageDecoderConfig, "image_decoder_config")
        self.label_anchors_config = _sub_config(label_anchors_config, LZNLabelAnchorsConfig, "label_anchors_config")
        _set_fields(self, FLOW_FIELDS, kwargs)
        if self.label_anchors_config is not None:
            num_labels = kwargs.pop("num_labels", None)
            if num_labels is not None:
                self._check_num_labels(num_labels)
            if kwargs.get("id2label") is None:
                kwargs["id2label"] = dict(self.label_anchors_config.id2label)
                kwargs["label2id"] = dict(self.label_anchors_config.label2id)
        super().__init__(**kwargs)
        self.validate_lzn()

    def _check_num_labels(self, num_labels) -> None:
        classes = self.label_anchors_config.num_classes
        _require(
            num_labels == classes,
            f"`num_labels`={num_labels!r} does not match the label anchors' num_classes={classes}: the classes are fixed "
            "by the trained label anchors (rename them with `id2label`, same length)",
        )

    @property
    def num_labels(self) -> Optional[int]:
        """Number of classes (the label anchors'); setting a different number raises (the anchors are fixed)."""
        return PreTrainedConfig.num_labels.fget(self)

    @num_labels.setter
    def num_labels(self, num_labels: int) -> None:
        if getattr(self, "label_anchors_config", None) is not None:
            self._check_num_labels(num_labels)
        PreTrainedConfig.num_labels.fset(self, num_labels)

    def validate_lzn(self) -> None:
        _check_fields(self, FLOW_FIELDS)
        latent_dim = self.image_encoder_config.latent_dim
        for name in ("image_decoder_config", "label_anchors_config"):
            part = getattr(self, name)
            if part is not None:
                _require(part.latent_dim == latent_dim, f"`{name}.latent_dim` is {part.latent_dim} but the image encoder's is {latent_dim}")
        decoder, labels = self.image_decoder_config, self.label_anchors_config
        if labels is not None:
            _require(
                self.id2label is not None and set(self.id2label) == set(range(labels.num_classes)),
                f"`id2label` must name the {labels.num_classes} classes of the label anchors (keys 0..{labels.num_classes - 1}), "
                f"got keys {sorted(self.id2label or {})}",
            )
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
# Fashion-MNIST and MNIST (28x28, one channel; issue 16): native size, no padding to 32 (28 = 7 * 2**2 suits
# ch_mult [1, 2, 2]: maps of 28, 14 and 7 pixels; padding would cost (32/28)**2 = 1.31x the compute for blank border).
# Sized for about 30 minutes per run on 2 CPU cores in bf16 (docs/training.md): a 1.2 M-parameter encoder (the issue's
# calibration encoder: nf 16, one res block, d = 64, heads of 8 channels and 64 units on every map) and a
# 1.3 M-parameter decoder (nf 32, one res block, attention at 7x7).
_REAL28_TRUNK = {"image_size": 28, "num_channels": 1, "latent_dim": 64, "nf": 16, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [7]}
_REAL28_ENCODER = {**_REAL28_TRUNK, "head_channels": 8, "head_hidden_dim": 64}
_REAL28_DECODER = {**_REAL28_TRUNK, "nf": 32}
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
    # (0.17 M-parameter encoder, 0.43 M-parameter decoder, d = 32; its training recipe is in lzn_hf.training.recipes)
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
    # Fashion-MNIST (and MNIST: same shapes, the same presets; issue 16): the three case studies at CPU scale.
    # Class names come from the data (train_joint.py names default "0".."9" anchors after the dataset's classes).
    "fashion-mnist-joint": {
        "image_encoder_config": dict(_REAL28_ENCODER),
        "image_decoder_config": {**_REAL28_DECODER, "num_classes": 10},
        "label_anchors_config": {"num_classes": 10, "latent_dim": 64},
    },
    "fashion-mnist-generation": {"image_encoder_config": dict(_REAL28_ENCODER), "image_decoder_config": dict(_REAL28_DECODER)},
    "fashion-mnist-representation": {
        "image_encoder_config": dict(_REAL28_ENCODER),
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
