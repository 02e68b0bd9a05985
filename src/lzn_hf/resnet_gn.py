"""ResNet with GroupNorm and a GroupNorm projection head (LZN case study 2 image encoder).

This is the image encoder of the Latent Zoning Network representation-learning case study: a
bottleneck ResNet (ResNet-50 by default) in which *every* normalisation layer is a ``GroupNorm``
(32 groups) instead of a ``BatchNorm``, followed by a small MLP projection head whose output is the
LZN anchor.

Data flow (shapes for a ResNet-50, width multiplier 1, 224x224 input)::

    pixel_values [B, 3, H, W] in [-1, 1]
      -> (x + 1) / 2                                   [B, 3, H, W] in [0, 1] (no mean/std)
      -> stem: conv 7x7/2 -> GN -> ReLU -> maxpool 3x3/2   [B, 64, H/4, W/4]
      -> stages[0]: 3 bottlenecks, stride 1             [B, 256, H/4, W/4]
      -> stages[1]: 4 bottlenecks, stride 2             [B, 512, H/8, W/8]
      -> stages[2]: 6 bottlenecks, stride 2             [B, 1024, H/16, W/16]
      -> stages[3]: 3 bottlenecks, stride 2             [B, 2048, H/32, W/32]
      -> global average pool                            [B, 2048]   ("features", used by linear probes)
      -> head: Linear(2048->2048, no bias) -> GN(32) -> ReLU
               -> Linear(2048->256, no bias) -> GN(32)  [B, 256]    ("anchors", not L2-normalised)

A bottleneck block computes ``relu(shortcut(x) + residual(x))`` where the residual branch is
``conv1x1 -> GN -> ReLU -> conv3x3(stride) -> GN -> ReLU -> conv1x1 -> GN`` (the stride sits on the
3x3 convolution, the last GN's gamma is zero-initialised) and the shortcut is the identity, or, in
the first block of every stage, ``conv1x1(stride) -> GN`` (no ReLU, gamma initialised to one).
No convolution has a bias.

Construction, as :mod:`lzn_hf.ncsnpp`: ``ResNetGNEncoder(config)`` reads its fields from an
:class:`~lzn_hf.LZNImageEncoderConfig` with ``encoder_type="resnet_gn"`` (``depths``, ``width_multiplier``,
``head_num_layers``, ``num_groups``, ``norm_eps``, ``num_channels``, ``latent_dim``), where they are declared,
defaulted and validated once; the blocks take explicit arguments, none of them defaulted.
Weight initialisation has one home, :func:`init_resnet_gn_module`, used at construction and by
``LZNPreTrainedModel._init_weights``.

The module only depends on ``torch``; the checkpoint converter lives in
:mod:`lzn_hf.conversion.resnet_gn`.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

__all__ = [
    "RESNET_DEPTH_TO_LAYERS",
    "ShortcutProjection",
    "BottleneckGN",
    "ResNetGNStage",
    "ResNetGNStem",
    "ProjectionHeadGN",
    "ResNetGNEncoder",
    "init_resnet_gn_module",
]

#: Blocks per stage for the standard bottleneck depths (the upstream factory accepts these depths).
RESNET_DEPTH_TO_LAYERS: Dict[int, Tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}

#: Output channels of a bottleneck block relative to its inner width.
BOTTLENECK_EXPANSION = 4


def _group_norm(num_channels: int, num_groups: int, eps: float, zero_init_weight: bool = False) -> nn.GroupNorm:
    """A ``GroupNorm`` whose intended initial gamma (0 or 1) is recorded on the module.

    The flag ``zero_init_weight`` is read by :func:`init_resnet_gn_module`, so that a per-module
    initialiser (e.g. a ``transformers`` ``_init_weights``) can reproduce the upstream initialisation.
    """
    if num_channels % num_groups != 0:
        raise ValueError(f"GroupNorm: {num_channels} channels are not divisible into {num_groups} groups")
    norm = nn.GroupNorm(num_groups, num_channels, eps=eps, affine=True)
    norm.zero_init_weight = zero_init_weight
    return norm


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    """Bias-free convolution with symmetric "same"-style padding ``(k - 1) // 2``."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=(kernel_size - 1) // 2,
        bias=False,
    )


