"""Evaluation of LZN models, one import point.

* ``metrics``: Fréchet distances (exact for singular covariances), Inception features (the optional ``fid``
  extra), the MLP feature extractor of small images, linear probes, reconstruction error, batch-mode accuracy;
* ``baselines``: the reference models: an independent pixel judge of class-conditional samples and the
  cross-entropy classifier with the same encoder (the classification ceiling, the supervised probe);
* ``judge``: the CNN judge of 28x28 images (its hidden layer is their Fréchet space) and the judge chosen by image size;
* ``probe``: the pinned linear-probe protocol of case study 2 and the features it probes;
* ``run``: :func:`evaluate` of a saved training output or ``save_pretrained`` folder (what ``examples/evaluate.py``
  runs), reading how the run was made from its ``run_config.json``.
"""

from .baselines import fit_pixel_judge, train_cross_entropy_classifier
from .judge import CNN_JUDGE_MIN_SIZE, CNNJudge, PixelSVCJudge, default_judge_cache_dir, fit_cnn_judge, fit_image_judge, uses_cnn_judge
from .metrics import (INCEPTION_SIZE, MLPFeatureExtractor, batch_mode_accuracy, classification_accuracy, feature_statistics,
                      fit_mlp_feature_extractor, frechet_distance, inception_features, linear_probe_accuracy, reconstruction_error,
                      require_inception)
from .probe import PROBE_FEATURES, encoder_features, probe_accuracies, probed_features, protocol_record
from .run import EVALUATION_GROUPS, EvaluationArguments, EvaluationError, RunRecord, evaluate, find_folders, print_summary

__all__ = [
    "frechet_distance",
    "feature_statistics",
    "fit_mlp_feature_extractor",
    "MLPFeatureExtractor",
    "inception_features",
    "require_inception",
    "INCEPTION_SIZE",
    "linear_probe_accuracy",
    "reconstruction_error",
    "classification_accuracy",
    "batch_mode_accuracy",
    "fit_pixel_judge",
    "train_cross_entropy_classifier",
    "CNN_JUDGE_MIN_SIZE",
    "CNNJudge",
    "PixelSVCJudge",
    "default_judge_cache_dir",
    "fit_cnn_judge",
    "fit_image_judge",
    "uses_cnn_judge",
    "PROBE_FEATURES",
    "encoder_features",
    "probed_features",
    "probe_accuracies",
    "protocol_record",
    "EvaluationArguments",
    "EVALUATION_GROUPS",
    "EvaluationError",
    "RunRecord",
    "evaluate",
    "find_folders",
    "print_summary",
]
