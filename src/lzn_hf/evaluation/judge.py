"""The judge of generated 28x28 images (Fashion-MNIST, MNIST): a small CNN classifier trained on the real training
images. It answers "which class does this sample show?" (class-conditional samples: agreement with the conditioning
class) and its hidden layer is the feature space of the Fréchet distance (``fd_cnn``), as the MLP's is on the 8x8
digits (:func:`~lzn_hf.evaluation.metrics.fit_mlp_feature_extractor`). Its own accuracy on the held-out real images
is reported beside every score it gives. Images of at least :data:`CNN_JUDGE_MIN_SIZE` pixels a side get this judge;
smaller ones (the digits) keep the MLP features and the pixel SVC.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

#: Version of the judge's recipe in its cache key: bump it when :class:`CNNJudge` or :func:`fit_cnn_judge` changes.
JUDGE_CACHE_VERSION = "cnn-judge-v1"

#: Smallest image side judged by the CNN (two 2x poolings need at least 4 pixels; below 16 the digits' judges stay).
CNN_JUDGE_MIN_SIZE = 16


class CNNJudge(nn.Module):
    """Two 3x3 conv + ReLU + 2x2 max-pool stages (32, 64 channels), a ``hidden_units`` ReLU layer (the features),
    a linear classifier.

    ``judge.features(images)``: images ``[N, C, H, W]`` in [-1, 1] -> hidden features ``[N, hidden_units]`` (float64
    numpy, the Fréchet space); ``judge.predict(images)`` -> classes ``[N]``; ``judge.accuracy(images, labels)``.
    """

    kind = "cnn"

    def __init__(self, image_size: int, num_channels: int, num_classes: int, hidden_units: int = 128):
        super().__init__()
        if image_size < CNN_JUDGE_MIN_SIZE:
            raise ValueError(f"the CNN judge takes images of at least {CNN_JUDGE_MIN_SIZE} pixels a side, got {image_size}")
        self.trunk = nn.Sequential(
            nn.Conv2d(num_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * (image_size // 4) ** 2, hidden_units), nn.ReLU(),
        )
        self.classifier = nn.Linear(hidden_units, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` in [-1, 1] -> logits ``[N, num_classes]``."""
        return self.classifier(self.trunk(pixel_values))

    @torch.no_grad()
    def _map(self, images: torch.Tensor, function, batch_size: int = 1000) -> torch.Tensor:
        self.eval()
        return torch.cat([function(chunk.float().clamp(-1, 1)) for chunk in torch.as_tensor(images).split(batch_size)])

    def features(self, images) -> np.ndarray:
        return self._map(images, self.trunk).double().numpy()

    def predict(self, images) -> torch.Tensor:
        return self._map(images, lambda chunk: self(chunk).argmax(-1))

    def accuracy(self, images, labels) -> float:
        return (self.predict(images) == torch.as_tensor(labels).cpu()).float().mean().item()


