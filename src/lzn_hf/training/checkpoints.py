"""Checkpoints: Accelerate hooks writing ``save_pretrained`` folders, atomic ``checkpoint-N`` saves with rotation,
and a resume that never runs code from the folder. (The final folders and the Hub upload:
:mod:`lzn_hf.training.export`.)

``checkpoint-N/`` holds ``lzn/`` (raw weights), ``lzn_ema/`` (averaged weights + ``ema_state.json``), Accelerate's
optimizer and RNG files, and ``training_state.json`` (the run's counters and the learning-rate schedule, as JSON).

Resume is safe for any folder (one downloaded, or written by someone else): before Accelerate reads anything,
:func:`verify_checkpoint` opens every file: JSON must parse, safetensors headers must open, and every pickle-format
file (``*.bin``, ``*.pkl``, ``*.pt``, ``*.pth``) must load with ``torch.load(weights_only=True)`` and only numpy's
RNG-state globals allowed (what Accelerate's RNG file needs): tensors and plain containers, never objects. Our own
state is JSON, read by us; Accelerate's ``custom_checkpoint_*.pkl`` (which it unpickles with ``weights_only=False``)
is never registered, and only the two that this project's older runs wrote are read (as plain data, through the
same check).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .optimization import ModuleEMA

logger = logging.getLogger(__name__)


CHECKPOINT_PREFIX = "checkpoint-"
MODEL_SUBFOLDER, EMA_SUBFOLDER = "lzn", "lzn_ema"
#: The run's own state in a checkpoint: ``{"format": 1, "step": N, "states": {name: state_dict}}`` (JSON values only).
TRAINING_STATE_FILE = "training_state.json"
#: What the project's runs before ``training_state.json`` wrote through ``register_for_checkpointing``, in order.
LEGACY_STATE_FILES = {"counters": "custom_checkpoint_0.pkl", "lr_scheduler": "custom_checkpoint_1.pkl"}
PICKLE_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")
IGNORED_SUFFIXES = (".md", ".txt")  # model cards written by save_pretrained: never read by resume


class UnsafeCheckpointError(ValueError):
    """A checkpoint folder holds a file that resume refuses to read (objects in a pickle, a damaged file, an
    unexpected ``custom_checkpoint_*.pkl``): nothing of it was loaded."""


def register_checkpoint_hooks(accelerator, ema: ModuleEMA, model_class, model_attribute: str = "lzn") -> None:
    """Accelerate save/load hooks writing ``checkpoint-N/lzn`` (raw weights) and ``checkpoint-N/lzn_ema``
    (averaged weights + counters) as ``save_pretrained`` folders, instead of Accelerate's flat weight file.

    The prepared model is a training wrapper holding the LZN model in ``.{model_attribute}``; the optimizer and
    RNG states are Accelerate's own files in the same folder.
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


def delete_checkpoint(path) -> None:
    """Delete a ``checkpoint-N`` folder (or file) out of sight: one atomic rename to a hidden
    ``.checkpoint-N.deleted-*`` sibling, then the removal. A process killed mid-delete leaves that hidden name, which
    ``--resume_from_checkpoint latest`` never considers (and the next save clears), never a half-deleted
    ``checkpoint-N``."""
    path = os.fspath(path)
    hidden = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.deleted-{secrets.token_hex(4)}")
    os.replace(path, hidden)
    _remove_entry(hidden)


def _remove_entry(path: str) -> None:
    shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def remove_deleted_leftovers(output_dir) -> List[str]:
    """Finish the deletions a killed process left (hidden ``.checkpoint-N.deleted-*`` entries); returns their names."""
    if not os.path.isdir(output_dir):
        return []
    leftovers = sorted(name for name in os.listdir(output_dir) if re.fullmatch(rf"\.{CHECKPOINT_PREFIX}\d+(\.partial)?\.deleted-[0-9a-f]+", name))
    for name in leftovers:
        _remove_entry(os.path.join(output_dir, name))
    return leftovers


def prune_checkpoints(output_dir, total_limit: Optional[int], keep: Optional[str] = None) -> List[str]:
    """Delete the oldest ``checkpoint-N`` folders so that at most ``total_limit`` remain, never ``keep`` (the one just
    saved, even when a higher-numbered ``checkpoint-N`` of an earlier run is there); returns the removed names."""
    if total_limit is None:
        return []
    checkpoints = _checkpoint_steps(output_dir)
    candidates = [name for _, name in checkpoints if name != keep]
    removed = candidates[: max(0, len(checkpoints) - total_limit)]
    for name in removed:
        delete_checkpoint(os.path.join(output_dir, name))
    return removed


