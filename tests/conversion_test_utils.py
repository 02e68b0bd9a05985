"""Helpers of the conversion tests: the inverse mapping (lzn_hf -> upstream layout), upstream key lists, the parity
fixtures converted once per session, and upstream-format checkpoints built from a layout file."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from typing import Dict, List, Optional

import torch
from lzn_test_utils import PARITY_DIR, parity_folder
from safetensors.torch import load_file
from torch import nn

from lzn_hf.conversion import UPSTREAM_PREFIX, convert_original_checkpoint
from lzn_hf.conversion.checkpoint import network_key_mapping

LAYOUT_DIR = PARITY_DIR / "upstream_layouts"


def upstream_keys(network: nn.Module, prefix: str = "", ema: bool = False) -> List[str]:
    """Upstream state-dict keys of ``network``, in order; ``ema=True``: the keys of the EMA ``shadow_params`` list."""
    mappings, _ = network_key_mapping(network)
    return [prefix + m.upstream_key for m in mappings if not (ema and m.frozen)]


def to_upstream(network: nn.Module, prefix: str = UPSTREAM_PREFIX, sigmas: Optional[torch.Tensor] = None) -> "OrderedDict[str, torch.Tensor]":
    """``network``'s weights as an upstream-layout state dict, keys in upstream order; ``sigmas`` (the decoder buffer,
    see :func:`ncsnpp_noise_scales`) goes first when given."""
    mappings, _ = network_key_mapping(network)
    local = network.state_dict()
    upstream = OrderedDict() if sigmas is None else OrderedDict([(prefix + "sigmas", sigmas)])
    for m in mappings:
        upstream[prefix + m.upstream_key] = local[m.local_key].t().contiguous() if m.transpose else local[m.local_key]
    return upstream


def ncsnpp_noise_scales(sigma_min: float, sigma_max: float, num_scales: int) -> torch.Tensor:
    """The ``sigmas`` buffer of upstream's NCSN++ decoder: ``num_scales`` noise scales, geometric from ``sigma_max``
    down to ``sigma_min``, float64 (unused by LZN's rectified flow; lzn_hf drops it)."""
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), num_scales, dtype=torch.float64))


class ParityFixture:
    """One folder of ``../shared/parity``: reference config, checkpoint, inputs, outputs, and the converted models."""

    def __init__(self, name: str):
        root = parity_folder(name)  # skips outside CI when absent; from here on a wrong value is a failure
        self.name = name
        self.reference = json.loads((root / "reference_config.json").read_text())
        self.summary = self.reference["summary"]
        self.checkpoint = torch.load(root / "checkpoint.pt", map_location="cpu", weights_only=True)
        self.inputs = load_file(str(root / "inputs.safetensors"))
        self.outputs = load_file(str(root / "outputs.safetensors"))
        self._models: Dict[bool, nn.Module] = {}

    def model(self, ema: bool):
        """The :class:`~lzn_hf.LZNModel` converted from the checkpoint (EMA or raw weights), eval mode."""
        if ema not in self._models:
            self._models[ema] = convert_original_checkpoint(self.checkpoint, self.reference, use_ema=ema).eval()
        return self._models[ema]


_FIXTURES: Dict[str, ParityFixture] = {}


def parity_fixture(name: str) -> ParityFixture:
    if name not in _FIXTURES:
        _FIXTURES[name] = ParityFixture(name)
    return _FIXTURES[name]


def load_layout(name: str) -> dict:
    """A released checkpoint's layout (``upstream_layouts/<name>.json``: keys, shapes, dtypes, EMA key order)."""
    parity_folder("upstream_layouts")
    return json.loads((LAYOUT_DIR / f"{name}.json").read_text())


def layout_checkpoint(layout: dict) -> dict:
    """An upstream-format checkpoint with the layout's keys, shapes and dtypes: a different constant in every tensor
    (raw and EMA alike), as stride-0 views that take no memory."""
    checkpoint, count = {}, 0
    for part, entry in layout["models"].items():
        if part.endswith("_ema"):
            continue
        shapes = {key: (shape, getattr(torch, dtype)) for key, shape, dtype in entry["state_dict"]}
        values = {}
        for key in [*shapes, *layout["models"][f"{part}_ema"]["shadow_param_keys"]]:
            count += 1
            shape, dtype = shapes[key]
            values.setdefault(key, []).append(torch.tensor(count / 7, dtype=dtype).expand(shape))
        checkpoint[part] = {key: tensors[0] for key, tensors in values.items()}
        ema = layout["models"][f"{part}_ema"]
        checkpoint[f"{part}_ema"] = {"decay": ema["decay"], "num_updates": 0, "shadow_params": [values[key][1] for key in ema["shadow_param_keys"]]}
    return checkpoint