class ShortcutProjection(nn.Module):
    """Projection shortcut of the first block of a stage: ``conv1x1(stride) -> GN`` (no ReLU).

    Input ``[B, C_in, H, W]`` -> output ``[B, C_out, H / stride, W / stride]``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, num_groups: int, eps: float):
        super().__init__()
        self.conv = _conv(in_channels, out_channels, kernel_size=1, stride=stride)
        self.norm = _group_norm(out_channels, num_groups, eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(hidden_states))


class BottleneckGN(nn.Module):
    """Bottleneck residual block with GroupNorm.

    ``out = relu(shortcut(x) + norm3(conv3(relu(norm2(conv2(relu(norm1(conv1(x)))))))))``

    * ``conv1``: 1x1, ``in_channels -> width``
    * ``conv2``: 3x3 with ``stride``, ``width -> width``
    * ``conv3``: 1x1, ``width -> 4 * width``; ``norm3``'s gamma is zero-initialised
    * ``shortcut``: :class:`ShortcutProjection` when ``use_projection`` else identity (``None``)

    Input ``[B, in_channels, H, W]`` -> output ``[B, 4 * width, H / stride, W / stride]``.
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int,
        use_projection: bool,
        num_groups: int,
        eps: float,
    ):
        super().__init__()
        out_channels = width * BOTTLENECK_EXPANSION
        if not use_projection and (stride != 1 or in_channels != out_channels):
            raise ValueError("an identity shortcut needs stride 1 and in_channels == 4 * width")
        # Registered first so that parameters() order matches the upstream block (shortcut, then branch).
        self.shortcut: Optional[ShortcutProjection] = (
            ShortcutProjection(in_channels, out_channels, stride, num_groups, eps) if use_projection else None
        )
        self.conv1 = _conv(in_channels, width, kernel_size=1)
        self.norm1 = _group_norm(width, num_groups, eps)
        self.conv2 = _conv(width, width, kernel_size=3, stride=stride)
        self.norm2 = _group_norm(width, num_groups, eps)
        self.conv3 = _conv(width, out_channels, kernel_size=1)
        self.norm3 = _group_norm(out_channels, num_groups, eps, zero_init_weight=True)
        self.act = nn.ReLU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states if self.shortcut is None else self.shortcut(hidden_states)
        out = self.act(self.norm1(self.conv1(hidden_states)))
        out = self.act(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return self.act(out + residual)


class ResNetGNStage(nn.Module):
    """A stage of ``num_blocks`` bottlenecks; the first one projects the shortcut and carries the stride.

    Input ``[B, in_channels, H, W]`` -> output ``[B, 4 * width, H / stride, W / stride]``.
    """

    def __init__(
        self,
        num_blocks: int,
        in_channels: int,
        width: int,
        stride: int,
        num_groups: int,
        eps: float,
    ):
        super().__init__()
        if num_blocks < 1:
            raise ValueError("a stage needs at least one block")
        out_channels = width * BOTTLENECK_EXPANSION
        blocks = [BottleneckGN(in_channels, width, stride, True, num_groups, eps)]
        blocks += [BottleneckGN(out_channels, width, 1, False, num_groups, eps) for _ in range(num_blocks - 1)]
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = out_channels

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            hidden_states = block(hidden_states)
        return hidden_states


class ResNetGNStem(nn.Module):
    """Stem: ``conv 7x7 / 2 -> GN -> ReLU -> maxpool 3x3 / 2``.

    Input ``[B, in_channels, H, W]`` -> output ``[B, out_channels, ceil(H / 4), ceil(W / 4)]``.
    """

    def __init__(self, in_channels: int, out_channels: int, num_groups: int, eps: float):
        super().__init__()
        self.conv = _conv(in_channels, out_channels, kernel_size=7, stride=2)
        self.norm = _group_norm(out_channels, num_groups, eps)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.norm(self.conv(pixel_values))))


