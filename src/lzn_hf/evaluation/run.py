"""Evaluate a saved Latent Zoning Network folder: every metric that applies, into one JSON (``examples/evaluate.py``
is the command line over :func:`evaluate`).

The folder is a training output folder (``model/``, ``pipeline/``, ``classifier/``, ``run_config.json``) or one
``save_pretrained`` folder of an ``LZNModel``, ``LZNForImageClassification`` or ``LZNPipeline``. How the run was
made (data, seed, global batch, the script and its flags) comes from ``run_config.json`` (:class:`RunRecord`);
the command line's data options win. Subsets of a split (``max_eval_samples``) are seeded and stratified
(:func:`~lzn_hf.training.data.stack_dataset`). The metrics, per part found:

* generation (an image decoder): Fréchet distance of samples to the training split in the hidden features of a
  classifier fitted on it (8x8 digits: an MLP, ``fd_digits`` / ``fd_mlp``; 28x28 images: the CNN judge of
  :mod:`~lzn_hf.evaluation.judge`, ``fd_cnn``; with the real held-out floor and an equal-size subset), the judge's
  agreement with the conditioning class, its own held-out accuracy and its class-histogram TV, the reconstruction
  error, and with ``fid`` the Inception FID;
* classification: batch mode with zero / random prior noise, with and without class weights, and the anchor bank;
* representation: the pinned linear probe of :mod:`~lzn_hf.evaluation.probe` on standardised frozen features
  (``pooler_output``, and the pooled pre-head feature maps of NCSN++ encoders), and with ``baselines`` the same
  probe on raw pixels, a random-init and a cross-entropy-trained encoder of the same config.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..model_cards import detect_kind
from ..modeling_lzn import LZNForImageClassification, LZNImageEncoder, LZNModel
from ..training.arguments import DataArguments
from ..training.data import load_training_data, stack_dataset, stratified_indices
from ..training.export import read_run_config, write_json_atomically
from ..training.reporting import dataset_id, save_image_grid
from .baselines import train_cross_entropy_classifier
from .judge import default_judge_cache_dir, fit_cnn_judge, fit_image_judge, uses_cnn_judge
from .metrics import batch_mode_accuracy, fit_mlp_feature_extractor, frechet_distance, inception_features, reconstruction_error, require_inception
from .probe import probe_accuracies, protocol_record

LZN_LATENT_MODES = ("auto", "label_zone", "normal", "zero")


def _option(default=None, help: str = "", **metadata) -> Any:
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class EvaluationData:
    _argument_group_name = "data (default: what the run recorded, else the digits)"

    dataset_name: Optional[str] = _option(None, "'digits', a Hub dataset id, or the path of a dataset saved with save_to_disk.")
    train_data_dir: Optional[str] = _option(None, "an image folder (class sub-folders give labels).")
    dataset_config_name: Optional[str] = _option(None)
    image_column: Optional[str] = _option(None)
    label_column: Optional[str] = _option(None)
    cache_dir: Optional[str] = _option(None)
    max_eval_samples: int = _option(10_000, "images used from each split: the whole split, or a seeded stratified subset (default 10000).")


@dataclass
class EvaluationGeneration:
    _argument_group_name = "generation"

    num_samples: int = _option(1000, "samples drawn (conditional decoders: round(num_samples / classes) per class; default 1000).")
    sampler: str = _option("euler", "'euler': --num_inference_steps uniform steps from t = 1e-3 (upstream's euler10); "
                                    "'rk45': upstream's adaptive RK45 (rtol = atol = 1e-5).", choices=["euler", "rk45"])
    num_inference_steps: int = _option(10, "Euler steps of the sampler (default 10).")
    lzn_latent: str = _option(
        "auto", "LZN latents of the samples: 'label_zone' (the label encoder, as LZNPipeline; joint models), 'normal' (N(0, I): "
                "unconditional LZN decoders and train_generation.py's conditional ones), 'zero' (decoders trained "
                "--without_lzn_latent). 'auto': from the run's run_config.json.", choices=list(LZN_LATENT_MODES))
    zero_lzn_latent: bool = _option(False, "same as --lzn_latent zero.")
    reconstruction_steps: int = _option(
        20, "Euler steps each way of the reconstruction (default 20). The error is mostly the Euler scheme's (it falls like "
            "1 / steps: a measure of the flow's curvature): compare models at equal steps.")
    reconstruction_samples: int = _option(
        1000, "held-out images reconstructed: all of them, or a seeded stratified subset of this many (default 1000; the "
              "digits' 360 are all used; Fashion-MNIST's 10,000 would take 10x the time for a mean that moves little).")
    judge_cache_dir: Optional[str] = _option(
        None, "where the CNN judge of 28x28 images is kept once trained, keyed by the SHA-256 of its training images and recipe, "
              "so that every run evaluated on one dataset loads the same judge instead of training it again (about 5 CPU "
              "minutes on Fashion-MNIST). Default: $LZN_HF_CACHE/judges, else <HF_HOME>/lzn_hf/judges; 'none': train it every time.")
    fid: bool = _option(False, "also the Inception FID (needs the optional extra: pip install \"lzn_hf[fid]\"); images are resized "
                               "to 299x299 (bilinear, antialiased), grey images repeated to 3 channels.")


@dataclass
class EvaluationRepresentation:
    _argument_group_name = "classification and representation"

    noise_draws: int = _option(5, "prior-noise draws averaged for the random-noise batch mode (default 5).")
    probe_epochs: int = _option(1000, "linear-probe epochs (AdamW, batch 256, zero init, features standardised; default 1000: on "
                                      "the digits within about 1 point of convergence for every encoder, a few CPU seconds per probe).")
    probe_lr: float = _option(1e-3, "linear-probe learning rate (default 1e-3; the paper's 3e-4 needs more epochs).")
    baselines: bool = _option(False, "also probe the raw pixels, a random-init encoder and a cross-entropy-trained encoder of the same config.")
    supervised_steps: int = _option(500, "Adam steps (batch 128, lr 1e-3) of the cross-entropy baseline encoder (default 500).")
    supervised_max_samples: Optional[int] = _option(None, "training images of the cross-entropy baseline: the whole training split "
                                                          "(default: the data a training run saw, whatever --max_eval_samples) or a "
                                                          "seeded stratified subset of this many.")


@dataclass
class EvaluationRun:
    _argument_group_name = "run"

    output: Optional[Path] = _option(None, "the metrics JSON (default: PATH/eval_metrics.json); the sample grid goes beside it "
                                           "(eval_samples.png, or <stem>_samples.png).")
    batch_size: Optional[int] = _option(None, "images per batch: the zones of batch-mode classification and reconstruction latents, "
                                              "and sampling chunks (default: the run's training global batch, else 256).")
    seed: Optional[int] = _option(None, "samples, prior noise, probes and baselines (default: the run's training seed, else 0).")
    num_threads: Optional[int] = _option(None, "torch CPU threads (default: torch's). On cores busy with other work 1 is faster.")


EVALUATION_GROUPS = (EvaluationData, EvaluationGeneration, EvaluationRepresentation, EvaluationRun)


@dataclass
class EvaluationArguments(EvaluationData, EvaluationGeneration, EvaluationRepresentation, EvaluationRun):
    """Every option of :func:`evaluate`; ``path``: a training output folder or a save_pretrained folder."""

    path: Path = field(default=Path("."), metadata={"help": "a training output folder or a save_pretrained folder."})

    def __post_init__(self):
        self.path = Path(self.path)
        if self.output is not None:
            self.output = Path(self.output)
        if self.zero_lzn_latent:
            if self.lzn_latent not in ("auto", "zero"):
                raise ValueError(f"--zero_lzn_latent contradicts --lzn_latent {self.lzn_latent}")
            self.lzn_latent = "zero"
        if self.lzn_latent not in LZN_LATENT_MODES:
            raise ValueError(f"--lzn_latent must be one of {LZN_LATENT_MODES}, got {self.lzn_latent!r}")
        if self.dataset_name is not None and self.train_data_dir is not None:
            raise ValueError("pass --dataset_name or --train_data_dir, not both")
        for name in ("num_samples", "num_inference_steps", "reconstruction_steps", "reconstruction_samples", "noise_draws", "probe_epochs",
                     "max_eval_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1")
        for name in ("batch_size", "num_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1")


class EvaluationError(RuntimeError):
    """A problem with the folder or the arguments, reported as one line."""


# ----------------------------------------------------------------------------------------------------------
# what the folder holds
# ----------------------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------------------
# what the folder holds
# ----------------------------------------------------------------------------------------------------------
def folder_kind(folder: Path) -> Optional[str]:
    """:func:`lzn_hf.model_cards.detect_kind` of an LZN save_pretrained folder, None for any other folder."""
    try:
        return detect_kind(folder)
    except (ValueError, OSError):
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


@dataclass
class RunRecord:
    """What the training run recorded in its ``run_config.json`` (:func:`lzn_hf.training.export.write_run_config`);
    empty for a folder without one (a model saved by hand)."""

    script: Optional[str] = None
    flags: Dict[str, Any] = field(default_factory=dict)
    script_flags: Dict[str, Any] = field(default_factory=dict)
    global_batch_size: Optional[int] = None
    folder: Optional[Path] = None

    @classmethod
    def find(cls, path: Path, single_folder: bool) -> "RunRecord":
        """The record of ``path`` (a training output folder) or of its parent (``single_folder``: model/ and the like)."""
        for folder in ([path, path.parent] if single_folder else [path]):
            try:
                record = read_run_config(folder)
            except ValueError as error:
                raise EvaluationError(str(error)) from error
            if record is not None:
                return cls(script=record.get("script"), flags=record.get("flags", {}), script_flags=record.get("script_flags", {}),
                           global_batch_size=record.get("global_batch_size"), folder=folder)
        return cls()

    @property
    def without_lzn_latent(self) -> bool:
        """A train_generation.py baseline: the decoder saw a zero latent, the encoder did not train."""
        return bool(self.script_flags.get("without_lzn_latent", False))

    @property
    def seed(self) -> Optional[int]:
        return self.flags.get("seed")


def resolve_batch_size(options: "EvaluationArguments", run: RunRecord) -> int:
    if options.batch_size is not None:
        return options.batch_size
    return run.global_batch_size or 256


def resolve_dataset(options: "EvaluationArguments", run: RunRecord, notes: List[str]) -> DataArguments:
    """The data :func:`~lzn_hf.training.data.load_training_data` loads: the command line's, else what the run
    recorded (its dataset or image folder, columns and cache), else the digits."""
    columns = dict(dataset_config_name=options.dataset_config_name, image_column=options.image_column,
                   label_column=options.label_column, cache_dir=options.cache_dir)
    if options.dataset_name is not None or options.train_data_dir is not None:
        return DataArguments(dataset_name=options.dataset_name, train_data_dir=options.train_data_dir, **columns)
    recorded = run.flags
    if recorded.get("dataset_name") is not None or recorded.get("train_data_dir") is not None:
        recorded_columns = {key: recorded.get(key) if value is None else value for key, value in columns.items()}
        return DataArguments(dataset_name=recorded.get("dataset_name"), train_data_dir=recorded.get("train_data_dir"), **recorded_columns)
    notes.append("no dataset recorded with the model: evaluated on the digits (pass --dataset_name / --train_data_dir)")
    return DataArguments(dataset_name="digits", **columns)


# ----------------------------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------------------------
def choose_lzn_latent(options, run, pipeline) -> str:
    if options.lzn_latent != "auto":
        return options.lzn_latent
    if run.without_lzn_latent:
        return "zero"
    if pipeline.is_conditional and pipeline.label_anchors is not None and run.script != "train_generation.py":
        return "label_zone"  # the joint model's label encoder (train_generation.py does not train label anchors)
    return "normal"


@torch.no_grad()
def draw_samples(pipeline, mode: str, num_samples: int, batch_size: int, options):
    """`[M, C, H, W]` samples in [-1, 1] and their conditioning classes `[M]` (None for unconditional decoders)."""
    decoder_config = pipeline.image_decoder.config
    generator = torch.Generator().manual_seed(options.seed)
    if pipeline.is_conditional:
        per_class = max(1, round(num_samples / decoder_config.num_classes))
        labels = torch.arange(decoder_config.num_classes).repeat_interleave(per_class)
    else:
        labels = None
    total = num_samples if labels is None else len(labels)
    sampler = dict(sampler="rk45") if options.sampler == "rk45" else dict(num_inference_steps=options.num_inference_steps)
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


def evaluate_generation(options, parts, run, data, batch_size, metrics, notes, output: Path):
    pipeline, model = parts["pipeline"], parts.get("model")
    mode = choose_lzn_latent(options, run, pipeline)
    metrics["lzn_latent"] = mode
    start = time.time()
    samples, sample_labels = draw_samples(pipeline, mode, options.num_samples, batch_size, options)
    metrics["num_samples"] = len(samples)
    metrics["time/sampling_s"] = time.time() - start
    metrics["samples_png"] = str(sample_grid(samples, sample_labels, data["class_names"], output.with_name(samples_png_name(output))))

    start = time.time()
    train_images, train_labels, test_images, test_labels = data["train_images"], data["train_labels"], data["test_images"], data["test_labels"]
    if train_labels is not None:
        if uses_cnn_judge(train_images):  # 28x28 real images: one CNN is both the judge and the Fréchet feature space
            # a fixed judge, whatever --seed, trained on the whole training split (on a 10,000-image subset it reached
            # only ~85 % on Fashion-MNIST's test images, which would cap the agreement it can report)
            judge_images, judge_labels = whole_training_split(data)
            cache_dir = judge_cache_dir(options.judge_cache_dir)
            judge = fit_cnn_judge(judge_images, judge_labels, seed=0, cache_dir=cache_dir)
            metrics["judge/num_train_images"] = len(judge_labels)
            key, extractor, feature_accuracy = "fd_cnn", judge.features, judge.accuracy
        else:  # the 8x8 digits: the MLP's hidden features and the pixel SVC
            key = "fd_digits" if data["dataset"] == "sklearn-digits" else "fd_mlp"
            mlp = fit_mlp_feature_extractor(train_images, train_labels, seed=0)
            extractor, feature_accuracy = mlp, mlp.accuracy
            judge = fit_image_judge(train_images, train_labels)
        metrics["judge/kind"] = judge.kind
        reference = extractor(train_images)
        sample_features = extractor(samples)
        metrics[key] = frechet_distance(sample_features, reference)
        if test_images is not None:
            metrics[f"{key}/real_test"] = frechet_distance(extractor(test_images), reference)
            if len(samples) > len(test_images):  # the distance grows as the set shrinks: compare equal sizes
                subset = torch.randperm(len(samples), generator=torch.Generator().manual_seed(options.seed))[: len(test_images)]
                metrics[f"{key}/test_size_subset"] = frechet_distance(sample_features[subset.numpy()], reference)
            metrics[f"{key}/feature_classifier_accuracy_real_test"] = feature_accuracy(test_images, test_labels)
        judged = judge.predict(samples)
        if sample_labels is not None:
            metrics["judge/agreement"] = (judged == sample_labels).float().mean().item()
        if test_images is not None:
            metrics["judge/accuracy_real_test"] = judge.accuracy(test_images, test_labels)
        num_classes = int(train_labels.max()) + 1
        frequencies = torch.bincount(train_labels, minlength=num_classes).float() / len(train_labels)
        judged_frequencies = torch.bincount(judged, minlength=num_classes).float() / len(judged)
        metrics["judge/class_histogram_tv"] = 0.5 * (frequencies - judged_frequencies).abs().sum().item()
    else:
        notes.append(f"unlabelled training data: no {key} and no judge (they need a classifier of real images)")
    metrics["time/sample_metrics_s"] = time.time() - start

    if options.fid:
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
    if len(test_images) > options.reconstruction_samples:  # a seeded stratified subset (the same for every model)
        keep = stratified_indices(test_labels, options.reconstruction_samples, len(test_images))
        test_images, test_labels = test_images[keep], None if test_labels is None else test_labels[keep]
    metrics["reconstruction_samples"] = len(test_images)
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
        class_labels=test_labels.to(device) if decoder.config.num_classes > 0 else None, num_steps=options.reconstruction_steps,
        generator=torch.Generator(device).manual_seed(options.seed), latents=None if latents is None else latents.to(device),
        batch_size=batch_size)
    metrics["time/reconstruction_s"] = time.time() - start


def samples_png_name(output: Path) -> str:
    return (output.stem.replace("metrics", "samples") if "metrics" in output.stem else output.stem + "_samples") + ".png"


# ----------------------------------------------------------------------------------------------------------
# classification and representation
# ----------------------------------------------------------------------------------------------------------
def evaluate_classification(options, classifier, data, batch_size, metrics):
    start = time.time()
    test_images, test_labels, train_images = data["test_images"], data["test_labels"], data["train_images"]
    common = dict(batch_size=batch_size, filler=train_images)  # upstream: eval batch = training batch
    for weighted in (False, True):
        suffix = "_class_weights" if weighted else ""
        metrics[f"accuracy/batch_zero_noise{suffix}"] = batch_mode_accuracy(
            classifier, test_images, test_labels, noise="zero", class_weights=weighted, **common)
        draws = torch.tensor([batch_mode_accuracy(classifier, test_images, test_labels, noise="random", seed=options.seed + k,
                                                  class_weights=weighted, **common) for k in range(options.noise_draws)])
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


def probe_rows(name: str, encoder, data, options, metrics) -> None:
    """``linear_probe/<name>`` (the ``pooler_output`` feature, or the raw pixels for ``encoder=None``) and, for NCSN++
    encoders, ``linear_probe/<name>_backbone`` (the pre-head feature maps, pooled): :mod:`lzn_hf.evaluation.probe`."""
    accuracies = probe_accuracies(encoder, data["train_images"], data["train_labels"], data["test_images"], data["test_labels"],
                                  epochs=options.probe_epochs, lr=options.probe_lr, seed=options.seed)
    for feature, accuracy in accuracies.items():
        metrics[f"linear_probe/{name}" + ("_backbone" if feature == "backbone" else "")] = accuracy


def evaluate_representation(options, encoder, data, metrics, row: str = "lzn"):
    """The pinned probe (:mod:`lzn_hf.evaluation.probe`) of the trained encoder (``row``: ``lzn``, or ``simclr`` for
    a ``--objective simclr`` run) and, with ``baselines``, of the pixels, a random-init and a cross-entropy encoder."""
    start = time.time()
    probe_rows(row, encoder, data, options, metrics)
    metrics["probe_epochs"], metrics["probe_lr"] = options.probe_epochs, options.probe_lr
    metrics["probe/protocol"] = protocol_record(len(data["train_images"]), len(data["test_images"]), options.probe_epochs, options.probe_lr,
                                                options.seed)
    metrics["time/linear_probe_s"] = time.time() - start
    if not options.baselines:
        return
    start = time.time()
    probe_rows("pixels", None, data, options, metrics)
    torch.manual_seed(options.seed)
    probe_rows("random_init", LZNImageEncoder(encoder.config), data, options, metrics)
    num_classes = int(data["train_labels"].max()) + 1
    # the cross-entropy encoder learns from the training split as a training run does, not from the probe's subset
    if options.supervised_max_samples is None:
        supervised_images, supervised_labels = whole_training_split(data)
    else:
        supervised_images, supervised_labels = stack_dataset(data["train_split"], options.supervised_max_samples)
    predict = train_cross_entropy_classifier(encoder.config, supervised_images, supervised_labels, num_classes,
                                             num_steps=options.supervised_steps, seed=options.seed)
    metrics["accuracy/cross_entropy_classifier"] = (predict(data["test_images"]).cpu() == data["test_labels"]).float().mean().item()
    probe_rows("supervised", predict.encoder, data, options, metrics)
    metrics["supervised_steps"], metrics["supervised_num_train_images"] = options.supervised_steps, len(supervised_labels)
    metrics["time/baselines_s"] = time.time() - start


# ----------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------
def load_parts(folders: Dict[str, Path], run, notes: List[str], device) -> Dict[str, object]:
    """The models: LZNModel (model), LZNPipeline (pipeline: the folder's, else built from the model's decoder),
    LZNForImageClassification (classifier: the folder's, else from a model with trained label anchors)."""
    from ..pipeline_lzn import LZNPipeline

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
    untrained_encoder = run.without_lzn_latent
    untrained_anchors = untrained_encoder or run.script == "train_generation.py"
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


def judge_cache_dir(option: Optional[str]) -> Optional[Path]:
    """``--judge_cache_dir``: None / '' -> the default cache folder, 'none' -> no cache, else that folder."""
    if not option:
        return default_judge_cache_dir()
    return None if option.strip().lower() == "none" else Path(option).expanduser()


def whole_training_split(data) -> tuple:
    """``(images [M, C, H, W], labels [M])`` of the whole training split, stacked once per evaluation: what the judge and
    the cross-entropy baseline learn from (``data["train_images"]`` may be a ``--max_eval_samples`` subset)."""
    if "whole_train" not in data:
        data["whole_train"] = stack_dataset(data["train_split"], None)
    return data["whole_train"]


def load_data(options, run, parts, notes):
    component = parts.get("model") or parts.get("classifier")
    if component is not None:
        resolution = component.config.image_encoder_config.image_size
        num_channels = component.config.image_encoder_config.num_channels
    else:
        decoder_config = parts["pipeline"].image_decoder.config
        resolution, num_channels = decoder_config.image_size, decoder_config.num_channels
    data = resolve_dataset(options, run, notes)
    train, test, class_names = load_training_data(data, resolution, num_channels)
    train_images, train_labels = stack_dataset(train, options.max_eval_samples)
    test_images, test_labels = stack_dataset(test, options.max_eval_samples) if test is not None else (None, None)
    if test is None:
        notes.append("the dataset has no 'test' or 'validation' split: no held-out metrics")
    if class_names is None and train_labels is not None:
        class_names = [str(i) for i in range(int(train_labels.max()) + 1)]
    dataset = dataset_id(data.dataset_name, data.train_data_dir)
    return dict(train_images=train_images, train_labels=train_labels, test_images=test_images, test_labels=test_labels,
                class_names=class_names, dataset=dataset, train_split=train)


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


def evaluate(options: "EvaluationArguments") -> Dict[str, object]:
    """Every metric that applies to ``options.path``, written to ``options.output`` (default
    ``PATH/eval_metrics.json``, with the sample grid beside it) and returned; ``EvaluationError`` (one line) for a
    folder or options that cannot be evaluated."""
    total_start = time.time()
    path = options.path
    folders = find_folders(path)
    single = folder_kind(path) is not None
    run = RunRecord.find(path, single)
    output = options.output or path / "eval_metrics.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    if options.fid:
        try:
            require_inception()
        except (ImportError, FileNotFoundError) as error:
            raise EvaluationError(f"--fid: {error}") from error
    notes: List[str] = []
    if options.seed is None:  # one evaluation seed per training seed: the baselines vary with the seeds too
        options = dataclasses.replace(options, seed=run.seed if isinstance(run.seed, int) else 0)
    torch.manual_seed(options.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.time()
    parts = load_parts(folders, run, notes, device)
    batch_size = resolve_batch_size(options, run)
    data = load_data(options, run, parts, notes)
    has_labels = data["train_labels"] is not None and data["test_labels"] is not None
    check_classes(path, parts, data)
    metrics: Dict[str, object] = {
        "path": str(path), "folders": {k: str(v) for k, v in folders.items()}, "dataset": data["dataset"],
        "num_train_images": len(data["train_images"]), "num_test_images": 0 if data["test_images"] is None else len(data["test_images"]),
        "seed": options.seed, "batch_size": batch_size, "device": str(device), "time/load_s": time.time() - start,
    }
    if "pipeline" in parts:
        metrics.update(sampler=options.sampler, num_inference_steps=options.num_inference_steps if options.sampler == "euler" else None,
                       reconstruction_steps=options.reconstruction_steps)
        evaluate_generation(options, parts, run, data, batch_size, metrics, notes, output)
    if "classifier" in parts:
        if has_labels:
            evaluate_classification(options, parts["classifier"], data, batch_size, metrics)
        else:
            notes.append("no labelled held-out split: no classification accuracy")
    if "encoder" in parts:
        if has_labels:
            evaluate_representation(options, parts["encoder"], data, metrics, row=run.script_flags.get("objective") or "lzn")
        else:
            notes.append("no labelled held-out split: no linear probe")
    if not any(k.startswith(("fd_", "judge/", "reconstruction", "accuracy/", "linear_probe/", "fid")) for k in metrics):
        raise EvaluationError(f"no metric applies to {path}: " + "; ".join(notes or ["nothing evaluable found"]))
    metrics["notes"] = notes
    metrics["time/total_s"] = time.time() - total_start
    metrics["time/total_cpu_s"] = time.process_time()  # CPU seconds of this process, all threads (imports included)
    write_json_atomically(output, metrics)
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


