"""The judge of generated 28x28 images (Fashion-MNIST, MNIST): a small CNN classifier trained on the real training
images. It answers "which class does this sample show?" (class-conditional samples: agreement with the conditioning
class) and its hidden layer is the feature space of the Fréchet distance (``fd_cnn``), as the MLP's is on the 8x8
digits (:func:`~lzn_hf.evaluation.metrics.fit_mlp_feature_extractor`). Its own accuracy on the held-out real images
is reported beside every score it gives. Images of at least :data:`CNN_JUDGE_MIN_SIZE` pixels a side get this judge;
smaller ones (the digits) keep the MLP features and the pixel SVC.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
                  hidden_units: int = 128, seed: int = 0) -> CNNJudge:
    """Train a :class:`CNNJudge` by cross-entropy on real images ``[N, C, H, W]`` in [-1, 1] (square) and their
    classes ``[N]``: Adam (``lr``), ``epochs`` seeded shuffles in batches of ``batch_size``, float32 on the CPU
    (deterministic for given data, seed and machine). On a stratified 10,000-image subset of Fashion-MNIST's
    training split, 5 epochs take about half a minute on 2 CPU cores (the whole 60,000, as ``evaluate`` trains it,
    six times that). Returns the judge in eval mode.
    """
    if pixel_values.dim() != 4 or pixel_values.shape[-1] != pixel_values.shape[-2]:
        raise ValueError(f"`pixel_values` must be square images [N, C, H, H], got shape {tuple(pixel_values.shape)}")
    if labels is None or len(labels) != len(pixel_values):
        raise ValueError("the CNN judge needs one class label per training image")
    if epochs < 1:
        raise ValueError(f"`epochs` must be >= 1, got {epochs}")
    torch.manual_seed(seed)
    images, labels = pixel_values.detach().float().cpu(), torch.as_tensor(labels).long().cpu()
    judge = CNNJudge(images.shape[-1], images.shape[1], int(labels.max()) + 1, hidden_units)
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
    return judge.eval()


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
