"""Image augmentations in torch (no torchvision), batched, on the images' device; pixels in [-1, 1].

:func:`random_flip` (case studies 1 and 3) and :func:`simclr_augment`, case study 2's SimCLR-style views.
Their random parameters are this process's rows of a global draw (:func:`~lzn_hf.training.noise.rank_rand`).
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

from .noise import rank_rand


def random_flip(images: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of the images whose ``uniforms`` ``[B]`` are below 0.5."""
    flip = (uniforms < 0.5).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


def _luminance(images01: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of ``[B, 3, H, W]`` in [0, 1] -> ``[B, 1, H, W]``."""
    weights = images01.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images01 * weights).sum(1, keepdim=True)


def _rotate_hue(images01: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Hue rotation by ``angles`` ``[B]`` (radians) as a rotation of the chroma plane in YIQ space."""
    to_yiq = images01.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, images01)
    cos, sin = angles.cos().view(-1, 1, 1), angles.sin().view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq)


def _gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Per-image separable Gaussian blur (reflect padding); ``sigmas`` ``[B]``."""
    batch, channels, height, width = images.shape
    offsets = torch.arange(kernel_size, device=images.device, dtype=images.dtype) - kernel_size // 2
    kernels = torch.exp(-0.5 * (offsets[None] / sigmas[:, None]) ** 2)  # [B, K]
    kernels = (kernels / kernels.sum(-1, keepdim=True)).repeat_interleave(channels, 0)  # [B*C, K]
    pad = kernel_size // 2
    flat = images.reshape(1, batch * channels, height, width)
    flat = F.conv2d(F.pad(flat, (pad, pad, 0, 0), mode="reflect"), kernels[:, None, None, :], groups=batch * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, pad, pad), mode="reflect"), kernels[:, None, :, None], groups=batch * channels)
    return flat.reshape(batch, channels, height, width)


def simclr_augment(
    images: torch.Tensor,
    generator: torch.Generator,
    crop_scale: Tuple[float, float] = (0.08, 1.0),
    crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3),
    flip_prob: float = 0.5,
    jitter_prob: float = 0.8,
    jitter_strength: float = 1.0,
    grayscale_prob: float = 0.2,
    blur_prob: float = 0.5,
    blur_sigma: Tuple[float, float] = (0.1, 2.0),
    process_index: int = 0,
    num_processes: int = 1,
) -> torch.Tensor:
    """SimCLR-style random view of every image of a batch, in torch (no torchvision), on the images' device.

    Random resized crop (area ``crop_scale``, aspect ``crop_ratio``, bilinear, output at the input size),
    horizontal flip, colour jitter with probability ``jitter_prob`` (brightness, contrast, saturation
    ``0.8 * strength``, hue ``0.2 * strength``, applied in that fixed order; saturation and hue only for RGB),
    grayscale (RGB only), Gaussian blur (kernel about 10 % of the image side). Per-image random parameters
    come from ``generator``; with ``process_index`` / ``num_processes`` they are this process's rows of a
    global draw (:func:`rank_rand`), so an image's view depends on its place in the global batch only.

    Args:
        images: ``[B, C, H, W]`` in [-1, 1].
    Returns:
        ``[B, C, H, W]`` in [-1, 1].
    """
    batch, channels, height, width = images.shape
    device, dtype = images.device, images.dtype

    def uniform(low, high):
        draws = rank_rand([batch], generator, process_index, num_processes)
        return low + (high - low) * draws.to(device=device, dtype=dtype)

    # random resized crop + flip, as one affine resampling: the crop covers a (w, h) fraction of the image
    area = uniform(*crop_scale)
    log_ratio = uniform(math.log(crop_ratio[0]), math.log(crop_ratio[1]))
    crop_w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    crop_h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    centre_x = (uniform(-1.0, 1.0) * (1.0 - crop_w))
    centre_y = (uniform(-1.0, 1.0) * (1.0 - crop_h))
    flip = torch.where(uniform(0.0, 1.0) < flip_prob, -1.0, 1.0).to(dtype)
    theta = torch.zeros(batch, 2, 3, device=device, dtype=dtype)
    theta[:, 0, 0], theta[:, 0, 2] = crop_w * flip, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = crop_h, centre_y
    grid = F.affine_grid(theta, (batch, channels, height, width), align_corners=False)
    views = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # colour operations in [0, 1]
    views = ((views + 1.0) / 2.0).clamp(0.0, 1.0)
    jitter = (uniform(0.0, 1.0) < jitter_prob).view(-1, 1, 1, 1)
    strength = 0.8 * jitter_strength
    brightness = uniform(max(0.0, 1 - strength), 1 + strength).view(-1, 1, 1, 1)
    jittered = (views * brightness).clamp(0, 1)
    contrast = uniform(max(0.0, 1 - strength), 1 + strength).view(-1, 1, 1, 1)
    gray = _luminance(jittered) if channels == 3 else jittered
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    jittered = ((jittered - mean) * contrast + mean).clamp(0, 1)
    if channels == 3:
        saturation = uniform(max(0.0, 1 - strength), 1 + strength).view(-1, 1, 1, 1)
        gray = _luminance(jittered)
        jittered = ((jittered - gray) * saturation + gray).clamp(0, 1)
        hue = uniform(-0.2 * jitter_strength, 0.2 * jitter_strength) * 2 * math.pi
        jittered = _rotate_hue(jittered, hue).clamp(0, 1)
    views = torch.where(jitter, jittered, views)
    if channels == 3:
        to_gray = (uniform(0.0, 1.0) < grayscale_prob).view(-1, 1, 1, 1)
        views = torch.where(to_gray, _luminance(views).expand(-1, 3, -1, -1), views)

    kernel_size = max(3, int(0.1 * min(height, width)) // 2 * 2 + 1)
    if min(height, width) > kernel_size // 2:  # reflect padding needs pad < size
        blur = (uniform(0.0, 1.0) < blur_prob).view(-1, 1, 1, 1)
        views = torch.where(blur, _gaussian_blur(views, uniform(*blur_sigma), kernel_size), views)
    return (views * 2.0 - 1.0).clamp(-1.0, 1.0)
