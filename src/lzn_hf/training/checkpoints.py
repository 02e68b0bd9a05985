"""Checkpoints and saved folders: Accelerate hooks writing ``save_pretrained`` folders, atomic ``checkpoint-N``
saves with rotation, resume, the final model / pipeline folders and the Hub upload.

``checkpoint-N/`` holds ``lzn/`` (raw weights), ``lzn_ema/`` (averaged weights + ``ema_state.json``) and
Accelerate's optimizer, scheduler, RNG and counter files.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
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


def save_model_folder(model, folder) -> Path:
    """``save_pretrained`` of an LZN model plus the image processor the transformers pipelines need."""
    from ..image_processing_lzn import lzn_image_processor

    encoder_config = model.config.image_encoder_config
    model.save_pretrained(folder)
    lzn_image_processor(encoder_config.image_size, encoder_config.num_channels).save_pretrained(folder)
    return Path(folder)


def save_pipeline_folder(model, folder):
    """``save_pretrained`` of the :class:`~lzn_hf.pipeline_lzn.LZNPipeline` of an LZN model (its image decoder and
    label anchors, a ``FlowMatchEulerDiscreteScheduler``); returns the pipeline, progress bar off, for sampling."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ..pipeline_lzn import LZNPipeline

    pipeline = LZNPipeline(image_decoder=model.image_decoder, label_anchors=model.label_anchors,
                           scheduler=FlowMatchEulerDiscreteScheduler())
    pipeline.set_progress_bar_config(disable=True)
    pipeline.save_pretrained(folder)
    return pipeline


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
