"""The end of a run: the final folders (model, pipeline), the run's metadata (``run_config.json``), its card,
and the Hub upload.

``run_config.json`` (beside ``model/``) records how the run was made (the script, every flag but the Hub token,
the global batch, the number of processes), so that :mod:`lzn_hf.evaluation` knows the data, seed and batch
without parsing a card.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

from .._atomic import atomic_folder as _atomic_folder
from .._atomic import write_json_atomically
from .checkpoints import CHECKPOINT_PREFIX, no_space_error

#: The run metadata file of a training output folder.
RUN_CONFIG_FILE = "run_config.json"


def write_run_config(output_dir, script: str, flags: Mapping[str, Any], **facts: Any) -> Path:
    """``output_dir/run_config.json``: ``{"script", "flags": {...}, **facts}`` (``facts``: e.g. ``global_batch_size``,
    ``num_processes``), written atomically. ``flags`` must hold JSON values and no secret (the Hub token)."""
    if "hub_token" in flags:
        raise ValueError("run_config.json must not record the Hub token: drop 'hub_token' from the flags")
    return write_json_atomically(Path(output_dir) / RUN_CONFIG_FILE, {"script": script, "flags": dict(flags), **facts})


def read_run_config(folder) -> Optional[Dict[str, Any]]:
    """The ``run_config.json`` of a training output folder, or None when it has none. A file that is not a JSON
    object raises ``ValueError`` naming it."""
    path = Path(folder) / RUN_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    except OSError as error:
        raise OSError(error.errno, f"cannot read {path}: {error.strerror}") from error
    if not isinstance(record, dict) or not isinstance(record.get("flags", {}), dict):
        raise ValueError(f"{path} must hold a JSON object with a 'flags' object")
    return record


@contextmanager
def atomic_folder(folder: Union[str, os.PathLike]) -> Iterator[Path]:
    """:func:`lzn_hf._atomic.atomic_folder` with ``overwrite=True`` (a new export replaces the old folder): yields
    a hidden temporary sibling (``.{name}.partial-*``) that takes the place of ``folder`` when the block ends
    without error; an error removes it and keeps the old folder, and a full disk says "no space left on device"
    and names ``folder``. ``folder`` existing as a file is an error naming it."""
    try:
        with _atomic_folder(folder, overwrite=True) as temporary:
            yield temporary
    except Exception as error:
        full = no_space_error(error, folder)
        if full is not None:
            raise full from error
        raise


def save_model_folder(model, folder) -> Path:
    """``save_pretrained`` of an LZN model plus the image processor the transformers pipelines need, written whole
    or not at all (:func:`atomic_folder`); its default card names ``folder``."""
    from ..image_processing_lzn import lzn_image_processor
    from ..model_cards import write_model_card

    encoder_config = model.config.image_encoder_config
    with atomic_folder(folder) as temporary:
        model.save_pretrained(temporary)
        lzn_image_processor(encoder_config.image_size, encoder_config.num_channels).save_pretrained(temporary)
        write_model_card(temporary, repo_id=os.fspath(folder), title=Path(folder).name)
    return Path(folder)


def save_pipeline_folder(model, folder):
    """``save_pretrained`` of the :class:`~lzn_hf.pipeline_lzn.LZNPipeline` of an LZN model (its image decoder and
    label anchors, a ``FlowMatchEulerDiscreteScheduler``), whole or not at all (:func:`atomic_folder`); returns
    the pipeline, progress bar off, for sampling."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ..model_cards import write_model_card
    from ..pipeline_lzn import LZNPipeline

    pipeline = LZNPipeline(image_decoder=model.image_decoder, label_anchors=model.label_anchors,
                           scheduler=FlowMatchEulerDiscreteScheduler())
    pipeline.set_progress_bar_config(disable=True)
    with atomic_folder(folder) as temporary:
        pipeline.save_pretrained(temporary)
        write_model_card(temporary, "pipeline", repo_id=os.fspath(folder), title=Path(folder).name)
    return pipeline


#: What --push_to_hub leaves out of the final folder: training state and logs.
HUB_IGNORE_PATTERNS = [f"{CHECKPOINT_PREFIX}*", f"{CHECKPOINT_PREFIX}*/**", "logs/**", "logs", "*.jsonl",
                       ".*.partial*", ".*.partial*/**", ".*.old-*", ".*.old-*/**"]  # leftovers of a killed write


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


def write_run_card(folder, title: str, description: str, *, pipeline_tag: str, datasets: Sequence[str], usage: str,
                   metrics: Optional[Mapping[str, float]] = None, tags: Sequence[str] = (), extra_text: str = "") -> Path:
    """The ``README.md`` at the root of a training output folder (the Hub repo's card when pushed).

    lzn_hf's model card (:func:`lzn_hf.model_cards.write_model_card`: YAML metadata with library ``lzn_hf``, the
    pipeline tag, datasets, metrics and a model index of their values; usage, results, the method) with the run's
    title, a ``description`` of what the folder holds, a ``usage`` snippet and ``extra_text`` (the training section).
    Metric values are rounded to 4 digits. The saved model folders inside get their own cards.
    """
    from ..model_cards import write_model_card

    metrics = {name: round(float(value), 4) for name, value in (metrics or {}).items()}
    # the root holds no model of its own: kind "model" reads nothing from it, every text of the card is the run's
    return write_model_card(folder, "model", title=title, description=description, usage=usage, pipeline_tag=pipeline_tag,
                            datasets=datasets, metrics=metrics, tags=tags, extra_text=extra_text, license="mit")
