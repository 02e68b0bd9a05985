"""The flags every training script shares, as typed dataclasses (:func:`add_arguments` turns them into
argparse flags), and their resolution against the preset's recipe.

Four groups of flags (``--help`` shows them as groups): :class:`ModelArguments`, :class:`DataArguments`,
:class:`OptimizationArguments`, :class:`RunArguments`. :class:`TrainingArguments` is all four in one record;
:func:`resolve_recipe` returns a copy with every unset hyper-parameter taken from the recipe
(:data:`~lzn_hf.training.recipes.TRAINING_RECIPES`) and the combination validated (errors name the flag).
A script adds its own dataclass and calls :func:`parse_training_arguments`.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

from .optimization import LR_SCHEDULES
from .recipes import TRAINING_RECIPES


def flag(default=None, help: str = "", **metadata) -> Any:
    """A dataclass field that :func:`add_arguments` turns into ``--name`` (``metadata``: e.g. ``choices``)."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class ModelArguments:
    _argument_group_name = "model"

    config: str = flag("digits-joint", f"a preset name ({', '.join(sorted(TRAINING_RECIPES))}) or a path to an LZNConfig config.json "
                                       "(default: %(default)s).")
    recipe: Optional[str] = flag(None, "take unset hyper-parameters from this preset's recipe (default: the --config preset's).")
    image_flow_solver: Optional[str] = flag(None, "override the config's image latent flow solver.", choices=["euler", "dpm_solver++"])
    image_flow_num_steps: Optional[int] = flag(None, "override the config's image flow steps.")


@dataclass
class DataArguments:
    _argument_group_name = "data"

    dataset_name: Optional[str] = flag(
        None, "'digits' (scikit-learn's 8x8 digits, offline), a Hub dataset id, or the path of a dataset saved with "
              "datasets' save_to_disk; default: the recipe's.")
    dataset_config_name: Optional[str] = flag(None)
    train_data_dir: Optional[str] = flag(
        None, "an image folder (datasets' 'imagefolder': class sub-folders give labels); replaces the recipe's dataset.")
    image_column: Optional[str] = flag(None, "image column of a Hub or saved dataset (default: guessed).")
    label_column: Optional[str] = flag(None, "label column (default: guessed; none = unlabelled).")
    cache_dir: Optional[str] = flag(None)
    resolution: Optional[int] = flag(None, "image size fed to the model (default: the config's).")
    random_flip: Optional[bool] = flag(None, "random horizontal flips (default: the recipe's).")
    max_train_samples: Optional[int] = flag(None, "truncate the training set (debugging).")
    dataloader_num_workers: int = flag(0)


@dataclass
class OptimizationArguments:
    _argument_group_name = "optimisation"

    train_batch_size: Optional[int] = flag(None, "per-process batch size; default: the recipe's global batch / number of processes.")
    max_train_steps: Optional[int] = flag(None, "optimizer updates (default: the recipe's).")
    gradient_accumulation_steps: int = flag(1, "micro-batches per update (the zones of each micro-batch are its own anchors).")
    learning_rate_encoder: Optional[float] = flag(None)
    learning_rate_decoder: Optional[float] = flag(None)
    learning_rate_label_anchors: Optional[float] = flag(None)
    lr_warmup_steps: Optional[int] = flag(None, "linear warm-up over N updates (from lr/N with 'constant', from 0 with 'cosine').")
    lr_scheduler: Optional[str] = flag(
        None, "'constant' (after the warm-up; upstream's) or 'cosine' (diffusers' cosine decay to 0 at --max_train_steps); "
              "default: the recipe's.", choices=list(LR_SCHEDULES))
    adam_beta1: float = flag(0.9)
    adam_beta2: float = flag(0.999)
    adam_epsilon: float = flag(1e-8)
    adam_weight_decay: float = flag(0.0)
    adam_fused: Optional[bool] = flag(
        None, "the fused Adam kernel (same update up to float rounding); default: fused where the device has it, else for-each.")
    max_grad_norm: float = flag(1.0, "global gradient-norm clip over trained parameters.")
    ema_decay: Optional[float] = flag(None, "EMA decay of every module; the effective decay is min(decay, (1 + n) / (10 + n)).")
    mixed_precision: Optional[str] = flag(
        None, "bf16 (CPU or GPU) or fp16 (GPU): the networks under autocast; weights, optimizer, EMA and the latent flows stay "
              "float32. Default: accelerate's config (float32 unless configured; the paper trains in float32).", choices=["no", "fp16", "bf16"])
    seed: int = flag(0, "model init, data order and every noise draw.")

    def adam_options(self) -> Dict[str, Any]:
        """``betas``, ``eps``, ``weight_decay``, ``fused``, ``schedule`` and ``total_steps`` of
        :func:`~lzn_hf.training.optimization.adam_with_warmup`."""
        return {"betas": (self.adam_beta1, self.adam_beta2), "eps": self.adam_epsilon, "weight_decay": self.adam_weight_decay,
                "fused": self.adam_fused, "schedule": self.lr_scheduler or "constant", "total_steps": self.max_train_steps}


