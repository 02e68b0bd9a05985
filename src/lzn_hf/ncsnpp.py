"""NCSN++ image encoder and image decoder of Latent Zoning Networks (LZN).

Both networks are built from the blocks of the NCSN++ U-Net (Song et al., "Score-Based Generative
Modeling through Stochastic Differential Equations", as used by Rectified Flow): BigGAN-style
residual blocks (optionally FIR up/down-sampling), channel self-attention, GroupNorm with
``min(C // 4, 32)`` groups and eps 1e-6, SiLU activations, and ``1 / sqrt(2)`` skip rescaling.

* :class:`NCSNppEncoder` -- the down-sampling half of NCSN++ without time conditioning, followed by
  *multi-scale latent heads*: every stored feature map (the stem conv output, each residual block
  output, each down-sampling output and the middle block output) may own a head
  ``Conv1x1(C_k -> head_channels) -> SiLU -> flatten -> Linear(-> hidden) -> [SiLU -> Linear]* ->
  Linear(-> latent_dim)``. The LZN anchor is the *sum* of the head outputs.

      pixel_values [B, C, H, W] in [-1, 1]  ->  anchors [B, latent_dim]

* :class:`NCSNppDecoder` -- the full NCSN++ U-Net used as the rectified-flow velocity network. The
  time embedding is replaced by an embedding of ``concat(latents, one_hot(label), time_embedding)``
  (``Linear -> SiLU -> Linear``, width ``4 * nf``) that is fed to every residual block.

      sample x_t [B, C, H, W], timesteps t [B], latents [B, d], class_labels [B, K] -> velocity [B, C, H, W]

  Time convention (upstream's, kept here): t = 0 is Gaussian noise ``x0``, t = 1 is data ``x1``,
  ``x_t = t * x1 + (1 - t) * x0`` and the network predicts ``x1 - x0``. The pipeline layer converts
  to diffusers' flow-matching orientation.

Construction, transformers style: ``NCSNppEncoder(config)`` and ``NCSNppDecoder(config)`` read their
hyper-parameters from an :class:`~lzn_hf.LZNImageEncoderConfig` / :class:`~lzn_hf.LZNImageDecoderConfig` (``nf``,
``ch_mult``, ...), and the blocks that share network-wide settings (dropout, FIR, skip rescale, init scale) take
the same config. The config classes declare, default and validate every field once (the ``FieldSpec`` tables
of :mod:`lzn_hf.configuration_lzn`); a typed record here would repeat that field list, so no signature in this
module names a config field with a default (``tests/test_configs.py`` checks it). Any object with the config's
attributes works; the modules trust its values, which the config classes have checked.

Weight initialisation has one home, :func:`init_ncsnpp_module`: the layers call it as they are created and
``LZNPreTrainedModel._init_weights`` calls it for weights that ``from_pretrained`` did not load.

This module depends on ``torch`` only; checkpoint conversion lives in :mod:`lzn_hf.conversion.ncsnpp`.
FIR resampling uses a pure-PyTorch ``upfirdn2d`` (no compiled ops).

Only the block variants used by the released LZN models are implemented (the config accepts no others):
``resblock_type="biggan"``, ``progressive`` in {"none", "output_skip"}, ``progressive_input`` in {"none",
"input_skip"}, ``progressive_combine`` in {"sum", "cat"}, SiLU ("swish") activations and GroupNorm.
``resamp_with_conv`` is not read (BigGAN blocks always resample inside the block).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "upfirdn2d",
    "upsample_2d",
    "downsample_2d",
    "naive_upsample_2d",
    "naive_downsample_2d",
    "time_dtype",
    "timestep_embedding",
    "GaussianFourierProjection",
    "ResnetBlockBigGAN",
    "AttnBlock",
    "InputSkipCombine",
    "NCSNppDownLevel",
    "NCSNppMidBlock",
    "NCSNppUpLevel",
    "LatentHead",
    "ConditionEmbedding",
    "NCSNppEncoder",
    "NCSNppDecoder",
    "init_ncsnpp_module",
    "variance_scaling_bound",
]

_TIME_SCALE = 999.0  # upstream feeds the network t * 999 (t in [0, 1])


# --------------------------------------------------------------------------------------------------
# Initialisation (upstream's "default_init": variance scaling, fan_avg, uniform)
# --------------------------------------------------------------------------------------------------


def variance_scaling_bound(weight: torch.Tensor, scale: float = 1.0) -> float:
    """Bound ``a`` of the U(-a, a) init of ``weight`` ([out, in, *kernel]): ``a = sqrt(3 * scale / fan_avg)``.

    ``scale == 0`` means 1e-10 (a numerically zero but non-degenerate init), as upstream.
    """
    scale = 1e-10 if scale == 0 else scale
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    fan_in = weight.shape[1] * receptive
    fan_out = weight.shape[0] * receptive
    return math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))


@torch.no_grad()
def init_ncsnpp_module(module: nn.Module) -> None:
    """Initialise one module of an NCSN++ network as upstream does; non-recursive.

    * ``Conv2d`` / ``Linear`` with an ``init_scale`` attribute (every layer made by the factories below):
      variance scaling (:func:`variance_scaling_bound`, fan-avg, uniform), zero bias.
    * other ``Conv2d`` / ``Linear`` (the latent heads) and ``GroupNorm``: PyTorch's defaults (``reset_parameters``).
    * :class:`GaussianFourierProjection`: frequencies ``W ~ N(0, scale^2)``.

    Only ``torch.nn.init`` functions write the tensors: ``transformers`` runs ``_init_weights`` with them guarded,
    so weights loaded by ``from_pretrained`` are kept.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)) and hasattr(module, "init_scale"):
        bound = variance_scaling_bound(module.weight, module.init_scale)
        nn.init.uniform_(module.weight, -bound, bound)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, nn.Linear, nn.GroupNorm)):
        module.reset_parameters()
    elif isinstance(module, GaussianFourierProjection):
        nn.init.normal_(module.W, std=module.scale)


