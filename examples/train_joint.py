#!/usr/bin/env python
"""Case study 3 of Latent Zoning Networks: joint class-conditional generation and classification.

One image encoder, one rectified-flow image decoder and a table of label anchors share one latent space
(lzn-method.md §3.3). Each step:

    anchors   = encoder(x)                         [B, d], gathered over processes -> reference anchors [N, d]
    latents   = forward flow(anchors, noise)       the image latents (zones of the global batch)
    L_RF      = || decoder(x_sigma, sigma, latents, y) - (noise - x) ||^2
    L_label   = -mean_b max_{k >= cut-off} p_k(y_b | latent_b)   reverse label flow, global class weights
    loss      = L_RF + L_label

With no arguments it trains the CPU demo (preset and recipe `digits-joint`: scikit-learn's 8x8 digits,
offline) and writes to `lzn-digits-joint/`: the EMA `LZNModel` (`model/`), the `LZNPipeline` (`pipeline/`),
the classifier with its anchor bank (`classifier/`), model cards, `samples.png`, `training_curves.png` and
`metrics.json`.

    accelerate launch examples/train_joint.py
    accelerate launch examples/train_joint.py --config cifar10-joint            # the paper's case study 3
    accelerate launch examples/train_joint.py --mixed_precision bf16           # networks in bf16, flows/weights/EMA float32
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        --mixed_precision no --dynamo_backend no examples/train_joint.py      # two CPU processes (gloo)
"""

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch import nn

from lzn_hf import LZNForImageClassification, LZNModel
from lzn_hf.evaluation import batch_mode_accuracy, fit_image_judge, train_cross_entropy_classifier
from lzn_hf.latent_flow import latents_to_anchors
from lzn_hf.model_cards import write_model_card
from lzn_hf.training import (
    TRAINING_RECIPES,
    ModuleEMA,
    adam_with_warmup,
    dataset_id,
    end_training,
    flag,
    float32_flows,
    gather_float32_anchors,
    global_class_weights,
    label_alignment_loss,
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
    stack_dataset,
    training_markdown,
    write_json_atomically,
    write_run_card,
    write_run_config,
)

logger = get_logger(__name__, log_level="INFO")


@dataclass
class JointArguments:
    _argument_group_name = "case study 3"

    decoder_freeze_step: Optional[int] = flag(
        None, "freeze the decoder after this many updates (paper: 60k of 200k); encoder and label anchors go on (default: the recipe's).")
    rf_loss_weight: float = flag(1.0)
    label_loss_weight: float = flag(1.0)


@dataclass
class JointEvaluationArguments:
    _argument_group_name = "end-of-training evaluation"

    num_samples_per_class: int = flag(10, "columns of samples.png.")
    judge_samples_per_class: int = flag(100, "class-conditional samples per class labelled by the independent classifier.")
    num_inference_steps: int = flag(10, "decoder Euler steps when sampling.")
    ce_ceiling_steps: int = flag(500, "Adam steps (batch 128) of the cross-entropy classifier with the same encoder (0 = skip).")
    eval_noise_draws: int = flag(5, "prior-noise draws averaged for the random-noise batch-mode accuracy.")
    max_eval_samples: int = flag(10_000, "images of each split used for the anchor bank, the judge and the ceiling "
                                         "(the whole split, or a seeded stratified subset).")


def parse_args(argv=None):
    args, joint, evaluation = parse_training_arguments(
        __doc__.split("\n\n")[0], {"config": "digits-joint", "output_dir": "lzn-digits-joint"}, JointArguments, JointEvaluationArguments,
        argv=argv)
    if joint.decoder_freeze_step is None:
        joint = dataclasses.replace(joint, decoder_freeze_step=TRAINING_RECIPES[args.recipe]["decoder_freeze_step"])
    return args, joint, evaluation