@dataclass
class RunArguments:
    _argument_group_name = "checkpoints, logging and the Hub"

    output_dir: str = flag("lzn-output", "the run's folder (default: %(default)s).")
    checkpointing_steps: Optional[int] = flag(None, "save a checkpoint-N every N updates (0 = never).")
    checkpoints_total_limit: Optional[int] = flag(None, "keep at most this many checkpoints.")
    resume_from_checkpoint: Optional[str] = flag(None, "a checkpoint-N folder (name or path) or 'latest'.")
    logging_dir: str = flag("logs", "tracker folder, relative to --output_dir.")
    report_to: Optional[str] = flag("tensorboard", "'tensorboard', 'wandb', 'all' or 'none' (the JSON-lines history is always written).")
    logging_steps: int = flag(10, "log to the trackers every N updates.")
    push_to_hub: bool = flag(False, "upload the final folder (no checkpoints or logs).")
    hub_model_id: Optional[str] = flag(None, "repo id (default: the output folder's name).")
    hub_token: Optional[str] = flag(None)
    hub_private_repo: bool = flag(False)
    skip_evaluation: bool = flag(False, "skip the end-of-training evaluation and samples (no evaluation images are loaded).")


@dataclass
class TrainingArguments(ModelArguments, DataArguments, OptimizationArguments, RunArguments):
    """Every shared flag in one record. ``global_batch_size`` (N, the anchors that define the zones) is the recipe's
    until :func:`~lzn_hf.training.loop.prepare_training` knows the number of processes."""

    global_batch_size: Optional[int] = flag(None)

    def to_record(self) -> Dict[str, Any]:
        """The flags as plain JSON values, the Hub token left out (run metadata and tracker configs)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "hub_token"}


ARGUMENT_GROUPS = (ModelArguments, DataArguments, OptimizationArguments, RunArguments)

# Recipe keys that map one-to-one onto flags (None = take the recipe's).
_RECIPE_FLAGS = (
    "dataset_name",
    "max_train_steps",
    "learning_rate_encoder",
    "learning_rate_decoder",
    "learning_rate_label_anchors",
    "lr_warmup_steps",
    "lr_scheduler",
    "ema_decay",
    "checkpointing_steps",
    "random_flip",
)


def resolve_recipe(arguments: TrainingArguments) -> TrainingArguments:
    """A copy of ``arguments`` with unset hyper-parameters taken from the recipe, validated (errors name the flag)."""
    recipe_name = arguments.recipe or (arguments.config if arguments.config in TRAINING_RECIPES else None)
    if recipe_name is None:
        raise ValueError(f"--config {arguments.config!r} is not a preset: pass --recipe PRESET to choose default hyper-parameters")
    if recipe_name not in TRAINING_RECIPES:
        raise ValueError(f"unknown --recipe {recipe_name!r}; available: {sorted(TRAINING_RECIPES)}")
    recipe = TRAINING_RECIPES[recipe_name]
    values = {"recipe": recipe_name, "global_batch_size": recipe["global_batch_size"]}
    for name in _RECIPE_FLAGS:
        if getattr(arguments, name) is None and not (name == "dataset_name" and arguments.train_data_dir is not None):
            values[name] = recipe[name]
    if arguments.report_to == "none":
        values["report_to"] = None
    resolved = dataclasses.replace(arguments, **values)
    if resolved.train_data_dir is None and resolved.dataset_name is None:
        raise ValueError(f"preset {recipe_name!r} has no default dataset: pass --train_data_dir DIR or --dataset_name NAME")
    if resolved.train_data_dir is not None and resolved.dataset_name is not None:
        raise ValueError("pass --train_data_dir or --dataset_name, not both")
    for name in ("max_train_steps", "gradient_accumulation_steps", "logging_steps"):
        if getattr(resolved, name) is None or getattr(resolved, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(resolved, name)}")
    for name in ("train_batch_size", "checkpoints_total_limit", "resolution"):
        value = getattr(resolved, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    if resolved.checkpointing_steps is not None and resolved.checkpointing_steps < 0:
        raise ValueError(f"--checkpointing_steps must be >= 0, got {resolved.checkpointing_steps}")
    if not 0.0 <= resolved.ema_decay < 1.0:
        raise ValueError(f"--ema_decay must be in [0, 1), got {resolved.ema_decay}")
    if resolved.lr_warmup_steps < 0:
        raise ValueError(f"--lr_warmup_steps must be >= 0, got {resolved.lr_warmup_steps}")
    if resolved.lr_scheduler == "cosine" and resolved.lr_warmup_steps >= resolved.max_train_steps:
        raise ValueError(f"--lr_scheduler cosine: --lr_warmup_steps ({resolved.lr_warmup_steps}) must be below --max_train_steps "
                         f"({resolved.max_train_steps})")
    if os.path.lexists(resolved.output_dir) and not os.path.isdir(resolved.output_dir):
        raise ValueError(f"--output_dir {resolved.output_dir!r} exists and is not a folder")
    return resolved


def add_arguments(parser, *groups) -> None:
    """Add the fields of each dataclass in ``groups`` to an ``argparse`` parser, one argument group per dataclass
    (its ``_argument_group_name``): ``--name`` with the field's type, default, ``help`` and ``choices``; a ``bool``
    field is a switch (``store_true``), an ``Optional[bool]`` one a ``--name/--no-name`` pair (None = unset)."""
    import argparse

    for group in groups:
        hints = typing.get_type_hints(group)
        section = parser.add_argument_group(getattr(group, "_argument_group_name", group.__name__))
        for item in dataclasses.fields(group):
            kind = hints[item.name]
            options = {"default": item.default, "help": item.metadata.get("help")}
            if "choices" in item.metadata:
                options["choices"] = item.metadata["choices"]
            if kind is bool:
                options["action"] = "store_true"
            elif kind == Optional[bool]:
                options["action"] = argparse.BooleanOptionalAction
            else:
                inner = [t for t in typing.get_args(kind) if t is not type(None)]
                options["type"] = inner[0] if inner else kind
            section.add_argument(f"--{item.name}", **options)


def dataclass_from_flags(group, flags: Dict[str, Any]):
    """An instance of the dataclass ``group`` from parsed flag values (``{name: value}``; others ignored)."""
    return group(**{item.name: flags[item.name] for item in dataclasses.fields(group) if item.init and item.name in flags})


def parse_training_arguments(description: str, defaults: Dict[str, Any], *script_groups, argv: Optional[Sequence[str]] = None) -> Tuple[Any, ...]:
    """``(resolved TrainingArguments, one instance per script group)`` from the command line (``argv``: default
    ``sys.argv``).

    Args:
        description: the ``--help`` text before the flags (kept as written).
        defaults: the script's defaults of shared flags, e.g. ``{"config": "digits-joint", "output_dir": "lzn-digits-joint"}``.
        script_groups: the script's own dataclasses (each a group of its own flags).
    """
    import argparse

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, *ARGUMENT_GROUPS, *script_groups)
    parser.set_defaults(**defaults)
    flags = vars(parser.parse_args(argv))
    return (resolve_recipe(dataclass_from_flags(TrainingArguments, flags)), *(dataclass_from_flags(group, flags) for group in script_groups))


def local_batch_size(train_batch_size: Optional[int], global_batch_size: int, num_processes: int) -> int:
    """Per-process batch: ``train_batch_size`` if given, else the recipe's global batch / processes."""
    if train_batch_size is not None:
        return train_batch_size
    if global_batch_size % num_processes:
        raise ValueError(
            f"the recipe's global batch {global_batch_size} does not split over {num_processes} processes: pass --train_batch_size"
        )
    return global_batch_size // num_processes

