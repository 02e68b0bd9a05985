#!/usr/bin/env python
"""Evaluate a saved Latent Zoning Network folder: every metric that applies, into one JSON.

PATH is a training output folder (`model/`, `pipeline/`, `classifier/`, `run_config.json`, as the three
`train_*.py` scripts write it) or one `save_pretrained` folder of an `LZNModel`, `LZNForImageClassification`
or `LZNPipeline`. The work is `lzn_hf.evaluation.evaluate`; this script is its command line. It finds what the
folder holds and measures:

* generation (an image decoder): `--num_samples` samples (label-conditional decoders: the same number per
  class), scored by
    - `fd_digits`: Fréchet distance of the samples to the real training split in the hidden-layer (ReLU)
      features of a small MLP classifier fitted on that split (`lzn_hf.evaluation.fit_mlp_feature_extractor`;
      `fd_mlp` for other data); `fd_digits/real_test`, the same distance for the real held-out split (the
      floor: 360 images for the digits), and `fd_digits/test_size_subset`, the samples' distance for a random
      subset as large as the held-out split: the distance grows as the set shrinks (a random 360 of the
      training images themselves score about 0.36), so compare that one with the floor;
    - `fd_cnn` instead for images of 16 pixels a side or more (Fashion-MNIST, MNIST): the hidden features of the
      CNN judge (`lzn_hf.evaluation.fit_cnn_judge`: two conv stages and a 128-unit layer trained 5 epochs on the
      whole real training split, whatever `--max_eval_samples`; trained once per dataset and kept in
      `--judge_cache_dir`), with the same `/real_test`, `/test_size_subset` and held-out accuracy entries;
    - `judge/agreement` (conditional decoders): the share of samples that an independent classifier of real
      images labels as their conditioning class (`judge/kind`: `pixel_svc`, an RBF SVC on the pixels of the 8x8
      digits, or `cnn`, the CNN judge above); `judge/accuracy_real_test`: that judge on the real held-out images;
      `judge/class_histogram_tv`: total-variation distance between the judged classes of the samples and the
      training class frequencies (mode coverage);
    - `reconstruction_error` (lzn-method.md §3.1): held-out image -> its latent (zero for a decoder trained
      without LZN latent; the true label for conditional decoders) -> inverted image ODE -> regenerated image,
      mean L2 in [-1, 1] units (`--reconstruction_steps` Euler steps each way; the error falls like 1 / steps,
      so compare models at equal steps), over at most `--reconstruction_samples` held-out images (a seeded
      stratified subset);
    - with `--fid`: Inception FID (`fid`, `fid/real_test`) against the training split, images resized to
      299x299 (bilinear, antialiased) and grey images repeated to 3 channels (the optional `fid` extra).
* classification (an encoder with label anchors, or the `classifier/` folder): upstream's batch mode
  (latents against the anchors of each eval batch, the last batch completed with training images) with zero
  and with random prior noise (mean and sd over `--noise_draws` draws), each with uniform class weights and
  with the batch's true-label histogram (`..._class_weights`, upstream's weighted variant), and the anchor-bank
  mode of `LZNForImageClassification` (`accuracy/anchor_bank`).
* representation (an image encoder): the pinned linear probe of `lzn_hf.evaluation.probe` on frozen
  `pooler_output` features (`linear_probe/lzn`, or `linear_probe/simclr` for a `--objective simclr` run; single
  views, every feature standardised with the training split's mean and sd, zero-initialised linear layer,
  AdamW lr `--probe_lr` 1e-3, batch 256, `--probe_epochs` 1000: run to convergence, so that encoders with small
  features are not penalised; `probe/protocol` records the sets and settings). NCSN++ encoders also get
  `..._backbone`: the same probe on the pre-head feature maps, each averaged over space, concatenated
  (their `pooler_output` is the anchor, after the latent heads). With `--baselines`: the same probe on the raw
  pixels (`linear_probe/pixels`), on a randomly initialised encoder of the same config (seeded:
  `linear_probe/random_init`) and on an encoder of the same config trained with cross-entropy on the training
  split, all of it whatever `--max_eval_samples` (`--supervised_max_samples` for a stratified subset; `--supervised_steps`
  Adam steps: `linear_probe/supervised`; its own test accuracy:
  `accuracy/cross_entropy_classifier`).

Encoders that were not trained (`--without_lzn_latent` runs) and label anchors that were not trained
(train_generation.py runs) are skipped. The data: the same training / held-out split as the training
scripts (the digits' fixed, stratified 20 %): `--dataset_name` / `--train_data_dir`, else the dataset or image
folder the run recorded in `run_config.json`, else the digits. `--max_eval_samples` below a split's size takes a
seeded, stratified subset (every class in its share).

    python examples/evaluate.py lzn-digits-joint
    python examples/evaluate.py lzn-digits-joint/pipeline --num_samples 500 --output /tmp/pipeline_eval.json
    python examples/evaluate.py lzn-generation --baselines --sampler rk45
"""

import argparse
import sys
from pathlib import Path

import torch

from lzn_hf.evaluation import EVALUATION_GROUPS, EvaluationArguments, EvaluationError, evaluate, print_summary
from lzn_hf.training import add_arguments


def parse_args(argv=None) -> EvaluationArguments:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="a training output folder or a save_pretrained folder.")
    add_arguments(parser, *EVALUATION_GROUPS)
    try:
        return EvaluationArguments(**vars(parser.parse_args(argv)))
    except ValueError as error:
        parser.error(str(error))


def main(argv=None) -> int:
    options = parse_args(argv)
    import diffusers.utils.logging
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars
    diffusers.utils.logging.disable_progress_bar()
    if options.num_threads is not None:
        torch.set_num_threads(options.num_threads)
    try:
        metrics = evaluate(options)
    except EvaluationError as error:
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        return 1
    print_summary(metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