class JointTrainingModule(nn.Module):
    """Case study 3's losses in one module, so that DistributedDataParallel wraps a single forward."""

    def __init__(self, lzn: LZNModel):
        super().__init__()
        self.lzn = lzn

    def forward(self, pixel_values, labels, latent_noise, image_noise, sigmas, class_weights):
        lzn = self.lzn
        anchors = lzn.get_image_anchors(pixel_values)  # [B, d]
        with float32_flows(pixel_values.device.type):  # the latent flows stay in float32
            anchors, reference_anchors = gather_float32_anchors(anchors)  # [B, d], [N, d]: every process's anchors, with gradients
            nan = nonfinite_loss(reference_anchors)  # same decision on every rank; the loop then skips the update
            if nan is not None:
                return nan, nan, nan.detach()
            latents = lzn.get_image_latents(anchors=anchors, noise=latent_noise, reference_anchors=reference_anchors)  # [B, d]
            _, posteriors = latents_to_anchors(
                latents, lzn.label_anchors.anchors, num_steps=lzn.config.label_anchors_config.flow_num_steps, weights=class_weights
            )  # [S, B, C]
            label_loss = label_alignment_loss(posteriors, labels, lzn.config.label_loss_cutoff)
        rf_loss = rectified_flow_loss(lzn.image_decoder, pixel_values, latents, image_noise, sigmas, class_labels=labels)
        accuracy = (posteriors[-1].argmax(-1) == labels).float().mean().detach()  # label decoder on training latents
        return rf_loss, label_loss, accuracy


def main(args, joint, evaluation):
    start_time = time.time()
    accelerator = make_accelerator(args, find_unused_parameters=joint.decoder_freeze_step is not None)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)  # the same initial weights on every process

    # model and data
    config = load_lzn_config(args.config, args.image_flow_solver, args.image_flow_num_steps)
    if config.image_decoder_config is None or config.label_anchors_config is None or config.image_decoder_config.num_classes == 0:
        raise ValueError(f"--config {args.config!r} needs an image decoder with num_classes > 0 and label anchors (case study 3)")
    resolution, num_channels = config.image_encoder_config.image_size, config.image_encoder_config.num_channels
    if args.resolution not in (None, resolution):
        raise ValueError(f"--resolution {args.resolution}: the config's NCSN++ models take {resolution}x{resolution} images")
    train_dataset, test_dataset, class_names = load_training_data(args, resolution, num_channels, with_test=not args.skip_evaluation)
    num_classes = config.num_classes
    if class_names is None:
        raise ValueError("case study 3 needs labelled data (class sub-folders of --train_data_dir, or a label column)")
    if len(class_names) != num_classes:
        raise ValueError(f"the data has {len(class_names)} classes but --config {args.config!r} has {num_classes} label anchors")
    if [config.label_anchors_config.id2label[i] for i in range(num_classes)] == [str(i) for i in range(num_classes)]:
        config.label_anchors_config.id2label = dict(enumerate(class_names))  # name the classes after the data
        config.label_anchors_config.label2id = {name: i for i, name in enumerate(class_names)}
        config.id2label, config.label2id = dict(config.label_anchors_config.id2label), dict(config.label_anchors_config.label2id)
    model = LZNModel(config)
    training_module = JointTrainingModule(model)
    ema = ModuleEMA(model, args.ema_decay)
    num_parameters = {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in ema.parts}
    logger.info(f"parameters: {num_parameters}")
    optimizer, lr_scheduler = adam_with_warmup({
        "image_encoder": (model.image_encoder, args.learning_rate_encoder),
        "image_decoder": (model.image_decoder, args.learning_rate_decoder),
        "label_anchors": (model.label_anchors, args.learning_rate_label_anchors),
    }, args.lr_warmup_steps, **args.adam_options())

    # data loader, checkpoint hooks, accelerator.prepare, trackers; resume: weights, EMA, optimizer, scheduler,
    # RNG states and counters (the data position follows from the step)
    training_module, loop = prepare_training(
        accelerator, args, training_module, optimizer, lr_scheduler, ema, train_dataset, "lzn_train_joint",
        progress_postfix={"loss": "{loss:.3f}", "acc": "{train_accuracy:.2f}"},
        extra_logs=lambda: {"ema_decay": ema.averages["image_encoder"].effective_decay()},
    )
    if joint.decoder_freeze_step is not None and loop.global_step >= joint.decoder_freeze_step:
        loop.freeze("image_decoder")

    rank, world = accelerator.process_index, accelerator.num_processes
    for batch in loop.batches():
        with accelerator.accumulate(training_module):
            labels = batch["labels"]
            # every draw is a function of (seed, micro-batch, place in the global batch): resumable, world-size-free
            pixel_values, latent_noise, image_noise, sigmas = rectified_flow_inputs(
                batch["pixel_values"], loop.noise_generator(), config.latent_dim, args.random_flip, rank, world
            )  # [B, C, H, W], [B, d], [B, C, H, W], [B]
            class_weights = global_class_weights(accelerator, labels, num_classes)
            rf_loss, label_loss, accuracy = training_module(pixel_values, labels, latent_noise, image_noise, sigmas, class_weights)
            loss = joint.rf_loss_weight * rf_loss + joint.label_loss_weight * label_loss
            if loop.all_processes_finite(loss):  # else the whole update is dropped, on every process
                accelerator.backward(loss)
                loop.record(loss=loss, rf_loss=rf_loss, label_loss=label_loss, train_accuracy=accuracy)
            loop.clip_and_step()  # last micro-batch of an update: clip the trained parameters, optimizer and scheduler step
        # an update ended: EMA step of the parts still training (or the dropped-update count), logs, checkpoint-N
        if loop.end_micro_batch() and loop.global_step == joint.decoder_freeze_step:
            loop.freeze("image_decoder")
            logger.info(f"update {loop.global_step}: decoder frozen; the encoder and the label anchors keep training")
    timing = loop.finish()  # with a last checkpoint: a resumable end state

    if accelerator.is_main_process:
        timing["global_batch_size"] = loop.global_batch_size
        export_and_evaluate(args, joint, evaluation, loop.averaged_model(), train_dataset, test_dataset, loop.history, timing, start_time)
    end_training(accelerator, args.output_dir, f"LZN case study 3, update {loop.global_step}", args.push_to_hub, args.hub_model_id,
                 args.hub_token, args.hub_private_repo)


