#!/usr/bin/env python
"""Evaluate a saved Latent Zoning Network folder: every metric that applies, into one JSON.

PATH is a training output folder (`model/`, `pipeline/`, `classifier/`, `metrics.json`, `README.md`, as the
three `train_*.py` scripts write it) or one `save_pretrained` folder of an `LZNModel`,
`LZNForImageClassification` or `LZNPipeline`. The script finds what the folder holds and measures:

* generation (an image decoder): `--num_samples` samples (label-conditional decoders: the same number per
  class), scored by
    - `fd_digits`: Fréchet distance of the samples to the real training split in the hidden-layer (ReLU)
      features of a small MLP classifier fitted on that split (`lzn_hf.evaluation.fit_mlp_feature_extractor`;
      `fd_mlp` for other data); `fd_digits/real_test`, the same distance for the real held-out split (the
      floor: 360 images for the digits), and `fd_digits/test_size_subset`, the samples' distance for a random
      subset as large as the held-out split: the distance grows as the set shrinks (a random 360 of the
      training images themselves score about 0.36), so compare that one with the floor;
    - `judge/agreement` (conditional decoders): the share of samples that an independent classifier of real
      images (`fit_pixel_judge`: an RBF SVC on pixels, fitted on the training split) labels as their
      conditioning class; `judge/accuracy_real_test`: that judge on the real held-out images;
      `judge/class_histogram_tv`: total-variation distance between the judged classes of the samples and the
      training class frequencies (mode coverage);
    - `reconstruction_error` (lzn-method.md §3.1): held-out image -> its latent (zero for a decoder trained
      without LZN latent; the true label for conditional decoders) -> inverted image ODE -> regenerated image,
      mean L2 in [-1, 1] units (`--reconstruction_steps` Euler steps each way; the error falls like 1 / steps,
      so compare models at equal steps);
    - with `--fid`: Inception FID (`fid`, `fid/real_test`) against the training split, images resized to
      299x299 (bilinear, antialiased) and grey images repeated to 3 channels (the optional `fid` extra).
* classification (an encoder with label anchors, or the `classifier/` folder): upstream's batch mode
  (latents against the anchors of each eval batch, the last batch completed with training images) with zero
  and with random prior noise (mean and sd over `--noise_draws` draws), each with uniform class weights and
  with the batch's true-label histogram (`..._class_weights`, upstream's weighted variant), and the anchor-bank
  mode of `LZNForImageClassification` (`accuracy/anchor_bank`).
* representation (an image encoder): a linear probe on frozen `pooler_output` features (`linear_probe/lzn`;
  single views, every feature standardised with the training split's mean and sd, zero-initialised linear
  layer, AdamW lr `--probe_lr` 1e-3, batch 256, `--probe_epochs` 1000: run to convergence, unlike the short
  raw-feature probe of train_representation.py, so that encoders with small features are not penalised).
  With `--baselines`: the same probe on the raw pixels (`linear_probe/pixels`), on a randomly initialised
  encoder of the same config (seeded: `linear_probe/random_init`) and on an encoder of the same config trained
  with cross-entropy on the training split (`--supervised_steps` Adam steps: `linear_probe/supervised`; its own
  test accuracy: `accuracy/cross_entropy_classifier`).

Encoders that were not trained (`--without_lzn_latent` runs) and label anchors that were not trained
(train_generation.py runs) are skipped. The data: the same training / held-out split as the training
scripts (the digits' fixed, stratified 20 %), the dataset the run recorded, else `--dataset_name` /
`--train_data_dir`, else the digits.

    python examples/evaluate.py lzn-digits-joint
    python examples/evaluate.py lzn-digits-joint/pipeline --num_samples 500 --output /tmp/pipeline_eval.json
    python examples/evaluate.py lzn-generation --baselines --sampler rk45
"""

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from lzn_hf import LZNForImageClassification, LZNImageEncoder, LZNModel
from lzn_hf.evaluation import (
    batch_mode_accuracy,
    fit_mlp_feature_extractor,
    frechet_distance,
    inception_features,
    linear_probe_accuracy,
    reconstruction_error,
    require_inception,
)
from lzn_hf.training_utils import (
    TRAINING_RECIPES,
    fit_pixel_judge,
    load_training_data,
    save_image_grid,
    stack_dataset,
    train_cross_entropy_classifier,
)

