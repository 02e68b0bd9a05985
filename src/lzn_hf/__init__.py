"""lzn_hf: Latent Zoning Networks (Lin et al., NeurIPS 2025) for the Hugging Face ecosystem."""

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
]
