"""The linear-probe protocol of case study 2, one for every row of a comparison (LZN, SimCLR, a random-init
encoder, a cross-entropy-trained encoder, raw pixels):

* training set: the training split, whole or a fixed stratified subset (``--max_eval_samples``, drawn with
  :data:`~lzn_hf.training.data.SUBSET_SEED` whatever the run's seed: every row and every seed sees the same images);
* test set: the held-out split (Fashion-MNIST, MNIST: the official 10,000 test images);
* features: frozen, standardised with the training features' mean and standard deviation;
* probe: :func:`~lzn_hf.evaluation.metrics.linear_probe_accuracy` (a zero-initialised linear layer, AdamW, batch
  256, ``epochs`` and ``lr`` as given, seeded);
* the feature probed (:data:`PROBE_FEATURES`): ``"pooler_output"``, the encoder's representation output (ResNet-GN:
  the pooled backbone feature before the projection head, as the paper probes; NCSN++: the anchor, after the latent
  heads), and ``"backbone"``, the feature before any head (ResNet-GN: the same pooled feature; NCSN++: every
  feature map the latent heads read, averaged over space and concatenated, ``sum_k C_k`` values).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from .metrics import linear_probe_accuracy

PROBE_FEATURES = ("pooler_output", "backbone")


@torch.no_grad()
def encoder_features(encoder, images: torch.Tensor, feature: str = "pooler_output", batch_size: int = 256) -> torch.Tensor:
    """Frozen features ``[M, F]`` (float32, CPU) of images ``[M, C, H, W]`` in [-1, 1] from an
    :class:`~lzn_hf.LZNImageEncoder` (eval mode), ``feature`` one of :data:`PROBE_FEATURES`."""
    if feature not in PROBE_FEATURES:
        raise ValueError(f"`feature` must be one of {PROBE_FEATURES}, got {feature!r}")
    encoder.eval()
    device = next(encoder.parameters()).device
    backbone_maps = feature == "backbone" and encoder.config.encoder_type == "ncsnpp"
    chunks = []
    for chunk in images.split(batch_size):
        output = encoder(chunk.to(device), output_hidden_states=backbone_maps, return_dict=True)
        if backbone_maps:
            chunks.append(torch.cat([hidden.float().mean(dim=(2, 3)) for hidden in output.hidden_states], dim=1).cpu())  # [b, sum C_k]
        else:
            chunks.append(output.pooler_output.float().cpu())
    return torch.cat(chunks)


def probed_features(encoder) -> Sequence[str]:
    """The features worth probing: both for NCSN++ encoders (anchor and backbone differ), one for ResNet-GN."""
    return PROBE_FEATURES if encoder.config.encoder_type == "ncsnpp" else PROBE_FEATURES[:1]


def probe_accuracies(encoder, train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor, test_labels: torch.Tensor,
                     epochs: int, lr: float, seed: int, features: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """The protocol's accuracy per feature: ``{"pooler_output": acc, "backbone": acc}`` (``features``: default
    :func:`probed_features`); ``encoder=None`` probes the raw pixels (``{"pixels": acc}``)."""
    if encoder is None:
        pairs = {"pixels": (train_images.flatten(1), test_images.flatten(1))}
    else:
        pairs = {name: (encoder_features(encoder, train_images, name), encoder_features(encoder, test_images, name))
                 for name in (features or probed_features(encoder))}
    return {name: linear_probe_accuracy(train, train_labels, test, test_labels, epochs=epochs, lr=lr, seed=seed, standardize=True)
            for name, (train, test) in pairs.items()}


def protocol_record(num_train: int, num_test: int, epochs: int, lr: float, seed: int) -> Dict[str, object]:
    """What a metrics file records of the probe: enough to tell whether two numbers are comparable."""
    from ..training.data import SUBSET_SEED

    return {"train_images": num_train, "test_images": num_test, "subset": f"stratified, seed {SUBSET_SEED} (or the whole split)",
            "standardized": True, "optimizer": "AdamW, zero init, batch 256", "epochs": epochs, "lr": lr, "seed": seed}
