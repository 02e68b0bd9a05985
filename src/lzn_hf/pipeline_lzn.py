"""`LZNPipeline`: label-conditional and unconditional image generation with an LZN decoder (diffusers).

label -> label anchors -> forward label flow -> LZN latent -> rectified-flow decoder -> image.
Unconditional models draw the LZN latent from N(0, I) directly (the latent space is Gaussian by
construction). The only module of lzn_hf that imports diffusers.

This file also travels as remote code (``save_pretrained(..., include_code=True)``): it imports only torch,
numpy, diffusers, transformers and the siblings it names with ``from .x import`` (never the modeling code,
which the components bring along in their own folders).
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ImagePipelineOutput
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import DIFFUSERS_DYNAMIC_MODULE_NAME
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import create_repo
from transformers import PreTrainedModel
from transformers.dynamic_module_utils import get_relative_import_files

from ._atomic import write_json_atomically, write_text_atomically
from ._checks import check_finite
from .model_cards import prepare_upload, write_model_card

__all__ = ["LZNPipeline", "upstream_euler_sigmas", "UPSTREAM_T_START", "MAX_INFERENCE_STEPS"]

# Upstream samples the decoder's ODE from t = 1e-3 (nearly pure noise) to t = 1 (data).
UPSTREAM_T_START = 1e-3
# More Euler steps than this gain nothing measurable; sampler="rk45" is the accurate (adaptive) solver.
MAX_INFERENCE_STEPS = 10_000
# Libraries whose components diffusers loads by name; other components carry their code with include_code=True.
_LIBRARIES_WITHOUT_CODE = ("diffusers", "transformers")


def upstream_euler_sigmas(num_inference_steps: int, t_start: float = UPSTREAM_T_START) -> List[float]:
    """Upstream's uniform Euler grid for the image decoder, in diffusers' orientation:
    ``sigma_k = 1 - (t_start + k (1 - t_start) / N)``, k = 0 .. N-1. The scheduler appends the final sigma 0."""
    step = (1.0 - t_start) / num_inference_steps
    return [1.0 - (t_start + k * step) for k in range(num_inference_steps)]


class LZNPipeline(DiffusionPipeline):
    r"""Image generation with a Latent Zoning Network.

    Components:
        image_decoder ([`LZNImageDecoder`]): the rectified-flow velocity network conditioned on LZN latents.
        scheduler ([`SchedulerMixin`]): a flow-matching scheduler. Always present: when omitted (or None) the
            constructor builds `FlowMatchEulerDiscreteScheduler()`, which is registered and saved like any other.
            Heun (`FlowMatchHeunDiscreteScheduler`) and `DPMSolverMultistepScheduler(use_flow_sigmas=True,
            prediction_type="flow_prediction")` plug in too.
        label_anchors ([`LZNLabelAnchors`], *optional*): the label encoder. Required by a label-conditional
            decoder (`image_decoder.config.num_classes > 0`), absent for an unconditional one.

    Example:
        ```py
        >>> pipe = LZNPipeline.from_pretrained("lzn-digits-joint/pipeline")
        >>> images = pipe(labels=[3, 7], num_images_per_label=4, generator=torch.manual_seed(0)).images
        ```
    """

    model_cpu_offload_seq = "label_anchors->image_decoder"
    # diffusers treats a component with a default value as a module only if it is listed here; the scheduler
    # still never stays None (see __init__), so folders written by lzn_hf always hold one.
    _optional_components = ["label_anchors", "scheduler"]
    # what `callback_on_step_end` may read and replace: `latents` the image being denoised, `lzn_latents` the codes
    _callback_tensor_inputs = ["latents", "lzn_latents"]

    def __init__(
        self,
        image_decoder: PreTrainedModel,
        scheduler: Optional[SchedulerMixin] = None,
        label_anchors: Optional[PreTrainedModel] = None,
    ):
        super().__init__()
        _check_components(image_decoder, label_anchors)
        scheduler = FlowMatchEulerDiscreteScheduler() if scheduler is None else scheduler
        self.register_modules(image_decoder=image_decoder, scheduler=scheduler, label_anchors=label_anchors)
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_normalize=True)

    # ------------------------------------------------------------------------------------------------------
    # saving: a model card beside the components, and optionally the code
    # ------------------------------------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: Union[str, os.PathLike],
        safe_serialization: bool = True,
        variant: Optional[str] = None,
        max_shard_size: Optional[Union[int, str]] = None,
        push_to_hub: bool = False,
        *,
        include_code: Optional[bool] = None,
        **kwargs,
    ):
        """`DiffusionPipeline.save_pretrained` (same arguments: `variant`, `max_shard_size`, ... reach the
        components), then a model card (`README.md`, see `lzn_hf.model_cards`) unless the folder has one.

        Args:
            include_code: also write the pipeline's and the components' code into the folder, so that
                `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads it where lzn_hf is
                not installed (docs/hub.md). Default: True for a pipeline that was itself loaded that way
                (so that it stays loadable), else False. `LZNPipeline.from_pretrained` loads either kind of
                folder with the installed lzn_hf code.
            push_to_hub, kwargs: upload the folder afterwards (`repo_id`, `token`, `private`, `commit_message`,
                `create_pr`), as `DiffusionPipeline.save_pretrained` does.
        """
        if self.scheduler is None:
            raise ValueError("`scheduler` is None: the pipeline needs a flow-matching scheduler to be saved (e.g. FlowMatchEulerDiscreteScheduler())")
        if include_code is None:
            include_code = type(self).__module__.startswith(DIFFUSERS_DYNAMIC_MODULE_NAME + ".")
        push_kwargs = {name: kwargs.pop(name) for name in ("repo_id", "token", "private", "commit_message", "create_pr") if name in kwargs}
        super().save_pretrained(save_directory, safe_serialization=safe_serialization, variant=variant, max_shard_size=max_shard_size, **kwargs)
        if include_code:
            self._save_code(save_directory)
        write_model_card(save_directory, kind="pipeline", overwrite=False)  # a code-carrying folder's card loads it without lzn_hf
        if push_to_hub:
            repo_id = push_kwargs.pop("repo_id", Path(save_directory).name)
            repo_id = create_repo(repo_id, exist_ok=True, private=push_kwargs.pop("private", None), token=push_kwargs.get("token")).repo_id
            self._upload_folder(save_directory, repo_id, **push_kwargs)

    def _upload_folder(self, working_dir, repo_id, *args, **kwargs):
        # diffusers' push paths write a placeholder card just before this call: put lzn_hf's card in its place.
        prepare_upload(working_dir, repo_id)
        return super()._upload_folder(working_dir, repo_id, *args, **kwargs)

    def _save_code(self, folder: Union[str, os.PathLike]) -> None:
        """Copy the pipeline's module and each custom component's module, with the siblings they import, into
        the folder, and point `model_index.json` at them (`["pipeline_lzn", "LZNPipeline"]`, `["modeling_lzn",
        "LZNImageDecoder"]`): diffusers' layout for custom pipelines and custom components."""
        folder = Path(folder)
        index_path = folder / self.config_name
        index = json.loads(index_path.read_text())
        index["_class_name"] = [_copy_module_files(type(self), folder), type(self).__name__]
        for name, entry in index.items():
            component = getattr(self, name, None) if isinstance(entry, list) and name in self.components else None
            if component is not None and type(component).__module__.split(".")[0] not in _LIBRARIES_WITHOUT_CODE:
                index[name] = [_copy_module_files(type(component), folder / name), type(component).__name__]
        write_json_atomically(index_path, index, sort_keys=True)

    @classmethod
    def load_config(cls, *args, **kwargs):
        """`ConfigMixin.load_config`; for a folder that carries its code, entries naming this class and its
        component classes are pointed at the modules already imported here, so that `LZNPipeline.from_pretrained`
        runs the installed code (the folder's copy is only for `DiffusionPipeline.from_pretrained(...,
        trust_remote_code=True)` where lzn_hf is missing). Nothing from the folder is imported."""
        result = super().load_config(*args, **kwargs)
        config = result[0] if isinstance(result, tuple) else result
        class_name = config.get("_class_name")
        if isinstance(class_name, list) and len(class_name) == 2 and class_name[1] == cls.__name__:
            config["_class_name"] = cls.__name__
        package = cls.__module__.rpartition(".")[0]
        for name, entry in config.items():
            if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and "." not in entry[0] and entry[0] not in _LIBRARIES_WITHOUT_CODE:
                module = sys.modules.get(f"{package}.{entry[0]}") if package else None
                if module is not None and isinstance(getattr(module, str(entry[1]), None), type):
                    config[name] = [module.__name__, entry[1]]
        return result

    # ------------------------------------------------------------------------------------------------------
    # labels
    # ------------------------------------------------------------------------------------------------------
    @property
    def is_conditional(self) -> bool:
        return self.image_decoder.config.num_classes > 0

    @property
    def id2label(self) -> dict:
        """Class index -> name (from the label anchors' config)."""
        return {} if self.label_anchors is None else {int(index): name for index, name in self.label_anchors.config.id2label.items()}

    def get_label_ids(self, labels) -> List[int]:
        """Class indices from indices or class names (`id2label`), like `DiTPipeline.get_label_ids`.

        `labels`: an index, a name, or a list / tuple / 1-D integer tensor or array of them.
        """
        if self.label_anchors is None:
            raise ValueError("this pipeline is unconditional (no label anchors): pass `num_images` (or `batch_size`), not `labels`")
        labels = _label_list(labels)
        label2id = {name: index for index, name in self.id2label.items()}
        valid = ", ".join(f"{index} ({name})" for index, name in sorted(self.id2label.items()))
        ids = []
        for label in labels:
            if isinstance(label, str) and label in label2id:
                ids.append(label2id[label])
            elif isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < len(label2id):
                ids.append(int(label))
            else:
                raise ValueError(f"unknown label {label!r} in `labels`; valid labels: {valid}")
        if not ids:
            raise ValueError(f"`labels` is empty; valid labels: {valid}")
        return ids

    # ------------------------------------------------------------------------------------------------------
    # sampling
    # ------------------------------------------------------------------------------------------------------
    def _set_timesteps(self, num_inference_steps: int, sigmas: Optional[List[float]], device):
        accepts_sigmas = "sigmas" in inspect.signature(self.scheduler.set_timesteps).parameters
        if accepts_sigmas:
            sigmas = upstream_euler_sigmas(num_inference_steps) if sigmas is None else sigmas
            self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        elif sigmas is not None:
            raise ValueError(f"`sigmas`: {type(self.scheduler).__name__} does not accept a custom sigma schedule")
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        return self.scheduler.timesteps

    def _velocity(self, sample, timestep, lzn_latents, class_labels):
        return self.image_decoder(sample, timestep, lzn_latents, class_labels).sample

    def _sample_with_scheduler(self, sample, lzn_latents, class_labels, num_inference_steps, sigmas, generator, callback=None, callback_inputs=()):
        timesteps = self._set_timesteps(num_inference_steps, sigmas, sample.device)
        self._num_timesteps = len(timesteps)
        sample = sample * getattr(self.scheduler, "init_noise_sigma", 1.0)
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        for step_index, timestep in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            model_input = self.scheduler.scale_model_input(sample, timestep) if hasattr(self.scheduler, "scale_model_input") else sample
            velocity = self._velocity(model_input, timestep, lzn_latents, class_labels)
            sample = self.scheduler.step(velocity, timestep, sample, return_dict=False, **step_kwargs)[0]
            if callback is not None:
                tensors = {"latents": sample, "lzn_latents": lzn_latents}
                returned = callback(self, step_index, timestep, {name: tensors[name] for name in callback_inputs}) or {}
                sample, lzn_latents = returned.get("latents", sample), returned.get("lzn_latents", lzn_latents)
        return sample

    @property
    def num_timesteps(self) -> int:
        """Scheduler steps of the last call (diffusers' pipelines report it too)."""
        return getattr(self, "_num_timesteps", 0)

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` from a step-end callback to skip the remaining steps."""
        return getattr(self, "_interrupt", False)

    def _sample_with_rk45(self, sample, lzn_latents, class_labels, rtol: float = 1e-5, atol: float = 1e-5):
        """Upstream's adaptive sampler: scipy's RK45 from t = 1e-3 to t = 1 in upstream's time (t = 1 - sigma)."""
        try:
            from scipy.integrate import solve_ivp
        except ImportError as error:  # pragma: no cover - scipy is a dependency
            raise ImportError("sampler='rk45' needs scipy: pip install scipy") from error
        shape, dtype, device = sample.shape, sample.dtype, sample.device
        progress = self.progress_bar(total=1000)  # per mille of the time interval covered

        def data_minus_noise(t, flat):
            x = torch.from_numpy(flat.reshape(shape)).to(device=device, dtype=dtype)
            velocity = -self._velocity(x, torch.tensor((1.0 - t) * 1000.0, dtype=torch.float64), lzn_latents, class_labels)
            progress.update(max(0, round(t * 1000) - progress.n))
            return velocity.double().cpu().numpy().reshape(-1)

        solution = solve_ivp(data_minus_noise, (UPSTREAM_T_START, 1.0), sample.double().cpu().numpy().reshape(-1), rtol=rtol, atol=atol, method="RK45")
        progress.close()
        self.rk45_nfe = solution.nfev
        return torch.from_numpy(solution.y[:, -1].reshape(shape)).to(device=device, dtype=dtype)

    def check_inputs(self, num_images_per_label, num_images, batch_size, num_inference_steps, sigmas, sampler, output_type) -> Optional[List[float]]:
        """Raise a clear error naming the argument for a bad scalar argument; returns `sigmas` as a list of floats."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"`output_type` must be 'pil', 'np' or 'pt', got {output_type!r}")
        if sampler not in ("scheduler", "rk45"):
            raise ValueError(f"`sampler` must be 'scheduler' or 'rk45', got {sampler!r}")
        _check_count("num_inference_steps", num_inference_steps, MAX_INFERENCE_STEPS)
        _check_count("num_images_per_label", num_images_per_label)
        for name, value in (("num_images", num_images), ("batch_size", batch_size)):
            if value is not None:
                _check_count(name, value)
        if self.scheduler is None:
            raise ValueError("`scheduler` is None: set a flow-matching scheduler, e.g. pipe.scheduler = FlowMatchEulerDiscreteScheduler()")
        if sigmas is None:
            return None
        if sampler == "rk45":
            raise ValueError("`sigmas` is not used by sampler='rk45' (an adaptive solver); drop it or use sampler='scheduler'")
        return _check_sigmas(sigmas)

    def _batch(self, labels, num_images_per_label, num_images, batch_size, latents, lzn_latents):
        """The class labels (None for unconditional models) and the batch size."""
        if self.is_conditional:
            if labels is None:
                raise ValueError(f"this pipeline is label-conditional: pass `labels` (valid: {sorted(self.id2label.values())})")
            for name, value in (("num_images", num_images), ("batch_size", batch_size)):
                if value is not None:
                    raise ValueError(f"`{name}`: a label-conditional pipeline makes `num_images_per_label` images per entry of `labels`; pass those instead")
            class_ids = [index for index in self.get_label_ids(labels) for _ in range(num_images_per_label)]
            return class_ids, len(class_ids)
        if labels is not None:
            raise ValueError("this pipeline is unconditional: pass `num_images` (or `batch_size`), not `labels`")
        if num_images is not None and batch_size is not None:
            raise ValueError("pass `num_images` or its diffusers name `batch_size`, not both")
        size = num_images if num_images is not None else batch_size
        if size is None:  # the batch of the tensors given, else 1
            given = [value for value in (lzn_latents, latents) if isinstance(value, torch.Tensor) and value.ndim > 0]
            size = given[0].shape[0] if given else 1
        return None, size

    @torch.no_grad()
    def __call__(
        self,
        labels: Optional[Union[int, str, Sequence[Union[int, str]], torch.Tensor]] = None,
        num_images_per_label: int = 1,
        num_images: Optional[int] = None,
        num_inference_steps: int = 10,
        sigmas: Optional[Sequence[float]] = None,
        sampler: str = "scheduler",
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        lzn_latents: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        batch_size: Optional[int] = None,
        callback_on_step_end: Optional[Union[Callable[..., Dict[str, Any]], PipelineCallback, MultiPipelineCallbacks]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Union[ImagePipelineOutput, tuple]:
        r"""Generate images.

        Args:
            labels: class indices or names, as a list / tuple / 1-D integer tensor (label-conditional models);
                each is repeated `num_images_per_label` times.
            num_images / batch_size: number of images for unconditional models (`batch_size` is
                `DDPMPipeline`'s name for it); default 1, or the batch of `latents` / `lzn_latents`.
            num_inference_steps: scheduler steps, 1 to 10,000 (default 10: upstream's "euler10" on its uniform
                grid from t = 1e-3, i.e. sigmas `1 - 1e-3 - k * 0.0999`, ending at sigma 0).
            sigmas: a custom schedule, strictly decreasing values in (0, 1] (the scheduler appends the final 0);
                replaces `num_inference_steps`. Flow-matching schedulers that accept one.
            sampler: `"scheduler"` (the pipeline's scheduler) or `"rk45"` (upstream's adaptive RK45 with
                rtol = atol = 1e-5, used for its FID numbers; the scheduler is not used).
            generator: a torch generator, or a list of one per image (image `i` then depends only on
                `generator[i]`, as in diffusers).
            latents: `[B, C, H, W]` initial image noise (diffusers' sense of "latents").
            lzn_latents: `[B, d]` LZN latent codes, bypassing the label encoder (for conditional models the
                labels are still needed by the decoder).
            output_type: `"pil"`, `"np"` or `"pt"`; images in [0, 1].
            callback_on_step_end: called after each scheduler step as `callback(pipe, step_index, timestep,
                callback_kwargs)`, with `callback_kwargs` holding the tensors named in
                `callback_on_step_end_tensor_inputs` (from `_callback_tensor_inputs`: `"latents"` `[B, C, H, W]`,
                `"lzn_latents"` `[B, d]`); tensors in the dict it returns replace the pipeline's. A diffusers
                `PipelineCallback` / `MultiPipelineCallbacks` brings its own `tensor_inputs`. Setting
                `pipe._interrupt = True` in it skips the remaining steps, as in diffusers. Scheduler sampling only.

        Returns:
            [`ImagePipelineOutput`] with `images`, or a tuple.

        Dtypes: noise and latents are made in the decoder's dtype (float16 / bfloat16 after
        `from_pretrained(..., dtype=...)`); the label flow computes in float32 and its latents are cast
        to the decoder's dtype; the scheduler keeps its own precision (diffusers' schedulers step in float32).
        """
        sigmas = self.check_inputs(num_images_per_label, num_images, batch_size, num_inference_steps, sigmas, sampler, output_type)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        _check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, self._callback_tensor_inputs, sampler)
        self._interrupt = False
        decoder_config = self.image_decoder.config
        device = self._execution_device
        dtype = self.image_decoder.dtype

        # 1. batch and class labels
        class_ids, size = self._batch(labels, num_images_per_label, num_images, batch_size, latents, lzn_latents)
        class_labels = None if class_ids is None else torch.tensor(class_ids, device=device)
        generator = _check_generator(generator, size)

        # 2. LZN latents: label encoder, or N(0, I) for unconditional models
        latent_shape = (size, decoder_config.latent_dim)
        if lzn_latents is None:
            noise = randn_tensor(latent_shape, generator=generator, device=device, dtype=dtype)
            lzn_latents = self.label_anchors.get_label_latents(class_labels, noise=noise) if self.is_conditional else noise
        else:
            _check_tensor("lzn_latents", lzn_latents, latent_shape)
        lzn_latents = lzn_latents.to(device=device, dtype=dtype)

        # 3. initial image noise
        image_shape = (size, decoder_config.num_channels, decoder_config.image_size, decoder_config.image_size)
        if latents is None:
            latents = randn_tensor(image_shape, generator=generator, device=device, dtype=dtype)
        else:
            _check_tensor("latents", latents, image_shape)
        sample = latents.to(device=device, dtype=dtype)

        # 4. integrate the decoder's ODE from noise to data
        if sampler == "rk45":
            sample = self._sample_with_rk45(sample, lzn_latents, class_labels)
        else:
            sample = self._sample_with_scheduler(
                sample, lzn_latents, class_labels, num_inference_steps, sigmas, generator, callback_on_step_end, callback_on_step_end_tensor_inputs
            )

        # 5. [-1, 1] -> [0, 1] -> output type
        images = self.image_processor.postprocess(sample, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


# ----------------------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------------------
def _check_components(image_decoder, label_anchors) -> None:
    """A conditional decoder needs label anchors that match it; an unconditional one takes none."""
    config = getattr(image_decoder, "config", None)
    if not all(hasattr(config, field) for field in ("num_classes", "latent_dim", "num_channels", "image_size")):
        raise TypeError(f"`image_decoder` must be an LZNImageDecoder, got {type(image_decoder).__name__}")
    num_classes, latent_dim = config.num_classes, config.latent_dim
    if label_anchors is None:
        if num_classes > 0:
            raise ValueError(
                f"`label_anchors` is missing: `image_decoder` is label-conditional ({num_classes} classes), so the pipeline "
                f"needs the model's label anchors (an LZNLabelAnchors with {num_classes} classes and latent_dim {latent_dim}, "
                "e.g. `label_anchors=model.label_anchors`)"
            )
        return
    anchors_config = getattr(label_anchors, "config", None)
    if not hasattr(label_anchors, "get_label_latents") or not hasattr(anchors_config, "num_classes"):
        raise TypeError(f"`label_anchors` must be an LZNLabelAnchors, got {type(label_anchors).__name__}")
    if num_classes == 0:
        raise ValueError("`label_anchors` given, but `image_decoder` is unconditional (num_classes=0) and would ignore them: pass label_anchors=None")
    if (anchors_config.num_classes, anchors_config.latent_dim) != (num_classes, latent_dim):
        raise ValueError(
            f"`label_anchors` ({anchors_config.num_classes} classes, latent_dim {anchors_config.latent_dim}) do not match "
            f"`image_decoder` ({num_classes} classes, latent_dim {latent_dim})"
        )


def _check_callback(callback, tensor_inputs, allowed: Sequence[str], sampler: str) -> None:
    if callback is None:
        return
    if not callable(callback):
        raise TypeError(f"`callback_on_step_end` must be callable (pipe, step_index, timestep, callback_kwargs) -> dict, got {type(callback).__name__}")
    if sampler != "scheduler":
        raise ValueError("`callback_on_step_end` needs sampler='scheduler' (the RK45 solver has no steps to call it at)")
    if isinstance(tensor_inputs, str) or not all(name in allowed for name in tensor_inputs):
        raise ValueError(f"`callback_on_step_end_tensor_inputs` must be a list of names from {list(allowed)}, got {tensor_inputs!r}")


def _check_count(name: str, value, maximum: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be at most {maximum:,}, got {value:,} (use sampler='rk45' for an accurate adaptive solve)")


def _check_sigmas(sigmas) -> List[float]:
    if isinstance(sigmas, (str, bytes, dict, set, frozenset)):
        raise TypeError(f"`sigmas` must be a sequence of floats, got {type(sigmas).__name__}")
    try:
        values = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"`sigmas` must be a sequence of floats: {error}") from None
    if values.ndim != 1 or values.numel() == 0:
        raise ValueError(f"`sigmas` must be a non-empty 1-D sequence, got shape {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError(f"`sigmas` contains NaN or Inf: {values.tolist()}")
    if values.min() <= 0 or values.max() > 1:
        raise ValueError(f"`sigmas` must be in (0, 1] (1 = noise; the scheduler appends the final 0), got {values.tolist()}")
    if values.numel() > 1 and not (values[1:] < values[:-1]).all():
        raise ValueError(f"`sigmas` must be strictly decreasing (from noise towards data), got {values.tolist()}")
    return values.tolist()


def _label_list(labels) -> list:
    """`labels` as a list of indices / names; 1-D integer tensors and arrays are accepted, unordered containers not."""
    if isinstance(labels, (torch.Tensor, np.ndarray)):
        dtype_ok = not (labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool) if isinstance(labels, torch.Tensor) else np.issubdtype(labels.dtype, np.integer)
        if not dtype_ok or labels.ndim > 1:
            raise ValueError(f"`labels` as a tensor or array must hold integer class indices in 1-D, got dtype {labels.dtype} and shape {tuple(labels.shape)}")
        return [int(label) for label in labels.reshape(-1).tolist()]
    if isinstance(labels, (int, str, np.integer)):
        return [labels]
    if isinstance(labels, (list, tuple)):
        return list(labels)
    raise TypeError(
        f"`labels` must be a class index, a class name, or a list / tuple / 1-D integer tensor of them, got "
        f"{type(labels).__name__}" + (" (unordered: the order of the images would be undefined)" if isinstance(labels, (set, frozenset, dict)) else "")
    )


def _check_generator(generator, batch_size: int):
    """A generator, or a list of `batch_size` generators (returned as a list)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (list, tuple)) and all(isinstance(item, torch.Generator) for item in generator):
        if len(generator) != batch_size:
            raise ValueError(f"`generator` is a list of {len(generator)} generators, but the batch has {batch_size} images: pass one per image")
        return list(generator)
    raise TypeError(f"`generator` must be a torch.Generator or a list of them, got {type(generator).__name__}")


def _check_tensor(name: str, value, shape: tuple) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape {list(shape)}, got {type(value).__name__}")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"`{name}` must have shape {list(shape)}, got {list(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"`{name}` must hold floats, got dtype {value.dtype}")
    check_finite(name, value)


# ----------------------------------------------------------------------------------------------------------
# code carried by a saved folder
# ----------------------------------------------------------------------------------------------------------
def _copy_module_files(cls: type, folder: Path) -> str:
    """Copy the file defining `cls` and every sibling it imports (`from .x import`, recursively; the same
    resolution the Hub loaders use) into `folder`; returns the module's name (the file name without .py)."""
    source = Path(inspect.getfile(cls))
    folder.mkdir(parents=True, exist_ok=True)
    for path in dict.fromkeys([source, *map(Path, get_relative_import_files(source))]):
        if not path.is_file():
            raise FileNotFoundError(f"{source.name} imports {path.stem} from its package, but {path} does not exist: the code cannot be carried")
        write_text_atomically(folder / path.name, path.read_text(encoding="utf-8"))
    return source.stem