def export_and_evaluate(args, joint, evaluation, ema_model, train_dataset, test_dataset, history, timing, start_time):
    """Save the EMA LZNModel (`model/`), the pipeline (`pipeline/`), the classifier (`classifier/`), run_config.json,
    then evaluate; then PNGs, metrics.json and the cards."""
    output_dir, global_batch_size = Path(args.output_dir), timing["global_batch_size"]
    torch.manual_seed(args.seed)
    ema_model.eval()
    save_model_folder(ema_model, output_dir / "model")
    pipeline = save_pipeline_folder(ema_model, output_dir / "pipeline")
    write_run_config(output_dir, "train_joint.py", args.to_record(),
                     script_flags={**dataclasses.asdict(joint), **dataclasses.asdict(evaluation)},
                     global_batch_size=global_batch_size, num_processes=timing["num_processes"])

    train_images, train_labels = stack_dataset(train_dataset, evaluation.max_eval_samples)
    classifier = LZNForImageClassification.from_pretrained(output_dir / "model").eval()
    classifier.build_anchor_bank(train_images, batch_size=global_batch_size)
    save_model_folder(classifier, output_dir / "classifier")

    metrics, num_classes = {}, ema_model.config.num_classes
    class_names = [ema_model.config.label_anchors_config.id2label[i] for i in range(num_classes)]
    generator = torch.Generator().manual_seed(args.seed)
    grid_labels = list(range(num_classes))
    if not args.skip_evaluation:
        eval_start = time.time()
        if test_dataset is not None:
            test_images, test_labels = stack_dataset(test_dataset, evaluation.max_eval_samples)
            with torch.no_grad():
                batch_mode = dict(batch_size=global_batch_size, filler=train_images)  # upstream: eval batch = training batch
                metrics["accuracy/batch_mode_zero_noise"] = batch_mode_accuracy(classifier, test_images, test_labels, noise="zero", **batch_mode)
                draws = torch.tensor([batch_mode_accuracy(classifier, test_images, test_labels, noise="random", seed=args.seed + k, **batch_mode)
                                      for k in range(max(1, evaluation.eval_noise_draws))])
                metrics["accuracy/batch_mode_random_noise"] = draws.mean().item()
                metrics["accuracy/batch_mode_random_noise_std"] = draws.std().item() if len(draws) > 1 else 0.0
                predictions = torch.cat([classifier(chunk).logits.argmax(-1) for chunk in test_images.split(512)])
                metrics["accuracy/anchor_bank"] = (predictions == test_labels).float().mean().item()
            if evaluation.ce_ceiling_steps > 0:
                predict = train_cross_entropy_classifier(ema_model.config.image_encoder_config, train_images, train_labels, num_classes,
                                                         num_steps=evaluation.ce_ceiling_steps, seed=args.seed)
                metrics["accuracy/cross_entropy_ceiling"] = (predict(test_images) == test_labels).float().mean().item()
        if evaluation.judge_samples_per_class > 0:
            judge = fit_image_judge(train_images, train_labels, seed=0)  # 8x8: pixel SVC; 28x28: the CNN judge
            if test_dataset is not None:
                metrics["judge/accuracy_on_real_test_images"] = judge.accuracy(test_images, test_labels)
            samples = pipeline(labels=grid_labels, num_images_per_label=evaluation.judge_samples_per_class, generator=generator,
                               num_inference_steps=evaluation.num_inference_steps, output_type="pt").images  # [C * K, ch, H, W] in [0, 1]
            wanted = torch.arange(num_classes).repeat_interleave(evaluation.judge_samples_per_class)
            metrics["judge/agreement_with_conditioning_class"] = (judge.predict(samples.cpu().float() * 2 - 1) == wanted).float().mean().item()
        metrics["eval_wall_time_s"] = time.time() - eval_start

    per_class = evaluation.num_samples_per_class
    grid = pipeline(labels=grid_labels, num_images_per_label=per_class, generator=torch.Generator().manual_seed(args.seed),
                    num_inference_steps=evaluation.num_inference_steps, output_type="np").images
    save_image_grid([grid[c * per_class : (c + 1) * per_class] for c in range(num_classes)], output_dir / "samples.png", row_labels=class_names)
    save_training_curves(history.read(), output_dir / "training_curves.png",
                         keys=["loss", "rf_loss", "label_loss", "train_accuracy", "grad_norm", "lr/image_encoder"], title="LZN case study 3")
    metrics.update(timing)
    metrics["total_wall_time_s"] = time.time() - start_time
    metrics["config"], metrics["seed"], metrics["max_train_steps"] = args.config, args.seed, args.max_train_steps
    write_json_atomically(output_dir / "metrics.json", metrics)
    write_cards(args, joint, global_batch_size, metrics)
    print_summary(args, metrics)