LZN_LATENT_MODES = ("auto", "label_zone", "normal", "zero")


class EvaluationError(RuntimeError):
    """A problem with the folder or the arguments, reported as one line."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="a training output folder or a save_pretrained folder.")
    parser.add_argument("--output", type=Path, default=None,
                        help="the metrics JSON (default: PATH/eval_metrics.json); the sample grid goes beside it "
                             "(eval_samples.png, or <stem>_samples.png).")
    data = parser.add_argument_group("data (default: what the run recorded, else the digits)")
    data.add_argument("--dataset_name", type=str, default=None, help="'digits' or a Hub dataset id.")
    data.add_argument("--train_data_dir", type=str, default=None, help="an image folder (class sub-folders give labels).")
    data.add_argument("--dataset_config_name", type=str, default=None)
    data.add_argument("--image_column", type=str, default=None)
    data.add_argument("--label_column", type=str, default=None)
    data.add_argument("--cache_dir", type=str, default=None)
    data.add_argument("--max_eval_samples", type=int, default=10_000, help="images used from each split (default 10000).")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--num_samples", type=int, default=1000,
                     help="samples drawn (conditional decoders: round(num_samples / classes) per class; default 1000).")
    gen.add_argument("--sampler", choices=["euler", "rk45"], default="euler",
                     help="'euler': --num_inference_steps uniform steps from t = 1e-3 (upstream's euler10); "
                          "'rk45': upstream's adaptive RK45 (rtol = atol = 1e-5).")
    gen.add_argument("--num_inference_steps", type=int, default=10, help="Euler steps of the sampler (default 10).")
    gen.add_argument("--lzn_latent", choices=LZN_LATENT_MODES, default="auto",
                     help="LZN latents of the samples: 'label_zone' (the label encoder, as LZNPipeline; joint models), "
                          "'normal' (N(0, I): unconditional LZN decoders and train_generation.py's conditional ones), "
                          "'zero' (decoders trained --without_lzn_latent). 'auto': from metrics.json / the model card.")
    gen.add_argument("--zero_lzn_latent", action="store_true", help="same as --lzn_latent zero.")
    gen.add_argument("--reconstruction_steps", type=int, default=20,
                     help="Euler steps each way of the reconstruction (default 20). The error is mostly the Euler scheme's "
                          "(it falls like 1 / steps: a measure of the flow's curvature): compare models at equal steps.")
    gen.add_argument("--fid", action="store_true",
                     help="also the Inception FID (needs the optional extra: pip install \"lzn_hf[fid]\"); images are "
                          "resized to 299x299 (bilinear, antialiased), grey images repeated to 3 channels.")
    cls = parser.add_argument_group("classification and representation")
    cls.add_argument("--noise_draws", type=int, default=5, help="prior-noise draws averaged for the random-noise batch mode (default 5).")
    cls.add_argument("--probe_epochs", type=int, default=1000,
                     help="linear-probe epochs (AdamW, batch 256, zero init, features standardised; default 1000: on the digits "
                          "within about 1 point of convergence for every encoder, a few CPU seconds per probe).")
    cls.add_argument("--probe_lr", type=float, default=1e-3, help="linear-probe learning rate (default 1e-3; the paper's 3e-4 needs more epochs).")
    cls.add_argument("--baselines", action="store_true",
                     help="also probe the raw pixels, a random-init encoder and a cross-entropy-trained encoder of the same config.")
    cls.add_argument("--supervised_steps", type=int, default=500,
                     help="Adam steps (batch 128, lr 1e-3) of the cross-entropy baseline encoder (default 500).")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="images per batch: the zones of batch-mode classification and reconstruction latents, and "
                             "sampling chunks (default: the run's training global batch, else 256).")
    parser.add_argument("--seed", type=int, default=None,
                        help="samples, prior noise, probes and baselines (default: the run's training seed, else 0).")
    parser.add_argument("--num_threads", type=int, default=None,
                        help="torch CPU threads (default: torch's). On cores busy with other work 1 is faster (the digits: "
                             "33 s instead of 73 s beside two busy processes).")
    args = parser.parse_args(argv)
    if args.zero_lzn_latent:
        if args.lzn_latent not in ("auto", "zero"):
            parser.error("--zero_lzn_latent contradicts --lzn_latent " + args.lzn_latent)
        args.lzn_latent = "zero"
    if args.dataset_name is not None and args.train_data_dir is not None:
        parser.error("pass --dataset_name or --train_data_dir, not both")
    for name in ("num_samples", "num_inference_steps", "reconstruction_steps", "noise_draws", "probe_epochs", "max_eval_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    for name in ("batch_size", "num_threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    return args


# ----------------------------------------------------------------------------------------------------------
# what the folder holds
# ----------------------------------------------------------------------------------------------------------
def folder_kind(folder: Path) -> Optional[str]:
    """'pipeline', 'classifier', 'model' for a save_pretrained folder of LZNPipeline, LZNForImageClassification or
    LZNModel; None otherwise."""
    if (folder / "model_index.json").is_file():
        index = json.loads((folder / "model_index.json").read_text())
        return "pipeline" if index.get("_class_name") == "LZNPipeline" else None
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        architectures = config.get("architectures") or []
        if "LZNForImageClassification" in architectures:
            return "classifier"
        if "LZNModel" in architectures or (config.get("model_type") == "lzn" and not architectures):
            return "model"
    return None


def find_folders(path: Path) -> Dict[str, Path]:
    """The evaluable save_pretrained folders of `path`: itself, or its model/, pipeline/ and classifier/."""
    if not path.is_dir():
        raise EvaluationError(f"{path} is not a folder")
    kind = folder_kind(path)
    if kind is not None:
        return {kind: path}
    found = {}
    for sub in ("model", "pipeline", "classifier"):
        kind = folder_kind(path / sub) if (path / sub).is_dir() else None
        if kind is not None:
            found.setdefault(kind, path / sub)
    if not found:
        raise EvaluationError(
            f"nothing to evaluate in {path}: no LZNModel / LZNForImageClassification / LZNPipeline save_pretrained folder "
            "there (config.json or model_index.json) nor in its model/, pipeline/ or classifier/ sub-folders"
        )
    return found


def read_run_info(path: Path, single_folder: bool) -> Dict[str, object]:
    """What the run recorded: metrics.json (the run's folder; a single folder's parent) and the training table of
    the model card (README.md: script, config, data, global batch, LZN latent)."""
    info: Dict[str, object] = {}
    for folder in ([path, path.parent] if single_folder else [path]):
        if (folder / "metrics.json").is_file():
            try:
                info.update({f"metrics.{k}": v for k, v in json.loads((folder / "metrics.json").read_text()).items()})
            except json.JSONDecodeError:
                pass
            break
    readme = path / "README.md"
    if readme.is_file():
        for setting, value in re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", readme.read_text(), flags=re.MULTILINE):
            info.setdefault(f"card.{setting.strip()}", value.strip().strip("`"))
    return info


def trained_by(info) -> Optional[str]:
    """The training script's name, when recorded."""
    script = info.get("card.script")
    if isinstance(script, str):
        return Path(script).name
    if "metrics.without_lzn_latent" in info:
        return "train_generation.py"
    return None


