"""The losses of LZN training (lzn-method.md §2-3) and the class weights they use.

* case study 3: :func:`label_alignment_loss` (image latent -> its label's zone, reverse label flow);
* case study 2: :func:`assignment_loss` (view-1 latent -> the zone of the same image's view 2);
* case studies 1 and 3: :func:`rectified_flow_loss` of the image decoder, in diffusers' orientation
  (``x_sigma = (1 - sigma) x + sigma noise``, prediction ``noise - x``; upstream's time is ``t = 1 - sigma``);
* case study 2's contrastive baseline: :func:`nt_xent_logits` / :func:`nt_xent_loss` (SimCLR's InfoNCE over two views).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
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


def nt_xent_logits(
    embeddings1: torch.Tensor,
    embeddings2: torch.Tensor,
    reference1: Optional[torch.Tensor] = None,
    reference2: Optional[torch.Tensor] = None,
    targets: Optional[torch.Tensor] = None,
    temperature: float = 0.5,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's similarity logits (NT-Xent): each of the ``2B`` local embeddings against all ``2N`` embeddings of the
    global batch but itself; its positive is the other view of the same image.

    Rows: view-1 queries then view-2 queries (``[2B]``); columns: the ``N`` view-1 then the ``N`` view-2 embeddings
    of every process. Embeddings are L2-normalised; ``logit = cos / temperature``; a query's own column is ``-inf``.

    Args:
        embeddings1, embeddings2: ``[B, d]`` this process's projections of view 1 and view 2 of the same images.
        reference1, reference2: ``[N, d]`` the projections of every process (gathered with gradients, e.g.
            :func:`~lzn_hf.training.collective.gather_float32_anchors`); default: ``embeddings1`` / ``embeddings2``.
        targets: ``[B]`` column of each local image in the references (``rank * B + j``); default ``arange(B)``.
        temperature: > 0 (SimCLR: 0.5 at batch 256-512, 0.1 at large batches).
    Returns:
        ``(logits [2B, 2N], positives [2B])``: the cross-entropy of ``logits`` against ``positives`` is the loss.
    """
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}")
    if embeddings1.shape != embeddings2.shape or embeddings1.dim() != 2:
        raise ValueError(f"the two views' embeddings must both be [B, d], got {tuple(embeddings1.shape)} and {tuple(embeddings2.shape)}")
    reference1 = embeddings1 if reference1 is None else reference1
    reference2 = embeddings2 if reference2 is None else reference2
    local, total = embeddings1.shape[0], reference1.shape[0]
    if targets is None:
        targets = torch.arange(local, device=embeddings1.device)
    queries = F.normalize(torch.cat([embeddings1, embeddings2]), dim=-1)  # [2B, d]
    keys = F.normalize(torch.cat([reference1, reference2]), dim=-1)  # [2N, d]
    logits = queries @ keys.T / temperature  # [2B, 2N]
    own = torch.cat([targets, targets + total])  # each query's own column
    positives = torch.cat([targets + total, targets])  # view 1 -> its view 2, view 2 -> its view 1
    rows = torch.arange(2 * local, device=logits.device)
    logits = logits.index_put((rows, own), torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device))
    return logits, positives


def nt_xent_loss(embeddings1: torch.Tensor, embeddings2: torch.Tensor, *references_and_targets: Optional[torch.Tensor],
                 temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's InfoNCE loss over two views (NT-Xent, Chen et al. 2020), the contrastive baseline of case study 2:
    ``mean_i -log( exp(s(i, p_i) / T) / sum_{k != i} exp(s(i, k) / T) )`` over the ``2B`` local queries, ``s`` the
    cosine similarity, ``p_i`` the other view of the same image, ``k`` over the ``2N`` embeddings of the global batch.

    Arguments as :func:`nt_xent_logits`: ``[B, d]`` local views, then optionally ``reference1``, ``reference2``
    (``[N, d]``, gathered) and ``targets`` (``[B]``), positionally; ``temperature`` by keyword.
    With one process (``N = B``) it is the usual NT-Xent of a batch; with several, the mean over processes of their
    losses equals the single-process loss of the global batch. Returns a scalar.
    """
    if len(references_and_targets) > 3:
        raise TypeError(f"nt_xent_loss takes at most 5 positional arguments, got {2 + len(references_and_targets)}")
    logits, positives = nt_xent_logits(embeddings1, embeddings2, *references_and_targets, temperature=temperature)
    return F.cross_entropy(logits, positives)
