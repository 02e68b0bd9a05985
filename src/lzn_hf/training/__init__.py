"""LZN training, the one import point of the example scripts (`examples/train_*.py`); never used by modeling code.

One role per module:

* ``arguments``: the flags every script shares as typed dataclasses, resolved against the preset's recipe;
* ``recipes``: `TRAINING_RECIPES` (each preset's hyper-parameters) and `load_lzn_config`;
* ``data``: the digits, image folders, Hub and saved datasets, stratified subsets, `EpochShuffleSampler`;
* ``noise``: the per-step, world-size-independent draws (`step_generator`, `rank_randn`, `rectified_flow_inputs`);
* ``augmentations``: `random_flip`, `simclr_augment` (batched torch, no torchvision);
* ``losses``: the three case studies' losses and the label flow's class weights;
* ``collective``: what is decided over all processes (non-finite skip, global class weights) and the guards of
  every forward (float32 flows, gathered anchors, the NaN loss of non-finite anchors);
* ``optimization``: per-module Adam groups and warm-up, per-module EMA, the decoder freeze;
* ``checkpoints``: Accelerate hooks writing `save_pretrained` folders, atomic `checkpoint-N` with `training_state.json`,
  resume from any folder without unpickling objects (`verify_checkpoint`);
* ``loop``: `make_accelerator`, `prepare_training` -> `TrainingLoop` (the data stream, the steps of an update, the
  end of the loop), `end_training` (trackers, `--push_to_hub`);
* ``reporting``: the training section of cards, sample grids, the logged history and its curves;
* ``export``: the final model and pipeline folders (written whole or not at all), `run_config.json`, the run card,
  the Hub upload.

End-of-training evaluation (judge, cross-entropy ceiling, batch-mode accuracy, linear probe) is
:mod:`lzn_hf.evaluation`. Orientation reminders: pixels are in [-1, 1]; the image decoder follows diffusers' flow
matching (``x_sigma = (1 - sigma) x + sigma noise``, prediction ``noise - x``); upstream's time is ``t = 1 - sigma``.
"""

from .arguments import (
    DataArguments,
    ModelArguments,
    OptimizationArguments,
    RunArguments,
    TrainingArguments,
    add_arguments,
    dataclass_from_flags,
    flag,
    local_batch_size,
    parse_training_arguments,
    resolve_recipe,
)
from .augmentations import random_flip, simclr_augment
from .checkpoints import (
    CHECKPOINT_PREFIX,
    EMA_SUBFOLDER,
    MODEL_SUBFOLDER,
    TRAINING_STATE_FILE,
    UnsafeCheckpointError,
    find_latest_checkpoint,
    load_plain_pickle,
    prune_checkpoints,
    register_checkpoint_hooks,
    resume_from_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from .collective import all_processes_finite, float32_flows, gather_float32_anchors, global_class_weights, nonfinite_loss
from .data import (
    DIGITS_SPLIT_SEED,
    DIGITS_TEST_FRACTION,
    SUBSET_SEED,
    EpochShuffleSampler,
    TensorImageDataset,
    check_images,
    dataset_labels,
    is_saved_dataset,
    load_digits,
    load_image_dataset,
    load_training_data,
    stack_dataset,
    stratified_indices,
)
from .export import (
    HUB_IGNORE_PATTERNS,
    RUN_CONFIG_FILE,
    atomic_folder,
    push_folder_to_hub,
    read_run_config,
    save_model_folder,
    save_pipeline_folder,
    write_json_atomically,
    write_run_card,
    write_run_config,
)
from .loop import RunningMeans, TrainingCounters, TrainingLoop, end_training, iterate_batches, make_accelerator, prepare_training, resume_position
from .losses import (assignment_loss, class_weights_from_labels, cutoff_step, label_alignment_loss, nt_xent_logits, nt_xent_loss,
                     rectified_flow_loss)
from .noise import RF_T_MIN, rank_rand, rank_randn, rectified_flow_inputs, step_generator
from .optimization import (LR_SCHEDULES, ExponentialMovingAverage, ModuleEMA, adam_with_warmup, freeze_module, learning_rate_schedule, linear_warmup,
                           module_param_groups, trainable_parameters)
from .recipes import FASHION_MNIST_HUB_ID, TRAINING_RECIPES, load_lzn_config
from .reporting import TrainingHistory, dataset_id, save_image_grid, save_training_curves, tracker_config, training_markdown

__all__ = [
    # arguments and recipes
    "ModelArguments", "DataArguments", "OptimizationArguments", "RunArguments", "TrainingArguments", "add_arguments", "flag", "dataclass_from_flags",
    "parse_training_arguments", "resolve_recipe", "local_batch_size", "TRAINING_RECIPES", "FASHION_MNIST_HUB_ID", "load_lzn_config",
    # data
    "DIGITS_SPLIT_SEED", "DIGITS_TEST_FRACTION", "SUBSET_SEED", "load_digits", "TensorImageDataset", "load_image_dataset",
    "is_saved_dataset", "load_training_data", "check_images", "dataset_labels", "stratified_indices", "stack_dataset", "EpochShuffleSampler",
    # noise and augmentations
    "step_generator", "rank_randn", "rank_rand", "RF_T_MIN", "rectified_flow_inputs", "random_flip", "simclr_augment",
    # losses
    "cutoff_step", "class_weights_from_labels", "label_alignment_loss", "assignment_loss", "rectified_flow_loss",
    "nt_xent_logits", "nt_xent_loss",
    # collective decisions and guards
    "all_processes_finite", "global_class_weights", "float32_flows", "gather_float32_anchors", "nonfinite_loss",
    # optimisation
    "module_param_groups", "linear_warmup", "LR_SCHEDULES", "learning_rate_schedule", "adam_with_warmup", "ExponentialMovingAverage", "ModuleEMA", "freeze_module",
    "trainable_parameters",
    # checkpoints
    "CHECKPOINT_PREFIX", "MODEL_SUBFOLDER", "EMA_SUBFOLDER", "register_checkpoint_hooks", "save_checkpoint",
    "prune_checkpoints", "resume_from_checkpoint", "TRAINING_STATE_FILE", "UnsafeCheckpointError", "verify_checkpoint",
    "load_plain_pickle", "find_latest_checkpoint",
    # the loop
    "make_accelerator", "prepare_training", "TrainingLoop", "TrainingCounters", "RunningMeans", "iterate_batches",
    "resume_position", "end_training",
    # reporting
    "dataset_id", "training_markdown", "save_image_grid", "TrainingHistory", "save_training_curves", "tracker_config",
    # export
    "atomic_folder", "save_model_folder", "save_pipeline_folder", "RUN_CONFIG_FILE", "write_run_config", "read_run_config",
    "write_json_atomically", "write_run_card", "HUB_IGNORE_PATTERNS", "push_folder_to_hub",
]
