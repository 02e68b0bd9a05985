"""Pieces of LZN training shared by the example scripts (`examples/train_*.py`).

Used by `examples/` and tests, never by modeling code. Grouped as:

* losses: the latent-space losses of case studies 2 and 3, the rectified-flow loss, class weights;
* recipes and arguments: each preset's training hyper-parameters (the paper's for the paper presets, fast
  ones for the CPU demo and the tests) and the flags every script shares;
* data: the scikit-learn digits (offline), `datasets` image folders / Hub datasets, an epoch-seeded sampler;
* noise and augmentations: per-step generators, world-size-independent noise, flips, SimCLR-style views;
* optimisation: per-module parameter groups, linear warm-up, per-module EMA with upstream's warm-up formula,
  non-finite step skipping on every rank, the decoder freeze;
* checkpoints and outputs: Accelerate save/load hooks writing `save_pretrained` folders, checkpoint rotation
  and resume, the Hub upload, model cards, sample grids and training curves;
* evaluation helpers used at the end of training (accuracy in batch mode, an independent pixel classifier).

Orientation reminders: pixels are in [-1, 1]; the image decoder follows diffusers' flow matching
(``x_sigma = (1 - sigma) x + sigma noise``, prediction ``noise - x``); upstream's time is ``t = 1 - sigma``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    # losses
    "cutoff_step",
    "class_weights_from_labels",
    "label_alignment_loss",
    "assignment_loss",
    "rectified_flow_loss",
    # recipes and arguments
    "TRAINING_RECIPES",
    "add_training_args",
    "finalize_training_args",
    "load_lzn_config",
    "global_to_local_batch_size",
    # data
    "DIGITS_SPLIT_SEED",
    "load_digits",
    "TensorImageDataset",
    "load_image_dataset",
    "load_training_data",
    "stack_dataset",
    "EpochShuffleSampler",
    # noise and augmentations
    "step_generator",
    "rank_randn",
    "rank_rand",
    "random_flip",
    "simclr_augment",
    # optimisation
    "module_param_groups",
    "linear_warmup",
    "ExponentialMovingAverage",
    "ModuleEMA",
    "TrainingCounters",
    "all_processes_finite",
    "global_class_weights",
    "freeze_module",
    "trainable_parameters",
    # the training loop's plumbing
    "make_accelerator",
    "iterate_batches",
    "resume_position",
    "RunningMeans",
    "save_model_folder",
    # checkpoints and outputs
    "register_checkpoint_hooks",
    "save_checkpoint",
    "prune_checkpoints",
    "resume_from_checkpoint",
    "HUB_IGNORE_PATTERNS",
    "push_folder_to_hub",
    "dataset_id",
    "training_markdown",
    "write_run_card",
    "save_image_grid",
    "TrainingHistory",
    "save_training_curves",
    "tracker_config",
    # evaluation
    "batch_mode_accuracy",
    "fit_pixel_judge",
    "train_cross_entropy_classifier",
]


# ==========================================================================================================
# losses
# ==========================================================================================================
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


# ==========================================================================================================
# recipes (per-preset hyper-parameters) and shared arguments
# ==========================================================================================================
def _recipe(**fields) -> Dict[str, Any]:
    base = {
        "dataset_name": None,  # None: pass --train_data_dir (an image folder) or --dataset_name
        "global_batch_size": 128,
        "max_train_steps": 1000,
        "learning_rate_encoder": 1e-4,
        "learning_rate_decoder": 1e-4,
        "learning_rate_label_anchors": 1e-4,
        "lr_warmup_steps": 0,
        "ema_decay": 0.9999,
        "decoder_freeze_step": None,
        "checkpointing_steps": 1000,
        "random_flip": False,
    }
    unknown = set(fields) - set(base)
    if unknown:
        raise ValueError(f"unknown recipe fields {sorted(unknown)}")
    return {**base, **fields}


#: Training hyper-parameters per preset. The paper presets carry the paper's values (lzn-method.md §4);
#: the CPU demo (`digits-joint`) carries values tuned for 2 CPU cores and 10 minutes; the tiny presets are
#: for tests. `global_batch_size` is the number of anchors N that define the zones (summed over processes).
TRAINING_RECIPES: Dict[str, Dict[str, Any]] = {
    # --- case study 1: unconditional generation (paper) ---
    "cifar10-generation": _recipe(
        dataset_name="uoft-cs/cifar10", global_batch_size=2000, max_train_steps=50_000, learning_rate_encoder=2.5e-5,
        learning_rate_decoder=1e-3, lr_warmup_steps=5000, ema_decay=0.999999, checkpointing_steps=1000, random_flip=True,
    ),
    "afhq-cat-generation": _recipe(
        global_batch_size=256, max_train_steps=60_000, learning_rate_encoder=2e-6, learning_rate_decoder=2e-4,
        lr_warmup_steps=5000, ema_decay=0.999999, checkpointing_steps=2000, random_flip=True,
    ),
    "celebahq-generation": _recipe(
        global_batch_size=256, max_train_steps=350_000, learning_rate_encoder=4e-6, learning_rate_decoder=2e-4,
        lr_warmup_steps=5000, ema_decay=0.9999, checkpointing_steps=2000, random_flip=True,
    ),
    "lsun-bedroom-generation": _recipe(
        global_batch_size=256, max_train_steps=2_050_000, learning_rate_encoder=2e-6, learning_rate_decoder=2e-4,
        lr_warmup_steps=5000, ema_decay=0.99999, checkpointing_steps=2000, random_flip=True,
    ),
    # --- case study 2: representation learning (paper) ---
    "imagenet-representation": _recipe(
        dataset_name="ILSVRC/imagenet-1k", global_batch_size=8192, max_train_steps=5_000_000, learning_rate_encoder=8e-4,
        lr_warmup_steps=5000, ema_decay=0.9999, checkpointing_steps=2000,
    ),
    # --- case study 3: joint generation + classification (paper) ---
    "cifar10-joint": _recipe(
        dataset_name="uoft-cs/cifar10", global_batch_size=2000, max_train_steps=200_000, learning_rate_encoder=5e-5,
        learning_rate_decoder=2e-3, learning_rate_label_anchors=1e-4, lr_warmup_steps=5000, ema_decay=0.999999,
        decoder_freeze_step=60_000, checkpointing_steps=1000, random_flip=True,
    ),
    # --- the CPU demo (8x8 digits, 2 cores, < 10 minutes) ---
    "digits-joint": _recipe(
        dataset_name="digits", global_batch_size=256, max_train_steps=1500, learning_rate_encoder=1e-3,
        learning_rate_decoder=2e-3, learning_rate_label_anchors=1e-2, lr_warmup_steps=100, ema_decay=0.9999,
        decoder_freeze_step=500, checkpointing_steps=500,
    ),
    # --- CPU-scale reproductions of case studies 1 and 2 (docs/results.md): the demo's budget ---
    "digits-generation": _recipe(
        dataset_name="digits", global_batch_size=256, max_train_steps=1500, learning_rate_encoder=1e-3,
        learning_rate_decoder=2e-3, lr_warmup_steps=100, ema_decay=0.9999, checkpointing_steps=500,
    ),
    "digits-representation": _recipe(
        dataset_name="digits", global_batch_size=256, max_train_steps=1500, learning_rate_encoder=1e-3,
        lr_warmup_steps=100, ema_decay=0.9999, checkpointing_steps=500,
    ),
    # --- tests ---
    "tiny-joint": _recipe(dataset_name="digits", global_batch_size=8, max_train_steps=3, learning_rate_encoder=1e-3,
                          learning_rate_decoder=1e-3, learning_rate_label_anchors=1e-2, lr_warmup_steps=2, ema_decay=0.999,
                          checkpointing_steps=2),
    "tiny-generation": _recipe(dataset_name="digits", global_batch_size=8, max_train_steps=3, learning_rate_encoder=1e-3,
                               learning_rate_decoder=1e-3, lr_warmup_steps=2, ema_decay=0.999, checkpointing_steps=2),
    "tiny-representation": _recipe(dataset_name="digits", global_batch_size=8, max_train_steps=3, learning_rate_encoder=1e-3,
                                   lr_warmup_steps=2, ema_decay=0.999, checkpointing_steps=2),
}

# Recipe keys that map one-to-one onto command-line flags (None on the command line = take the recipe's).
_RECIPE_FLAGS = (
    "dataset_name",
    "max_train_steps",
    "learning_rate_encoder",
    "learning_rate_decoder",
    "learning_rate_label_anchors",
    "lr_warmup_steps",
    "ema_decay",
    "decoder_freeze_step",
    "checkpointing_steps",
    "random_flip",
)


def add_training_args(parser: argparse.ArgumentParser, default_config: str, default_output_dir: str) -> argparse.ArgumentParser:
    """Add the flags every training script shares (diffusers' names where diffusers has one).

    Hyper-parameters left unset take the value of the preset's recipe (:data:`TRAINING_RECIPES`).
    """
    model = parser.add_argument_group("model")
    model.add_argument("--config", type=str, default=default_config,
                       help=f"a preset name ({', '.join(sorted(TRAINING_RECIPES))}) or a path to an LZNConfig config.json "
                            f"(default: {default_config}).")
    model.add_argument("--recipe", type=str, default=None,
                       help="take unset hyper-parameters from this preset's recipe (default: the --config preset's).")
    model.add_argument("--image_flow_solver", type=str, default=None, choices=["euler", "dpm_solver++"],
                       help="override the config's image latent flow solver.")
    model.add_argument("--image_flow_num_steps", type=int, default=None, help="override the config's image flow steps.")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", type=str, default=None,
                      help="'digits' (scikit-learn's 8x8 digits, offline) or a Hub dataset id; default: the recipe's.")
    data.add_argument("--dataset_config_name", type=str, default=None)
    data.add_argument("--train_data_dir", type=str, default=None,
                      help="an image folder (datasets' 'imagefolder': class sub-folders give labels); replaces the recipe's dataset.")
    data.add_argument("--image_column", type=str, default=None, help="image column of a Hub dataset (default: guessed).")
    data.add_argument("--label_column", type=str, default=None, help="label column (default: guessed; none = unlabelled).")
    data.add_argument("--cache_dir", type=str, default=None)
    data.add_argument("--resolution", type=int, default=None, help="image size fed to the model (default: the config's).")
    data.add_argument("--random_flip", action=argparse.BooleanOptionalAction, default=None,
                      help="random horizontal flips (default: the recipe's).")
    data.add_argument("--max_train_samples", type=int, default=None, help="truncate the training set (debugging).")
    data.add_argument("--dataloader_num_workers", type=int, default=0)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--train_batch_size", type=int, default=None,
                       help="per-process batch size; default: the recipe's global batch / number of processes.")
    optim.add_argument("--max_train_steps", type=int, default=None, help="optimizer updates (default: the recipe's).")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1,
                       help="micro-batches per update (the zones of each micro-batch are its own anchors).")
    optim.add_argument("--learning_rate_encoder", type=float, default=None)
    optim.add_argument("--learning_rate_decoder", type=float, default=None)
    optim.add_argument("--learning_rate_label_anchors", type=float, default=None)
    optim.add_argument("--lr_warmup_steps", type=int, default=None, help="linear warm-up from lr/N to lr over N updates.")
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.999)
    optim.add_argument("--adam_epsilon", type=float, default=1e-8)
    optim.add_argument("--adam_weight_decay", type=float, default=0.0)
    optim.add_argument("--max_grad_norm", type=float, default=1.0, help="global gradient-norm clip over trained parameters.")
    optim.add_argument("--ema_decay", type=float, default=None,
                       help="EMA decay of every module; the effective decay is min(decay, (1 + n) / (10 + n)).")
    optim.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                       help="default: accelerate's config (the paper trains in fp32; the latent flows stay fp32).")
    optim.add_argument("--seed", type=int, default=0, help="model init, data order and every noise draw.")

    run = parser.add_argument_group("checkpoints, logging and the Hub")
    run.add_argument("--output_dir", type=str, default=default_output_dir)
    run.add_argument("--checkpointing_steps", type=int, default=None, help="save a checkpoint-N every N updates (0 = never).")
    run.add_argument("--checkpoints_total_limit", type=int, default=None, help="keep at most this many checkpoints.")
    run.add_argument("--resume_from_checkpoint", type=str, default=None,
                     help="a checkpoint-N folder (name or path) or 'latest'.")
    run.add_argument("--logging_dir", type=str, default="logs", help="tracker folder, relative to --output_dir.")
    run.add_argument("--report_to", type=str, default="tensorboard",
                     help="'tensorboard', 'wandb', 'all' or 'none' (the JSON-lines history is always written).")
    run.add_argument("--logging_steps", type=int, default=10, help="log to the trackers every N updates.")
    run.add_argument("--push_to_hub", action="store_true", help="upload the final folder (no checkpoints or logs).")
    run.add_argument("--hub_model_id", type=str, default=None, help="repo id (default: the output folder's name).")
    run.add_argument("--hub_token", type=str, default=None)
    run.add_argument("--hub_private_repo", action="store_true")
    run.add_argument("--skip_evaluation", action="store_true", help="skip the end-of-training evaluation and samples.")
    return parser


def finalize_training_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset hyper-parameters from the recipe and validate the combination (errors name the flag)."""
    recipe_name = args.recipe or (args.config if args.config in TRAINING_RECIPES else None)
    if recipe_name is None:
        raise ValueError(f"--config {args.config!r} is not a preset: pass --recipe PRESET to choose default hyper-parameters")
    if recipe_name not in TRAINING_RECIPES:
        raise ValueError(f"unknown --recipe {recipe_name!r}; available: {sorted(TRAINING_RECIPES)}")
    recipe = TRAINING_RECIPES[recipe_name]
    args.recipe = recipe_name
    for name in _RECIPE_FLAGS:
        if getattr(args, name, None) is None and not (name == "dataset_name" and args.train_data_dir is not None):
            setattr(args, name, recipe[name])
    args.global_batch_size = recipe["global_batch_size"]
    if args.train_data_dir is None and args.dataset_name is None:
        raise ValueError(f"preset {recipe_name!r} has no default dataset: pass --train_data_dir DIR or --dataset_name NAME")
    for name in ("max_train_steps", "gradient_accumulation_steps", "logging_steps"):
        if getattr(args, name) is None or getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("train_batch_size", "checkpoints_total_limit", "resolution"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    if args.checkpointing_steps is not None and args.checkpointing_steps < 0:
        raise ValueError(f"--checkpointing_steps must be >= 0, got {args.checkpointing_steps}")
    if not 0.0 <= args.ema_decay < 1.0:
        raise ValueError(f"--ema_decay must be in [0, 1), got {args.ema_decay}")
    if args.lr_warmup_steps < 0:
        raise ValueError(f"--lr_warmup_steps must be >= 0, got {args.lr_warmup_steps}")
    if args.report_to == "none":
        args.report_to = None
    env_local_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_local_rank != -1:
        args.local_rank = env_local_rank
    return args


def load_lzn_config(name_or_path: str, image_flow_solver: Optional[str] = None, image_flow_num_steps: Optional[int] = None):
    """An :class:`~lzn_hf.LZNConfig` from a preset name or a `config.json` path (file or folder), with overrides."""
    from .configuration_lzn import LZN_PRESETS, LZNConfig

    overrides = {}
    if image_flow_solver is not None:
        overrides["image_flow_solver"] = image_flow_solver
    if image_flow_num_steps is not None:
        overrides["image_flow_num_steps"] = image_flow_num_steps
    if name_or_path in LZN_PRESETS:
        return LZNConfig.from_preset(name_or_path, **overrides)
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"--config {name_or_path!r} is neither a preset ({sorted(LZN_PRESETS)}) nor a config.json file")
    config = LZNConfig.from_json_file(str(path))
    for key, value in overrides.items():
        setattr(config, key, value)
    config.validate_lzn()
    return config


def global_to_local_batch_size(args: argparse.Namespace, num_processes: int) -> int:
    """Per-process batch: ``--train_batch_size`` if given, else the recipe's global batch / processes."""
    if args.train_batch_size is not None:
        return args.train_batch_size
    if args.global_batch_size % num_processes:
        raise ValueError(
            f"the recipe's global batch {args.global_batch_size} does not split over {num_processes} processes: pass --train_batch_size"
        )
    return args.global_batch_size // num_processes


# ==========================================================================================================
# data
# ==========================================================================================================
#: The digits' held-out split is fixed by this seed (independent of the training --seed), stratified, 20 %.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def _resize_images(images: torch.Tensor, resolution: Optional[int], num_channels: Optional[int]) -> torch.Tensor:
    """Bilinear resize of a [-1, 1] batch to ``resolution`` and channel repeat/average to ``num_channels``."""
    if resolution is not None and tuple(images.shape[-2:]) != (resolution, resolution):
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    if num_channels is not None and images.shape[1] != num_channels:
        if images.shape[1] == 1:
            images = images.expand(-1, num_channels, -1, -1)
        elif num_channels == 1:
            images = images.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"cannot convert {images.shape[1]}-channel images to {num_channels} channels")
    return images.clamp(-1.0, 1.0).contiguous()