class ProjectionHeadGN(nn.Module):
    """MLP projection head with GroupNorm: ``num_layers`` x (Linear without bias -> GN [-> ReLU]).

    Every layer but the last maps ``in_dim -> in_dim`` and ends in a ReLU; the last maps
    ``in_dim -> out_dim`` and has no activation; its GN bias is zero-initialised (its gamma is one).
    GroupNorm on a ``[B, C]`` tensor normalises each sample over groups of ``C / num_groups``
    features. The layers live in ``linears[i]`` / ``norms[i]``.

    Input ``[B, in_dim]`` -> output ``[B, out_dim]`` (not L2-normalised).
    """

    def __init__(self, in_dim: int, out_dim: int, num_layers: int, num_groups: int, eps: float):
        super().__init__()
        if num_layers < 1:
            raise ValueError("the projection head needs at least one layer")
        dims = [in_dim] * num_layers + [out_dim]
        self.linears = nn.ModuleList(nn.Linear(dims[i], dims[i + 1], bias=False) for i in range(num_layers))
        self.norms = nn.ModuleList(_group_norm(dims[i + 1], num_groups, eps) for i in range(num_layers))
        self.act = nn.ReLU()
        self.num_layers = num_layers

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = features
        for i, (linear, norm) in enumerate(zip(self.linears, self.norms)):
            hidden = norm(linear(hidden))
            if i < self.num_layers - 1:
                hidden = self.act(hidden)
        return hidden