def without_lzn_latent(info) -> bool:
    if "metrics.without_lzn_latent" in info:
        return bool(info["metrics.without_lzn_latent"])
    return info.get("card.LZN latent") == "False"


def resolve_batch_size(args, info) -> int:
    if args.batch_size is not None:
        return args.batch_size
    for key in ("metrics.global_batch_size", "card.global batch (anchors per zone set)"):
        try:
            return int(info[key])
        except (KeyError, TypeError, ValueError):
            continue
    config = info.get("metrics.config") or info.get("card.config (preset)")
    return TRAINING_RECIPES[config]["global_batch_size"] if config in TRAINING_RECIPES else 256


def resolve_dataset(args, info, notes: List[str]) -> argparse.Namespace:
    """The arguments `load_training_data` takes: the command line's data, else the run's, else the digits."""
    dataset_name, train_data_dir = args.dataset_name, args.train_data_dir
    if dataset_name is None and train_data_dir is None:
        recorded = info.get("card.data")
        config = info.get("metrics.config") or info.get("card.config (preset)")
        if recorded == "imagefolder":
            raise EvaluationError(f"{args.path} was trained on an image folder: pass it with --train_data_dir")
        if recorded == "sklearn-digits":
            dataset_name = "digits"
        elif isinstance(recorded, str) and recorded:
            dataset_name = recorded
        elif config in TRAINING_RECIPES and TRAINING_RECIPES[config]["dataset_name"]:
            dataset_name = TRAINING_RECIPES[config]["dataset_name"]
        else:
            dataset_name = "digits"
            notes.append("no dataset recorded with the model: evaluated on the digits (pass --dataset_name / --train_data_dir)")
    return argparse.Namespace(dataset_name=dataset_name, train_data_dir=train_data_dir, dataset_config_name=args.dataset_config_name,
                              image_column=args.image_column, label_column=args.label_column, cache_dir=args.cache_dir,
                              max_train_samples=None)