def load_digits(
    split: str = "train",
    resolution: Optional[int] = None,
    num_channels: Optional[int] = None,
    test_fraction: float = DIGITS_TEST_FRACTION,
    split_seed: int = DIGITS_SPLIT_SEED,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 handwritten digits (shipped with scikit-learn, no download), scaled to [-1, 1].

    Args:
        split: ``"train"`` (80 %), ``"test"`` (the fixed, stratified held-out 20 %) or ``"all"``.
        resolution / num_channels: optional resize (bilinear) and channel repeat for bigger models.
    Returns:
        ``(pixel_values [N, C, H, W] float32 in [-1, 1], labels [N] int64)``; values ``v`` in 0..16 map to ``v / 8 - 1``.
    """
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test", "all"):
        raise ValueError(f"`split` must be 'train', 'test' or 'all', got {split!r}")
    digits = sklearn_load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # [1797, 1, 8, 8]
    labels = torch.from_numpy(digits.target.astype(np.int64))  # [1797]
    if split != "all":
        indices = np.arange(len(labels))
        train_idx, test_idx = train_test_split(indices, test_size=test_fraction, random_state=split_seed, stratify=digits.target)
        chosen = torch.from_numpy(np.sort(train_idx if split == "train" else test_idx))
        images, labels = images[chosen], labels[chosen]
    return _resize_images(images, resolution, num_channels), labels


class TensorImageDataset(torch.utils.data.Dataset):
    """In-memory images ``[N, C, H, W]`` (and optional labels ``[N]``) yielding ``{"pixel_values", "labels"}`` dicts."""

    def __init__(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, class_names: Optional[List[str]] = None):
        if labels is not None and len(labels) != len(pixel_values):
            raise ValueError(f"{len(pixel_values)} images but {len(labels)} labels")
        self.pixel_values, self.labels, self.class_names = pixel_values, labels, class_names

    def __len__(self) -> int:
        return len(self.pixel_values)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        item = {"pixel_values": self.pixel_values[index]}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


def _pil_to_tensor(image, resolution: int, num_channels: int) -> torch.Tensor:
    """PIL image -> ``[C, R, R]`` in [-1, 1]: resize the short side to R (bicubic), centre crop, scale."""
    from PIL import Image

    image = image.convert("L" if num_channels == 1 else "RGB")
    width, height = image.size
    scale = resolution / min(width, height)
    new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    image = image.resize(new_size, resample=Image.BICUBIC)
    left, top = (new_size[0] - resolution) // 2, (new_size[1] - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32).reshape(resolution, resolution, num_channels)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def load_image_dataset(
    resolution: int,
    num_channels: int,
    dataset_name: Optional[str] = None,
    train_data_dir: Optional[str] = None,
    dataset_config_name: Optional[str] = None,
    split: str = "train",
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    cache_dir: Optional[str] = None,
    max_samples: Optional[int] = None,
):
    """An image folder (``load_dataset("imagefolder", data_dir=...)``) or a Hub dataset, as a `datasets.Dataset`
    whose items are ``{"pixel_values": [C, R, R] in [-1, 1], "labels": int}`` (labels only when the data has them).

    Images are resized (short side, bicubic) and centre-cropped to ``resolution`` with PIL; no torchvision.
    Returns ``(dataset, class_names or None)``.
    """
    from datasets import load_dataset

    try:
        if train_data_dir is not None:
            dataset = load_dataset("imagefolder", data_dir=train_data_dir, cache_dir=cache_dir, split=split)
        else:
            dataset = load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, split=split)
    except Exception as error:  # offline, unknown id, missing split: say which and how to get around it
        source = f"image folder {train_data_dir!r}" if train_data_dir else f"dataset {dataset_name!r}"
        raise RuntimeError(
            f"could not load the {split!r} split of {source}: {error}. Offline, use --dataset_name digits or "
            "--train_data_dir with a local image folder."
        ) from error
    columns = dataset.column_names
    image_column = image_column or next((c for c in ("image", "img", "pixel_values") if c in columns), None)
    if image_column not in columns:
        raise ValueError(f"image column {image_column!r} not found; columns are {columns} (pass --image_column)")
    if label_column is None:
        label_column = next((c for c in ("label", "labels", "fine_label") if c in columns), None)
    elif label_column not in columns:
        raise ValueError(f"label column {label_column!r} not found; columns are {columns}")
    class_names = None
    if label_column is not None:
        feature = dataset.features[label_column]
        class_names = list(feature.names) if hasattr(feature, "names") else None
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))

    def transform(batch):
        out = {"pixel_values": [_pil_to_tensor(image, resolution, num_channels) for image in batch[image_column]]}
        if label_column is not None:
            out["labels"] = [int(label) for label in batch[label_column]]
        return out

    dataset.set_transform(transform)
    return dataset, class_names


def load_training_data(args: argparse.Namespace, resolution: int, num_channels: int, with_test: bool = True):
    """The training set (and the held-out set when there is one) for ``--dataset_name`` / ``--train_data_dir``.

    Returns ``(train_dataset, test_dataset or None, class_names or None)``; ``digits`` gives in-memory
    :class:`TensorImageDataset` objects and its fixed held-out 20 %.
    """
    if args.train_data_dir is not None and args.dataset_name is not None:
        raise ValueError("pass --train_data_dir or --dataset_name, not both")
    if args.dataset_name == "digits":
        train = TensorImageDataset(*load_digits("train", resolution, num_channels), class_names=[str(i) for i in range(10)])
        if args.max_train_samples is not None:
            train = TensorImageDataset(train.pixel_values[: args.max_train_samples], train.labels[: args.max_train_samples], train.class_names)
        test = TensorImageDataset(*load_digits("test", resolution, num_channels)) if with_test else None
        return train, test, train.class_names
    common = dict(
        resolution=resolution, num_channels=num_channels, dataset_name=args.dataset_name, train_data_dir=args.train_data_dir,
        dataset_config_name=args.dataset_config_name, image_column=args.image_column, label_column=args.label_column,
        cache_dir=args.cache_dir,
    )
    train, class_names = load_image_dataset(split="train", max_samples=args.max_train_samples, **common)
    test = None
    if with_test:
        for split in ("test", "validation"):
            try:
                test, _ = load_image_dataset(split=split, **common)
                break
            except (RuntimeError, ValueError):
                continue
    return train, test, class_names


def stack_dataset(dataset, limit: Optional[int] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The first ``limit`` items of a dataset as tensors: ``(pixel_values [M, C, H, W], labels [M] or None)``."""
    if isinstance(dataset, TensorImageDataset):
        return dataset.pixel_values[:limit], None if dataset.labels is None else dataset.labels[:limit]
    items = [dataset[i] for i in range(min(len(dataset), limit or len(dataset)))]
    pixel_values = torch.stack([item["pixel_values"] for item in items])
    labels = torch.tensor([int(item["labels"]) for item in items]) if "labels" in items[0] else None
    return pixel_values, labels


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A random permutation per epoch, fixed by ``(seed, epoch)``: resuming at epoch e, batch k sees the same data.

    Call :meth:`set_epoch` before each epoch (Accelerate's data loaders forward their ``set_epoch`` here).
    """

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())


# ==========================================================================================================
# noise and augmentations
# ==========================================================================================================
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


# ==========================================================================================================
# optimisation
# ==========================================================================================================
def module_param_groups(modules: Mapping[str, Tuple[Optional[nn.Module], float]]) -> List[Dict[str, Any]]:
    """One Adam parameter group per module, as upstream: ``{"name", "params", "lr"}``; absent modules are skipped."""
    groups = []
    for name, (module, lr) in modules.items():
        if module is None:
            continue
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            groups.append({"name": name, "params": params, "lr": lr})
    if not groups:
        raise ValueError("no trainable parameters")
    return groups


def linear_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Upstream's schedule: ``LinearLR`` from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps``, then constant."""
    if warmup_steps <= 0:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0, total_iters=warmup_steps)


class ExponentialMovingAverage:
    """EMA of a module's parameters with upstream's warm-up (score_sde's formula).

    At the n-th update (n = 1, 2, ...): ``decay_n = min(decay, (1 + n) / (10 + n))`` and
    ``shadow <- decay_n * shadow + (1 - decay_n) * param``. With decay >= 0.9999 the warm-up term binds for
    most of training (the EMA averages roughly the last n / 9 steps).

    Not diffusers' ``EMAModel``: that one counts updates from 0 (``(1 + n) / (10 + n)`` one step earlier), copies
    frozen parameters into the average (upstream's EMA of a frozen module stops instead), and saves through
    diffusers' ``from_config``, which transformers models do not have.
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow_params = [p.detach().clone() for p in parameters]

    def effective_decay(self, num_updates: Optional[int] = None) -> float:
        n = self.num_updates if num_updates is None else num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def step(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        self.num_updates += 1
        one_minus_decay = 1.0 - self.effective_decay()
        parameters = list(parameters)
        if len(parameters) != len(self.shadow_params):
            raise ValueError(f"EMA holds {len(self.shadow_params)} tensors, got {len(parameters)} parameters")
        for shadow, param in zip(self.shadow_params, parameters):
            shadow.sub_(one_minus_decay * (shadow - param.detach().to(shadow.dtype)))

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        for shadow, param in zip(self.shadow_params, parameters):
            param.copy_(shadow.to(param.dtype))

    def to(self, device=None) -> "ExponentialMovingAverage":
        self.shadow_params = [p.to(device=device) for p in self.shadow_params]
        return self

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow_params": self.shadow_params}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["shadow_params"]) != len(self.shadow_params):
            raise ValueError(f"EMA state has {len(state['shadow_params'])} tensors, expected {len(self.shadow_params)}")
        self.decay, self.num_updates = float(state["decay"]), int(state["num_updates"])
        self.shadow_params = [s.detach().clone().to(p.device) for s, p in zip(state["shadow_params"], self.shadow_params)]


class ModuleEMA:
    """One :class:`ExponentialMovingAverage` per top-level part of an LZN model (encoder, decoder, label anchors).

    Each part has its own update counter, so a frozen part's average stops while the others go on (upstream's
    case study 3 freezes the decoder). Saved as a ``save_pretrained`` folder of the model with the averaged
    weights plus ``ema_state.json`` (decays and counters).
    """

    STATE_FILE = "ema_state.json"

    def __init__(self, model: nn.Module, decay: float, parts: Sequence[str] = ("image_encoder", "image_decoder", "label_anchors")):
        self.parts = [name for name in parts if getattr(model, name, None) is not None]
        self.averages = {name: ExponentialMovingAverage(getattr(model, name).parameters(), decay) for name in self.parts}

    def step(self, model: nn.Module, skip: Iterable[str] = ()) -> None:
        """Update the averages of every part except those in ``skip`` (frozen parts)."""
        skip = set(skip)
        for name, average in self.averages.items():
            if name not in skip:
                average.step(getattr(model, name).parameters())

    def copy_to(self, model: nn.Module) -> nn.Module:
        """Write the averaged weights into ``model`` (an LZN model of the same config); returns it."""
        for name, average in self.averages.items():
            average.copy_to(getattr(model, name).parameters())
        return model

    def averaged_model(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` holding the averaged weights (``model`` is left as it is), in eval mode."""
        return self.copy_to(copy.deepcopy(model)).eval()

    def to(self, device=None) -> "ModuleEMA":
        for average in self.averages.values():
            average.to(device)
        return self

    @property
    def num_updates(self) -> Dict[str, int]:
        return {name: average.num_updates for name, average in self.averages.items()}

    def state_dict(self) -> Dict[str, Any]:
        return {name: average.state_dict() for name, average in self.averages.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, average in self.averages.items():
            average.load_state_dict(state[name])

    def save_pretrained(self, save_directory, model: nn.Module) -> None:
        """``save_pretrained`` of ``model`` with the averaged weights, plus ``ema_state.json``."""
        self.averaged_model(model).save_pretrained(save_directory)
        state = {name: {"decay": a.decay, "num_updates": a.num_updates} for name, a in self.averages.items()}
        Path(save_directory, self.STATE_FILE).write_text(json.dumps(state, indent=2))

    def load_pretrained(self, load_directory, model_class) -> None:
        """Inverse of :meth:`save_pretrained` (``model_class``: the saved model's class, e.g. ``LZNModel``)."""
        averaged = model_class.from_pretrained(load_directory)
        state = json.loads(Path(load_directory, self.STATE_FILE).read_text())
        for name, average in self.averages.items():
            average.load_state_dict({**state[name], "shadow_params": list(getattr(averaged, name).parameters())})


class TrainingCounters:
    """Run counters kept in checkpoints (``accelerator.register_for_checkpointing``), e.g. skipped steps."""

    def __init__(self, **values: int):
        self.values = dict(values)

    def __getitem__(self, key: str) -> int:
        return self.values[key]

    def __setitem__(self, key: str, value: int) -> None:
        self.values[key] = value

    def state_dict(self) -> Dict[str, int]:
        return dict(self.values)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.values.update(state)


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


def freeze_module(module: Optional[nn.Module]) -> None:
    """The decoder-freeze step: stop training ``module`` (``requires_grad=False``; gradients still pass
    *through* it to its inputs, e.g. from the RF loss to the encoder). Stop its EMA as well."""
    if module is not None:
        module.requires_grad_(False)


def trainable_parameters(module: nn.Module) -> List[torch.nn.Parameter]:
    """Parameters that still train (the gradient-clip set shrinks when a part is frozen, as upstream's)."""
    return [p for p in module.parameters() if p.requires_grad]


# ==========================================================================================================
# the training loop's plumbing
# ==========================================================================================================
def make_accelerator(args: argparse.Namespace, find_unused_parameters: bool = False):
    """diffusers-style ``Accelerator`` with a ``ProjectConfiguration`` (trackers log to ``output_dir/logging_dir``)
    and Python logging set up (INFO on the main process, warnings elsewhere).

    ``find_unused_parameters``: DDP must not wait for gradients of parts that stop training (a frozen decoder).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    import diffusers
    import transformers

    for library in (transformers, diffusers):
        (library.utils.logging.set_verbosity_warning if accelerator.is_main_process else library.utils.logging.set_verbosity_error)()
        library.utils.logging.disable_progress_bar()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    return accelerator


def iterate_batches(accelerator, dataloader, sampler: EpochShuffleSampler, start_epoch: int = 0, skip_batches: int = 0):
    """Batches of the prepared ``dataloader``, epoch after epoch without end (each epoch's order fixed by
    ``sampler``'s seed), starting ``skip_batches`` into ``start_epoch`` (where a resumed run left off)."""
    epoch = start_epoch
    while True:
        sampler.set_epoch(epoch)
        dataloader.set_epoch(epoch)
        loader = dataloader
        if epoch == start_epoch and skip_batches:
            loader = accelerator.skip_first_batches(dataloader, skip_batches)
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def resume_position(global_step: int, batches_per_epoch: int, gradient_accumulation_steps: int) -> Tuple[int, int]:
    """``(epoch, batches to skip in it)`` of the update after ``global_step`` (updates take ``accumulation``
    batches; the last update of an epoch may take fewer)."""
    updates_per_epoch = math.ceil(batches_per_epoch / gradient_accumulation_steps)
    return global_step // updates_per_epoch, (global_step % updates_per_epoch) * gradient_accumulation_steps


class RunningMeans:
    """Means of logged quantities between two logging steps, over micro-batches and processes."""

    def __init__(self):
        self.sums: Dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, **values: torch.Tensor) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value.detach().float()
        self.count += 1

    def reduce(self, accelerator) -> Dict[str, float]:
        """The means (averaged over processes: a collective, call it on every process), then reset."""
        if not self.count:
            return {}
        keys = sorted(self.sums)
        values = accelerator.reduce(torch.stack([self.sums[k] for k in keys]), reduction="mean") / self.count
        self.sums, self.count = {}, 0
        return {k: v.item() for k, v in zip(keys, values)}


def save_model_folder(model, folder) -> Path:
    """``save_pretrained`` of an LZN model plus the image processor the transformers pipelines need."""
    from .image_processing_lzn import lzn_image_processor

    encoder_config = model.config.image_encoder_config
    model.save_pretrained(folder)
    lzn_image_processor(encoder_config.image_size, encoder_config.num_channels).save_pretrained(folder)
    return Path(folder)


# ==========================================================================================================
# checkpoints and outputs
# ==========================================================================================================
CHECKPOINT_PREFIX = "checkpoint-"
MODEL_SUBFOLDER, EMA_SUBFOLDER = "lzn", "lzn_ema"


def register_checkpoint_hooks(accelerator, ema: ModuleEMA, model_class, model_attribute: str = "lzn") -> None:
    """Accelerate save/load hooks writing ``checkpoint-N/lzn`` (raw weights) and ``checkpoint-N/lzn_ema``
    (averaged weights + counters) as ``save_pretrained`` folders, instead of Accelerate's flat weight file.

    The prepared model is a training wrapper holding the LZN model in ``.{model_attribute}``; the optimizer,
    scheduler and RNG states are Accelerate's own files in the same folder.
    """

    def save_model_hook(models, weights, output_dir):
        for model in models:
            lzn = getattr(accelerator.unwrap_model(model), model_attribute)
            if accelerator.is_main_process:
                lzn.save_pretrained(os.path.join(output_dir, MODEL_SUBFOLDER))
                ema.save_pretrained(os.path.join(output_dir, EMA_SUBFOLDER), lzn)
            if weights:
                weights.pop()  # the folder above replaces Accelerate's model.safetensors

    def load_model_hook(models, input_dir):
        while models:
            lzn = getattr(accelerator.unwrap_model(models.pop()), model_attribute)
            loaded = model_class.from_pretrained(os.path.join(input_dir, MODEL_SUBFOLDER))
            lzn.load_state_dict(loaded.state_dict())
            ema.load_pretrained(os.path.join(input_dir, EMA_SUBFOLDER), model_class)
            ema.to(accelerator.device)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def _checkpoint_steps(output_dir) -> List[Tuple[int, str]]:
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir) if (m := re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", name))]
    return sorted(found)


def prune_checkpoints(output_dir, total_limit: Optional[int]) -> List[str]:
    """Delete the oldest ``checkpoint-N`` folders so that at most ``total_limit`` remain; returns the removed names."""
    if total_limit is None:
        return []
    checkpoints = _checkpoint_steps(output_dir)
    removed = [name for _, name in checkpoints[: max(0, len(checkpoints) - total_limit)]]
    for name in removed:
        shutil.rmtree(os.path.join(output_dir, name))
    return removed


def save_checkpoint(accelerator, output_dir, global_step: int, total_limit: Optional[int] = None) -> str:
    """``accelerator.save_state`` into ``output_dir/checkpoint-{global_step}``, atomically.

    The state is written to ``checkpoint-N.partial`` and renamed once complete, so a process killed during
    the save never leaves a ``checkpoint-N`` folder that ``--resume_from_checkpoint latest`` would pick; the
    oldest checkpoints beyond ``total_limit`` are deleted only after the new one is in place.
    """
    path = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{global_step}")
    partial = f"{path}.partial"
    if accelerator.is_main_process and os.path.isdir(partial):
        shutil.rmtree(partial)  # left by a killed run
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(partial, path)
        removed = prune_checkpoints(output_dir, total_limit)
        if removed:
            logger.info(f"removed {len(removed)} old checkpoint(s): {', '.join(removed)}")
    accelerator.wait_for_everyone()
    logger.info(f"saved state to {path}")
    return path


def resume_from_checkpoint(accelerator, checkpoint: Optional[str], output_dir) -> int:
    """Load ``checkpoint`` (a ``checkpoint-N`` name or path, or ``"latest"``) and return its step N (0 if none).

    ``"latest"`` with no checkpoint yet starts a fresh run (as diffusers' scripts do).
    """
    if not checkpoint:
        return 0
    if checkpoint == "latest":
        checkpoints = _checkpoint_steps(output_dir)
        if not checkpoints:
            accelerator.print(f"no checkpoint in {output_dir}: starting a new training run")
            return 0
        path = os.path.join(output_dir, checkpoints[-1][1])
    else:
        path = checkpoint if os.path.isdir(checkpoint) else os.path.join(output_dir, checkpoint)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"--resume_from_checkpoint {checkpoint!r}: no such folder ({path})")
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", os.path.basename(os.path.normpath(path)))
    if match is None:
        raise ValueError(f"--resume_from_checkpoint must name a {CHECKPOINT_PREFIX}N folder, got {path}")
    accelerator.print(f"resuming from {path}")
    accelerator.load_state(path)
    return int(match.group(1))


