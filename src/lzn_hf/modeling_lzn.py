"""Latent Zoning Network models as `transformers` PreTrainedModels.

Parts (each loadable on its own, so that pipelines can hold them as components):

* :class:`LZNImageEncoder`   pixel_values [B, C, H, W] in [-1, 1] -> anchors [B, d] (+ backbone features)
* :class:`LZNImageDecoder`   rectified-flow velocity network, in diffusers' flow-matching orientation
* :class:`LZNLabelAnchors`   the [C, d] table of label anchors

Composites:

* :class:`LZNModel`                    image encoder + optional decoder + optional label anchors, with the
                                       latent-space operations (image/label latents, classification of latents)
* :class:`LZNForImageClassification`   image -> image latent -> reverse label flow -> class

Imports only torch, transformers and sibling modules (Hub remote code copies exactly those).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import ModelOutput

from ._atomic import write_text_atomically  # noqa: F401  (model_cards uses it; code-carrying folders copy the siblings an entry file imports directly)
from ._checks import check_finite, is_tracing
from .configuration_lzn import (
    LZNConfig,
    LZNImageDecoderConfig,
    LZNImageEncoderConfig,
    LZNLabelAnchorsConfig,
)
from .latent_flow import anchors_to_latents, latents_to_anchors, nearest_anchor
from .model_cards import prepare_upload, write_model_card
from .ncsnpp import NCSNppDecoder, NCSNppEncoder, init_ncsnpp_module, time_dtype
from .resnet_gn import ResNetGNEncoder, init_resnet_gn_module

__all__ = [
    "LZNPreTrainedModel",
    "LZNImageEncoder",
    "LZNImageDecoder",
    "LZNLabelAnchors",
    "LZNModel",
    "LZNForImageClassification",
    "LZNImageEncoderOutput",
    "LZNImageDecoderOutput",
    "LZNLatentClassificationOutput",
    "LZNModelOutput",
]

# Upstream's decoders take t in [0, 1] (0 = noise) and scale it by 999; diffusers passes sigma * 1000.
NUM_TRAIN_TIMESTEPS = 1000


# ----------------------------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------------------------
@dataclass
class LZNImageEncoderOutput(ModelOutput):
    """anchors `[B, d]`; pooler_output `[B, F]`: the image representation (ResNet: the pooled 2048-d
    backbone feature used for linear probes; NCSN++: the anchors). Neither depends on batch-mates.
    hidden_states (with `output_hidden_states=True`): the encoder's intermediate feature maps
    `[B, C_k, H_k, W_k]`, input side first (NCSN++: every map a latent head may read; ResNet: stem and stages)."""

    anchors: Optional[torch.Tensor] = None
    pooler_output: Optional[torch.Tensor] = None
    hidden_states: Optional[tuple] = None


@dataclass
class LZNImageDecoderOutput(ModelOutput):
    """sample `[B, C, H, W]`: the velocity `noise - data` (diffusers' flow-matching prediction)."""

    sample: Optional[torch.Tensor] = None


@dataclass
class LZNLatentClassificationOutput(ModelOutput):
    """Result of the label decoder (reverse flow over the label anchors).

    logits `[B, C]`: log posteriors over classes at the last reverse step (t = 1/S), floored at the
        smallest positive float; posteriors `[S, B, C]`: normalised posteriors at every pre-step time
        `t_k = 1 - k/S`; predictions `[B]`: the label anchor nearest to the flow's end point;
        points `[B, d]`: that end point.
    """

    logits: Optional[torch.Tensor] = None
    posteriors: Optional[torch.Tensor] = None
    predictions: Optional[torch.Tensor] = None
    points: Optional[torch.Tensor] = None


@dataclass
class LZNModelOutput(ModelOutput):
    """anchors `[B, d]`, pooler_output `[B, F]` (the representation, see `LZNImageEncoderOutput`) and, when
    asked for, latents `[B, d]` (against the batch's anchors unless reference anchors are given) and the
    encoder's feature maps `hidden_states` (see `LZNImageEncoderOutput`)."""

    anchors: Optional[torch.Tensor] = None
    pooler_output: Optional[torch.Tensor] = None
    latents: Optional[torch.Tensor] = None
    hidden_states: Optional[tuple] = None


# ----------------------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------------------
def check_pixel_values(pixel_values: torch.Tensor, num_channels: int, image_size: Optional[int]) -> None:
    """Raise a clear error unless `pixel_values` is a finite float `[B, num_channels, S, S]` batch in [-1, 1]."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != num_channels or pixel_values.shape[0] == 0:
        expected = f"[B, {num_channels}, {image_size or 'H'}, {image_size or 'W'}]"
        raise ValueError(f"`pixel_values` must have shape {expected} with B >= 1, got {tuple(pixel_values.shape)}")
    if image_size is not None and tuple(pixel_values.shape[2:]) != (image_size, image_size):
        raise ValueError(f"`pixel_values` must be {image_size}x{image_size} images, got {tuple(pixel_values.shape[2:])}")
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"`pixel_values` must be floats in [-1, 1], got dtype {pixel_values.dtype}; convert uint8 images with x / 127.5 - 1"
        )
    if is_tracing():
        return
    if not torch.isfinite(pixel_values).all():
        raise ValueError("`pixel_values` contains NaN or Inf")
    low, high = pixel_values.min().item(), pixel_values.max().item()
    if low < -1.001 or high > 1.001:
        raise ValueError(f"`pixel_values` must be in [-1, 1], got values in [{low:.3g}, {high:.3g}]")


def _check_float_tensor(name: str, tensor, shape: tuple) -> None:
    """A finite floating-point tensor of `shape` (a letter: any size); NaN / Inf checked in eager mode only."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.ndim != len(shape) or any(isinstance(size, int) and actual != size for actual, size in zip(tensor.shape, shape)):
        expected = ", ".join(map(str, shape))
        raise ValueError(f"`{name}` must have shape [{expected}], got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {tensor.dtype}")
    check_finite(name, tensor)


def check_labels(labels, num_classes: int, name: str = "labels") -> torch.Tensor:
    """Integer class labels `[B]` in [0, num_classes); errors name the argument `name`."""
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.numel() == 0:
        raise ValueError(f"`{name}` must be a non-empty 1-D sequence of class indices, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"`{name}` must be integers, got dtype {labels.dtype}")
    if not is_tracing() and ((labels < 0).any() or (labels >= num_classes).any()):
        raise ValueError(f"`{name}` must be in [0, {num_classes}), got {labels.tolist()}")
    return labels.long()


# ----------------------------------------------------------------------------------------------------------
# base class
# ----------------------------------------------------------------------------------------------------------
class LZNPreTrainedModel(PreTrainedModel):
    """Weight initialisation of all LZN models and strict loading.

    Each part initialises its own modules (transformers calls a sub-model's `_init_weights` for its subtree): the
    image encoder and decoder delegate to their architecture's per-module function (`init_ncsnpp_module`,
    `init_resnet_gn_module`, the ones construction uses); this base class initialises the label anchors and the
    anchor bank."""

    config_class = LZNConfig
    base_model_prefix = "lzn"
    main_input_name = "pixel_values"
    _no_split_modules = []

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, strict: Optional[bool] = None, **kwargs):
        """`PreTrainedModel.from_pretrained`, but strict by default: a checkpoint whose keys do not match the
        architecture (missing, unexpected or mismatched weights) raises a `ValueError` listing them instead of
        silently re-initialising; a corrupt weights file raises a `ValueError` naming it. `strict=False`
        restores transformers' lenient behaviour. With `output_loading_info=True` the default is lenient:
        `(model, info)` comes back for the caller to inspect (`strict=True` still raises)."""
        output_loading_info = kwargs.pop("output_loading_info", False)
        strict = not output_loading_info if strict is None else strict
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        except Exception as error:
            if type(error).__name__ == "SafetensorError":
                raise ValueError(f"corrupt or truncated weights file in {pretrained_model_name_or_path}: {error}") from error
            raise
        problems = {name: sorted(map(str, info.get(name) or [])) for name in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if strict and any(problems.values()):
            details = "; ".join(f"{name.replace('_', ' ')}: {keys[:20]}{' ...' if len(keys) > 20 else ''}" for name, keys in problems.items() if keys)
            raise ValueError(f"the checkpoint at {pretrained_model_name_or_path} does not match {cls.__name__} ({details})")
        return (model, info) if output_loading_info else model

    # model card kind written by `save_pretrained` ("model", "classifier"); None: no card (the parts)
    _lzn_model_card: Optional[str] = None

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained` (same signature: diffusers reads it to pass `variant` and
        `max_shard_size`); composite models then add a model card (`README.md`, see `lzn_hf.model_cards`) unless
        the folder has one. `push_to_hub` uploads it (keeping a card on the Hub)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        arguments = inspect.signature(PreTrainedModel.save_pretrained).bind(self, save_directory, *args, **kwargs).arguments
        if self._lzn_model_card and arguments.get("is_main_process", True):
            write_model_card(save_directory, kind=self._lzn_model_card, overwrite=False)

    save_pretrained.__signature__ = inspect.signature(PreTrainedModel.save_pretrained)

    def _upload_modified_files(self, working_dir, repo_id, *args, **kwargs):
        # transformers' push paths write a placeholder card just before this call: put lzn_hf's card in its place.
        if self._lzn_model_card:
            prepare_upload(working_dir, repo_id)
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, LZNLabelAnchors):
            init.normal_(module.anchors)
        elif isinstance(module, LZNForImageClassification) and module.anchor_bank is not None:
            init.zeros_(module.anchor_bank)  # an empty bank until `build_anchor_bank` (or the checkpoint) fills it


# ----------------------------------------------------------------------------------------------------------
# parts
# ----------------------------------------------------------------------------------------------------------
def _use_return_dict(config, return_dict: Optional[bool]) -> bool:
    return config.return_dict if return_dict is None else return_dict


class LZNImageEncoder(LZNPreTrainedModel):
    """Image -> anchor: NCSN++ down path with multi-scale latent heads, or ResNet-GN with a projection head."""

    config_class = LZNImageEncoderConfig

    def __init__(self, config: LZNImageEncoderConfig):
        super().__init__(config)
        self.network = (NCSNppEncoder if config.encoder_type == "ncsnpp" else ResNetGNEncoder)(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        (init_ncsnpp_module if self.config.encoder_type == "ncsnpp" else init_resnet_gn_module)(module)

    @property
    def feature_dim(self) -> int:
        """Size of `pooler_output`: the ResNet's pooled feature, or the latent dimension for NCSN++."""
        return self.network.feature_dim if self.config.encoder_type == "resnet_gn" else self.config.latent_dim

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None
    ) -> Union[LZNImageEncoderOutput, tuple]:
        """pixel_values `[B, C, H, W]` in [-1, 1] -> anchors `[B, d]`, pooler_output `[B, F]` and, with
        `output_hidden_states=True`, the intermediate feature maps `hidden_states` (a tuple)."""
        image_size = self.config.image_size if self.config.encoder_type == "ncsnpp" else None
        check_pixel_values(pixel_values, self.config.num_channels, image_size)
        pixel_values = pixel_values.to(self.dtype)  # the network's dtype (as transformers' vision models do)
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        maps = None
        if self.config.encoder_type == "resnet_gn":
            if output_hidden_states:
                maps = self.network.forward_feature_maps(pixel_values)
                features = maps[-1].mean(dim=(2, 3))  # [B, 2048]
                anchors = self.network.forward_head(features)  # [B, d]
            else:
                anchors, features = self.network.forward_with_features(pixel_values)  # [B, d], [B, 2048]
        else:
            maps = self.network.forward_features(pixel_values)
            anchors = features = self.network.forward_heads(maps)  # [B, d]
        hidden_states = tuple(maps) if output_hidden_states else None
        output = LZNImageEncoderOutput(anchors=anchors, pooler_output=features, hidden_states=hidden_states)
        return output if _use_return_dict(self.config, return_dict) else output.to_tuple()


class LZNImageDecoder(LZNPreTrainedModel):
    """The rectified-flow velocity network, conditioned on an LZN latent (and a class label).

    Follows diffusers' flow-matching orientation: `sample` is `x_sigma = (1 - sigma) * data + sigma * noise`,
    `timestep = sigma * 1000`, and the output is the velocity `noise - data`. Upstream's network runs the
    other way (t = 0 noise, predicts `data - noise`); :meth:`forward` converts in exactly one place.
    """

    config_class = LZNImageDecoderConfig
    main_input_name = "sample"
    # Fourier frequencies (|W| up to ~50, multiplied by log(999 t) * 2 pi) lose whole radians in half precision:
    # `from_pretrained(..., dtype=torch.float16 / torch.bfloat16)` keeps them float32.
    _keep_in_fp32_modules_strict = ["time_proj"]

    def __init__(self, config: LZNImageDecoderConfig):
        super().__init__(config)
        self.network = NCSNppDecoder(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        init_ncsnpp_module(module)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the network computes in (its convolutions'; the Fourier frequencies may stay float32)."""
        return self.network.conv_in.weight.dtype

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Union[torch.Tensor, float],
        latents: torch.Tensor,
        class_labels: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ) -> Union[LZNImageDecoderOutput, tuple]:
        """
        Args:
            sample: `[B, C, H, W]` noisy images `x_sigma`.
            timestep: `sigma * 1000`, a scalar or `[B]` (as diffusers' flow-matching schedulers pass it).
            latents: `[B, d]` LZN latents.
            class_labels: `[B]` int labels (or `[B, C]` one-hot) for label-conditional decoders.

        Returns:
            velocity `noise - data`, `[B, C, H, W]`, in `.sample`.
        """
        config = self.config
        _check_float_tensor("sample", sample, ("B", config.num_channels, config.image_size, config.image_size))
        batch = sample.shape[0]
        _check_float_tensor("latents", latents, (batch, config.latent_dim))
        class_labels = self._check_class_labels(class_labels, batch)
        t = self.upstream_time(timestep, sample)
        sample, latents = sample.to(self.dtype), latents.to(self.dtype)  # the network's dtype
        velocity = -self.upstream_velocity(sample, t, latents, class_labels)
        if not return_dict:
            return (velocity,)
        return LZNImageDecoderOutput(sample=velocity)

    @staticmethod
    def upstream_time(timestep: Union[torch.Tensor, float], sample: torch.Tensor) -> torch.Tensor:
        """diffusers' `timestep = sigma * 1000` -> upstream's time `t = 1 - sigma` (0 = noise), `[B]`, in float32
        (float64 for a float64 `sample`) whatever the network's dtype."""
        if isinstance(timestep, bool) or not isinstance(timestep, (torch.Tensor, int, float)):
            raise TypeError(f"`timestep` must be a number or a tensor, got {type(timestep).__name__}")
        timestep = torch.as_tensor(timestep, device=sample.device, dtype=torch.float64)
        if not is_tracing() and not ((timestep >= 0) & (timestep <= NUM_TRAIN_TIMESTEPS)).all():  # NaN fails too
            raise ValueError(f"`timestep` must be sigma * {NUM_TRAIN_TIMESTEPS} in [0, {NUM_TRAIN_TIMESTEPS}], got {timestep.tolist()}")
        t = 1.0 - timestep / NUM_TRAIN_TIMESTEPS  # computed in float64: t near 1e-3 keeps its digits
        if t.numel() == 1:
            return t.reshape(()).expand(sample.shape[0]).to(time_dtype(sample.dtype))
        if t.shape != (sample.shape[0],):
            raise ValueError(f"`timestep` must be a scalar or have shape [{sample.shape[0]}], got {tuple(t.shape)}")
        return t.to(time_dtype(sample.dtype))

    def _check_class_labels(self, class_labels: Optional[torch.Tensor], batch: int) -> Optional[torch.Tensor]:
        """`[B]` class indices in [0, num_classes) or `[B, num_classes]` floats (one-hot); None iff unconditional."""
        num_classes = self.config.num_classes
        if num_classes == 0:
            if class_labels is not None:
                raise ValueError("this decoder is unconditional (num_classes=0): `class_labels` must be None")
            return None
        if class_labels is None:
            raise ValueError(f"this decoder is label-conditional (num_classes={num_classes}): pass `class_labels` [B]")
        if not isinstance(class_labels, torch.Tensor):
            raise TypeError(f"`class_labels` must be a torch.Tensor, got {type(class_labels).__name__}")
        if class_labels.ndim == 2 and class_labels.is_floating_point():
            _check_float_tensor("class_labels", class_labels, (batch, num_classes))
            return class_labels
        if class_labels.ndim != 1 or class_labels.shape[0] != batch:
            raise ValueError(
                f"`class_labels` must be [{batch}] class indices or [{batch}, {num_classes}] one-hot floats, got shape {tuple(class_labels.shape)}"
            )
        return check_labels(class_labels, num_classes, "class_labels")

    def upstream_velocity(self, sample, t, latents, class_labels=None) -> torch.Tensor:
        """Upstream's orientation: `x_t = t * data + (1 - t) * noise`, `t` `[B]` in [0, 1], returns `data - noise`."""
        return self.network(sample, t, latents, class_labels)


class LZNLabelAnchors(LZNPreTrainedModel):
    """One learnable anchor per class, `anchors` `[C, d]` (N(0, 1) init), and the label encoder / decoder.

    * label encoder :meth:`get_label_latents`: class -> forward Euler flow over the label anchors -> latent;
    * label decoder :meth:`classify_latents`: latent -> reverse flow over the label anchors -> class.
    """

    config_class = LZNLabelAnchorsConfig
    main_input_name = "labels"

    def __init__(self, config: LZNLabelAnchorsConfig):
        super().__init__(config)
        self.anchors = nn.Parameter(torch.randn(config.num_classes, config.latent_dim))
        self.post_init()

    def forward(self, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The anchors of `labels` `[B, d]`, or the whole table `[C, d]` when `labels` is None."""
        if labels is None:
            return self.anchors
        return self.anchors[check_labels(labels, self.config.num_classes).to(self.anchors.device)]

    def get_label_latents(self, labels, noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Class indices `[B]` -> latents `[B, d]`: forward Euler flow over the label anchors from
        `1e-4 * noise + (1 - 1e-4) * anchor`, uniform weights, `flow_num_steps` steps (lzn-method.md §2.5)."""
        own = self(labels)  # [B, d]
        own_flow, table = _for_flow(own, self.anchors)
        noise = _noise_like(own_flow, noise, generator)
        latents = anchors_to_latents(own_flow, noise, table, num_steps=self.config.flow_num_steps, solver="euler")
        return latents.to(own.dtype)

    def classify_latents(
        self, latents: torch.Tensor, class_weights: Optional[torch.Tensor] = None, return_dict: bool = True
    ) -> Union[LZNLatentClassificationOutput, tuple]:
        """Latents `[B, d]` -> reverse flow over the label anchors -> nearest label anchor.

        `class_weights` `[C]` (optional) weight the classes in the flow (upstream: the batch label histogram).
        """
        latents_flow, table = _for_flow(latents, self.anchors)
        if class_weights is not None:
            class_weights = class_weights.to(device=table.device, dtype=table.dtype)
        points, posteriors = latents_to_anchors(latents_flow, table, self.config.flow_num_steps, class_weights)
        logits = posteriors[-1].clamp_min(torch.finfo(posteriors.dtype).tiny).log()  # [B, C]
        predictions = nearest_anchor(points, table)  # [B]
        dtype = latents.dtype  # the caller's
        output = LZNLatentClassificationOutput(
            logits=logits.to(dtype), posteriors=posteriors.to(dtype), predictions=predictions, points=points.to(dtype)
        )
        return output if return_dict else output.to_tuple()


def _for_flow(*tensors: Optional[torch.Tensor]):
    """`tensors` in the latent flows' dtype: float32, or float64 when the first is float64 (None stays None).

    The flows' logits reach 1e9 at small t and overflow float16; they are cheap, so half-precision models
    run them in float32 and hand the caller's dtype back."""
    dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    return tuple(None if tensor is None else tensor.to(dtype) for tensor in tensors)


def _noise_like(reference: torch.Tensor, noise: Optional[torch.Tensor], generator) -> torch.Tensor:
    if noise is None:
        return torch.randn(reference.shape, generator=generator, device=reference.device, dtype=reference.dtype)
    if noise.shape != reference.shape:
        raise ValueError(f"`noise` must have shape {tuple(reference.shape)}, got {tuple(noise.shape)}")
    return noise.to(device=reference.device, dtype=reference.dtype)


# ----------------------------------------------------------------------------------------------------------
# composites
# ----------------------------------------------------------------------------------------------------------
class LZNLatentSpaceMixin:
    """Latent-space operations shared by :class:`LZNModel` and :class:`LZNForImageClassification`.

    Expects `self.config` (:class:`LZNConfig`), `self.image_encoder` and `self.label_anchors` (or None).
    """

    def get_image_anchors(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values `[B, C, H, W]` in [-1, 1] -> anchors `[B, d]`."""
        return self.image_encoder(pixel_values, return_dict=True).anchors

    def get_image_features(
        self, pixel_values: torch.Tensor, output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None
    ) -> Union[LZNImageEncoderOutput, tuple]:
        """The image encoder's output, as transformers 5 vision models return it: `pooler_output` `[B, F]` is the
        representation (the ResNet's pooled backbone feature, or the NCSN++ anchors), beside `anchors` `[B, d]`
        and, when asked for, `hidden_states`. A tuple `(anchors, pooler_output[, hidden_states])` with
        `return_dict=False`."""
        hidden = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return self.image_encoder(pixel_values, output_hidden_states=hidden, return_dict=_use_return_dict(self.config, return_dict))

    def get_image_latents(
        self,
        pixel_values: Optional[torch.Tensor] = None,
        anchors: Optional[torch.Tensor] = None,
        noise: Optional[torch.Tensor] = None,
        reference_anchors: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        append_own_anchor: bool = False,
    ) -> torch.Tensor:
        """Image latents `[B, d]`: the forward flow of the image anchors (config's solver and steps).

        Args:
            pixel_values / anchors: the images, or their anchors `[B, d]` directly.
            noise: `[B, d]` N(0, I) prior noise (drawn with `generator` if None); the config's
                `prior_noise_scale` multiplies it.
            reference_anchors: `[N, d]` anchors defining the zones; default: this batch's anchors (upstream).
            append_own_anchor: each image's zones are `reference_anchors` plus its own anchor, so its latent
                does not depend on the other images of the batch.
        """
        if anchors is None:
            if pixel_values is None:
                raise ValueError("pass `pixel_values` or `anchors`")
            anchors = self.get_image_anchors(pixel_values)
        else:
            _check_float_tensor("anchors", anchors, ("B", self.config.latent_dim))
        if reference_anchors is not None:
            _check_float_tensor("reference_anchors", reference_anchors, ("N", self.config.latent_dim))
        anchors_flow, reference_anchors = _for_flow(anchors, reference_anchors)
        noise = self.config.prior_noise_scale * _noise_like(anchors_flow, noise, generator)
        latents = anchors_to_latents(
            anchors_flow,
            noise,
            reference_anchors,
            num_steps=self.config.image_flow_num_steps,
            solver=self.config.image_flow_solver,
            eps=self.config.image_flow_eps,
            append_own_anchor=append_own_anchor,
        )
        return latents.to(anchors.dtype)

    def _require_label_anchors(self) -> "LZNLabelAnchors":
        if self.label_anchors is None:
            raise ValueError("this model has no label anchors (config.label_anchors_config is None)")
        return self.label_anchors

    def get_label_latents(self, labels, noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Label encoder: class indices `[B]` -> latents `[B, d]` (see :meth:`LZNLabelAnchors.get_label_latents`)."""
        return self._require_label_anchors().get_label_latents(labels, noise=noise, generator=generator)

    def classify_latents(self, latents: torch.Tensor, class_weights: Optional[torch.Tensor] = None, return_dict: bool = True):
        """Label decoder: latents `[B, d]` -> classes (see :meth:`LZNLabelAnchors.classify_latents`)."""
        return self._require_label_anchors().classify_latents(latents, class_weights, return_dict)


class LZNModel(LZNLatentSpaceMixin, LZNPreTrainedModel):
    """A Latent Zoning Network: image encoder, optional image decoder, optional label anchors.

    Example::

        model = LZNModel(LZNConfig.from_preset("tiny-joint"))
        latents = model.get_image_latents(pixel_values)             # image -> latent (batch zones)
        predictions = model.classify_latents(latents).predictions  # latent -> label
        label_latents = model.get_label_latents([0, 2])            # label -> latent (for the decoder)
    """

    config_class = LZNConfig
    _lzn_model_card = "model"
    # an `LZNForImageClassification` folder: its reference-anchor bank is not part of the model
    _keys_to_ignore_on_load_unexpected = [r"^anchor_bank$"]

    def __init__(self, config: LZNConfig):
        super().__init__(config)
        self.image_encoder = LZNImageEncoder(config.image_encoder_config)
        self.image_decoder = None if config.image_decoder_config is None else LZNImageDecoder(config.image_decoder_config)
        self.label_anchors = None if config.label_anchors_config is None else LZNLabelAnchors(config.label_anchors_config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_latents: bool = False,
        noise: Optional[torch.Tensor] = None,
        reference_anchors: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> Union[LZNModelOutput, tuple]:
        """Images `[B, C, H, W]` -> anchors `[B, d]`, pooler_output `[B, F]` and, with `output_latents=True`,
        latents `[B, d]` (zones of the batch's anchors unless `reference_anchors` is given), with
        `output_hidden_states=True` the encoder's feature maps."""
        encoded = self.get_image_features(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        latents = None
        if output_latents:
            latents = self.get_image_latents(anchors=encoded.anchors, noise=noise, reference_anchors=reference_anchors, generator=generator)
        output = LZNModelOutput(anchors=encoded.anchors, pooler_output=encoded.pooler_output, latents=latents, hidden_states=encoded.hidden_states)
        return output if _use_return_dict(self.config, return_dict) else output.to_tuple()


class LZNForImageClassification(LZNLatentSpaceMixin, LZNPreTrainedModel):
    """Image -> image latent -> reverse flow over the label anchors -> class (lzn-method.md §2.4).

    Two modes:

    * **anchor bank** (default once :meth:`build_anchor_bank` has stored reference anchors of training
      images): each image's latent is computed against the bank plus its own anchor. An image gets the same
      prediction alone or in any batch. This is what `pipeline("image-classification")` uses.
    * **batch mode** (`use_anchor_bank=False`, or no bank): latents against the anchors of the batch itself
      (or `reference_anchors`); predictions depend on the batch-mates. Upstream's evaluation is this mode
      with random prior noise (`random_noise=True`), in batches of the training size (2000 for CIFAR-10).

    In both modes the prior noise is zero (each latent is its zone's centre), so a call is deterministic,
    unless `noise` is given or `random_noise=True` draws N(0, I) noise (with `generator`).

    Loads from an :class:`LZNModel` checkpoint (decoder weights ignored); its config holds no decoder (a copy of
    the given config without `image_decoder_config`), so an :class:`LZNModel` loads from a classifier folder.
    Logits are log posteriors.
    """

    config_class = LZNConfig
    _lzn_model_card = "classifier"
    _keys_to_ignore_on_load_unexpected = [r"image_decoder\..*"]

    def __init__(self, config: LZNConfig):
        if config.label_anchors_config is None:
            raise ValueError("LZNForImageClassification needs `label_anchors_config` in the config")
        if config.image_decoder_config is not None:  # the classifier holds no decoder: say so in its own config
            config = copy.deepcopy(config)
            config.image_decoder_config = None
        super().__init__(config)
        self.image_encoder = LZNImageEncoder(config.image_encoder_config)
        self.label_anchors = LZNLabelAnchors(config.label_anchors_config)
        bank = torch.zeros(config.anchor_bank_size, config.latent_dim) if config.anchor_bank_size > 0 else None
        self.register_buffer("anchor_bank", bank)  # [M, d] reference anchors of training images
        self.post_init()

    @torch.no_grad()
    def build_anchor_bank(self, pixel_values: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Store the anchors `[M, d]` of `pixel_values` (training images, `[M, C, H, W]` in [-1, 1]) as the
        reference bank of the batch-independent mode; saved with the model. Returns the bank."""
        self.eval()
        bank = torch.cat([self.get_image_anchors(chunk) for chunk in pixel_values.split(batch_size)])
        self.anchor_bank = bank.to(next(self.parameters()).dtype)
        self.config.anchor_bank_size = bank.shape[0]
        return self.anchor_bank

    def forward(
        self,
        pixel_values: torch.Tensor,
        use_anchor_bank: Optional[bool] = None,
        class_weights: Optional[torch.Tensor] = None,
        noise: Optional[torch.Tensor] = None,
        reference_anchors: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        random_noise: bool = False,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        labels: Optional[torch.Tensor] = None,
    ) -> Union[ImageClassifierOutput, tuple]:
        """pixel_values `[B, C, H, W]` -> `ImageClassifierOutput` with `logits` `[B, C]` (log posteriors), and
        `loss` when `labels` are given.

        Args:
            use_anchor_bank: default: True when a bank is stored (and no `reference_anchors` are given).
            class_weights: `[C]` class weights of the reverse label flow (upstream's weighted evaluation).
            noise: `[B, d]` N(0, I) prior noise; default zeros (the zone centres).
            reference_anchors: `[N, d]` anchors defining the zones in batch mode (default: the batch's).
            generator: draws the noise when `random_noise=True`.
            random_noise: draw N(0, I) prior noise instead of zeros (upstream's evaluation, with
                `use_anchor_bank=False`); predictions then vary from call to call unless `generator` is seeded.
            output_hidden_states: also return the encoder's feature maps as `hidden_states`.
            labels: `[B]` true class indices: `loss` is the cross-entropy of the log posteriors (computed in
                float32), as transformers' image classifiers report it (e.g. for `Trainer.evaluate`). It is not
                LZN's training objective (examples/train_joint.py): the log posteriors saturate (at about -87 in
                float32) once an image is deep in one zone, so this loss is a report, not a useful gradient.
        """
        if labels is not None:
            labels = check_labels(labels, self.config.label_anchors_config.num_classes)
        if use_anchor_bank is None:
            use_anchor_bank = self.anchor_bank is not None and reference_anchors is None
        if random_noise and noise is not None:
            raise ValueError("pass `noise` or `random_noise=True`, not both")
        encoded = self.get_image_features(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        anchors = encoded.anchors
        if labels is not None and labels.shape[0] != anchors.shape[0]:
            raise ValueError(f"`labels` must have one class index per image ({anchors.shape[0]}), got {labels.shape[0]}")
        if noise is None and not random_noise:
            noise = torch.zeros_like(anchors)
        if use_anchor_bank:
            if self.anchor_bank is None:
                raise ValueError("no anchor bank stored: call `build_anchor_bank(training_images)` or pass use_anchor_bank=False")
            latents = self.get_image_latents(
                anchors=anchors, noise=noise, reference_anchors=self.anchor_bank, generator=generator, append_own_anchor=True
            )
        else:
            latents = self.get_image_latents(anchors=anchors, noise=noise, reference_anchors=reference_anchors, generator=generator)
        logits = self.classify_latents(latents, class_weights).logits
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.to(logits.device))
        output = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=encoded.hidden_states)
        return output if _use_return_dict(self.config, return_dict) else output.to_tuple()
