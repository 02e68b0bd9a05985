#!/usr/bin/env python
"""Case study 2 of Latent Zoning Networks: unsupervised representation learning with two augmented views.

The latent of view 1 of each image must land in the zone of view 2 of the same image, among the zones of all
view-2 anchors of the global batch (lzn-method.md §3.2). Each step:

    a1, a2  = encoder(view1), encoder(view2)       [B, d] each, gathered over processes -> [N, d] each
    z       = forward flow(a1, 0.45 * noise)       over the view-1 anchors (Euler, 20 steps)
    P       = reverse flow(z) over the view-2 anchors (Euler, 20 steps): posteriors [S, B, N]
    L       = -mean_b log max_{k >= cut-off} P[k, b, j*_b]     j*_b = rank * B + b (the same image's view 2)

No negatives list, temperature or auxiliary loss. The representation is the backbone feature
(`pooler_output`, the 2048-d pooled feature of the ResNet-50-GN; for NCSN++ encoders `pooler_output` is the anchor
and the probe also reads the pooled pre-head feature maps: lzn_hf.evaluation.probe); views are SimCLR-style
augmentations written in torch (`lzn_hf.training.simclr_augment`; torchvision is not needed).

`--objective simclr` trains the same encoder, on the same views, data and budget, with SimCLR's InfoNCE loss
(NT-Xent over the 2N anchors of the global batch, `--temperature`) instead: the contrastive baseline of case study 2.

    accelerate launch examples/train_representation.py --config imagenet-representation --train_data_dir imagenet/train
    python examples/train_representation.py --config tiny-representation --dataset_name digits --resolution 16 --max_train_steps 300
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
from lzn_hf.evaluation import probe_accuracies, protocol_record
from lzn_hf.latent_flow import latents_to_anchors
from lzn_hf.model_cards import write_model_card
from lzn_hf.training import (
    ModuleEMA,
    adam_with_warmup,
    assignment_loss,
    dataset_id,
    end_training,
    flag,
    float32_flows,
    gather_float32_anchors,
    load_lzn_config,
    load_training_data,
    make_accelerator,
    nonfinite_loss,
    nt_xent_logits,
    parse_training_arguments,
    prepare_training,
    rank_randn,
    save_image_grid,
    save_model_folder,
    save_training_curves,
    simclr_augment,
    stack_dataset,
    training_markdown,
    write_json_atomically,
    write_run_card,
    write_run_config,
)

logger = get_logger(__name__, log_level="INFO")


@dataclass
class RepresentationArguments:
    _argument_group_name = "case study 2"

    objective: str = flag("lzn", "'lzn' (the assignment loss through the latent flows) or 'simclr' (InfoNCE / NT-Xent over the two "
                                 "views: the contrastive baseline, same encoder, views and budget).", choices=["lzn", "simclr"])
    temperature: float = flag(0.5, "--objective simclr: softmax temperature of the cosine similarities (SimCLR: 0.5 at batch 256).")
    cross_entropy_weight: float = flag(1.0, "weight of -log q (paper: 1).")
    prob_weight: float = flag(0.0, "weight of -q (paper: 0).")
    gradient_checkpointing: bool = flag(
        False, "recompute each step of the reverse flow over the view-2 anchors in backward (upstream checkpoints its Euler flows).")
    crop_min_scale: float = flag(0.08, "smallest crop area of the random resized crop.")
    flip_prob: float = flag(0.5, "probability of a horizontal flip (0 for data that flips change, such as digits).")
    jitter_strength: float = flag(1.0, "SimCLR colour-jitter strength s.")
    max_eval_samples: int = flag(10_000, "images per split for the linear probe (the whole split, or a seeded stratified subset).")

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")

def parse_args(argv=None):
    defaults = {"config": "imagenet-representation", "output_dir": "lzn-representation"}
    return parse_training_arguments(__doc__.split("\n\n")[0], defaults, RepresentationArguments, argv=argv)


class RepresentationTrainingModule(nn.Module):
    """Case study 2's loss in one module, so that DistributedDataParallel wraps a single forward."""

    def __init__(self, lzn: LZNModel, cutoff: float, cross_entropy_weight: float, prob_weight: float, gradient_checkpointing: bool):
        super().__init__()
        self.lzn = lzn
        self.cutoff, self.cross_entropy_weight, self.prob_weight = cutoff, cross_entropy_weight, prob_weight
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, view1, view2, latent_noise, targets):
        lzn = self.lzn
        anchors1, anchors2 = lzn.get_image_anchors(torch.cat([view1, view2])).chunk(2)  # [B, d] each (GroupNorm: no batch coupling)
        with float32_flows(view1.device.type):  # the latent flows stay in float32
            (anchors1, reference1), (_, reference2) = gather_float32_anchors(anchors1), gather_float32_anchors(anchors2)  # [N, d] each
            nan = nonfinite_loss(reference1, reference2)  # same decision on every rank; the loop then skips the update
            if nan is not None:
                return nan, nan.detach()
            latents = lzn.get_image_latents(anchors=anchors1, noise=latent_noise, reference_anchors=reference1)  # [B, d]
            _, log_posteriors = latents_to_anchors(
                latents, reference2, num_steps=lzn.config.image_flow_num_steps, log_posteriors=True,
                gradient_checkpointing=self.gradient_checkpointing,
            )  # [S, B, N]
            loss = assignment_loss(log_posteriors, targets, self.cutoff, self.cross_entropy_weight, self.prob_weight)
        accuracy = (log_posteriors[-1].argmax(-1) == targets).float().mean().detach()  # upstream's assignment_acc
        return loss, accuracy


