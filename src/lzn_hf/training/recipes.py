"""Training recipes (each preset's hyper-parameters) and the command-line flags every script shares.

The paper presets carry the paper's values (lzn-method.md §4); the CPU demo and the CPU-scale case studies
carry values tuned for 2 cores; the tiny presets are for tests. Unset flags take the recipe's value
(:func:`finalize_training_args`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Dict, Optional


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
    from ..configuration_lzn import LZN_PRESETS, LZNConfig

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
