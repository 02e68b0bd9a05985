"""Checkpoints: Accelerate hooks writing ``save_pretrained`` folders, atomic ``checkpoint-N`` saves with rotation,
and resume. (The final folders and the Hub upload: :mod:`lzn_hf.training.export`.)

``checkpoint-N/`` holds ``lzn/`` (raw weights), ``lzn_ema/`` (averaged weights + ``ema_state.json``) and
Accelerate's optimizer, scheduler, RNG and counter files.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from typing import List, Optional, Tuple

from .optimization import ModuleEMA

logger = logging.getLogger(__name__)


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
