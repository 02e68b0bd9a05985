"""The modules behind :mod:`lzn_hf.training_utils`, one role each (losses, recipes, data, augmentations,
optimization, checkpoints, reporting, loop, evaluation helpers). Import from ``lzn_hf.training_utils``."""