def _scaled(layer: Union[nn.Conv2d, nn.Linear], scale: float) -> Union[nn.Conv2d, nn.Linear]:
    """Record the variance-scaling ``scale`` on ``layer`` (read by :func:`init_ncsnpp_module`) and initialise it."""
    layer.init_scale = scale
    init_ncsnpp_module(layer)
    return layer


def _conv3x3(in_channels: int, out_channels: int, scale: float = 1.0) -> nn.Conv2d:
    return _scaled(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), scale)


def _conv1x1(in_channels: int, out_channels: int, scale: float = 1.0) -> nn.Conv2d:
    return _scaled(nn.Conv2d(in_channels, out_channels, kernel_size=1), scale)


def _linear(in_features: int, out_features: int, scale: float = 1.0) -> nn.Linear:
    return _scaled(nn.Linear(in_features, out_features), scale)


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = min(channels // 4, 32)
    if groups < 1 or channels % groups:  # e.g. nf 48, ch_mult [1, 2, 2]: an up block reads 96 + 48 = 144 channels
        raise ValueError(
            f"this `nf` / `ch_mult` gives a layer of {channels} channels, which GroupNorm cannot split into "
            f"min({channels} // 4, 32) = {groups} groups: choose `nf` so that every level's channels (and the sums of "
            "adjacent levels' channels in the up path) are multiples of 4 below 128 and of 32 from 128 on"
        )
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6)


