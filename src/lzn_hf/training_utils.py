"""Pieces of LZN training shared by the example scripts: the latent-space losses.

Used by `examples/` and tests, never by modeling code.
"""

from __future__ import annotations

import torch

__all__ = ["cutoff_step", "label_alignment_loss", "assignment_loss", "class_weights_from_labels"]


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
