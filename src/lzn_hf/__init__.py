"""lzn_hf: Latent Zoning Networks for the Hugging Face ecosystem."""

__version__ = "0.1.0"