# ----------------------------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------------------------
def choose_lzn_latent(args, info, pipeline) -> str:
    if args.lzn_latent != "auto":
        return args.lzn_latent
    if without_lzn_latent(info):
        return "zero"
    if pipeline.is_conditional and pipeline.label_anchors is not None and trained_by(info) != "train_generation.py":
        return "label_zone"  # the joint model's label encoder (train_generation.py does not train label anchors)
    return "normal"


@torch.no_grad()
def draw_samples(pipeline, mode: str, num_samples: int, batch_size: int, args):
    """`[M, C, H, W]` samples in [-1, 1] and their conditioning classes `[M]` (None for unconditional decoders)."""
    decoder_config = pipeline.image_decoder.config
    generator = torch.Generator().manual_seed(args.seed)
    if pipeline.is_conditional:
        per_class = max(1, round(num_samples / decoder_config.num_classes))
        labels = torch.arange(decoder_config.num_classes).repeat_interleave(per_class)
    else:
        labels = None
    total = num_samples if labels is None else len(labels)
    sampler = dict(sampler="rk45") if args.sampler == "rk45" else dict(num_inference_steps=args.num_inference_steps)
    chunks = []
    for start in range(0, total, batch_size):
        count = min(batch_size, total - start)
        lzn_latents = None
        if mode == "zero":
            lzn_latents = torch.zeros(count, decoder_config.latent_dim)
        elif mode == "normal":
            lzn_latents = torch.randn(count, decoder_config.latent_dim, generator=generator)
        elif not pipeline.is_conditional or pipeline.label_anchors is None:
            raise EvaluationError("--lzn_latent label_zone needs a label-conditional decoder with label anchors")
        target = dict(labels=labels[start : start + count].tolist()) if labels is not None else dict(num_images=count)
        images = pipeline(**target, lzn_latents=lzn_latents, generator=generator, output_type="pt", **sampler).images  # [0, 1]
        chunks.append(images.cpu().float() * 2 - 1)
    return torch.cat(chunks), labels