# --------------------------------------------------------------------------------------------------
# Resampling (pure PyTorch upfirdn2d)
# --------------------------------------------------------------------------------------------------


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: Tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR-filter and downsample every channel of ``x``.

    Args:
        x: ``[B, C, H, W]``.
        kernel: ``[kh, kw]`` FIR filter (applied as a true convolution, i.e. flipped).
        up, down: integer factors, same along both axes.
        pad: ``(before, after)`` padding applied along both axes after upsampling (may be negative).

    Returns:
        ``[B, C, (H * up + pad0 + pad1 - kh) // down + 1, (W * up + pad0 + pad1 - kw) // down + 1]``.
    """
    batch, channels, height, width = x.shape
    pad0, pad1 = pad
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))  # zeros after every sample
        x = x.reshape(batch, channels, height * up, width * up)
    x = F.pad(x, (max(pad0, 0), max(pad1, 0), max(pad0, 0), max(pad1, 0)))
    x = x[
        :,
        :,
        max(-pad0, 0) : x.shape[2] - max(-pad1, 0),
        max(-pad0, 0) : x.shape[3] - max(-pad1, 0),
    ]
    weight = torch.flip(kernel, [0, 1]).to(dtype=x.dtype, device=x.device)
    weight = weight[None, None].repeat(channels, 1, 1, 1)  # [C, 1, kh, kw], depthwise
    return F.conv2d(x, weight, stride=down, groups=channels)


def _fir_kernel(kernel: Sequence[float], gain: float, device: torch.device) -> torch.Tensor:
    """Separable 1-D taps -> normalised 2-D kernel times ``gain`` (float32)."""
    taps = torch.tensor(list(kernel), dtype=torch.float32, device=device)
    kernel_2d = torch.outer(taps, taps)
    return kernel_2d / kernel_2d.sum() * gain


def upsample_2d(x: torch.Tensor, kernel: Sequence[float], factor: int = 2) -> torch.Tensor:
    """FIR upsampling: ``[B, C, H, W] -> [B, C, H * factor, W * factor]``."""
    k = _fir_kernel(kernel, gain=factor**2, device=x.device)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: torch.Tensor, kernel: Sequence[float], factor: int = 2) -> torch.Tensor:
    """FIR downsampling: ``[B, C, H, W] -> [B, C, H // factor, W // factor]``."""
    k = _fir_kernel(kernel, gain=1.0, device=x.device)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


def naive_upsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Nearest-neighbour upsampling: ``[B, C, H, W] -> [B, C, H * factor, W * factor]``."""
    batch, channels, height, width = x.shape
    x = x.reshape(batch, channels, height, 1, width, 1).repeat(1, 1, 1, factor, 1, factor)
    return x.reshape(batch, channels, height * factor, width * factor)


def naive_downsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Box-filter downsampling: ``[B, C, H, W] -> [B, C, H // factor, W // factor]``."""
    batch, channels, height, width = x.shape
    x = x.reshape(batch, channels, height // factor, factor, width // factor, factor)
    return x.mean(dim=(3, 5))


def _pyramid_downsample(x: torch.Tensor, fir: bool, fir_kernel: Sequence[float]) -> torch.Tensor:
    """Parameter-free 2x downsampling of the input-skip image pyramid."""
    return downsample_2d(x, fir_kernel) if fir else F.avg_pool2d(x, 2, stride=2)


def _pyramid_upsample(x: torch.Tensor, fir: bool, fir_kernel: Sequence[float]) -> torch.Tensor:
    """Parameter-free 2x upsampling of the output-skip image pyramid."""
    if fir:
        return upsample_2d(x, fir_kernel)
    return F.interpolate(x, scale_factor=2, mode="nearest")


# --------------------------------------------------------------------------------------------------
# Time embeddings
# --------------------------------------------------------------------------------------------------


def time_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype time values and time embeddings are computed in: float64 for float64 networks, else float32.

    sin/cos of ``999 t`` need float32 digits; in float16 (spacing 0.5 near 999) they would be noise. The
    embedding is cast to the network's dtype only after it is computed."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding ``[sin(t * f_i), cos(t * f_i)]``: ``[B] -> [B, dim]`` (sine half first), computed
    in :func:`time_dtype` of ``timesteps`` (float32, or float64 for float64 input)."""
    dtype = time_dtype(timesteps.dtype)
    half_dim = dim // 2
    exponent = math.log(max_positions) / (half_dim - 1)
    freqs = torch.exp(torch.arange(half_dim, dtype=dtype, device=timesteps.device) * -exponent)
    args = timesteps.to(dtype)[:, None] * freqs[None, :]  # [B, half_dim]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # [B, 2 * half_dim]
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class GaussianFourierProjection(nn.Module):
    """Random Fourier features ``[sin(2 pi x W), cos(2 pi x W)]``: ``[B] -> [B, 2 * embedding_size]``.

    ``W`` is a frozen *parameter* (``requires_grad=False``) so that it is saved in the state dict.
    """

    def __init__(self, embedding_size: int, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.W = nn.Parameter(torch.empty(embedding_size), requires_grad=False)
        init_ncsnpp_module(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B]`` -> ``[B, 2E]`` in :func:`time_dtype` of ``x`` (float32 for half-precision weights)."""
        dtype = time_dtype(x.dtype)
        x_proj = x.to(dtype)[:, None] * self.W.to(dtype)[None, :] * 2 * math.pi  # [B, E]
        return torch.cat([torch.sin(x_proj), torch.cos(x_proj)], dim=-1)  # [B, 2E]


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------


class ResnetBlockBigGAN(nn.Module):
    """BigGAN residual block, optionally up/down-sampling by 2 and time(-latent) conditioned.

    ``[B, C_in, H, W] (+ temb [B, T]) -> [B, C_out, H', W']`` with H' = 2H (up), H/2 (down) or H.

        h = conv1(resample(silu(norm1(x)))) + time_emb_proj(silu(temb))
        h = conv2(dropout(silu(norm2(h))))
        out = (conv_shortcut(resample(x)) + h) / sqrt(2)          (conv_shortcut if C_in != C_out or resampling)

    The network-wide settings come from ``config``: ``dropout``, ``fir``, ``fir_kernel``, ``skip_rescale`` and
    ``init_scale`` (of ``conv2``).
    """

    def __init__(
        self,
        config,
        in_channels: int,
        out_channels: Optional[int] = None,
        temb_channels: Optional[int] = None,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        if up and down:
            raise ValueError("a residual block cannot both upsample and downsample")
        self.up = up
        self.down = down
        self.fir = config.fir
        self.fir_kernel = tuple(config.fir_kernel)
        self.skip_rescale = config.skip_rescale

        self.norm1 = _group_norm(in_channels)
        self.conv1 = _conv3x3(in_channels, out_channels)
        self.time_emb_proj = _linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(config.dropout)
        self.conv2 = _conv3x3(out_channels, out_channels, scale=config.init_scale)
        needs_shortcut = in_channels != out_channels or up or down
        self.conv_shortcut = _conv1x1(in_channels, out_channels) if needs_shortcut else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return upsample_2d(x, self.fir_kernel) if self.fir else naive_upsample_2d(x)
        if self.down:
            return downsample_2d(x, self.fir_kernel) if self.fir else naive_downsample_2d(x)
        return x

    def forward(self, hidden_states: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = F.silu(self.norm1(hidden_states))  # [B, C_in, H, W]
        h = self._resample(h)  # [B, C_in, H', W']
        skip = self._resample(hidden_states)  # [B, C_in, H', W']
        h = self.conv1(h)  # [B, C_out, H', W']
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = F.silu(self.norm2(h))
        h = self.dropout(h)
        h = self.conv2(h)  # [B, C_out, H', W']
        if self.conv_shortcut is not None:
            skip = self.conv_shortcut(skip)
        out = skip + h
        if self.skip_rescale:
            out = out / math.sqrt(2.0)
        return out


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions: ``[B, C, H, W] -> [B, C, H, W]``.

        h = norm(x);  q, k, v = to_q(h), to_k(h), to_v(h)            (per-position linear maps)
        out = (x + to_out(softmax(q k^T / sqrt(C)) v)) / sqrt(2)

    ``config`` gives ``skip_rescale`` and ``init_scale`` (of ``to_out``).
    """

    def __init__(self, config, channels: int):
        super().__init__()
        self.skip_rescale = config.skip_rescale
        self.norm = _group_norm(channels)
        self.to_q = _linear(channels, channels, scale=0.1)
        self.to_k = _linear(channels, channels, scale=0.1)
        self.to_v = _linear(channels, channels, scale=0.1)
        self.to_out = _linear(channels, channels, scale=config.init_scale)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = hidden_states.shape
        h = self.norm(hidden_states)
        h = h.reshape(batch, channels, height * width).transpose(1, 2)  # [B, HW, C]
        query = self.to_q(h)  # [B, HW, C]
        key = self.to_k(h)  # [B, HW, C]
        value = self.to_v(h)  # [B, HW, C]
        weights = torch.bmm(query, key.transpose(1, 2)) * (channels**-0.5)  # [B, HW, HW]
        weights = torch.softmax(weights, dim=-1)
        h = torch.bmm(weights, value)  # [B, HW, C]
        h = self.to_out(h)  # [B, HW, C]
        h = h.transpose(1, 2).reshape(batch, channels, height, width)  # [B, C, H, W]
        out = hidden_states + h
        if self.skip_rescale:
            out = out / math.sqrt(2.0)
        return out


class InputSkipCombine(nn.Module):
    """Merge the down-sampled input image into a feature map (NCSN++ ``progressive_input="input_skip"``).

    ``pyramid [B, C_img, H, W], hidden [B, C, H, W] -> [B, C, H, W]`` ("sum") or ``[B, 2C, H, W]`` ("cat"):
    ``C_img = config.num_channels``, the method is ``config.progressive_combine``.
    """

    def __init__(self, config, channels: int):
        super().__init__()
        self.method = config.progressive_combine
        self.conv = _conv1x1(config.num_channels, channels)

    def forward(self, pyramid: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        h = self.conv(pyramid)  # [B, C, H, W]
        if self.method == "cat":
            return torch.cat([h, hidden_states], dim=1)
        return h + hidden_states


class NCSNppDownLevel(nn.Module):
    """One resolution level of the NCSN++ down path.

    ``num_res_blocks`` x (residual block [-> attention]) then, unless it is the last level, a
    down-sampling residual block [-> merge of the down-sampled input image]. Returns every
    intermediate feature map (they are the U-Net skips and the encoder's head inputs).

    ``config`` gives ``num_res_blocks``, ``progressive_input`` / ``progressive_combine`` (the input skip) and the
    residual blocks' settings; ``temb_channels`` is None for the encoder (no time conditioning).
    """

    def __init__(
        self,
        config,
        in_channels: int,
        out_channels: int,
        use_attention: bool,
        add_downsample: bool,
        temb_channels: Optional[int],
    ):
        super().__init__()
        num_res_blocks = config.num_res_blocks
        self.fir = config.fir
        self.fir_kernel = tuple(config.fir_kernel)
        self.resnets = nn.ModuleList(
            ResnetBlockBigGAN(config, in_channels if i == 0 else out_channels, out_channels, temb_channels)
            for i in range(num_res_blocks)
        )
        self.attentions = (
            nn.ModuleList(AttnBlock(config, out_channels) for _ in range(num_res_blocks)) if use_attention else None
        )
        self.downsample = (
            ResnetBlockBigGAN(config, out_channels, temb_channels=temb_channels, down=True) if add_downsample else None
        )
        self.input_skip = (
            InputSkipCombine(config, out_channels)
            if add_downsample and config.progressive_input == "input_skip"
            else None
        )
        # channels of each feature map returned by forward, in order
        self.feature_channels: List[int] = [out_channels] * num_res_blocks
        if add_downsample:
            concatenated = self.input_skip is not None and config.progressive_combine == "cat"
            self.feature_channels.append(2 * out_channels if concatenated else out_channels)

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: Optional[torch.Tensor] = None,
        input_pyramid: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, List[torch.Tensor], Optional[torch.Tensor]]:
        """``[B, C_in, H, W] -> ([B, C', H', W'], features, input_pyramid [B, C_img, H', W'] or None)``."""
        features = []
        for i, resnet in enumerate(self.resnets):
            hidden_states = resnet(hidden_states, temb)  # [B, C_out, H, W]
            if self.attentions is not None:
                hidden_states = self.attentions[i](hidden_states)
            features.append(hidden_states)
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states, temb)  # [B, C_out, H/2, W/2]
            if self.input_skip is not None:
                input_pyramid = _pyramid_downsample(input_pyramid, self.fir, self.fir_kernel)  # [B, C_img, H/2, W/2]
                hidden_states = self.input_skip(input_pyramid, hidden_states)
            features.append(hidden_states)
        return hidden_states, features, input_pyramid


class NCSNppMidBlock(nn.Module):
    """Middle of the U-Net: residual block -> attention -> residual block, ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, config, channels: int, temb_channels: Optional[int]):
        super().__init__()
        self.resnet_1 = ResnetBlockBigGAN(config, channels, temb_channels=temb_channels)
        self.attention = AttnBlock(config, channels)
        self.resnet_2 = ResnetBlockBigGAN(config, channels, temb_channels=temb_channels)

    def forward(self, hidden_states: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        hidden_states = self.resnet_1(hidden_states, temb)
        hidden_states = self.attention(hidden_states)
        hidden_states = self.resnet_2(hidden_states, temb)
        return hidden_states


class NCSNppUpLevel(nn.Module):
    """One resolution level of the NCSN++ up path.

    ``len(resnet_in_channels)`` residual blocks, each fed ``concat(h, skip)`` (skips consumed last
    first) -> attention (once, if enabled) -> output-skip pyramid head (``progressive="output_skip"``:
    ``conv3x3(silu(norm(h)))`` to image channels, added to the upsampled pyramid) -> up-sampling
    residual block (unless it is the top-resolution level).

    ``config`` (a decoder config) gives ``progressive`` (the output skip, to ``num_channels`` channels) and the
    blocks' settings.
    """

    def __init__(
        self,
        config,
        resnet_in_channels: Sequence[int],
        out_channels: int,
        use_attention: bool,
        add_upsample: bool,
        temb_channels: Optional[int],
    ):
        super().__init__()
        self.fir = config.fir
        self.fir_kernel = tuple(config.fir_kernel)
        self.resnets = nn.ModuleList(
            ResnetBlockBigGAN(config, in_ch, out_channels, temb_channels) for in_ch in resnet_in_channels
        )
        self.attention = AttnBlock(config, out_channels) if use_attention else None
        if config.progressive == "output_skip":
            self.output_skip_norm = _group_norm(out_channels)
            self.output_skip_conv = _conv3x3(out_channels, config.num_channels, scale=config.init_scale)
        else:
            self.output_skip_norm = None
            self.output_skip_conv = None
        self.upsample = (
            ResnetBlockBigGAN(config, out_channels, temb_channels=temb_channels, up=True) if add_upsample else None
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        skips: List[torch.Tensor],
        temb: Optional[torch.Tensor] = None,
        pyramid: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``[B, C, H, W]`` (+ skips, popped in place) -> ``([B, C_out, H', W'], pyramid [B, C_img, H, W] or None)``."""
        for resnet in self.resnets:
            hidden_states = resnet(torch.cat([hidden_states, skips.pop()], dim=1), temb)  # [B, C_out, H, W]
        if self.attention is not None:
            hidden_states = self.attention(hidden_states)
        if self.output_skip_conv is not None:
            pyramid_h = self.output_skip_conv(F.silu(self.output_skip_norm(hidden_states)))  # [B, C_img, H, W]
            if pyramid is None:
                pyramid = pyramid_h
            else:
                pyramid = _pyramid_upsample(pyramid, self.fir, self.fir_kernel) + pyramid_h
        if self.upsample is not None:
            hidden_states = self.upsample(hidden_states, temb)  # [B, C_out, 2H, 2W]
        return hidden_states, pyramid


class LatentHead(nn.Module):
    """Latent head on one feature map: ``[B, C_k, r, r] -> [B, latent_dim]``.

    ``conv (1x1, C_k -> head_channels) -> SiLU -> flatten (head_channels * r * r) -> layers[0]
    -> [SiLU -> layers[i]]`` with ``head_num_layers`` Linear layers (hidden width ``head_hidden_dim``, the last
    one maps to ``latent_dim``), all read from ``config``. PyTorch's default initialisation.
    """

    def __init__(self, config, in_channels: int, resolution: int):
        super().__init__()
        num_layers = config.head_num_layers
        self.conv = nn.Conv2d(in_channels, config.head_channels, kernel_size=1)
        widths = [config.head_channels * resolution * resolution] + [config.head_hidden_dim] * (num_layers - 1)
        widths.append(config.latent_dim)
        self.layers = nn.ModuleList(nn.Linear(widths[i], widths[i + 1]) for i in range(num_layers))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv(features))  # [B, head_channels, r, r]
        h = h.flatten(1)  # [B, head_channels * r * r]
        for i, layer in enumerate(self.layers):
            if i > 0:
                h = F.silu(h)
            h = layer(h)  # [B, hidden_dim] ... [B, latent_dim]
        return h


class ConditionEmbedding(nn.Module):
    """``concat(latents, one_hot, time_embedding) [B, D_in] -> Linear -> SiLU -> Linear -> [B, 4 nf]``."""

    def __init__(self, in_features: int, embed_dim: int):
        super().__init__()
        self.linear_1 = _linear(in_features, embed_dim)
        self.linear_2 = _linear(embed_dim, embed_dim)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(condition)))


# --------------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------------


class NCSNppEncoder(nn.Module):
    """LZN image encoder: NCSN++ down path (no time input) + multi-scale latent heads.

    ``forward(pixel_values [B, C, H, W] in [-1, 1]) -> anchors [B, latent_dim]``; the anchor is the sum
    of the heads' outputs. Stored feature maps, in order: ``conv_in`` output, then per level every
    residual(-attention) output and the down-sampling output, then the middle block output. Feature
    map ``k`` owns ``heads[head_feature_indices.index(k)]`` if its resolution is in
    ``head_resolutions`` (``None`` = every resolution).

    Args:
        config: an :class:`~lzn_hf.LZNImageEncoderConfig` with ``encoder_type="ncsnpp"`` (fields read: below).

    Config fields:
        image_size: input height/width.
        num_channels: image channels.
        nf: base channel count; level ``i`` has ``nf * ch_mult[i]`` channels.
        ch_mult: channel multipliers, one level per entry (the resolution halves between levels).
        num_res_blocks: residual blocks per level.
        attn_resolutions: resolutions whose residual blocks are followed by attention.
        dropout: dropout inside residual blocks.
        fir, fir_kernel: FIR resampling (else box filter / nearest).
        skip_rescale: divide residual sums by sqrt(2).
        progressive_input: "none" or "input_skip" (merge the down-sampled image after each down block).
        progressive_combine: "sum" or "cat".
        init_scale: init scale of the last conv/linear of each residual/attention block (0 -> 1e-10).
        head_channels: channels of each head's 1x1 conv.
        head_hidden_dim: hidden width of the head MLPs.
        head_num_layers: Linear layers per head.
        head_resolutions: resolutions that get heads (None = all).
        latent_dim: anchor dimension d.
    """

    def __init__(self, config):
        super().__init__()
        image_size, nf, ch_mult = config.image_size, config.nf, config.ch_mult
        self.image_size = image_size
        self.in_channels = config.num_channels
        self.latent_dim = config.latent_dim
        self.progressive_input = config.progressive_input
        num_levels = len(ch_mult)
        resolutions = [image_size // 2**i for i in range(num_levels)]

        self.conv_in = _conv3x3(self.in_channels, nf)
        feature_channels = [nf]
        feature_resolutions = [image_size]
        channels = nf
        down_blocks = []
        for level in range(num_levels):
            is_last = level == num_levels - 1
            block = NCSNppDownLevel(
                config,
                in_channels=channels,
                out_channels=nf * ch_mult[level],
                use_attention=resolutions[level] in config.attn_resolutions,
                add_downsample=not is_last,
                temb_channels=None,  # no time conditioning
            )
            down_blocks.append(block)
            feature_channels += block.feature_channels
            feature_resolutions += [resolutions[level]] * config.num_res_blocks
            if not is_last:
                feature_resolutions.append(resolutions[level + 1])
            channels = block.feature_channels[-1]
        self.down_blocks = nn.ModuleList(down_blocks)
        self.mid_block = NCSNppMidBlock(config, channels, temb_channels=None)
        feature_channels.append(channels)
        feature_resolutions.append(resolutions[-1])

        #: indices (into the stored feature maps) of the feature maps that own a head
        head_resolutions = config.head_resolutions
        self.head_feature_indices: Tuple[int, ...] = tuple(
            k for k, res in enumerate(feature_resolutions) if head_resolutions is None or res in head_resolutions
        )
        if not self.head_feature_indices:
            raise ValueError(f"head_resolutions={head_resolutions} selects no feature map (resolutions {resolutions})")
        self.feature_channels: Tuple[int, ...] = tuple(feature_channels)
        self.feature_resolutions: Tuple[int, ...] = tuple(feature_resolutions)
        self.heads = nn.ModuleList(
            LatentHead(config, feature_channels[k], feature_resolutions[k]) for k in self.head_feature_indices
        )

    def forward_features(self, pixel_values: torch.Tensor) -> List[torch.Tensor]:
        """All stored feature maps ``[B, C_k, r_k, r_k]`` (heads' inputs), in head-slot order."""
        input_pyramid = pixel_values if self.progressive_input == "input_skip" else None
        hidden_states = self.conv_in(pixel_values)  # [B, nf, H, W]
        features = [hidden_states]
        for down_block in self.down_blocks:
            hidden_states, level_features, input_pyramid = down_block(hidden_states, None, input_pyramid)
            features += level_features
        hidden_states = self.mid_block(hidden_states)  # [B, C_last, H_min, W_min]
        features.append(hidden_states)
        return features

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values [B, C, H, W] in [-1, 1] -> anchors [B, latent_dim]``."""
        return self.forward_heads(self.forward_features(pixel_values))

    def forward_heads(self, features: List[torch.Tensor]) -> torch.Tensor:
        """The stored feature maps of :meth:`forward_features` -> anchors ``[B, latent_dim]`` (sum of the heads)."""
        anchors = None
        for k, head in zip(self.head_feature_indices, self.heads):
            head_out = head(features[k])  # [B, latent_dim]
            anchors = head_out if anchors is None else anchors + head_out
        return anchors


# --------------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------------


class NCSNppDecoder(nn.Module):
    """LZN image decoder: NCSN++ U-Net velocity network conditioned on (latent, label, time).

    ``forward(sample, timesteps, latents, class_labels=None) -> velocity``, upstream orientation:
    ``x_t = t * x1 + (1 - t) * x0`` (t = 0 noise, t = 1 data) and the output predicts ``x1 - x0``.
    The network sees ``sigma = 999 * clamp(t, 0, 1)``: a sinusoidal embedding of sigma (dim ``nf``,
    ``embedding_type="positional"``) or Gaussian Fourier features of ``log(sigma)`` (dim ``2 nf``,
    ``embedding_type="fourier"``); with ``scale_by_sigma`` the output is divided by sigma.

    Args:
        config: an :class:`~lzn_hf.LZNImageDecoderConfig`: the NCSN++ trunk fields as in
            :class:`NCSNppEncoder`, plus:

    Config fields:
        progressive: "none" or "output_skip" (image pyramid summed over the up path).
        embedding_type: "positional" or "fourier".
        fourier_scale: std of the Fourier frequencies at init.
        scale_by_sigma: divide the output by ``999 t``.
        latent_dim: dimension of the LZN latent.
        num_classes: size of the one-hot label input (0 = unconditional).
    """

    def __init__(self, config):
        super().__init__()
        image_size, nf, ch_mult = config.image_size, config.nf, config.ch_mult
        self.image_size = image_size
        self.in_channels = in_channels = config.num_channels
        self.nf = nf
        self.latent_dim = config.latent_dim
        self.num_classes = config.num_classes
        self.progressive = config.progressive
        self.progressive_input = config.progressive_input
        self.embedding_type = config.embedding_type
        self.scale_by_sigma = config.scale_by_sigma
        num_levels = len(ch_mult)
        resolutions = [image_size // 2**i for i in range(num_levels)]
        temb_channels = 4 * nf

        # conditioning: [latents, one_hot(label), time embedding] -> 4 nf
        if self.embedding_type == "fourier":
            self.time_proj = GaussianFourierProjection(nf, scale=config.fourier_scale)
            self.time_embed_dim = 2 * nf
        else:
            self.time_proj = None
            self.time_embed_dim = nf
        self.cond_embedding = ConditionEmbedding(self.latent_dim + self.num_classes + self.time_embed_dim, temb_channels)

        # down path
        self.conv_in = _conv3x3(in_channels, nf)
        skip_channels = [nf]
        channels = nf
        down_blocks = []
        for level in range(num_levels):
            block = NCSNppDownLevel(
                config,
                in_channels=channels,
                out_channels=nf * ch_mult[level],
                use_attention=resolutions[level] in config.attn_resolutions,
                add_downsample=level != num_levels - 1,
                temb_channels=temb_channels,
            )
            down_blocks.append(block)
            skip_channels += block.feature_channels
            channels = block.feature_channels[-1]
        self.down_blocks = nn.ModuleList(down_blocks)

        self.mid_block = NCSNppMidBlock(config, channels, temb_channels)

        # up path (levels from lowest to highest resolution)
        up_blocks = []
        for level in reversed(range(num_levels)):
            out_channels = nf * ch_mult[level]
            resnet_in_channels = []
            for _ in range(config.num_res_blocks + 1):
                resnet_in_channels.append(channels + skip_channels.pop())
                channels = out_channels
            up_blocks.append(
                NCSNppUpLevel(
                    config,
                    resnet_in_channels=resnet_in_channels,
                    out_channels=out_channels,
                    use_attention=resolutions[level] in config.attn_resolutions,
                    add_upsample=level != 0,
                    temb_channels=temb_channels,
                )
            )
        assert not skip_channels
        self.up_blocks = nn.ModuleList(up_blocks)

        if self.progressive == "output_skip":
            self.norm_out = None
            self.conv_out = None
        else:
            self.norm_out = _group_norm(channels)
            self.conv_out = _conv3x3(channels, in_channels, scale=config.init_scale)

    def forward(
        self,
        sample: torch.Tensor,
        timesteps: Union[torch.Tensor, float],
        latents: torch.Tensor,
        class_labels: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Velocity ``x1 - x0`` at ``x_t``.

        Args:
            sample: ``x_t`` ``[B, C, H, W]``.
            timesteps: ``t`` ``[B]`` (or a scalar) in [0, 1], 0 = noise, 1 = data.
            latents: ``[B, latent_dim]``.
            class_labels: one-hot ``[B, num_classes]`` float (or int64 ``[B]`` class indices);
                required iff ``num_classes > 0``.

        Returns:
            ``[B, C, H, W]`` velocity.
        """
        batch = sample.shape[0]
        dtype = self.conv_in.weight.dtype  # the network's dtype; time is computed in float32 (float64) first
        timesteps = torch.as_tensor(timesteps, dtype=time_dtype(dtype), device=sample.device)
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(batch)
        sigmas = timesteps.clamp(0.0, 1.0) * _TIME_SCALE  # [B]

        if self.time_proj is not None:
            time_emb = self.time_proj(torch.log(sigmas))  # [B, 2 nf]
        else:
            time_emb = timestep_embedding(sigmas, self.nf)  # [B, nf]
        time_emb = time_emb.to(dtype)
        latents = latents.to(dtype)
        if self.num_classes > 0:
            if class_labels is None:
                raise ValueError(
                    f"this decoder is label-conditional (num_classes={self.num_classes}); pass class_labels"
                )
            if class_labels.dim() == 1 and not class_labels.is_floating_point():
                class_labels = F.one_hot(class_labels, self.num_classes)
            condition = torch.cat([latents, class_labels.to(dtype), time_emb], dim=1)
        else:
            if class_labels is not None:
                raise ValueError("this decoder is unconditional (num_classes=0); class_labels must be None")
            condition = torch.cat([latents, time_emb], dim=1)  # [B, d (+K) + T]
        temb = self.cond_embedding(condition)  # [B, 4 nf]

        input_pyramid = sample if self.progressive_input == "input_skip" else None
        hidden_states = self.conv_in(sample)  # [B, nf, H, W]
        skips = [hidden_states]
        for down_block in self.down_blocks:
            hidden_states, level_features, input_pyramid = down_block(hidden_states, temb, input_pyramid)
            skips += level_features

        hidden_states = self.mid_block(hidden_states, temb)

        pyramid = None
        for up_block in self.up_blocks:
            hidden_states, pyramid = up_block(hidden_states, skips, temb, pyramid)

        if self.progressive == "output_skip":
            velocity = pyramid  # [B, C, H, W]
        else:
            velocity = self.conv_out(F.silu(self.norm_out(hidden_states)))  # [B, C, H, W]
        if self.scale_by_sigma:  # divided in float32: 999 t spans 1 to 999
            velocity = (velocity.to(sigmas.dtype) / sigmas.reshape(batch, 1, 1, 1)).to(velocity.dtype)
        return velocity
