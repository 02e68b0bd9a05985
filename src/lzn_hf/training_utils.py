"""Pieces of LZN training shared by the example scripts (`examples/train_*.py`): the one import point.

Used by `examples/` and tests, never by modeling code. Each role lives in a module of :mod:`lzn_hf.training`:

* ``losses``: `label_alignment_loss` (case study 3), `assignment_loss` (case study 2), `rectified_flow_loss` and
  its per-step draws (`rectified_flow_inputs`), `class_weights_from_labels`, `cutoff_step`;
* ``recipes``: `TRAINING_RECIPES` (each preset's hyper-parameters), the flags every script shares
  (`add_training_args`, `finalize_training_args`), `load_lzn_config`, `global_to_local_batch_size`;
* ``data``: the digits (offline, fixed held-out split), image folders / Hub datasets, `EpochShuffleSampler`,
  and the per-step, world-size-independent noise (`step_generator`, `rank_randn`, `rank_rand`);
* ``augmentations``: `random_flip`, `simclr_augment` (batched torch, no torchvision);
* ``optimization``: per-module Adam groups and warm-up (`adam_with_warmup`), per-module EMA with upstream's
  warm-up (`ModuleEMA`), non-finite step skipping on every rank, the decoder freeze;
* ``checkpoints``: Accelerate hooks writing `save_pretrained` folders, atomic `checkpoint-N` saves, rotation and
  resume, the final model and pipeline folders, the Hub upload;
* ``reporting``: model-card sections and the run card, sample grids, the logged history and its curves;
* ``loop``: `make_accelerator`, `prepare_training` -> `TrainingLoop` (the data stream, backward and step, the
  bookkeeping of each update, the end of the loop) and `end_training` (trackers, `--push_to_hub`);
* ``evaluation_helpers``: end-of-training evaluation (`fit_pixel_judge`,
  `train_cross_entropy_classifier`); `batch_mode_accuracy` comes from :mod:`lzn_hf.evaluation`.

Orientation reminders: pixels are in [-1, 1]; the image decoder follows diffusers' flow matching
(``x_sigma = (1 - sigma) x + sigma noise``, prediction ``noise - x``); upstream's time is ``t = 1 - sigma``.
"""

from .training.augmentations import random_flip, simclr_augment
from .training.checkpoints import (
    CHECKPOINT_PREFIX,
    EMA_SUBFOLDER,
    HUB_IGNORE_PATTERNS,
    MODEL_SUBFOLDER,
    prune_checkpoints,
    push_folder_to_hub,
    register_checkpoint_hooks,
    resume_from_checkpoint,
    save_checkpoint,
    save_model_folder,
    save_pipeline_folder,
)
from .training.data import (
    DIGITS_SPLIT_SEED,
    DIGITS_TEST_FRACTION,
    EpochShuffleSampler,
    TensorImageDataset,
    load_digits,
    load_image_dataset,
    load_training_data,
    rank_rand,
    rank_randn,
    stack_dataset,
    step_generator,
)
from .evaluation import batch_mode_accuracy
from .training.evaluation_helpers import fit_pixel_judge, train_cross_entropy_classifier
from .training.losses import (
    RF_T_MIN,
    assignment_loss,
    class_weights_from_labels,
    cutoff_step,
    label_alignment_loss,
    rectified_flow_inputs,
    rectified_flow_loss,
)
from .training.loop import (
    RunningMeans,
    TrainingLoop,
    end_training,
    iterate_batches,
    make_accelerator,
    prepare_training,
    resume_position,
)
from .training.optimization import (
    ExponentialMovingAverage,
    ModuleEMA,
    TrainingCounters,
    adam_with_warmup,
    all_processes_finite,
    freeze_module,
    global_class_weights,
    linear_warmup,
    module_param_groups,
    trainable_parameters,
)
from .training.recipes import (
    TRAINING_RECIPES,
    add_training_args,
    finalize_training_args,
    global_to_local_batch_size,
    load_lzn_config,
)
from .training.reporting import (
    TrainingHistory,
    dataset_id,
    save_image_grid,
    save_training_curves,
    tracker_config,
    training_markdown,
    write_run_card,
)

__all__ = [
    # losses
    "cutoff_step",
    "class_weights_from_labels",
    "label_alignment_loss",
    "assignment_loss",
    "RF_T_MIN",
    "rectified_flow_inputs",
    "rectified_flow_loss",
    # recipes and arguments
    "TRAINING_RECIPES",
    "add_training_args",
    "finalize_training_args",
    "load_lzn_config",
    "global_to_local_batch_size",
    # data, order and noise
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_FRACTION",
    "load_digits",
    "TensorImageDataset",
    "load_image_dataset",
    "load_training_data",
    "stack_dataset",
    "EpochShuffleSampler",
    "step_generator",
    "rank_randn",
    "rank_rand",
    # augmentations
    "random_flip",
    "simclr_augment",
    # optimisation
    "module_param_groups",
    "linear_warmup",
    "adam_with_warmup",
    "ExponentialMovingAverage",
    "ModuleEMA",
    "TrainingCounters",
    "all_processes_finite",
    "global_class_weights",
    "freeze_module",
    "trainable_parameters",
    # checkpoints and saved folders
    "CHECKPOINT_PREFIX",
    "MODEL_SUBFOLDER",
    "EMA_SUBFOLDER",
    "register_checkpoint_hooks",
    "save_checkpoint",
    "prune_checkpoints",
    "resume_from_checkpoint",
    "save_model_folder",
    "save_pipeline_folder",
    "HUB_IGNORE_PATTERNS",
    "push_folder_to_hub",
    # reporting
    "dataset_id",
    "training_markdown",
    "write_run_card",
    "save_image_grid",
    "TrainingHistory",
    "save_training_curves",
    "tracker_config",
    # the training loop
    "make_accelerator",
    "prepare_training",
    "TrainingLoop",
    "end_training",
    "iterate_batches",
    "resume_position",
    "RunningMeans",
    # evaluation
    "batch_mode_accuracy",
    "fit_pixel_judge",
    "train_cross_entropy_classifier",
]
