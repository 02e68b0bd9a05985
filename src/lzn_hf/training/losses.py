"""The losses of LZN training (lzn-method.md §2-3) and the class weights they use.

* case study 3: :func:`label_alignment_loss` (image latent -> its label's zone, reverse label flow);
* case study 2: :func:`assignment_loss` (view-1 latent -> the zone of the same image's view 2);
* case studies 1 and 3: :func:`rectified_flow_loss` of the image decoder, in diffusers' orientation
  (``x_sigma = (1 - sigma) x + sigma noise``, prediction ``noise - x``; upstream's time is ``t = 1 - sigma``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def cutoff_step(num_steps: int, cutoff: float) -> int:
    """First reverse-flow record used by the losses: ``int(cutoff * S)`` (records before it carry no signal)."""
    return int(num_steps * cutoff)


def class_weights_from_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """pi_c = share of class c in the (global) batch: ``[C]``."""
    return torch.bincount(labels, minlength=num_classes).float() / labels.numel()


def label_alignment_loss(posteriors: torch.Tensor, labels: torch.Tensor, cutoff: float = 0.2) -> torch.Tensor:
    """Case study 3's image-label alignment loss (lzn-method.md §2.3): ``-mean_b max_{k >= cutoff} P[k, b, y_b]``.

    Args:
        posteriors: ``[S, B, C]`` normalised reverse-flow posteriors over the label anchors (class-weighted).
        labels: ``[B]`` true classes.
    Returns:
        scalar loss (a probability, not a log-probability, as upstream).
    """
    start = cutoff_step(posteriors.shape[0], cutoff)
    target = posteriors[start:, torch.arange(labels.numel(), device=labels.device), labels]  # [S - start, B]
    return -target.max(dim=0).values.mean()


def assignment_loss(
    log_posteriors: torch.Tensor, targets: torch.Tensor, cutoff: float = 0.2, cross_entropy_weight: float = 1.0, prob_weight: float = 0.0
) -> torch.Tensor:
    """Case study 2's loss (lzn-method.md §3.2): each view-1 latent is classified among the view-2 zones.

    ``q_b = max_{k >= cutoff} P[k, b, j*_b]`` and loss = ``ce_w * (-mean log q) + prob_w * (-mean q)``.

    Args:
        log_posteriors: ``[S, B, N]`` log posteriors of the reverse flow over the view-2 anchors.
        targets: ``[B]`` index of each query's own view-2 anchor (``rank * B + j`` with several processes).
    """
    start = cutoff_step(log_posteriors.shape[0], cutoff)
    log_q = log_posteriors[start:, torch.arange(targets.numel(), device=targets.device), targets].max(dim=0).values  # [B]
    return cross_entropy_weight * (-log_q.mean()) + prob_weight * (-log_q.exp().mean())


def rectified_flow_loss(
    decoder: nn.Module,
    pixel_values: torch.Tensor,
    latents: torch.Tensor,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    class_labels: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The rectified-flow loss of the image decoder (lzn-method.md §3.1), in diffusers' orientation.

    ``x_sigma = (1 - sigma) x + sigma noise``; the decoder predicts ``noise - x`` (upstream: ``x - noise`` at
    ``t = 1 - sigma``, the same squared error). Mean over pixels and batch.

    Args:
        decoder: an :class:`~lzn_hf.LZNImageDecoder` (possibly frozen: gradients still reach ``latents``).
        pixel_values: ``[B, C, H, W]`` data in [-1, 1].
        latents: ``[B, d]`` LZN latents of the same images.
        noise: ``[B, C, H, W]`` N(0, I) image noise.
        sigmas: ``[B]`` in [0, 1) (``1 - t`` with upstream's ``t ~ U[1e-3, 1]``).
        class_labels: ``[B]`` classes for label-conditional decoders.
    """
    sigmas_ = sigmas.view(-1, 1, 1, 1)  # [B, 1, 1, 1]
    noisy = (1.0 - sigmas_) * pixel_values + sigmas_ * noise  # [B, C, H, W]
    velocity = decoder(noisy, sigmas * 1000.0, latents, class_labels, return_dict=True).sample  # [B, C, H, W]
    return (velocity.float() - (noise - pixel_values).float()).pow(2).mean()
