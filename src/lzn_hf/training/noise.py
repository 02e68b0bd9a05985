"""The random draws of each training step: a function of ``(--seed, micro-batch)`` and of the sample's place in
the global batch, so that a resumed run, or one on another number of processes, draws the same numbers for the
same sample.

* :func:`step_generator`: the generator of one micro-batch, seeded by ``(seed, step)``;
* :func:`rank_randn` / :func:`rank_rand`: this process's rows of a global draw;
* :func:`rectified_flow_inputs`: the draws of the RF loss (case studies 1 and 3): flips, latent noise, image
  noise, sigmas.
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import torch

# Upstream samples its RF time t ~ U[1e-3, 1] (t = 1 is data); diffusers' sigma = 1 - t ~ U[0, 1 - 1e-3].
RF_T_MIN = 1e-3


def step_generator(seed: int, step: int, device: Any = "cpu") -> torch.Generator:
    """A generator seeded by ``(seed, step)``: the same on every process and after a resume."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) % (2**63 - 1))


def rank_randn(shape: Sequence[int], generator: torch.Generator, process_index: int, num_processes: int, device=None) -> torch.Tensor:
    """This process's rows of a global ``[W * B, ...]`` standard-normal draw: ``[B, ...]``.

    Every process draws the whole global batch with the same generator and keeps its rows, so the noise of a
    sample depends on its position in the global batch only, not on the number of processes.
    """
    full = torch.randn((num_processes * shape[0], *shape[1:]), generator=generator, device=device or generator.device)
    return full[process_index * shape[0] : (process_index + 1) * shape[0]]


def rank_rand(shape: Sequence[int], generator: torch.Generator, process_index: int, num_processes: int, device=None) -> torch.Tensor:
    """Like :func:`rank_randn`, uniform in [0, 1)."""
    full = torch.rand((num_processes * shape[0], *shape[1:]), generator=generator, device=device or generator.device)
    return full[process_index * shape[0] : (process_index + 1) * shape[0]]


def rectified_flow_inputs(
    pixel_values: torch.Tensor, generator: torch.Generator, latent_dim: int, flip: bool, process_index: int, num_processes: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random draws of one micro-batch for the RF loss (case studies 1 and 3), in a fixed order from ``generator``
    (seeded by ``(seed, micro-batch)``): flip uniforms (with ``flip``), latent noise, image noise, sigmas. Each is
    this process's rows of a global draw (:func:`rank_randn`), so a sample's draws depend on
    its place in the global batch only: resumable and independent of the number of processes.

    Args:
        pixel_values: ``[B, C, H, W]`` in [-1, 1].
    Returns:
        ``(pixel_values [B, C, H, W] (flipped where drawn), latent_noise [B, d], image_noise [B, C, H, W],
        sigmas [B])``, ``sigma = 1 - t`` with upstream's ``t ~ U[1e-3, 1]``.
    """
    from .augmentations import random_flip  # augmentations draw through this module

    local = pixel_values.shape[0]
    if flip:
        pixel_values = random_flip(pixel_values, rank_rand([local], generator, process_index, num_processes))
    latent_noise = rank_randn([local, latent_dim], generator, process_index, num_processes)
    image_noise = rank_randn(pixel_values.shape, generator, process_index, num_processes)
    sigmas = (1.0 - RF_T_MIN) * rank_rand([local], generator, process_index, num_processes)
    return pixel_values, latent_noise, image_noise, sigmas
