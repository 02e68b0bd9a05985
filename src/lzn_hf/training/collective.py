"""Decisions and tensors taken over all processes, the guards every training forward shares.

* :func:`all_processes_finite`: the skip decision for a non-finite loss or gradient, taken on every rank alike;
* :func:`global_class_weights`: the class weights of the label flow over the global batch;
* :func:`float32_flows` and :func:`gather_float32_anchors`: the latent flows run in float32 whatever the mixed
  precision, over the anchors of every process (gathered with gradients);
* :func:`nonfinite_loss`: the NaN loss a forward returns when the gathered anchors are not finite.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..latent_flow import gather_anchors
from .losses import class_weights_from_labels


def all_processes_finite(accelerator, value: torch.Tensor) -> bool:
    """True when ``value`` is finite on every process (one all-gather): every rank takes the same decision,
    so a step is skipped everywhere or nowhere (a rank-local skip would deadlock the gradient all-reduce)."""
    flag = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if accelerator.num_processes > 1:
        flag = accelerator.gather(flag)
    return bool(flag.min().item() > 0)


def global_class_weights(accelerator, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """pi over the *global* batch (labels of every process gathered): ``[C]`` (lzn-method.md §2.2)."""
    if accelerator.num_processes > 1:
        labels = accelerator.gather(labels)
    return class_weights_from_labels(labels, num_classes)


def float32_flows(device_type: str):
    """The block in which the latent flows run: autocast off, so they compute in float32 under mixed precision."""
    return torch.autocast(device_type, enabled=False)


def gather_float32_anchors(anchors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(anchors in float32 [B, d], reference anchors [N, d])``: every process's anchors, gathered with gradients
    (:func:`~lzn_hf.latent_flow.gather_anchors`), the zones of the global batch."""
    anchors = anchors.float()
    return anchors, gather_anchors(anchors)


def nonfinite_loss(*reference_anchors: torch.Tensor) -> Optional[torch.Tensor]:
    """None when every gathered tensor is finite; else a NaN scalar on the graph of the first, for the forward to
    return as its loss. The tensors are global, so every rank takes the same decision, and the update is skipped
    on every process (the training loop's :func:`all_processes_finite` check)."""
    if all(torch.isfinite(reference).all() for reference in reference_anchors):
        return None
    return reference_anchors[0].sum() * float("nan")