#: What --push_to_hub leaves out of the final folder: training state and logs.
HUB_IGNORE_PATTERNS = [f"{CHECKPOINT_PREFIX}*", f"{CHECKPOINT_PREFIX}*/**", "logs/**", "logs", "*.jsonl"]


def push_folder_to_hub(folder, repo_id: Optional[str] = None, token: Optional[str] = None, private: bool = False,
                       commit_message: str = "LZN training run", ignore_patterns: Optional[List[str]] = None) -> str:
    """``create_repo`` + ``upload_folder`` of the final output folder (checkpoints and logs left out).

    Raises ``RuntimeError`` with what to do when the Hub cannot be reached (the folder is already saved).
    Returns the repo id.
    """
    from huggingface_hub import create_repo, upload_folder

    folder = Path(folder)
    repo_id = repo_id or folder.resolve().name
    try:
        repo_id = create_repo(repo_id, exist_ok=True, token=token, private=private).repo_id
        upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=commit_message,
            ignore_patterns=list(HUB_IGNORE_PATTERNS if ignore_patterns is None else ignore_patterns),
            token=token,
        )
    except Exception as error:
        raise RuntimeError(
            f"push to the Hub repo {repo_id!r} failed ({type(error).__name__}: {error}). Everything is saved in {folder}; "
            f"upload it later with: hf upload {repo_id} {folder} . --exclude '{CHECKPOINT_PREFIX}*/*' --exclude 'logs/*'"
        ) from error
    return repo_id