def write_cards(args, joint, global_batch_size, metrics):
    """Model cards: the run's overview (README.md at the root, the Hub repo's card) and one per saved folder."""
    output_dir = Path(args.output_dir)
    datasets = [dataset_id(args.dataset_name, args.train_data_dir)]
    accuracy = {k: round(v, 4) for k, v in metrics.items() if k.startswith("accuracy/") and not k.endswith("_std")}
    judge = {k: round(v, 4) for k, v in metrics.items() if k == "judge/agreement_with_conditioning_class"}
    training = training_markdown(args, global_batch_size, "train_joint.py", {
        "decoder frozen after update": joint.decoder_freeze_step, "training wall time (s)": round(metrics.get("train_wall_time_s", 0.0))})
    name = args.hub_model_id or output_dir.resolve().name
    common = dict(datasets=datasets, extra_text=training, tags=["case-study-3"], license="mit")
    write_model_card(output_dir / "model", metrics={**accuracy, **judge}, title=f"{name} / model", **common)
    write_model_card(output_dir / "pipeline", metrics=judge, title=f"{name} / pipeline", **common)
    write_model_card(output_dir / "classifier", metrics=accuracy, title=f"{name} / classifier", **common)
    write_run_card(
        output_dir, f"{name}: LZN joint generation and classification",
        "A Latent Zoning Network trained jointly for label-conditional image generation and classification (case study 3 "
        "of Lin et al.). `model/`: the `LZNModel` (EMA weights); `pipeline/`: the `LZNPipeline` (label → image); "
        "`classifier/`: the `LZNForImageClassification` with its bank of training anchors; `samples.png`: one row per class; "
        "`metrics.json`: every measured number.",
        pipeline_tag="image-classification", datasets=datasets, metrics={**accuracy, **judge}, tags=["case-study-3"], extra_text=training,
        usage=f'from lzn_hf import LZNForImageClassification\nfrom lzn_hf.pipeline_lzn import LZNPipeline\n\nfolder = {str(output_dir)!r}  # '
              "or huggingface_hub.snapshot_download(repo_id)\npipe = LZNPipeline.from_pretrained(f\"{folder}/pipeline\")\n"
              "images = pipe(labels=[0, 1, 2], num_images_per_label=4).images\n"
              "classifier = LZNForImageClassification.from_pretrained(f\"{folder}/classifier\")",
    )


def print_summary(args, metrics):
    lines = [f"LZN case study 3 ({args.config}) -> {args.output_dir}"]
    for key, value in metrics.items():
        if isinstance(value, float):
            value = f"{100 * value:.2f} %" if key.startswith(("accuracy/", "judge/")) else f"{value:.3f}"
        lines.append(f"  {key:<42} {value}")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main(*parse_args())