class SimCLRTrainingModule(nn.Module):
    """The contrastive baseline in one module: NT-Xent over the anchors (the projection-head output) of both views of
    the global batch, gathered with gradients as the LZN loss gathers them; the probe reads the same features."""

    def __init__(self, lzn: LZNModel, temperature: float):
        super().__init__()
        self.lzn, self.temperature = lzn, temperature

    def forward(self, view1, view2, latent_noise, targets):
        anchors1, anchors2 = self.lzn.get_image_anchors(torch.cat([view1, view2])).chunk(2)  # [B, d] each
        with float32_flows(view1.device.type):  # the similarities in float32, as the LZN loss's flows
            (anchors1, reference1), (anchors2, reference2) = gather_float32_anchors(anchors1), gather_float32_anchors(anchors2)  # [N, d]
            nan = nonfinite_loss(reference1, reference2)
            if nan is not None:
                return nan, nan.detach()
            logits, positives = nt_xent_logits(anchors1, anchors2, reference1, reference2, targets, self.temperature)  # [2B, 2N], [2B]
            loss = nn.functional.cross_entropy(logits, positives)
        accuracy = (logits.argmax(-1) == positives).float().mean().detach()  # the positive is the most similar of 2N - 1
        return loss, accuracy


def main(args, representation):
    start_time = time.time()
    accelerator = make_accelerator(args)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)

    config = load_lzn_config(args.config, args.image_flow_solver, args.image_flow_num_steps)
    encoder_config = config.image_encoder_config
    if encoder_config.encoder_type == "ncsnpp" and args.resolution not in (None, encoder_config.image_size):
        raise ValueError(f"--resolution {args.resolution}: the config's NCSN++ encoder takes {encoder_config.image_size}x{encoder_config.image_size} images")
    resolution = args.resolution or encoder_config.image_size
    train_dataset, test_dataset, _ = load_training_data(args, resolution, encoder_config.num_channels, with_test=not args.skip_evaluation)
    model = LZNModel(config)
    for part in (model.image_decoder, model.label_anchors):  # only the encoder trains in case study 2
        if part is not None:
            part.requires_grad_(False)
    if representation.objective == "simclr":
        training_module = SimCLRTrainingModule(model, representation.temperature)
    else:
        training_module = RepresentationTrainingModule(model, config.label_loss_cutoff, representation.cross_entropy_weight,
                                                       representation.prob_weight, representation.gradient_checkpointing)
    ema = ModuleEMA(model, args.ema_decay, parts=("image_encoder",))
    optimizer, lr_scheduler = adam_with_warmup({"image_encoder": (model.image_encoder, args.learning_rate_encoder)}, args.lr_warmup_steps,
                                               **args.adam_options())

    # data loader, checkpoint hooks, accelerator.prepare, trackers, resume (see train_joint.py)
    training_module, loop = prepare_training(accelerator, args, training_module, optimizer, lr_scheduler, ema, train_dataset,
                                             "lzn_train_representation",
                                             progress_postfix={"loss": "{loss:.3f}", "acc": "{assignment_accuracy:.2f}"})
    rank, world = accelerator.process_index, accelerator.num_processes
    augment = dict(crop_scale=(representation.crop_min_scale, 1.0), flip_prob=representation.flip_prob, jitter_strength=representation.jitter_strength,
                   process_index=rank, num_processes=world)
    for batch in loop.batches():
        with accelerator.accumulate(training_module):
            pixel_values = batch["pixel_values"]
            generator = loop.noise_generator()
            local = pixel_values.shape[0]
            view1 = simclr_augment(pixel_values, generator, **augment)
            view2 = simclr_augment(pixel_values, generator, **augment)
            latent_noise = rank_randn([local, config.latent_dim], generator, rank, world)  # x prior_noise_scale (0.45) inside
            targets = rank * local + torch.arange(local, device=pixel_values.device)  # the same image's view-2 anchor
            loss, accuracy = training_module(view1, view2, latent_noise, targets)
            if loop.all_processes_finite(loss):  # else the whole update is dropped, on every process
                accelerator.backward(loss)
                loop.record(loss=loss, assignment_accuracy=accuracy)
            loop.clip_and_step()  # last micro-batch of an update: clip the trained parameters, optimizer and scheduler step
        loop.end_micro_batch()  # an update ended: EMA step (or the dropped-update count), logs, checkpoint-N
    metrics = loop.finish()

    if accelerator.is_main_process:
        export(args, representation, loop.global_batch_size, loop.averaged_model(), train_dataset, test_dataset, loop.history, metrics,
               start_time)
    end_training(accelerator, args.output_dir, f"LZN case study 2, update {loop.global_step}", args.push_to_hub, args.hub_model_id,
                 args.hub_token, args.hub_private_repo)