def no_space_error(error: BaseException, where) -> Optional[OSError]:
    """An ``OSError(ENOSPC)`` saying "no space left on device" and ``where``, when ``error`` is a full disk: an
    ``OSError`` with ENOSPC or an error quoting it (safetensors), or torch's writer failure (``basic_ios::clear: iostream error``, ``PytorchStreamWriter
    failed``) on a device with less than 64 MiB free."""
    if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or re.search(r"No space left on device|os error 28", str(error)):
        full = True  # an OSError, or e.g. safetensors' SafetensorError quoting the OS error
    elif re.search(r"iostream error|PytorchStreamWriter failed|file write failed", str(error)):
        try:
            full = shutil.disk_usage(Path(where).parent if not os.path.isdir(where) else where).free < 64 * 2**20
        except OSError:
            full = False
    else:
        full = False
    if not full:
        return None
    return OSError(errno.ENOSPC, f"no space left on device while writing {where} ({type(error).__name__}: {error}); "
                                 "free some space (or pass --checkpoints_total_limit) and resume with --resume_from_checkpoint latest")


def save_checkpoint(accelerator, output_dir, global_step: int, total_limit: Optional[int] = None,
                    stateful: Optional[Mapping[str, Any]] = None) -> str:
    """``accelerator.save_state`` into ``output_dir/checkpoint-{global_step}``, atomically, with
    ``training_state.json`` holding ``{name: obj.state_dict()}`` of ``stateful`` (JSON values: counters, the
    learning-rate scheduler).

    Everything is written to ``checkpoint-N.partial`` and renamed once complete, so a process killed during the
    save never leaves a ``checkpoint-N`` folder that ``--resume_from_checkpoint latest`` would pick; the oldest
    checkpoints beyond ``total_limit`` are deleted only after the new one is in place, each renamed out of the
    ``checkpoint-N`` namespace before its files go (:func:`delete_checkpoint`). A full disk raises
    ``OSError(ENOSPC)`` saying "no space left on device" and where (the partial folder is removed).
    """
    from .export import write_json_atomically

    path = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{global_step}")
    partial = f"{path}.partial"
    if accelerator.is_main_process:  # what a killed run left: a partial save, unfinished deletions
        if os.path.lexists(partial):
            _remove_entry(partial)
        remove_deleted_leftovers(output_dir)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(partial)
        if accelerator.is_main_process:
            states = {name: obj.state_dict() for name, obj in (stateful or {}).items()}
            write_json_atomically(os.path.join(partial, TRAINING_STATE_FILE), {"format": 1, "step": int(global_step), "states": states})
    except Exception as error:
        full = no_space_error(error, partial)
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        if full is not None:
            raise full from error
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.lexists(path):  # a checkpoint-N of an earlier run: out of sight first, so no kill leaves half of it
            delete_checkpoint(path)
        os.replace(partial, path)
        removed = prune_checkpoints(output_dir, total_limit, keep=os.path.basename(path))
        if removed:
            logger.info(f"removed {len(removed)} old checkpoint(s): {', '.join(removed)}")
    accelerator.wait_for_everyone()
    logger.info(f"saved state to {path}")
    return path


