"""lzn_hf: Latent Zoning Networks (Lin et al., NeurIPS 2025) for the Hugging Face ecosystem.

`LZNPipeline` is exported lazily (module `__getattr__`): `import lzn_hf` does not import diffusers;
`from lzn_hf import LZNPipeline` imports `lzn_hf.pipeline_lzn`, the only module that does.
"""

import importlib

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from . import latent_flow
from .configuration_lzn import (
    LZN_PRESETS,
    LZNConfig,
    LZNImageDecoderConfig,
    LZNImageEncoderConfig,
    LZNLabelAnchorsConfig,
)
from .image_processing_lzn import LZNImageProcessor, lzn_image_processor
from .modeling_lzn import (
    LZNForImageClassification,
    LZNImageDecoder,
    LZNImageEncoder,
    LZNLabelAnchors,
    LZNModel,
    LZNPreTrainedModel,
)

__version__ = "0.1.0"

for _config, _model in (
    (LZNConfig, LZNModel),
    (LZNImageEncoderConfig, LZNImageEncoder),
    (LZNImageDecoderConfig, LZNImageDecoder),
    (LZNLabelAnchorsConfig, LZNLabelAnchors),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoImageProcessor.register(_config, image_processor_classes={"pil": LZNImageProcessor}, exist_ok=True)
AutoModelForImageClassification.register(LZNConfig, LZNForImageClassification, exist_ok=True)

__all__ = [
    "latent_flow",
    "LZN_PRESETS",
    "LZNConfig",
    "LZNImageEncoderConfig",
    "LZNImageDecoderConfig",
    "LZNLabelAnchorsConfig",
    "LZNPreTrainedModel",
    "LZNImageEncoder",
    "LZNImageDecoder",
    "LZNLabelAnchors",
    "LZNModel",
    "LZNForImageClassification",
    "LZNImageProcessor",
    "lzn_image_processor",
    "LZNPipeline",
]

# name -> submodule, imported on first access (these submodules import diffusers)
_LAZY_EXPORTS = {"LZNPipeline": "pipeline_lzn"}


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        value = getattr(importlib.import_module(f".{_LAZY_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_EXPORTS))
