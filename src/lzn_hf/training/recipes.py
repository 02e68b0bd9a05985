"""Training recipes (each preset's hyper-parameters) and the model config a run starts from.

The paper presets carry the paper's values (lzn-method.md §4); the CPU demo and the CPU-scale case studies
carry values tuned for 2 cores; the tiny presets are for tests. Unset flags take the recipe's value
(:func:`~lzn_hf.training.arguments.resolve_recipe`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional


#: The recipes' default Fashion-MNIST source (online); offline, pass --dataset_name with the folder that
#: scripts/prepare_fashion_mnist.py wrote (docs/datasets.md). MNIST: --dataset_name ylecun/mnist or its prepared folder.
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
# Fashion-MNIST budgets (docs/training.md, "Fashion-MNIST and MNIST"): updates that fit about 30 minutes on 2 otherwise
# idle CPU cores in bf16 with the end-of-training evaluation, from timed short runs (joint / generation about 1.6 s per
# update at batch 128, representation 0.44-0.78 s at batch 256).
FASHION_JOINT_BATCH, FASHION_JOINT_STEPS = 128, 1000
FASHION_GENERATION_BATCH, FASHION_GENERATION_STEPS = 128, 1000
FASHION_REPRESENTATION_STEPS = 2000


def _recipe(**fields) -> Dict[str, Any]:
    base = {
        "dataset_name": None,  # None: pass --train_data_dir (an image folder) or --dataset_name
        "global_batch_size": 128,
        "max_train_steps": 1000,
        "learning_rate_encoder": 1e-4,
        "learning_rate_decoder": 1e-4,
        "learning_rate_label_anchors": 1e-4,
        "lr_warmup_steps": 0,
        "lr_scheduler": "constant",  # "constant" after the warm-up (upstream's) or "cosine" (decay to 0)
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
    # --- Fashion-MNIST / MNIST (28x28, issue 16): about 30 minutes per run on 2 CPU cores in bf16 (docs/training.md) ---
    # Every run decays its learning rate (cosine to 0 after the warm-up): case study 2 at a constant 1e-3 diverged
    # after ~700 updates on Fashion-MNIST (the calibration run), with the gradient-norm clip at 1 active.
    "fashion-mnist-joint": _recipe(
        dataset_name=FASHION_MNIST_HUB_ID, global_batch_size=FASHION_JOINT_BATCH, max_train_steps=FASHION_JOINT_STEPS, learning_rate_encoder=5e-4,
        learning_rate_decoder=1e-3, learning_rate_label_anchors=1e-2, lr_warmup_steps=100, lr_scheduler="cosine", ema_decay=0.9999,
        decoder_freeze_step=FASHION_JOINT_STEPS * 2 // 3, checkpointing_steps=500,
    ),
    "fashion-mnist-generation": _recipe(
        dataset_name=FASHION_MNIST_HUB_ID, global_batch_size=FASHION_GENERATION_BATCH, max_train_steps=FASHION_GENERATION_STEPS, learning_rate_encoder=5e-4,
        learning_rate_decoder=1e-3, lr_warmup_steps=100, lr_scheduler="cosine", ema_decay=0.9999, checkpointing_steps=500,
    ),
    "fashion-mnist-representation": _recipe(
        dataset_name=FASHION_MNIST_HUB_ID, global_batch_size=256, max_train_steps=FASHION_REPRESENTATION_STEPS, learning_rate_encoder=5e-4,
        lr_warmup_steps=200, lr_scheduler="cosine", ema_decay=0.9999, checkpointing_steps=500,
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

