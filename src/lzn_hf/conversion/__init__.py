"""Conversion of the LZN authors' released checkpoints (upstream ``torch.save`` dicts) to lzn_hf models.

| module | role |
|---|---|
| :mod:`.files` | read an upstream file: ``torch.load(weights_only=True)`` only, and say what a foreign file is |
| :mod:`.configs` | the :class:`~lzn_hf.LZNConfig` to build: preset, ``reference_config.json``, config |
| :mod:`.mapping` | shared: upstream key prefix, key-mapping records, state dict / EMA list -> module state dict, dtype policy, errors |
| :mod:`.ncsnpp` | NCSN++ encoder and decoder: key mapping, config from upstream's |
| :mod:`.resnet_gn` | ResNet-GN encoder: key mapping, config from upstream's |
| :mod:`.checkpoint` | a whole checkpoint -> :class:`~lzn_hf.LZNModel` |
| :mod:`.folders` | write the converted model folder atomically |

Entry points (also used by ``scripts/convert_original_checkpoint.py``)::

    from lzn_hf.conversion import convert_original_checkpoint, save_converted

    model = convert_original_checkpoint("000008000-000200000.pt", "cifar10-joint")
    save_converted(model, "lzn-cifar10-joint")
"""

from .checkpoint import convert_original_checkpoint
from .configs import lzn_config_from_reference, resolve_config
from .files import load_upstream_checkpoint
from .folders import check_output_dir, save_converted
from .mapping import UPSTREAM_PREFIX, strip_upstream_prefix

__all__ = [
    "convert_original_checkpoint",
    "load_upstream_checkpoint",
    "lzn_config_from_reference",
    "resolve_config",
    "check_output_dir",
    "save_converted",
    "UPSTREAM_PREFIX",
    "strip_upstream_prefix",
]