def sample_grid(samples: torch.Tensor, labels: Optional[torch.Tensor], class_names, path: Path, columns: int = 10) -> Path:
    to01 = lambda x: ((x + 1) / 2).permute(0, 2, 3, 1).numpy()  # noqa: E731
    if labels is not None:
        rows = [to01(samples[labels == c][:columns]) for c in range(int(labels.max()) + 1)]
        return save_image_grid(rows, path, row_labels=class_names)
    shown = samples[: columns * columns]
    return save_image_grid([to01(shown[i : i + columns]) for i in range(0, len(shown), columns)], path)


def evaluate_generation(args, parts, info, data, batch_size, metrics, notes, output: Path):
    pipeline, model = parts["pipeline"], parts.get("model")
    mode = choose_lzn_latent(args, info, pipeline)
    metrics["lzn_latent"] = mode
    start = time.time()
    samples, sample_labels = draw_samples(pipeline, mode, args.num_samples, batch_size, args)
    metrics["num_samples"] = len(samples)
    metrics["time/sampling_s"] = time.time() - start
    metrics["samples_png"] = str(sample_grid(samples, sample_labels, data["class_names"], output.with_name(samples_png_name(output))))

    start = time.time()
    train_images, train_labels, test_images, test_labels = data["train_images"], data["train_labels"], data["test_images"], data["test_labels"]
    key = "fd_digits" if data["dataset"] == "sklearn-digits" else "fd_mlp"
    if train_labels is not None:
        extractor = fit_mlp_feature_extractor(train_images, train_labels, seed=0)  # a fixed feature space, whatever --seed
        reference = extractor(train_images)
        sample_features = extractor(samples)
        metrics[key] = frechet_distance(sample_features, reference)
        if test_images is not None:
            metrics[f"{key}/real_test"] = frechet_distance(extractor(test_images), reference)
            if len(samples) > len(test_images):  # the distance grows as the set shrinks: compare equal sizes
                subset = torch.randperm(len(samples), generator=torch.Generator().manual_seed(args.seed))[: len(test_images)]
                metrics[f"{key}/test_size_subset"] = frechet_distance(sample_features[subset.numpy()], reference)
            metrics[f"{key}/feature_classifier_accuracy_real_test"] = extractor.accuracy(test_images, test_labels)
        judge = fit_pixel_judge(train_images, train_labels)
        judged = torch.from_numpy(judge.predict(((samples + 1) / 2).reshape(len(samples), -1).numpy()))
        if sample_labels is not None:
            metrics["judge/agreement"] = (judged == sample_labels).float().mean().item()
        if test_images is not None:
            metrics["judge/accuracy_real_test"] = float(judge.score(((test_images + 1) / 2).reshape(len(test_images), -1).numpy(), test_labels.numpy()))
        num_classes = int(train_labels.max()) + 1
        frequencies = torch.bincount(train_labels, minlength=num_classes).float() / len(train_labels)
        judged_frequencies = torch.bincount(judged, minlength=num_classes).float() / len(judged)
        metrics["judge/class_histogram_tv"] = 0.5 * (frequencies - judged_frequencies).abs().sum().item()
    else:
        notes.append(f"unlabelled training data: no {key} and no judge (they need a classifier of real images)")
    metrics["time/sample_metrics_s"] = time.time() - start

    if args.fid:
        start = time.time()
        device = pipeline.image_decoder.device
        reference = inception_features(train_images, device=device)
        metrics["fid"] = frechet_distance(inception_features(samples, device=device), reference)
        if test_images is not None:
            metrics["fid/real_test"] = frechet_distance(inception_features(test_images, device=device), reference)
        metrics["time/fid_s"] = time.time() - start

    if test_images is None:
        notes.append("no held-out split: no reconstruction error")
        return
    decoder = pipeline.image_decoder
    if decoder.config.num_classes > 0 and test_labels is None:
        notes.append("label-conditional decoder but unlabelled held-out images: no reconstruction error")
        return
    latents = None
    if mode == "zero":
        latents = torch.zeros(len(test_images), decoder.config.latent_dim)
    elif model is None or model.image_decoder is None:
        notes.append("the decoder takes encoder latents but the folder holds no encoder (model/): no reconstruction error")
        return
    start = time.time()
    device = decoder.device
    metrics["reconstruction_error"] = reconstruction_error(
        pipeline if model is None else model, test_images.to(device),
        class_labels=test_labels.to(device) if decoder.config.num_classes > 0 else None, num_steps=args.reconstruction_steps,
        generator=torch.Generator(device).manual_seed(args.seed), latents=None if latents is None else latents.to(device),
        batch_size=batch_size)
    metrics["time/reconstruction_s"] = time.time() - start