def export(args, representation, global_batch_size, ema_model, train_dataset, test_dataset, history, metrics, start_time):
    """The EMA `LZNModel` (`model/`, with its image processor), run_config.json, example views, the probe, curves,
    metrics.json, then the cards."""
    output_dir = Path(args.output_dir)
    save_model_folder(ema_model, output_dir / "model")
    write_run_config(output_dir, "train_representation.py", args.to_record(), script_flags=dataclasses.asdict(representation),
                     global_batch_size=global_batch_size, num_processes=metrics["num_processes"])
    if not args.skip_evaluation:
        train_images, train_labels = stack_dataset(train_dataset, representation.max_eval_samples)
        # what the encoder is trained on: two views of eight images
        examples = train_images[:8]
        augment = dict(crop_scale=(representation.crop_min_scale, 1.0), flip_prob=representation.flip_prob, jitter_strength=representation.jitter_strength)
        views = [simclr_augment(examples, torch.Generator().manual_seed(args.seed + k), **augment) for k in range(2)]
        to01 = lambda x: ((x + 1) / 2).permute(0, 2, 3, 1).numpy()  # noqa: E731
        save_image_grid([to01(examples), to01(views[0]), to01(views[1])], output_dir / "views.png", row_labels=["image", "view 1", "view 2"])
        if test_dataset is not None and train_labels is not None:
            test_images, test_labels = stack_dataset(test_dataset, representation.max_eval_samples)
            if test_labels is not None:  # the pinned probe of examples/evaluate.py (lzn_hf.evaluation.probe)
                accuracies = probe_accuracies(ema_model.image_encoder, train_images, train_labels, test_images, test_labels, epochs=1000,
                                              lr=1e-3, seed=args.seed)
                for feature, accuracy in accuracies.items():
                    metrics["accuracy/linear_probe" + ("_backbone" if feature == "backbone" else "")] = accuracy
                metrics["probe/protocol"] = protocol_record(len(train_images), len(test_images), 1000, 1e-3, args.seed)
    save_training_curves(history.read(), output_dir / "training_curves.png", keys=["loss", "assignment_accuracy", "grad_norm", "lr/image_encoder"],
                         title="LZN case study 2")
    metrics.update(total_wall_time_s=time.time() - start_time, config=args.config, seed=args.seed, objective=representation.objective)
    write_json_atomically(output_dir / "metrics.json", metrics)

    datasets = [dataset_id(args.dataset_name, args.train_data_dir)]
    accuracy = {k: round(v, 4) for k, v in metrics.items() if k.startswith("accuracy/") and isinstance(v, float)}
    training = training_markdown(args, global_batch_size, "train_representation.py", {"training wall time (s)": round(metrics["train_wall_time_s"])})
    name = args.hub_model_id or output_dir.resolve().name
    write_model_card(output_dir / "model", datasets=datasets, metrics=accuracy, extra_text=training, tags=["case-study-2"], license="mit",
                     title=f"{name} / model")
    how = ("as a Latent Zoning Network (case study 2 of Lin et al.): the latent of one augmented view is classified among the "
           "zones of the other views" if representation.objective == "lzn" else
           "with SimCLR's InfoNCE loss (the contrastive baseline of LZN's case study 2): each view's anchor must be closest "
           f"to the other view of the same image among the 2N anchors of the batch (temperature {representation.temperature})")
    write_run_card(
        output_dir, f"{name}: {'LZN' if representation.objective == 'lzn' else 'SimCLR'} representation learning",
        f"An image encoder trained without labels {how}. The representation is the backbone "
        "feature (`pooler_output`). `model/`: the `LZNModel` (EMA weights) with its image processor.",
        pipeline_tag="image-feature-extraction", datasets=datasets, metrics=accuracy, tags=["case-study-2"], extra_text=training,
        usage="from transformers import pipeline\nimport lzn_hf  # registers the LZN classes\n\n"
              f'extract = pipeline("image-feature-extraction", model={f"{output_dir}/model"!r})  # or a snapshot_download(repo_id) folder\n'
              "features = extract(image, pool=True)  # the backbone feature",
    )
    print(f"LZN case study 2 ({args.config}) -> {output_dir}: " + ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()), flush=True)


if __name__ == "__main__":
    main(*parse_args())