def fit_cnn_judge(pixel_values: torch.Tensor, labels: torch.Tensor, epochs: int = 5, batch_size: int = 128, lr: float = 1e-3,
                  hidden_units: int = 128, seed: int = 0, cache_dir: Optional[Union[str, os.PathLike]] = None) -> CNNJudge:
    """Train a :class:`CNNJudge` by cross-entropy on real images ``[N, C, H, W]`` in [-1, 1] (square) and their
    classes ``[N]``: Adam (``lr``), ``epochs`` seeded shuffles in batches of ``batch_size``, float32 on the CPU
    (deterministic for given data, seed and machine). On a stratified 10,000-image subset of Fashion-MNIST's
    training split, 5 epochs take about half a minute on 2 CPU cores (the whole 60,000, as ``evaluate`` trains it,
    six times that). Returns the judge in eval mode.

    ``cache_dir``: a folder where the trained judge is kept (``<key>.safetensors``, written atomically), its key the
    SHA-256 of the images, labels and every argument here: the same data and arguments load it instead of training
    again (one judge serves every run evaluated on one dataset). A cached file that cannot be read is trained again
    and replaced. Loading reads tensors only (safetensors).
    """
    if pixel_values.dim() != 4 or pixel_values.shape[-1] != pixel_values.shape[-2]:
        raise ValueError(f"`pixel_values` must be square images [N, C, H, H], got shape {tuple(pixel_values.shape)}")
    if labels is None or len(labels) != len(pixel_values):
        raise ValueError("the CNN judge needs one class label per training image")
    if epochs < 1:
        raise ValueError(f"`epochs` must be >= 1, got {epochs}")
    images, labels = pixel_values.detach().float().cpu().contiguous(), torch.as_tensor(labels).long().cpu().contiguous()
    shape = {"image_size": images.shape[-1], "num_channels": images.shape[1], "num_classes": int(labels.max()) + 1, "hidden_units": hidden_units}
    torch.manual_seed(seed)
    judge = CNNJudge(**shape)
    cached = None
    if cache_dir is not None:
        cached = Path(cache_dir) / f"{judge_cache_key(images, labels, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, **shape)}.safetensors"
        if _load_cached_judge(judge, cached):
            return judge.eval()
        torch.manual_seed(seed)  # a file that failed to load may have filled part of the judge: start again
        judge = CNNJudge(**shape)
    optimizer = torch.optim.Adam(judge.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    judge.train()
    with torch.enable_grad():
        for _ in range(epochs):
            for batch in torch.randperm(len(images), generator=generator).split(batch_size):
                loss = F.cross_entropy(judge(images[batch]), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    judge.eval()
    if cached is not None:
        from safetensors.torch import save_file

        from .._atomic import write_atomically

        state = {name: tensor.detach().contiguous() for name, tensor in judge.state_dict().items()}
        write_atomically(cached, lambda temporary: save_file(state, str(temporary), metadata={key: str(value) for key, value in shape.items()}))
    return judge


def judge_cache_key(images: torch.Tensor, labels: torch.Tensor, **arguments) -> str:
    """SHA-256 (hex) of :data:`JUDGE_CACHE_VERSION`, the sorted ``arguments``, the images' shape and float32 bytes
    ``[N, C, H, W]`` and the labels' int64 bytes ``[N]``."""
    digest = hashlib.sha256(JUDGE_CACHE_VERSION.encode())
    digest.update(repr(sorted(arguments.items())).encode())
    digest.update(repr(tuple(images.shape)).encode())
    digest.update(images.float().contiguous().numpy().tobytes())
    digest.update(labels.long().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _load_cached_judge(judge: CNNJudge, path: Path) -> bool:
    """Fill ``judge`` with the weights saved at ``path``: True when done; False when absent or unreadable (warned)."""
    if not path.is_file():
        return False
    from safetensors.torch import load_file

    try:
        judge.load_state_dict(load_file(str(path)), strict=True)
    except Exception as error:  # a truncated or foreign file: train again, and replace it
        logger.warning("the cached judge %s cannot be read (%s): training it again", path, error)
        return False
    logger.info("CNN judge loaded from the cache: %s", path)
    return True


def default_judge_cache_dir() -> Path:
    """Where ``evaluate`` keeps its judges: ``$LZN_HF_CACHE/judges``, else ``<HF_HOME>/lzn_hf/judges`` (the Hugging
    Face cache, ``~/.cache/huggingface`` unless ``HF_HOME`` says otherwise)."""
    root = os.environ.get("LZN_HF_CACHE")
    if not root:
        from huggingface_hub import constants

        root = os.path.join(constants.HF_HOME, "lzn_hf")
    return Path(root) / "judges"


def uses_cnn_judge(images: torch.Tensor) -> bool:
    """Whether images ``[N, C, H, W]`` are judged by the CNN (sides of at least :data:`CNN_JUDGE_MIN_SIZE`)."""
    return min(images.shape[-2:]) >= CNN_JUDGE_MIN_SIZE


class PixelSVCJudge:
    """The digits' judge (:func:`~lzn_hf.evaluation.baselines.fit_pixel_judge`, an RBF SVC on raw pixels) behind the
    interface of :class:`CNNJudge`: ``predict(images) -> [N]``, ``accuracy(images, labels)``."""

    kind = "pixel_svc"

    def __init__(self, classifier):
        self.classifier = classifier

    def predict(self, images) -> torch.Tensor:
        images = torch.as_tensor(images).detach().cpu().float()
        return torch.as_tensor(self.classifier.predict(((images + 1) / 2).reshape(len(images), -1).numpy()))

    def accuracy(self, images, labels) -> float:
        return (self.predict(images) == torch.as_tensor(labels).cpu()).float().mean().item()


def fit_image_judge(pixel_values: torch.Tensor, labels: torch.Tensor, seed: int = 0):
    """The judge of class-conditional samples chosen by image size: :func:`fit_cnn_judge` for sides of at least
    :data:`CNN_JUDGE_MIN_SIZE` (Fashion-MNIST, MNIST), the pixel SVC below (the 8x8 digits). Both have ``kind``,
    ``predict(images)`` and ``accuracy(images, labels)``; images ``[N, C, H, W]`` in [-1, 1]."""
    from .baselines import fit_pixel_judge

    if uses_cnn_judge(pixel_values):
        return fit_cnn_judge(pixel_values, labels, seed=seed)
    return PixelSVCJudge(fit_pixel_judge(pixel_values, labels))