def samples_png_name(output: Path) -> str:
    return (output.stem.replace("metrics", "samples") if "metrics" in output.stem else output.stem + "_samples") + ".png"


# ----------------------------------------------------------------------------------------------------------
# classification and representation
# ----------------------------------------------------------------------------------------------------------
def evaluate_classification(args, classifier, data, batch_size, metrics):
    start = time.time()
    test_images, test_labels, train_images = data["test_images"], data["test_labels"], data["train_images"]
    common = dict(batch_size=batch_size, filler=train_images)  # upstream: eval batch = training batch
    for weighted in (False, True):
        suffix = "_class_weights" if weighted else ""
        metrics[f"accuracy/batch_zero_noise{suffix}"] = batch_mode_accuracy(
            classifier, test_images, test_labels, noise="zero", class_weights=weighted, **common)
        draws = torch.tensor([batch_mode_accuracy(classifier, test_images, test_labels, noise="random", seed=args.seed + k,
                                                  class_weights=weighted, **common) for k in range(args.noise_draws)])
        metrics[f"accuracy/batch_random_noise{suffix}"] = draws.mean().item()
        metrics[f"accuracy/batch_random_noise{suffix}_std"] = draws.std().item() if len(draws) > 1 else 0.0
    if classifier.anchor_bank is None:  # a model's label anchors: the bank of the training images, as train_joint.py builds it
        classifier.build_anchor_bank(train_images.to(next(classifier.parameters()).device), batch_size=batch_size)
    with torch.no_grad():
        device = next(classifier.parameters()).device
        predictions = torch.cat([classifier(chunk.to(device)).logits.argmax(-1).cpu() for chunk in test_images.split(512)])
    metrics["accuracy/anchor_bank"] = (predictions == test_labels).float().mean().item()
    metrics["anchor_bank_size"] = len(classifier.anchor_bank)
    metrics["time/classification_s"] = time.time() - start


@torch.no_grad()
def encoder_features(encoder, images: torch.Tensor) -> torch.Tensor:
    encoder.eval()
    device = next(encoder.parameters()).device
    return torch.cat([encoder(chunk.to(device), return_dict=True).pooler_output.cpu() for chunk in images.split(256)])


def probe(encoder, data, args) -> float:
    """The linear probe on frozen features (`encoder=None`: the raw pixels), standardised with the training statistics."""
    if encoder is None:
        train, test = data["train_images"].flatten(1), data["test_images"].flatten(1)
    else:
        train, test = encoder_features(encoder, data["train_images"]), encoder_features(encoder, data["test_images"])
    return linear_probe_accuracy(train, data["train_labels"], test, data["test_labels"], epochs=args.probe_epochs, lr=args.probe_lr,
                                 seed=args.seed, standardize=True)


