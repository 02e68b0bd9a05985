#!/usr/bin/env python
"""Case study 1 of Latent Zoning Networks: rectified-flow image generation conditioned on an LZN latent.

The image encoder's latent carries information about the image to the decoder, and is trained only through
the decoder's rectified-flow loss (lzn-method.md §3.1). Each step:

    anchors = encoder(x)                      [B, d], gathered over processes -> reference anchors [N, d]
    latents = forward flow(anchors, noise)    image latents (zones of the global batch), with gradients
    L_RF    = || decoder(x_sigma, sigma, latents[, y]) - (noise - x) ||^2

Sampling needs no encoder: the latent space is N(0, I) by construction. A decoder with `num_classes > 0` is
also given the class label (class-conditional RF + LZN latent; its label anchors are not trained here, the
samples draw the latent from N(0, I)). `--without_lzn_latent` trains the plain RF baseline (zero latent).

    accelerate launch examples/train_generation.py --config cifar10-generation          # the paper, CIFAR-10
    accelerate launch examples/train_generation.py --config afhq-cat-generation --train_data_dir afhq/cat
    python examples/train_generation.py --config tiny-generation --dataset_name digits --max_train_steps 500
"""

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch import nn

from lzn_hf import LZNModel
from lzn_hf.model_cards import write_model_card
from lzn_hf.training import (
    ModuleEMA,
    adam_with_warmup,
    dataset_id,
    end_training,
    flag,
    float32_flows,
    gather_float32_anchors,
    load_lzn_config,
    load_training_data,
    make_accelerator,
    nonfinite_loss,
    parse_training_arguments,
    prepare_training,
    rectified_flow_inputs,
    rectified_flow_loss,
    save_image_grid,
    save_model_folder,
    save_pipeline_folder,
    save_training_curves,
    training_markdown,
    write_json_atomically,
    write_run_card,
    write_run_config,
)

logger = get_logger(__name__, log_level="INFO")


@dataclass
class GenerationArguments:
    _argument_group_name = "case study 1"

    without_lzn_latent: bool = flag(False, "baseline: the decoder gets a zero latent and no encoder is trained (plain rectified flow).")
    num_samples: int = flag(64, "images in samples.png (per class for conditional decoders: 8).")
    num_inference_steps: int = flag(10, "decoder Euler steps when sampling.")

def parse_args(argv=None):
    defaults = {"config": "cifar10-generation", "output_dir": "lzn-generation"}
    return parse_training_arguments(__doc__.split("\n\n")[0], defaults, GenerationArguments, argv=argv)


class GenerationTrainingModule(nn.Module):
    """Case study 1's loss in one module, so that DistributedDataParallel wraps a single forward."""

    def __init__(self, lzn: LZNModel, use_lzn_latent: bool = True):
        super().__init__()
        self.lzn = lzn
        self.use_lzn_latent = use_lzn_latent

    def forward(self, pixel_values, latent_noise, image_noise, sigmas, labels=None):
        lzn = self.lzn
        if self.use_lzn_latent:
            anchors = lzn.get_image_anchors(pixel_values)  # [B, d]
            with float32_flows(pixel_values.device.type):  # the latent flow stays in float32
                anchors, reference_anchors = gather_float32_anchors(anchors)  # [B, d], [N, d]: every process's anchors, with gradients
                nan = nonfinite_loss(reference_anchors)  # same decision on every rank; the loop then skips the update
                if nan is not None:
                    return nan
                latents = lzn.get_image_latents(anchors=anchors, noise=latent_noise, reference_anchors=reference_anchors)
        else:
            latents = torch.zeros_like(latent_noise)  # [B, d]
        return rectified_flow_loss(lzn.image_decoder, pixel_values, latents, image_noise, sigmas, class_labels=labels)


def main(args, generation):
    start_time = time.time()
    accelerator = make_accelerator(args)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)

    config = load_lzn_config(args.config, args.image_flow_solver, args.image_flow_num_steps)
    if config.image_decoder_config is None:
        raise ValueError(f"--config {args.config!r} has no image decoder")
    conditional = config.image_decoder_config.num_classes > 0
    resolution, num_channels = config.image_decoder_config.image_size, config.image_decoder_config.num_channels
    if args.resolution not in (None, resolution):
        raise ValueError(f"--resolution {args.resolution}: the config's NCSN++ models take {resolution}x{resolution} images")
    train_dataset, _, class_names = load_training_data(args, resolution, num_channels, with_test=False)
    if conditional and (class_names is None or len(class_names) != config.image_decoder_config.num_classes):
        found = "no labels" if class_names is None else f"{len(class_names)} classes"
        raise ValueError(f"the decoder of --config {args.config!r} takes {config.image_decoder_config.num_classes} classes; the data has {found}")
    model = LZNModel(config)
    if model.label_anchors is not None:
        model.label_anchors.requires_grad_(False)  # not trained in case study 1 (see train_joint.py)
    if generation.without_lzn_latent:
        model.image_encoder.requires_grad_(False)
    training_module = GenerationTrainingModule(model, use_lzn_latent=not generation.without_lzn_latent)
    ema = ModuleEMA(model, args.ema_decay, parts=("image_decoder",) if generation.without_lzn_latent else ("image_encoder", "image_decoder"))
    optimizer, lr_scheduler = adam_with_warmup({
        "image_encoder": (None if generation.without_lzn_latent else model.image_encoder, args.learning_rate_encoder),
        "image_decoder": (model.image_decoder, args.learning_rate_decoder),
    }, args.lr_warmup_steps, **args.adam_options())

    # data loader, checkpoint hooks, accelerator.prepare, trackers, resume (see train_joint.py)
    training_module, loop = prepare_training(accelerator, args, training_module, optimizer, lr_scheduler, ema, train_dataset,
                                             "lzn_train_generation", progress_postfix={"loss": "{loss:.4f}"})
    rank, world = accelerator.process_index, accelerator.num_processes
    for batch in loop.batches():
        with accelerator.accumulate(training_module):
            # flips, latent noise, image noise, sigmas: functions of (seed, micro-batch, place in the global batch)
            pixel_values, latent_noise, image_noise, sigmas = rectified_flow_inputs(
                batch["pixel_values"], loop.noise_generator(), config.latent_dim, args.random_flip, rank, world
            )  # [B, C, H, W], [B, d], [B, C, H, W], [B]
            loss = training_module(pixel_values, latent_noise, image_noise, sigmas, batch["labels"] if conditional else None)
            if loop.all_processes_finite(loss):  # else the whole update is dropped, on every process
                accelerator.backward(loss)
                loop.record(loss=loss)
            loop.clip_and_step()  # last micro-batch of an update: clip the trained parameters, optimizer and scheduler step
        loop.end_micro_batch()  # an update ended: EMA step (or the dropped-update count), logs, checkpoint-N
    metrics = loop.finish()

    if accelerator.is_main_process:
        export(args, generation, loop.global_batch_size, loop.averaged_model(), class_names if conditional else None, loop.history,
               metrics, start_time)
    end_training(accelerator, args.output_dir, f"LZN case study 1, update {loop.global_step}", args.push_to_hub, args.hub_model_id,
                 args.hub_token, args.hub_private_repo)


