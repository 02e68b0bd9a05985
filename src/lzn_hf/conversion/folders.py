"""Writing a converted model as a ``save_pretrained`` folder: whole or absent, never half-written.

The folder is written to a hidden temporary sibling ``.<name>.partial-*`` and renamed into place once complete
(:func:`lzn_hf._atomic.atomic_folder`), so a process killed while writing leaves the old folder (or none) under
the name, never a mix. An existing folder is replaced only when asked to (``overwrite=True``) and only when it is
a model folder itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from .._atomic import atomic_folder
from ..image_processing_lzn import lzn_image_processor
from ..modeling_lzn import LZNModel

__all__ = ["check_output_dir", "save_converted"]

#: Files that make a folder a model folder (transformers / diffusers), which ``overwrite=True`` may replace.
_MODEL_FOLDER_MARKERS = ("config.json", "model_index.json")


def check_output_dir(output_dir: Union[str, os.PathLike], overwrite: bool = False) -> Path:
    """``output_dir`` as a Path, once it is clear that it can be written.

    Raises:
        FileExistsError: ``output_dir`` is a file, or a non-empty folder while ``overwrite`` is False, or a folder
            that is not a model folder (no ``config.json`` / ``model_index.json``), which is never replaced.
        FileNotFoundError: its parent folder does not exist.
    """
    output_dir = Path(output_dir)
    if output_dir.is_file():
        raise FileExistsError(f"output_dir {str(output_dir)!r} is a file")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output_dir {str(output_dir)!r} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        if not any((output_dir / marker).is_file() for marker in _MODEL_FOLDER_MARKERS):
            raise FileExistsError(
                f"output_dir {str(output_dir)!r} is not a model folder (no {' or '.join(_MODEL_FOLDER_MARKERS)}); "
                "refusing to replace it: choose a new folder"
            )
    if not output_dir.absolute().parent.is_dir():
        raise FileNotFoundError(f"output_dir {str(output_dir)!r}: the parent folder does not exist")
    return output_dir


def save_converted(model: LZNModel, output_dir: Union[str, os.PathLike], pipeline: bool = False, overwrite: bool = False):
    """Write a converted ``model`` to ``output_dir`` atomically and return what was written.

    Args:
        model: the result of :func:`~.checkpoint.convert_original_checkpoint`.
        output_dir: the folder to write.
        pipeline: write an :class:`~lzn_hf.pipeline_lzn.LZNPipeline` (image decoder and label anchors; generation
            checkpoints) instead of the ``LZNModel`` folder (which gets an image processor, so
            ``transformers.pipeline("image-feature-extraction", model=output_dir)`` works).
        overwrite: replace an existing model folder at ``output_dir``.

    Raises:
        ValueError: ``pipeline=True`` for a model without an image decoder.
        FileExistsError, FileNotFoundError: see :func:`check_output_dir`.
    """
    output_dir = check_output_dir(output_dir, overwrite)
    if pipeline:
        if model.image_decoder is None:
            raise ValueError("pipeline=True (--pipeline) needs a generation checkpoint: this config has no image decoder")
        from ..pipeline_lzn import LZNPipeline  # the one module that imports diffusers

        written = LZNPipeline(image_decoder=model.image_decoder, label_anchors=model.label_anchors)
    else:
        written = model
    with atomic_folder(output_dir, overwrite=overwrite) as partial:
        written.save_pretrained(partial)
        if not pipeline:
            encoder = model.config.image_encoder_config
            lzn_image_processor(encoder.image_size, encoder.num_channels).save_pretrained(partial)
    return written