def evaluate_representation(args, encoder, data, metrics):
    start = time.time()
    metrics["linear_probe/lzn"] = probe(encoder, data, args)
    metrics["probe_epochs"], metrics["probe_lr"] = args.probe_epochs, args.probe_lr
    metrics["time/linear_probe_s"] = time.time() - start
    if not args.baselines:
        return
    start = time.time()
    metrics["linear_probe/pixels"] = probe(None, data, args)
    torch.manual_seed(args.seed)
    metrics["linear_probe/random_init"] = probe(LZNImageEncoder(encoder.config), data, args)
    num_classes = int(data["train_labels"].max()) + 1
    predict = train_cross_entropy_classifier(encoder.config, data["train_images"], data["train_labels"], num_classes,
                                             num_steps=args.supervised_steps, seed=args.seed)
    metrics["accuracy/cross_entropy_classifier"] = (predict(data["test_images"]).cpu() == data["test_labels"]).float().mean().item()
    metrics["linear_probe/supervised"] = probe(predict.encoder, data, args)
    metrics["supervised_steps"] = args.supervised_steps
    metrics["time/baselines_s"] = time.time() - start


# ----------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------
def load_parts(folders: Dict[str, Path], info, notes: List[str], device) -> Dict[str, object]:
    """The models: LZNModel (model), LZNPipeline (pipeline: the folder's, else built from the model's decoder),
    LZNForImageClassification (classifier: the folder's, else from a model with trained label anchors)."""
    from lzn_hf.pipeline_lzn import LZNPipeline

    parts: Dict[str, object] = {}
    if "model" in folders:
        parts["model"] = LZNModel.from_pretrained(folders["model"]).eval().to(device)
    if "classifier" in folders:
        parts["classifier"] = LZNForImageClassification.from_pretrained(folders["classifier"]).eval().to(device)
    model = parts.get("model")
    if "pipeline" in folders:
        parts["pipeline"] = LZNPipeline.from_pretrained(folders["pipeline"]).to(device)
    elif model is not None and model.image_decoder is not None:
        parts["pipeline"] = LZNPipeline(image_decoder=model.image_decoder, label_anchors=model.label_anchors).to(device)
    if "pipeline" in parts:
        parts["pipeline"].set_progress_bar_config(disable=True)
    untrained_encoder = without_lzn_latent(info)
    untrained_anchors = untrained_encoder or trained_by(info) == "train_generation.py"
    if "classifier" not in parts and model is not None and model.label_anchors is not None:
        if untrained_anchors:
            notes.append("label anchors not trained by this run (train_generation.py): no classification")
        else:
            parts["classifier"] = LZNForImageClassification.from_pretrained(folders["model"]).eval().to(device)
    if untrained_encoder:
        notes.append("image encoder not trained (--without_lzn_latent run): no classification, no linear probe")
        parts.pop("classifier", None)
    elif model is not None or "classifier" in parts:
        parts["encoder"] = (model or parts["classifier"]).image_encoder
    return parts


def load_data(args, info, parts, notes):
    component = parts.get("model") or parts.get("classifier")
    if component is not None:
        resolution = component.config.image_encoder_config.image_size
        num_channels = component.config.image_encoder_config.num_channels
    else:
        decoder_config = parts["pipeline"].image_decoder.config
        resolution, num_channels = decoder_config.image_size, decoder_config.num_channels
    data_args = resolve_dataset(args, info, notes)
    train, test, class_names = load_training_data(data_args, resolution, num_channels)
    train_images, train_labels = stack_dataset(train, args.max_eval_samples)
    test_images, test_labels = stack_dataset(test, args.max_eval_samples) if test is not None else (None, None)
    if test is None:
        notes.append("the dataset has no 'test' or 'validation' split: no held-out metrics")
    if class_names is None and train_labels is not None:
        class_names = [str(i) for i in range(int(train_labels.max()) + 1)]
    dataset = "sklearn-digits" if data_args.dataset_name == "digits" else ("imagefolder" if data_args.train_data_dir else data_args.dataset_name)
    return dict(train_images=train_images, train_labels=train_labels, test_images=test_images, test_labels=test_labels,
                class_names=class_names, dataset=dataset)