# ----------------------------------------------------------------------------------------------------------
# resume: what a folder must hold, and what it may hold
# ----------------------------------------------------------------------------------------------------------
def _weights_file(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()


def incomplete_checkpoint_reason(path) -> Optional[str]:
    """Why ``path`` is not a complete ``checkpoint-N`` folder of this project (None when it is one): a file, an
    empty folder, a folder of another tool (no ``lzn/``), a missing weight, EMA, optimizer or training state."""
    path = Path(path)
    if not path.is_dir():
        return "not a folder"
    if not any(path.iterdir()):
        return "an empty folder"
    for sub in (MODEL_SUBFOLDER, EMA_SUBFOLDER):
        if not ((path / sub / "config.json").is_file() and _weights_file(path / sub)):
            return f"no {sub}/config.json with its model.safetensors (not a checkpoint of an lzn_hf run)"
    if not (path / EMA_SUBFOLDER / ModuleEMA.STATE_FILE).is_file():
        return f"no {EMA_SUBFOLDER}/{ModuleEMA.STATE_FILE}"
    if not (path / "optimizer.bin").is_file():
        return "no optimizer.bin"
    if not (path / TRAINING_STATE_FILE).is_file() and not all((path / name).is_file() for name in LEGACY_STATE_FILES.values()):
        return f"no {TRAINING_STATE_FILE}"
    return None


def _rng_safe_globals() -> list:
    """numpy's RNG-state globals (the allow-list Accelerate's ``random_states_N.pkl`` needs): arrays of numbers."""
    import codecs

    import numpy as np

    multiarray = getattr(np, "_core", None) or np.core
    allowed = [multiarray.multiarray._reconstruct, np.ndarray, np.dtype, codecs.encode]
    if hasattr(np, "dtypes"):
        allowed.append(np.dtypes.UInt32DType)
    return allowed


def load_plain_pickle(path) -> Any:
    """``torch.load(weights_only=True)`` of a pickle-format file, with only numpy's RNG-state globals allowed:
    tensors, numbers, strings and containers, never an object (no code of the file runs).
    ``UnsafeCheckpointError`` naming the file otherwise."""
    import torch

    try:
        with torch.serialization.safe_globals(_rng_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UnsafeCheckpointError(
            f"{path} is not a file of tensors and plain containers (torch.load(weights_only=True) refused it: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); resume reads nothing from this "
            "checkpoint. A checkpoint written by lzn_hf holds no objects: the folder was altered or comes from elsewhere."
        ) from error


def verify_checkpoint(path) -> Dict[str, List[str]]:
    """Open every file of a checkpoint folder the way resume may read it, before Accelerate reads anything.

    * ``*.json``: must parse as JSON; ``*.safetensors``: the header must open (safetensors never runs code);
    * pickle-format files (``*.bin``, ``*.pkl``, ``*.pt``, ``*.pth``): :func:`load_plain_pickle`;
    * ``custom_checkpoint_*.pkl``: only the two of older lzn_hf runs, and only without ``training_state.json``
      (Accelerate would unpickle them with ``weights_only=False``; lzn_hf never registers objects with it);
    * ``*.md`` / ``*.txt`` (cards) and files of other names: never read by resume, listed as ignored;
    * anything but a regular file (a FIFO, a device, a link to one) is refused: reading it could block.

    Returns ``{"checked": [...], "ignored": [...]}`` (paths relative to the folder); raises
    ``UnsafeCheckpointError`` naming the first file refused.
    """
    from safetensors import safe_open

    path = Path(path)
    checked, ignored = [], []
    has_state = (path / TRAINING_STATE_FILE).is_file()
    for file in sorted(p for p in path.rglob("*") if not p.is_dir()):
        relative = file.relative_to(path).as_posix()
        name = file.name
        if not file.is_file():  # a FIFO, socket or device (directly or through a link): reading it could block forever
            raise UnsafeCheckpointError(f"{file} is not a regular file; resume reads nothing from this checkpoint")
        if re.fullmatch(r"custom_checkpoint_\d+\.pkl", name) and (
                has_state or file.parent != path or name not in LEGACY_STATE_FILES.values()):
            raise UnsafeCheckpointError(
                f"{file}: unexpected Accelerate custom state (accelerate unpickles it with weights_only=False, which "
                f"runs any code in it); lzn_hf checkpoints keep their state in {TRAINING_STATE_FILE}. Remove the file "
                "if you know where this checkpoint comes from, or do not resume from it.")
        if name.endswith(".json"):
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as error:
                raise UnsafeCheckpointError(f"{file} is not valid JSON ({error}); resume reads nothing from this checkpoint") from error
        elif name.endswith(".safetensors"):
            try:
                with safe_open(str(file), framework="pt") as handle:
                    handle.keys()
            except Exception as error:
                raise UnsafeCheckpointError(f"{file} is not a readable safetensors file ({error}); resume reads nothing from "
                                            "this checkpoint") from error
        elif name.endswith(PICKLE_SUFFIXES):
            load_plain_pickle(file)
        else:
            ignored.append(relative)
            continue
        checked.append(relative)
    return {"checked": checked, "ignored": ignored}


def read_training_state(path) -> Dict[str, Any]:
    """``{name: state_dict}`` of a verified checkpoint: ``training_state.json``, or the two plain-data
    ``custom_checkpoint_*.pkl`` of older lzn_hf runs (loaded with :func:`load_plain_pickle`)."""
    path = Path(path)
    if (path / TRAINING_STATE_FILE).is_file():
        record = json.loads((path / TRAINING_STATE_FILE).read_text(encoding="utf-8"))
        if not isinstance(record, dict) or not isinstance(record.get("states"), dict):
            raise UnsafeCheckpointError(f"{path / TRAINING_STATE_FILE} must hold an object with a 'states' object")
        return record["states"]
    states = {}
    for name, file in LEGACY_STATE_FILES.items():
        state = load_plain_pickle(path / file)
        if not isinstance(state, dict):
            raise UnsafeCheckpointError(f"{path / file} must hold a dict of state, got {type(state).__name__}")
        states[name] = state
    return states


def find_latest_checkpoint(output_dir, log=print) -> Optional[Path]:
    """The newest complete ``checkpoint-N`` of ``output_dir`` (None when there is none); incomplete, empty or
    foreign ``checkpoint-N`` entries are skipped, each with a line through ``log`` saying why."""
    for _, name in reversed(_checkpoint_steps(output_dir)):
        candidate = Path(output_dir) / name
        reason = incomplete_checkpoint_reason(candidate)
        if reason is None:
            return candidate
        log(f"skipping {candidate}: {reason}")
    return None


def _load_state_without_custom_files(accelerator, path: Path) -> None:
    """``accelerator.load_state`` of a view of ``path`` (links to every entry but ``custom_checkpoint_*.pkl``, whose
    number Accelerate checks against the objects registered with it: none)."""
    import tempfile

    view = Path(tempfile.mkdtemp(prefix=f"{path.name}-view-"))
    try:
        for entry in path.iterdir():
            if not re.fullmatch(r"custom_checkpoint_\d+\.pkl", entry.name):
                (view / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
        accelerator.load_state(str(view))
    finally:
        shutil.rmtree(view, ignore_errors=True)


def resume_from_checkpoint(accelerator, checkpoint: Optional[str], output_dir, stateful: Optional[Mapping[str, Any]] = None) -> int:
    """Load ``checkpoint`` (a ``checkpoint-N`` name or path, or ``"latest"``) and return its step N (0 if none).

    ``"latest"``: the newest complete checkpoint of ``output_dir`` (the others are skipped, saying why); none
    starts a fresh run (as diffusers' scripts do). The folder is verified first (:func:`verify_checkpoint`:
    nothing in it is unpickled beyond tensors and plain containers), then Accelerate loads the weights, EMA,
    optimizer and RNG states, and ``stateful`` objects (``{name: obj with load_state_dict}``) get their state from
    ``training_state.json``.
    """
    if not checkpoint:
        return 0
    if checkpoint == "latest":
        path = find_latest_checkpoint(output_dir, log=accelerator.print)
        if path is None:
            accelerator.print(f"no complete checkpoint in {output_dir}: starting a new training run")
            return 0
    else:
        path = Path(checkpoint) if os.path.isdir(checkpoint) else Path(output_dir) / checkpoint
        if not path.is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint {checkpoint!r}: no such folder ({path})")
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.resolve().name)
    if match is None:
        raise ValueError(f"--resume_from_checkpoint must name a {CHECKPOINT_PREFIX}N folder, got {path}")
    reason = incomplete_checkpoint_reason(path)
    if reason is not None:
        raise ValueError(f"--resume_from_checkpoint {checkpoint!r}: {path} is not a complete lzn_hf checkpoint ({reason})")
    report = verify_checkpoint(path)
    if report["ignored"]:
        accelerator.print(f"{path}: not read by resume: {', '.join(report['ignored'])}")
    states = read_training_state(path)
    accelerator.print(f"resuming from {path}")
    if (path / TRAINING_STATE_FILE).is_file():
        accelerator.load_state(str(path))
    else:  # an older lzn_hf run's checkpoint: Accelerate must not see (nor unpickle) its custom_checkpoint_*.pkl
        _load_state_without_custom_files(accelerator, path)
    for name, obj in (stateful or {}).items():
        if name not in states:
            raise UnsafeCheckpointError(f"{path / TRAINING_STATE_FILE} holds no state for {name!r} (it has {sorted(states)})")
        obj.load_state_dict(states[name])
    return int(match.group(1))
