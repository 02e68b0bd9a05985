"""ResNet-GN encoder (case study 2): which upstream key is which :mod:`lzn_hf.resnet_gn` key, and the config.

Upstream layout (keys as stored start with ``model.module.``)::

    net.0.0.weight                         stem conv            -> stem.conv.weight
    net.0.1.0.{weight,bias}                stem GroupNorm       -> stem.norm.*
    net.{s+1}.blocks.{b}.projection.shortcut.weight             -> stages.{s}.blocks.{b}.shortcut.conv.weight
    net.{s+1}.blocks.{b}.projection.bn.0.{weight,bias}          -> stages.{s}.blocks.{b}.shortcut.norm.*
    net.{s+1}.blocks.{b}.net.{0,2,4}.weight        convs 1-3    -> stages.{s}.blocks.{b}.conv{1,2,3}.weight
    net.{s+1}.blocks.{b}.net.{1,3,5}.0.{weight,bias}  GNs 1-3   -> stages.{s}.blocks.{b}.norm{1,2,3}.*
    head.layers.{3i}.weight                head Linear i        -> head.linears.{i}.weight
    head.layers.{3i+1}.{weight,bias}       head GroupNorm i     -> head.norms.{i}.*

(head index ``3i + 2`` is a parameter-free ReLU). The mapping is derived by walking the network in upstream order
(:func:`encoder_key_mapping`), which is also upstream's ``parameters()`` order, i.e. the order of the unnamed EMA
``shadow_params`` list. Every parameter is trainable upstream, so the EMA list has one tensor per key.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Tuple

from torch import nn

from ..resnet_gn import RESNET_DEPTH_TO_LAYERS, ResNetGNEncoder
from .mapping import KeyMapping

__all__ = ["encoder_key_mapping", "encoder_config_from_upstream"]


def _leaves(network: ResNetGNEncoder) -> Iterator[Tuple[str, str, nn.Module]]:
    """``(upstream prefix, local prefix, layer)`` of every layer with parameters, in upstream order."""
    yield "net.0.0.", "stem.conv.", network.stem.conv
    yield "net.0.1.0.", "stem.norm.", network.stem.norm
    for s, stage in enumerate(network.stages):
        for b, block in enumerate(stage.blocks):
            upstream, local = f"net.{s + 1}.blocks.{b}.", f"stages.{s}.blocks.{b}."
            if block.shortcut is not None:
                yield upstream + "projection.shortcut.", local + "shortcut.conv.", block.shortcut.conv
                yield upstream + "projection.bn.0.", local + "shortcut.norm.", block.shortcut.norm
            for j, (conv, norm) in enumerate(((block.conv1, block.norm1), (block.conv2, block.norm2), (block.conv3, block.norm3))):
                yield f"{upstream}net.{2 * j}.", f"{local}conv{j + 1}.", conv
                yield f"{upstream}net.{2 * j + 1}.0.", f"{local}norm{j + 1}.", norm
    for i, (linear, norm) in enumerate(zip(network.head.linears, network.head.norms)):
        yield f"head.layers.{3 * i}.", f"head.linears.{i}.", linear
        yield f"head.layers.{3 * i + 1}.", f"head.norms.{i}.", norm


def encoder_key_mapping(network: ResNetGNEncoder) -> List[KeyMapping]:
    """Every parameter of ``network``, in upstream ``parameters()`` (= state-dict = EMA) order."""
    if not isinstance(network, ResNetGNEncoder):
        raise TypeError(f"expected a ResNetGNEncoder, got {type(network).__name__}")
    return [
        KeyMapping(upstream + name, local + name)
        for upstream, local, layer in _leaves(network)
        for name, _ in layer.named_parameters(recurse=False)
    ]


def encoder_config_from_upstream(resnet: Mapping[str, Any], *, image_size: int, num_channels: int) -> Dict[str, Any]:
    """:class:`~lzn_hf.LZNImageEncoderConfig` kwargs (``encoder_type="resnet_gn"``) from an upstream ResNet summary.

    Takes upstream's ``encoder.params`` (``depth``, ``width_multiplier``, ``head_out_dim``, ``head_num_layers``), a
    parity fixture's ``summary["resnet"]`` or a layout file's ``config_summary["resnet"]["effective"]`` (which add
    ``layers``, ``groupnorm_groups`` or ``head_groupnorm_groups``, ``sk_ratio``, ``input_rescale``).

    Raises:
        ValueError: for settings lzn_hf does not implement (selective kernels, another input rescale, mixed GroupNorm
            group counts) or inconsistent ones (``depth`` disagreeing with ``layers``).
    """
    depth = resnet.get("depth")
    if depth is not None and int(depth) not in RESNET_DEPTH_TO_LAYERS:
        raise ValueError(f"the upstream ResNet has depth {depth}; lzn_hf knows depths {sorted(RESNET_DEPTH_TO_LAYERS)}")
    depths = [int(n) for n in resnet["layers"]] if "layers" in resnet else list(RESNET_DEPTH_TO_LAYERS[int(depth or 50)])
    if depth is not None and list(RESNET_DEPTH_TO_LAYERS[int(depth)]) != depths:
        raise ValueError(f"the upstream ResNet's depth {depth} disagrees with its layers {depths}")
    if float(resnet.get("sk_ratio") or 0) != 0:
        raise ValueError(f"the upstream ResNet has sk_ratio={resnet['sk_ratio']}; selective-kernel ResNets are not supported")
    rescale = str(resnet.get("input_rescale", "(x + 1) / 2"))
    if rescale.replace(" ", "") != "(x+1)/2":
        raise ValueError(f"the upstream ResNet rescales its input as {rescale!r}; lzn_hf supports only (x + 1) / 2")
    head_groups = [int(g) for g in resnet.get("head_groupnorm_groups", [])]
    groups = {int(resnet.get("groupnorm_groups", head_groups[0] if head_groups else 32)), *head_groups}
    if len(groups) != 1:
        raise ValueError(f"the upstream ResNet mixes GroupNorm group counts {sorted(groups)}; lzn_hf uses one count")
    width = int(resnet.get("width_multiplier", 1))
    if int(resnet.get("backbone_channels_out", 2048 * width)) != 2048 * width:
        raise ValueError(f"the upstream ResNet has {resnet['backbone_channels_out']} backbone channels; a ResNet of width {width} has {2048 * width}")
    return {
        "encoder_type": "resnet_gn",
        "image_size": image_size,
        "num_channels": num_channels,
        "latent_dim": int(resnet.get("head_out_dim", 256)),
        "depths": depths,
        "width_multiplier": width,
        "head_num_layers": int(resnet.get("head_num_layers", 2)),
        "num_groups": groups.pop(),
    }
