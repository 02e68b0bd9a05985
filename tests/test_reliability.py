"""Reliability and security: bad files and checkpoints, property-based tests of the latent flow, safe loading.

The bad-input rows of docs/reliability.md that concern tensors are tested where the API lives
(test_latent_flow.py, test_modeling_lzn.py, test_pipelines.py), those of the converter in test_conversion_files.py;
this file holds the rest.
"""

import ast
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lzn_hf import LZNConfig, LZNForImageClassification, LZNModel
from lzn_hf.latent_flow import anchor_posteriors, anchor_velocity, anchors_to_latents, latents_to_anchors

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    LZNModel(LZNConfig.from_preset("tiny-joint")).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------------------
# files and checkpoints
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_safetensors_raise_clear_error_and_leave_file(saved_tiny, tmp_path, damage):
    for item in saved_tiny.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"not a safetensors file" if damage == "garbage" else data[: len(data) // 2])
    damaged = weights.read_bytes()
    with pytest.raises(ValueError, match="corrupt or truncated weights file"):
        LZNModel.from_pretrained(tmp_path)
    assert weights.read_bytes() == damaged  # nothing is rewritten


def test_checkpoint_of_another_architecture_lists_keys(saved_tiny, tmp_path):
    other = LZNModel(LZNConfig.from_preset("tiny-generation"))
    other.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((saved_tiny / "config.json").read_text())  # claims tiny-joint
    with pytest.raises((ValueError, RuntimeError), match=r"label_anchors\.anchors|mismatch"):
        LZNModel.from_pretrained(tmp_path)
    # same shapes, different parts: still refused, with the key names
    joint = LZNModel.from_pretrained(saved_tiny)
    joint.label_anchors = None
    joint.config.label_anchors_config = None
    joint.config.image_decoder_config.num_classes = 0
    no_labels = tmp_path / "no_labels"
    joint.save_pretrained(no_labels)
    with pytest.raises(ValueError, match=r"missing keys: \['label_anchors\.anchors'\]"):
        LZNModel.from_pretrained(no_labels, config=LZNConfig.from_pretrained(saved_tiny))


def test_lenient_loading_is_opt_in(saved_tiny):
    classifier, info = LZNForImageClassification.from_pretrained(saved_tiny, output_loading_info=True)
    assert not info["missing_keys"] and isinstance(classifier, LZNForImageClassification)


# ---------------------------------------------------------------------------------------------------------
# property-based tests of the latent flow
# ---------------------------------------------------------------------------------------------------------
def _problem(data, max_anchors=12, max_dim=5):
    num_anchors = data.draw(st.integers(2, max_anchors), label="N")
    dim = data.draw(st.integers(1, max_dim), label="d")
    batch = data.draw(st.integers(1, 6), label="B")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    scale = data.draw(st.floats(0.1, 5.0), label="scale")
    generator = torch.Generator().manual_seed(seed)
    anchors = scale * torch.randn(num_anchors, dim, generator=generator, dtype=torch.float64)
    latents = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    weights = torch.rand(num_anchors, generator=generator, dtype=torch.float64)
    zero = data.draw(st.lists(st.integers(0, num_anchors - 1), max_size=num_anchors - 1, unique=True), label="zero weights")
    weights[zero] = 0
    return anchors, latents, weights, generator


TIMES = st.sampled_from([1.0, 0.7, 0.3, 0.1, 1e-2, 1e-3, 1e-4])


@settings(max_examples=60, deadline=None)
@given(data=st.data(), t=TIMES)
def test_property_posteriors_finite_normalised_and_zero_weights_get_no_mass(data, t):
    anchors, latents, weights, _ = _problem(data)
    posteriors = anchor_posteriors(latents, t, anchors, weights)
    assert torch.isfinite(posteriors).all() and torch.isfinite(anchor_velocity(latents, t, anchors, weights)).all()
    torch.testing.assert_close(posteriors.sum(-1), torch.ones(len(latents), dtype=torch.float64))
    assert (posteriors[:, weights == 0] == 0).all()


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_property_flows_finite_and_permutation_equivariant(data):
    anchors, latents, weights, generator = _problem(data)
    permutation = torch.randperm(len(anchors), generator=generator)
    points, posteriors = latents_to_anchors(latents, anchors, num_steps=10, weights=weights)
    points_p, posteriors_p = latents_to_anchors(latents, anchors[permutation], num_steps=10, weights=weights[permutation])
    assert torch.isfinite(points).all() and torch.isfinite(posteriors).all()
    torch.testing.assert_close(posteriors_p, posteriors[:, :, permutation], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(points_p, points, rtol=1e-6, atol=1e-9)
    noise = torch.randn(anchors.shape, generator=generator, dtype=torch.float64)
    for solver in ("euler", "dpm_solver++"):
        forward = anchors_to_latents(anchors, noise, num_steps=6, solver=solver)
        forward_p = anchors_to_latents(anchors[permutation], noise[permutation], num_steps=6, solver=solver)
        assert torch.isfinite(forward).all()
        torch.testing.assert_close(forward_p, forward[permutation], rtol=1e-6, atol=1e-8)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), t=TIMES, chunk=st.integers(1, 4))
def test_property_chunked_equals_unchunked(data, t, chunk):
    anchors, latents, weights, _ = _problem(data)
    torch.testing.assert_close(
        anchor_velocity(latents, t, anchors, weights, chunk_size=chunk), anchor_velocity(latents, t, anchors, weights), rtol=1e-9, atol=1e-9
    )


# ---------------------------------------------------------------------------------------------------------
# security: no loading path unpickles user files
# ---------------------------------------------------------------------------------------------------------
def test_no_unsafe_loading_in_shipped_code():
    offenders = []
    for path in [*ROOT.glob("src/**/*.py"), *ROOT.glob("scripts/*.py"), *ROOT.glob("examples/*.py")]:
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in match.group(1):
                offenders.append(f"{path.name}: {match.group(0)}")
        offenders += [f"{path.name}: pickle" for line in text.splitlines() if re.search(r"\bpickle\.loads?\(", line)]
        # accelerate unpickles registered objects' state with weights_only=False; its loader runs only after verify_checkpoint
        offenders += [f"{path.name}: register_for_checkpointing" for line in text.splitlines() if "register_for_checkpointing(" in line]
        if path.name != "checkpoints.py":
            offenders += [f"{path.name}: load_state" for line in text.splitlines() if re.search(r"\.load_state\(", line)]
        offenders += [  # a call passing trust_remote_code (text inside strings, e.g. model-card snippets, is fine)
            f"{path.name}: trust_remote_code"
            for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.Call)
            for keyword in node.keywords
            if keyword.arg == "trust_remote_code" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False)
        ]
    assert not offenders, offenders
