"""The losses of LZN training (lzn-method.md §2-3) and the class weights they use.

* case study 3: :func:`label_alignment_loss` (image latent -> its label's zone, reverse label flow);
* case study 2: :func:`assignment_loss` (view-1 latent -> the zone of the same image's view 2);
* case studies 1 and 3: :func:`rectified_flow_loss` of the image decoder, in diffusers' orientation
  (``x_sigma = (1 - sigma) x + sigma noise``, prediction ``noise - x``; upstream's time is ``t = 1 - sigma``).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .augmentations import random_flip
from .data import rank_rand, rank_randn


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


# Upstream samples its RF time t ~ U[1e-3, 1] (t = 1 is data); diffusers' sigma = 1 - t ~ U[0, 1 - 1e-3].
RF_T_MIN = 1e-3


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


def rectified_flow_inputs(
    pixel_values: torch.Tensor, generator: torch.Generator, latent_dim: int, flip: bool, process_index: int, num_processes: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random draws of one micro-batch for the RF loss (case studies 1 and 3), in a fixed order from ``generator``
    (seeded by ``(seed, micro-batch)``): flip uniforms (with ``flip``), latent noise, image noise, sigmas. Each is
    this process's rows of a global draw (:func:`~lzn_hf.training.data.rank_randn`), so a sample's draws depend on
    its place in the global batch only: resumable and independent of the number of processes.

    Args:
        pixel_values: ``[B, C, H, W]`` in [-1, 1].
    Returns:
        ``(pixel_values [B, C, H, W] (flipped where drawn), latent_noise [B, d], image_noise [B, C, H, W],
        sigmas [B])``, ``sigma = 1 - t`` with upstream's ``t ~ U[1e-3, 1]``.
    """
    local = pixel_values.shape[0]
    if flip:
        pixel_values = random_flip(pixel_values, rank_rand([local], generator, process_index, num_processes))
    latent_noise = rank_randn([local, latent_dim], generator, process_index, num_processes)
    image_noise = rank_randn(pixel_values.shape, generator, process_index, num_processes)
    sigmas = (1.0 - RF_T_MIN) * rank_rand([local], generator, process_index, num_processes)
    return pixel_values, latent_noise, image_noise, sigmas
