"""`LZNPipeline`: label-conditional and unconditional image generation with an LZN decoder (diffusers).

label -> label anchors -> forward label flow -> LZN latent -> rectified-flow decoder -> image.
Unconditional models draw the LZN latent from N(0, I) directly (the latent space is Gaussian by
construction). The only module of lzn_hf that imports diffusers.
"""

from __future__ import annotations

import inspect
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .model_cards import prepare_upload, write_model_card
from .modeling_lzn import LZNImageDecoder, LZNLabelAnchors

__all__ = ["LZNPipeline", "upstream_sigmas"]

# Upstream samples the decoder's ODE from t = 1e-3 (nearly pure noise) to t = 1 (data).
UPSTREAM_T_START = 1e-3


def upstream_sigmas(num_inference_steps: int, t_start: float = UPSTREAM_T_START) -> List[float]:
    """Upstream's uniform Euler grid in diffusers' orientation: ``sigma_k = 1 - (t_start + k (1 - t_start) / N)``.

    The scheduler appends the final sigma 0 (t = 1).
    """
    step = (1.0 - t_start) / num_inference_steps
    return [1.0 - (t_start + k * step) for k in range(num_inference_steps)]


class LZNPipeline(DiffusionPipeline):
    r"""Image generation with a Latent Zoning Network.

    Components:
        image_decoder ([`LZNImageDecoder`]): the rectified-flow velocity network conditioned on LZN latents.
        scheduler ([`SchedulerMixin`]): a flow-matching scheduler; `FlowMatchEulerDiscreteScheduler` by default.
            Heun (`FlowMatchHeunDiscreteScheduler`) and `DPMSolverMultistepScheduler(use_flow_sigmas=True,
            prediction_type="flow_prediction")` plug in too.
        label_anchors ([`LZNLabelAnchors`], *optional*): the label encoder; None for unconditional models.

    Example:
        ```py
        >>> pipe = LZNPipeline.from_pretrained("lzn-digits-joint/pipeline")
        >>> images = pipe(labels=[3, 7], num_images_per_label=4, generator=torch.manual_seed(0)).images
        ```
    """

    model_cpu_offload_seq = "label_anchors->image_decoder"
    _optional_components = ["label_anchors", "scheduler"]  # scheduler: None -> FlowMatchEulerDiscreteScheduler()

    def __init__(self, image_decoder: LZNImageDecoder, scheduler: Optional[SchedulerMixin] = None, label_anchors: Optional[LZNLabelAnchors] = None):
        super().__init__()
        scheduler = FlowMatchEulerDiscreteScheduler() if scheduler is None else scheduler
        self.register_modules(image_decoder=image_decoder, scheduler=scheduler, label_anchors=label_anchors)
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_normalize=True)

    # ------------------------------------------------------------------------------------------------------
    # saving: a model card beside the components
    # ------------------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, **kwargs):
        """`DiffusionPipeline.save_pretrained`, then a model card (`README.md`, see `lzn_hf.model_cards`)
        unless the folder already has one. `push_to_hub` uploads lzn_hf's card too (keeping one already on the Hub)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        write_model_card(save_directory, kind="pipeline", overwrite=False)

    def _upload_folder(self, working_dir, repo_id, *args, **kwargs):
        # diffusers' push paths write a placeholder card just before this call: put lzn_hf's card in its place.
        prepare_upload(working_dir, repo_id)
        return super()._upload_folder(working_dir, repo_id, *args, **kwargs)

    # ------------------------------------------------------------------------------------------------------
    # labels
    # ------------------------------------------------------------------------------------------------------
    @property
    def is_conditional(self) -> bool:
        return self.image_decoder.config.num_classes > 0

    @property
    def id2label(self) -> dict:
        """Class index -> name (from the label anchors' config)."""
        return {} if self.label_anchors is None else dict(self.label_anchors.config.id2label)

    def get_label_ids(self, labels: Union[int, str, Sequence[Union[int, str]]]) -> List[int]:
        """Class indices from indices or class names (`id2label`), like `DiTPipeline.get_label_ids`."""
        if self.label_anchors is None:
            raise ValueError("this pipeline is unconditional (no label anchors): pass `num_images`, not `labels`")
        labels = [labels] if isinstance(labels, (int, str, np.integer)) else list(labels)
        label2id = {name: index for index, name in self.id2label.items()}
        valid = ", ".join(f"{index} ({name})" for index, name in sorted(self.id2label.items()))
        ids = []
        for label in labels:
            if isinstance(label, str) and label in label2id:
                ids.append(label2id[label])
            elif isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < len(label2id):
                ids.append(int(label))
            else:
                raise ValueError(f"unknown label {label!r}; valid labels: {valid}")
        if not ids:
            raise ValueError(f"`labels` is empty; valid labels: {valid}")
        return ids

    # ------------------------------------------------------------------------------------------------------
    # sampling
    # ------------------------------------------------------------------------------------------------------
    def _set_timesteps(self, num_inference_steps: int, sigmas: Optional[Sequence[float]], device):
        accepts_sigmas = "sigmas" in inspect.signature(self.scheduler.set_timesteps).parameters
        if accepts_sigmas:
            sigmas = upstream_sigmas(num_inference_steps) if sigmas is None else list(sigmas)
            self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        elif sigmas is not None:
            raise ValueError(f"{type(self.scheduler).__name__} does not accept custom `sigmas`")
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        return self.scheduler.timesteps

    def _velocity(self, sample, timestep, lzn_latents, class_labels):
        return self.image_decoder(sample, timestep, lzn_latents, class_labels).sample

    def _sample_with_scheduler(self, sample, lzn_latents, class_labels, num_inference_steps, sigmas, generator):
        timesteps = self._set_timesteps(num_inference_steps, sigmas, sample.device)
        sample = sample * getattr(self.scheduler, "init_noise_sigma", 1.0)
        for timestep in self.progress_bar(timesteps):
            model_input = self.scheduler.scale_model_input(sample, timestep) if hasattr(self.scheduler, "scale_model_input") else sample
            velocity = self._velocity(model_input, timestep, lzn_latents, class_labels)
            sample = self.scheduler.step(velocity, timestep, sample, generator=generator, return_dict=False)[0]
        return sample

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

    @torch.no_grad()
    def __call__(
        self,
        labels: Optional[Union[int, str, Sequence[Union[int, str]]]] = None,
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
    ) -> Union[ImagePipelineOutput, tuple]:
        r"""Generate images.

        Args:
            labels: class indices or names (label-conditional models); each is repeated `num_images_per_label` times.
            num_images: number of images for unconditional models (default 1, or the batch of `latents`).
            num_inference_steps: scheduler steps (default 10: upstream's "euler10" on its uniform grid from
                t = 1e-3, i.e. sigmas `1 - 1e-3 - k * 0.0999`, ending at sigma 0).
            sigmas: a custom decreasing sigma schedule (flow-matching schedulers that accept one).
            sampler: `"scheduler"` (the pipeline's scheduler) or `"rk45"` (upstream's adaptive RK45 with
                rtol = atol = 1e-5, used for its FID numbers; the scheduler is not used).
            generator: torch generator(s) for determinism.
            latents: `[B, C, H, W]` initial image noise (diffusers' sense of "latents").
            lzn_latents: `[B, d]` LZN latent codes, bypassing the label encoder (for conditional models the
                labels are still needed by the decoder).
            output_type: `"pil"`, `"np"` or `"pt"`; images in [0, 1].

        Returns:
            [`ImagePipelineOutput`] with `images`, or a tuple.
        """
        decoder_config = self.image_decoder.config
        device = self._execution_device
        dtype = self.image_decoder.dtype
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"`output_type` must be 'pil', 'np' or 'pt', got {output_type!r}")
        if sampler not in ("scheduler", "rk45"):
            raise ValueError(f"`sampler` must be 'scheduler' or 'rk45', got {sampler!r}")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}")
        if num_images_per_label < 1:
            raise ValueError(f"`num_images_per_label` must be >= 1, got {num_images_per_label}")

        # 1. batch and class labels
        class_labels = None
        if self.is_conditional:
            if labels is None:
                raise ValueError(f"this pipeline is label-conditional: pass `labels` (valid: {sorted(self.id2label.values())})")
            if num_images is not None:
                raise ValueError("pass `labels` and `num_images_per_label` to a label-conditional pipeline, not `num_images`")
            class_ids = [index for index in self.get_label_ids(labels) for _ in range(num_images_per_label)]
            class_labels = torch.tensor(class_ids, device=device)
            batch_size = len(class_ids)
        else:
            if labels is not None:
                raise ValueError("this pipeline is unconditional: pass `num_images`, not `labels`")
            batch_size = num_images or (len(lzn_latents) if lzn_latents is not None else len(latents) if latents is not None else 1)

        # 2. LZN latents: label encoder, or N(0, I) for unconditional models
        latent_shape = (batch_size, decoder_config.latent_dim)
        if lzn_latents is None:
            noise = randn_tensor(latent_shape, generator=generator, device=device, dtype=dtype)
            lzn_latents = self.label_anchors.get_label_latents(class_labels, noise=noise) if self.is_conditional else noise
        elif tuple(lzn_latents.shape) != latent_shape:
            raise ValueError(f"`lzn_latents` must have shape {latent_shape}, got {tuple(lzn_latents.shape)}")
        lzn_latents = lzn_latents.to(device=device, dtype=dtype)

        # 3. initial image noise
        image_shape = (batch_size, decoder_config.num_channels, decoder_config.image_size, decoder_config.image_size)
        if latents is None:
            latents = randn_tensor(image_shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != image_shape:
            raise ValueError(f"`latents` must have shape {image_shape}, got {tuple(latents.shape)}")
        sample = latents.to(device=device, dtype=dtype)

        # 4. integrate the decoder's ODE from noise to data
        if sampler == "rk45":
            sample = self._sample_with_rk45(sample, lzn_latents, class_labels)
        else:
            sample = self._sample_with_scheduler(sample, lzn_latents, class_labels, num_inference_steps, sigmas, generator)

        # 5. [-1, 1] -> [0, 1] -> output type
        images = self.image_processor.postprocess(sample, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
