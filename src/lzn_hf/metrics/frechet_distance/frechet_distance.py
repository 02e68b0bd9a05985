"""Fréchet distance between two sets of feature vectors (FID when they are Inception-v3 pool features)."""

import datasets
import evaluate
import numpy as np

from lzn_hf.evaluation import frechet_distance

_DESCRIPTION = """Fréchet distance between Gaussians fitted to the features of generated samples (predictions)
and of real samples (references): |mu_p - mu_r|^2 + tr(S_p + S_r - 2 (S_p S_r)^(1/2)). With Inception-v3 pool
features (lzn_hf.evaluation.inception_features) this is the FID."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of feature vectors (one per generated sample).
    references: list of feature vectors (one per real sample).
Returns:
    frechet_distance: float (lower is better).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FrechetDistance(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Heusel et al., GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium, 2017",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Sequence(datasets.Value("float64"))}),
        )

    def _compute(self, predictions, references):
        return {"frechet_distance": frechet_distance(np.asarray(predictions), np.asarray(references))}