@torch.no_grad()
def init_resnet_gn_module(module: nn.Module) -> None:
    """Initialise one (sub)module as upstream does; non-recursive. :meth:`ResNetGNEncoder.reset_parameters` and
    ``LZNPreTrainedModel._init_weights`` both call it.

    * ``Conv2d`` / ``Linear``: PyTorch's default initialisation (``module.reset_parameters()``).
    * ``GroupNorm``: bias 0; weight 0 if the layer is the last norm of a bottleneck residual branch
      (flag ``zero_init_weight``), else 1. This includes the head's last GN: gamma 1, bias 0.

    Only ``torch.nn.init`` functions write the tensors: ``transformers`` runs ``_init_weights`` with them guarded,
    so weights loaded by ``from_pretrained`` are kept.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        module.reset_parameters()
    elif isinstance(module, nn.GroupNorm):
        if module.affine:
            if getattr(module, "zero_init_weight", False):
                nn.init.zeros_(module.weight)
            else:
                nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class ResNetGNEncoder(nn.Module):
    """ResNet-GN backbone + GroupNorm projection head; maps images in [-1, 1] to LZN anchors.

    Args:
        config: an :class:`~lzn_hf.LZNImageEncoderConfig` with ``encoder_type="resnet_gn"`` (fields read: below).
        gradient_checkpointing: run the backbone (stem + stages) through
            ``torch.utils.checkpoint.checkpoint_sequential`` when gradients are enabled.
        gradient_checkpointing_segments: number of checkpoint segments (upstream: 5 = stem + 4 stages).

    Config fields:
        depths: blocks per stage (ResNet-50: ``(3, 4, 6, 3)``).
        width_multiplier: multiplies all channel counts (stem ``64 * m``, stage widths ``(64, 128, 256,
            512) * m``, backbone output ``2048 * m``).
        latent_dim: anchor / latent dimension (output of the head, ``projection_dim``), 256 in case study 2.
        head_num_layers: number of Linear+GN layers in the head (2 in case study 2); the hidden width
            equals the feature dimension.
        num_groups: GroupNorm groups everywhere (32).
        norm_eps: GroupNorm epsilon (PyTorch default 1e-5).
        num_channels: image channels (3).

    Attributes:
        feature_dim: backbone output / linear-probe feature size (``2048 * width_multiplier``).
        stem, stages, head: the submodules.
    """

    def __init__(self, config, gradient_checkpointing: bool = False, gradient_checkpointing_segments: int = 5):
        super().__init__()
        self.depths = depths = tuple(int(d) for d in config.depths)
        self.width_multiplier = width_multiplier = config.width_multiplier
        self.projection_dim = projection_dim = config.latent_dim
        self.head_num_layers = config.head_num_layers
        self.num_groups = num_groups = config.num_groups
        self.norm_eps = norm_eps = config.norm_eps
        self.in_channels = in_channels = config.num_channels
        self.gradient_checkpointing = gradient_checkpointing
        self.gradient_checkpointing_segments = gradient_checkpointing_segments

        stem_channels = 64 * width_multiplier
        self.stem = ResNetGNStem(in_channels, stem_channels, num_groups, norm_eps)
        stages = []
        channels = stem_channels
        for i, num_blocks in enumerate(depths):
            width = 64 * (2**i) * width_multiplier
            stage = ResNetGNStage(num_blocks, channels, width, 1 if i == 0 else 2, num_groups, norm_eps)
            stages.append(stage)
            channels = stage.out_channels
        self.stages = nn.ModuleList(stages)
        self.feature_dim = channels
        self.head = ProjectionHeadGN(channels, projection_dim, self.head_num_layers, num_groups, norm_eps)
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    def reset_parameters(self) -> None:
        """Re-initialise every parameter as upstream does (see :func:`init_resnet_gn_module`)."""
        for module in self.modules():
            init_resnet_gn_module(module)

    init_weights = reset_parameters

    # --------------------------------------------------------------- forward
    def _backbone_modules(self) -> List[nn.Module]:
        return [self.stem, *self.stages]

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Backbone features for linear probes.

        Args:
            pixel_values: ``[B, in_channels, H, W]`` images in [-1, 1].

        Returns:
            ``[B, feature_dim]`` globally average-pooled backbone output (2048-d for ResNet-50).
        """
        if self.gradient_checkpointing and torch.is_grad_enabled():
            modules = self._backbone_modules()
            segments = max(1, min(self.gradient_checkpointing_segments, len(modules)))
            hidden = checkpoint_sequential(modules, segments, (pixel_values + 1.0) / 2.0, use_reentrant=False)
        else:
            hidden = self.forward_feature_maps(pixel_values)[-1]
        return hidden.mean(dim=(2, 3))

    def forward_feature_maps(self, pixel_values: torch.Tensor) -> List[torch.Tensor]:
        """The stem's and every stage's output map, ``[B, C_k, H_k, W_k]`` (stem 64 m, stages 256 m ... 2048 m
        channels); the last one, averaged over space, is :meth:`forward_features`. Never checkpointed."""
        hidden, maps = (pixel_values + 1.0) / 2.0, []
        for module in self._backbone_modules():
            hidden = module(hidden)
            maps.append(hidden)
        return maps

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Projection head: ``[B, feature_dim]`` -> anchors ``[B, projection_dim]`` (not normalised)."""
        return self.head(features)

    def forward_with_features(self, pixel_values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One pass returning ``(anchors [B, projection_dim], features [B, feature_dim])``."""
        features = self.forward_features(pixel_values)
        return self.forward_head(features), features

    def forward(
        self, pixel_values: torch.Tensor, return_features: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Anchors ``[B, projection_dim]`` for images ``[B, in_channels, H, W]`` in [-1, 1].

        With ``return_features=True`` returns ``(anchors, features)`` like :meth:`forward_with_features`.
        """
        anchors, features = self.forward_with_features(pixel_values)
        return (anchors, features) if return_features else anchors

    def extra_repr(self) -> str:
        return (
            f"depths={self.depths}, width_multiplier={self.width_multiplier}, feature_dim={self.feature_dim}, "
            f"projection_dim={self.projection_dim}, head_num_layers={self.head_num_layers}, "
            f"num_groups={self.num_groups}, gradient_checkpointing={self.gradient_checkpointing}"
        )
