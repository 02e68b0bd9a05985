"""Reference models of an evaluation: an independent pixel classifier that judges class-conditional samples, and
the cross-entropy classifier with the same encoder (the ceiling of classification, the supervised probe baseline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fit_pixel_judge(pixel_values: torch.Tensor, labels: torch.Tensor):
    """An independent classifier of real images (scikit-learn SVC, RBF, on raw pixels in [0, 1]) used to check
    that class-conditional samples show their class. ``judge.predict(images01.reshape(n, -1))``."""
    from sklearn.svm import SVC

    features = ((pixel_values.float() + 1.0) / 2.0).reshape(len(pixel_values), -1).numpy()
    return SVC(C=10.0, gamma="scale").fit(features, labels.numpy())


def train_cross_entropy_classifier(encoder_config, train_images: torch.Tensor, train_labels: torch.Tensor, num_classes: int,
                                   num_steps: int = 500, batch_size: int = 128, learning_rate: float = 1e-3, seed: int = 0):
    """The supervised ceiling: the same image encoder architecture + a linear layer on its anchors, trained
    with cross-entropy (Adam). Returns ``predict(images) -> labels`` (a function, eval mode, no grad); the
    trained encoder is ``predict.encoder`` (the supervised baseline of the linear probe)."""
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

    predict.encoder = encoder
    return predict