def check_classes(path: Path, parts, data) -> None:
    """Label-conditional decoders and label anchors must have the data's number of classes."""
    if data["train_labels"] is None:
        return
    counts = {"image decoder": parts["pipeline"].image_decoder.config.num_classes if "pipeline" in parts else 0,
              "label anchors": parts["classifier"].label_anchors.config.num_classes if "classifier" in parts else 0}
    for name, count in counts.items():
        if count and count != len(data["class_names"]):
            raise EvaluationError(f"the {name} of {path} take {count} classes but the data ({data['dataset']}) has "
                                  f"{len(data['class_names'])}: pass the data it was trained on (--dataset_name / --train_data_dir)")


def evaluate(args) -> Dict[str, object]:
    total_start = time.time()
    path = args.path
    folders = find_folders(path)
    single = folder_kind(path) is not None
    info = read_run_info(path, single)
    output = args.output or path / "eval_metrics.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    if args.fid:
        try:
            require_inception()
        except (ImportError, FileNotFoundError) as error:
            raise EvaluationError(f"--fid: {error}") from error
    notes: List[str] = []
    if args.seed is None:  # one evaluation seed per training seed: the baselines vary with the seeds too
        recorded = info.get("metrics.seed")
        args.seed = recorded if isinstance(recorded, int) else 0
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.time()
    parts = load_parts(folders, info, notes, device)
    batch_size = resolve_batch_size(args, info)
    data = load_data(args, info, parts, notes)
    has_labels = data["train_labels"] is not None and data["test_labels"] is not None
    check_classes(path, parts, data)
    metrics: Dict[str, object] = {
        "path": str(path), "folders": {k: str(v) for k, v in folders.items()}, "dataset": data["dataset"],
        "num_train_images": len(data["train_images"]), "num_test_images": 0 if data["test_images"] is None else len(data["test_images"]),
        "seed": args.seed, "batch_size": batch_size, "device": str(device), "time/load_s": time.time() - start,
    }
    if "pipeline" in parts:
        metrics.update(sampler=args.sampler, num_inference_steps=args.num_inference_steps if args.sampler == "euler" else None,
                       reconstruction_steps=args.reconstruction_steps)
        evaluate_generation(args, parts, info, data, batch_size, metrics, notes, output)
    if "classifier" in parts:
        if has_labels:
            evaluate_classification(args, parts["classifier"], data, batch_size, metrics)
        else:
            notes.append("no labelled held-out split: no classification accuracy")
    if "encoder" in parts:
        if has_labels:
            evaluate_representation(args, parts["encoder"], data, metrics)
        else:
            notes.append("no labelled held-out split: no linear probe")
    if not any(k.startswith(("fd_", "judge/", "reconstruction", "accuracy/", "linear_probe/", "fid")) for k in metrics):
        raise EvaluationError(f"no metric applies to {path}: " + "; ".join(notes or ["nothing evaluable found"]))
    metrics["notes"] = notes
    metrics["time/total_s"] = time.time() - total_start
    metrics["time/total_cpu_s"] = time.process_time()  # CPU seconds of this process, all threads (imports included)
    output.write_text(json.dumps(metrics, indent=2))
    metrics["output"] = str(output)
    return metrics


def print_summary(metrics) -> None:
    lines = [f"evaluated {metrics['path']} ({', '.join(metrics['folders'])}) on {metrics['dataset']} -> {metrics['output']}"]
    for key, value in metrics.items():
        if key in ("path", "folders", "dataset", "output", "notes") or value is None:
            continue
        if isinstance(value, float):
            percent = key.startswith(("accuracy/", "judge/", "linear_probe/")) or key.endswith("accuracy_real_test")
            value = f"{100 * value:.2f} %" if percent and not key.endswith("_tv") else f"{value:.4g}"
        lines.append(f"  {key:<48} {value}")
    lines += [f"  note: {note}" for note in metrics["notes"]]
    print("\n".join(lines), flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    import diffusers.utils.logging
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars
    diffusers.utils.logging.disable_progress_bar()
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    try:
        metrics = evaluate(args)
    except EvaluationError as error:
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        return 1
    print_summary(metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