def export(args, generation, global_batch_size, ema_model, class_names, history, metrics, start_time):
    """The EMA `LZNModel` (`model/`), the `LZNPipeline` (`pipeline/`), run_config.json, samples.png, curves,
    metrics.json, then the model cards."""
    output_dir = Path(args.output_dir)
    save_model_folder(ema_model, output_dir / "model")
    pipeline = save_pipeline_folder(ema_model, output_dir / "pipeline")
    write_run_config(output_dir, "train_generation.py", args.to_record(), script_flags=dataclasses.asdict(generation),
                     global_batch_size=global_batch_size, num_processes=metrics["num_processes"])

    generator = torch.Generator().manual_seed(args.seed)
    if not args.skip_evaluation:
        latent_dim = ema_model.config.latent_dim
        if class_names is None:
            count = generation.num_samples
            lzn_latents = torch.zeros(count, latent_dim) if generation.without_lzn_latent else None
            images = pipeline(num_images=count, lzn_latents=lzn_latents, generator=generator,
                              num_inference_steps=generation.num_inference_steps, output_type="np").images
            columns = max(1, int(count**0.5))
            rows, labels = [images[i : i + columns] for i in range(0, count, columns)], None
        else:  # one row per class; latents from N(0, I) (the label anchors are not trained by this script)
            per_class, num_classes = 8, len(class_names)
            lzn_latents = torch.randn(per_class * num_classes, latent_dim, generator=generator)
            if generation.without_lzn_latent:
                lzn_latents.zero_()
            images = pipeline(labels=list(range(num_classes)), num_images_per_label=per_class, lzn_latents=lzn_latents,
                              generator=generator, num_inference_steps=generation.num_inference_steps, output_type="np").images
            rows, labels = [images[c * per_class : (c + 1) * per_class] for c in range(num_classes)], class_names
        save_image_grid(rows, output_dir / "samples.png", row_labels=labels)
    save_training_curves(history.read(), output_dir / "training_curves.png", keys=["loss", "grad_norm", "lr/image_decoder"],
                         title="LZN case study 1")
    metrics.update(total_wall_time_s=time.time() - start_time, config=args.config, seed=args.seed,
                   without_lzn_latent=generation.without_lzn_latent)
    write_json_atomically(output_dir / "metrics.json", metrics)

    datasets = [dataset_id(args.dataset_name, args.train_data_dir)]
    training = training_markdown(args, global_batch_size, "train_generation.py", {"LZN latent": not generation.without_lzn_latent,
                                                                "training wall time (s)": round(metrics["train_wall_time_s"])})
    name = args.hub_model_id or output_dir.resolve().name
    common = dict(datasets=datasets, extra_text=training, tags=["case-study-1"], license="mit")
    write_model_card(output_dir / "model", title=f"{name} / model", **common)
    write_model_card(output_dir / "pipeline", title=f"{name} / pipeline", **common)
    latents = "torch.zeros" if generation.without_lzn_latent else "torch.randn"  # the baseline's decoder was trained on zero latents
    call = (f"labels=[0, 1], num_images_per_label=4, lzn_latents={latents}(8, pipe.image_decoder.config.latent_dim)" if class_names
            else f"num_images=4, lzn_latents={latents}(4, pipe.image_decoder.config.latent_dim)" if generation.without_lzn_latent else "num_images=4")
    write_run_card(
        output_dir, f"{name}: LZN image generation",
        "Rectified-flow image generation with a Latent Zoning Network latent (case study 1 of Lin et al.). `model/`: the "
        "`LZNModel` (EMA weights: image encoder and decoder); `pipeline/`: the `LZNPipeline`; `samples.png`: samples.",
        pipeline_tag="unconditional-image-generation", datasets=datasets, tags=["case-study-1"], extra_text=training,
        usage=f'import torch\nfrom lzn_hf.pipeline_lzn import LZNPipeline\n\nfolder = {str(output_dir)!r}  # or huggingface_hub.snapshot_download(repo_id)\n'
              f"pipe = LZNPipeline.from_pretrained(f\"{{folder}}/pipeline\")\nimages = pipe({call}).images",
    )
    print(f"LZN case study 1 ({args.config}) -> {output_dir}: " + ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()), flush=True)


if __name__ == "__main__":
    main(*parse_args())