def dataset_id(args: argparse.Namespace) -> str:
    """The dataset name model cards use: ``sklearn-digits``, the Hub id, or ``imagefolder``."""
    if args.train_data_dir is not None:
        return "imagefolder"
    return "sklearn-digits" if args.dataset_name == "digits" else args.dataset_name


def training_markdown(args: argparse.Namespace, script: str, extra: Optional[Mapping[str, Any]] = None) -> str:
    """A "## Training" section for model cards: the command line's essentials and the hyper-parameters."""
    rows = {
        "script": f"`examples/{script}`",
        "config (preset)": f"`{args.config}`",
        "data": f"`{dataset_id(args)}`",
        "updates": args.max_train_steps,
        "global batch (anchors per zone set)": args.global_batch_size,
        "learning rates (encoder / decoder / label anchors)":
            f"{args.learning_rate_encoder} / {args.learning_rate_decoder} / {args.learning_rate_label_anchors}",
        "warm-up updates": args.lr_warmup_steps,
        "EMA decay (warm-up: min(decay, (1 + n) / (10 + n)))": args.ema_decay,
        "seed": args.seed,
        **(extra or {}),
    }
    lines = ["## Training", "", "| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def write_run_card(folder, title: str, description: str, *, pipeline_tag: str, datasets: Sequence[str],
                   metrics: Optional[Mapping[str, float]] = None, tags: Sequence[str] = (), usage: Optional[str] = None,
                   extra_text: str = "") -> Path:
    """The ``README.md`` at the root of a training output folder (the Hub repo's card when pushed): YAML
    metadata (library ``lzn_hf``, pipeline tag, datasets, metrics and a model index of their values), what
    the folder holds, usage, results, training. The saved model folders inside get their own cards from
    :func:`lzn_hf.model_cards.write_model_card`."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    metrics = dict(metrics or {})
    eval_results = [
        EvalResult(task_type=pipeline_tag, dataset_type=datasets[0], dataset_name=datasets[0], metric_type=name.split("/")[0],
                   metric_name=name, metric_value=round(float(value), 4))
        for name, value in metrics.items()
    ] if datasets else []
    data = ModelCardData(
        library_name="lzn_hf",
        pipeline_tag=pipeline_tag,
        datasets=list(datasets) or None,
        metrics=sorted({name.split("/")[0] for name in metrics}) or None,
        tags=["lzn", "latent-zoning-networks", *tags],
        license="mit",
        model_name=title if eval_results else None,
        eval_results=eval_results or None,
    )
    lines = [f"# {title}", "", description, ""]
    if usage:
        lines += ["## Usage", "", "```python", usage.strip(), "```", ""]
    if metrics:
        lines += ["## Results", "", "| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in metrics.items()] + [""]
    if extra_text.strip():
        lines += [extra_text.strip(), ""]
    lines += ["Latent Zoning Networks: Lin et al., NeurIPS 2025, [arXiv 2509.15591](https://arxiv.org/abs/2509.15591).", ""]
    path = Path(folder) / "README.md"
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).save(path)
    return path


def save_image_grid(rows: Sequence[np.ndarray], path, row_labels: Optional[Sequence[str]] = None, scale: int = 4, pad: int = 2) -> Path:
    """A PNG grid, one row per entry of ``rows`` (each ``[K, H, W, C]`` floats in [0, 1]), nearest-neighbour
    upscaled by ``scale``; ``row_labels`` are written at the left of each row."""
    from PIL import Image, ImageDraw

    rows = [np.asarray(r, dtype=np.float32) for r in rows]
    num_cols = max(len(r) for r in rows)
    height, width, channels = rows[0].shape[1:]
    cell_h, cell_w = height * scale, width * scale
    label_w = 0 if row_labels is None else 8 * max(len(str(s)) for s in row_labels) + 2 * pad
    canvas = Image.new("RGB", (label_w + num_cols * (cell_w + pad) + pad, len(rows) * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(rows):
        top = pad + i * (cell_h + pad)
        if row_labels is not None:
            draw.text((pad, top + cell_h // 2 - 5), str(row_labels[i]), fill="black")
        for j, image in enumerate(row):
            array = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
            tile = Image.fromarray(array[..., 0] if channels == 1 else array).convert("RGB").resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (label_w + pad + j * (cell_w + pad), top))
    canvas.save(path)
    return Path(path)


class TrainingHistory:
    """Logged values per step, appended to a JSON-lines file (kept across resumes; a resumed step replaces
    the values logged earlier at the same or a later step)."""

    def __init__(self, path):
        self.path = Path(path)

    def append(self, step: int, values: Mapping[str, float]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": int(step), **{k: float(v) for k, v in values.items()}}) + "\n")

    def read(self) -> Dict[str, List[Tuple[int, float]]]:
        """``{name: [(step, value), ...]}``, steps increasing, the latest write winning after a resume."""
        if not self.path.is_file():
            return {}
        records: List[Dict[str, float]] = []
        for line in self.path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                while records and records[-1]["step"] >= record["step"]:  # a resume rewrote these steps
                    records.pop()
                records.append(record)
        series: Dict[str, List[Tuple[int, float]]] = {}
        for record in records:
            for key, value in record.items():
                if key != "step":
                    series.setdefault(key, []).append((int(record["step"]), float(value)))
        return series


def save_training_curves(history: Mapping[str, List[Tuple[int, float]]], path, keys: Optional[Sequence[str]] = None, title: str = "") -> Optional[Path]:
    """A PNG with one panel per logged quantity (``keys``, default: all), via matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in (keys or sorted(history)) if history.get(k)]
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for axis, key in zip(axes.flat, keys):
        steps, values = zip(*history[key])
        axis.plot(steps, values, linewidth=1.0)
        axis.set_title(key, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(keys):]:
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def tracker_config(args: argparse.Namespace) -> Dict[str, Any]:
    """``vars(args)`` with values trackers accept (TensorBoard hparams take numbers, strings and booleans)."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in vars(args).items()}


# ==========================================================================================================
# evaluation helpers
# ==========================================================================================================
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
    from .modeling_lzn import LZNImageEncoder

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
