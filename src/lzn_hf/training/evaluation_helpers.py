"""Evaluation at the end of training: upstream's batch-mode accuracy, an independent pixel classifier that
judges class-conditional samples, and the cross-entropy ceiling with the same encoder.

(The linear probe of case study 2 is :func:`lzn_hf.evaluation.linear_probe_accuracy`.)
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def batch_mode_accuracy(classifier, pixel_values: torch.Tensor, labels: torch.Tensor, batch_size: int,
                        noise: str = "zero", filler: Optional[torch.Tensor] = None, seed: int = 0) -> float:
    """Held-out accuracy with upstream's procedure (lzn-method.md §2.4): latents against the anchors of each
    eval batch of ``batch_size`` images, no class weights.

    Args:
        classifier: an :class:`~lzn_hf.LZNForImageClassification` (EMA weights).
        noise: ``"zero"`` (zone centres) or ``"random"`` (N(0, I) prior noise drawn with ``seed``).
        filler: ``[M, C, H, W]`` extra (training) images whose anchors complete a last, short batch to
            ``batch_size`` reference anchors, so that every batch's zones come from the same number of anchors.
    """
    generator = torch.Generator().manual_seed(seed)
    device = next(classifier.parameters()).device
    filler_anchors = None if filler is None else classifier.get_image_anchors(filler.to(device))
    correct = 0
    for start in range(0, len(labels), batch_size):
        images = pixel_values[start : start + batch_size].to(device)
        anchors = classifier.get_image_anchors(images)  # [b, d]
        reference = anchors
        if filler_anchors is not None and len(images) < batch_size:
            reference = torch.cat([anchors, filler_anchors[: batch_size - len(images)]])  # [N, d]
        prior = torch.randn(anchors.shape, generator=generator).to(device) if noise == "random" else torch.zeros_like(anchors)
        latents = classifier.get_image_latents(anchors=anchors, noise=prior, reference_anchors=reference)
        predictions = classifier.classify_latents(latents).predictions.cpu()
        correct += int((predictions == labels[start : start + batch_size]).sum())
    return correct / len(labels)


def fit_pixel_judge(pixel_values: torch.Tensor, labels: torch.Tensor):
    """An independent classifier of real images (scikit-learn SVC, RBF, on raw pixels in [0, 1]) used to check
    that class-conditional samples show their class. ``judge.predict(images01.reshape(n, -1))``."""
    from sklearn.svm import SVC

    features = ((pixel_values.float() + 1.0) / 2.0).reshape(len(pixel_values), -1).numpy()
    return SVC(C=10.0, gamma="scale").fit(features, labels.numpy())


def train_cross_entropy_classifier(encoder_config, train_images: torch.Tensor, train_labels: torch.Tensor, num_classes: int,
                                   num_steps: int = 500, batch_size: int = 128, learning_rate: float = 1e-3, seed: int = 0):
    """The supervised ceiling: the same image encoder architecture + a linear layer on its anchors, trained
    with cross-entropy (Adam). Returns ``predict(images) -> labels`` (a function, eval mode, no grad)."""
    from ..modeling_lzn import LZNImageEncoder

    torch.manual_seed(seed)
    encoder = LZNImageEncoder(encoder_config)
    head = nn.Linear(encoder_config.latent_dim, num_classes)
    optimizer = torch.optim.Adam(list(encoder.parameters()) + list(head.parameters()), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    encoder.train()
    for _ in range(num_steps):
        index = torch.randint(len(train_labels), (batch_size,), generator=generator)
        logits = head(encoder(train_images[index], return_dict=True).anchors)
        loss = F.cross_entropy(logits, train_labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    encoder.eval()

    @torch.no_grad()
    def predict(images: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(encoder(chunk, return_dict=True).anchors).argmax(-1) for chunk in images.split(512)])

    return predict
