"""Tests of the latent-zoning core against a float64 direct-formula reference and upstream's fixtures."""

import contextlib
import math

import pytest
import torch
from safetensors.torch import load_file

from lzn_hf import latent_flow
from lzn_hf.latent_flow import (
    anchor_posteriors,
    anchor_velocity,
    anchors_to_latents,
    gather_anchors,
    latents_to_anchors,
    nearest_anchor,
)

from lzn_test_utils import parity_folder

TIMES = [1.0, 0.5, 0.1, 1e-2, 1e-3, 1e-4]


# ---------------------------------------------------------------------------------------------------------
# reference: upstream's materialised [B, N, d] form of the velocity (lzn-method.md §1.3)
# ---------------------------------------------------------------------------------------------------------
def materialised_posterior_mean(latents, t, anchors, weights=None):
    implied_noise = (latents[:, None, :] - (1 - t) * anchors[None]) / t  # [B, N, d]
    logits = -0.5 * implied_noise.pow(2).sum(-1)  # [B, N]
    unnormalised = torch.exp(logits - logits.max(-1, keepdim=True).values)
    if weights is not None:
        unnormalised = unnormalised * weights
    posteriors = unnormalised / unnormalised.sum(-1, keepdim=True)
    velocity = (posteriors[..., None] * (implied_noise - anchors[None])).sum(1)
    return posteriors, latents - t * velocity  # posterior-mean anchor, recovered from the velocity


def reference_velocity(latents, t, anchors, weights=None):
    posteriors, mean = materialised_posterior_mean(latents.double(), t, anchors.double(), weights)
    return (latents.double() - mean) / t


@contextlib.contextmanager
def materialised_velocity():
    """Run the flows with the materialised velocity in place of the fast path (same solver code, uniform weights)."""

    def posterior_mean(latents, t, field, chunk_size):  # the flows' centred frame, as the fast path
        return materialised_posterior_mean(latents, t, field.anchors)[1]

    fast = latent_flow._posterior_mean
    latent_flow._posterior_mean = posterior_mean
    try:
        yield
    finally:
        latent_flow._posterior_mean = fast


def rel_err(x, y):
    return ((x.double() - y.double()).norm() / y.double().norm()).item()


def separated_anchors(n, d, spread=3.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return spread * torch.randn(n, d, generator=generator)


# ---------------------------------------------------------------------------------------------------------
# single velocity evaluations
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", TIMES)
@pytest.mark.parametrize("where", ["random", "on_path"])
@pytest.mark.parametrize("n, d", [(64, 16), (300, 200)])
def test_velocity_matches_float64_reference(t, where, n, d):
    generator = torch.Generator().manual_seed(1)
    anchors = separated_anchors(n, d)
    if where == "random":
        latents = 2 * torch.randn(n, d, generator=generator)
    else:
        latents = (1 - t) * anchors + t * torch.randn(n, d, generator=generator)
    velocity = anchor_velocity(latents, t, anchors)
    assert velocity.dtype == torch.float32 and velocity.shape == (n, d)
    assert rel_err(velocity, reference_velocity(latents, t, anchors)) < 1e-4


def test_velocity_with_weights_matches_reference():
    anchors = separated_anchors(32, 8, spread=0.7)
    latents = torch.randn(20, 8)
    weights = torch.rand(32)
    weights[::3] = 0
    for t in (0.9, 0.3):
        velocity = anchor_velocity(latents, t, anchors, weights)
        assert rel_err(velocity, reference_velocity(latents, t, anchors, weights.double())) < 1e-5


def test_velocity_chunked_equals_unchunked():
    anchors, latents = torch.randn(50, 8), torch.randn(37, 8)
    full = anchor_velocity(latents, 0.3, anchors)
    chunked = anchor_velocity(latents, 0.3, anchors, chunk_size=5)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# whole flows
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["euler", "dpm_solver++"])
def test_forward_flow_float32_error_bounded(solver):
    anchors = separated_anchors(256, 32, spread=1.0)
    noise = torch.randn(256, 32, generator=torch.Generator().manual_seed(2))
    with materialised_velocity():
        exact = anchors_to_latents(anchors.double(), noise.double(), solver=solver)
        materialised_error = rel_err(anchors_to_latents(anchors, noise, solver=solver), exact)
    fast_error = rel_err(anchors_to_latents(anchors, noise, solver=solver), exact)
    assert fast_error < 2e-3
    assert fast_error <= 2 * materialised_error, (fast_error, materialised_error)


@pytest.mark.parametrize("solver, num_steps", [("euler", 100), ("dpm_solver++", 20)])
def test_forward_latents_are_standard_normal(solver, num_steps):
    anchors = separated_anchors(4096, 4, spread=1.5)
    noise = torch.randn(4096, 4, generator=torch.Generator().manual_seed(3))
    latents = anchors_to_latents(anchors, noise, solver=solver, num_steps=num_steps)
    assert latents.mean(0).abs().max() < 0.1
    assert (latents.var(0) - 1).abs().max() < 0.1


@pytest.mark.parametrize("solver, num_steps", [("euler", 400), ("dpm_solver++", 20)])
def test_round_trip_returns_to_own_anchor(solver, num_steps):
    # Reverse flows find the own anchor ~77% of the time after a 20-step Euler encoding (its error
    # moves latents across zone borders), >= 95% after DPM-Solver++ 20 or a fine Euler encoding.
    anchors = separated_anchors(64, 16, spread=1.0)
    noise = torch.randn(64, 16, generator=torch.Generator().manual_seed(4))
    latents = anchors_to_latents(anchors, noise, solver=solver, num_steps=num_steps)
    points, posteriors = latents_to_anchors(latents, anchors, num_steps=100)
    assert posteriors.shape == (100, 64, 64)
    recovered = (nearest_anchor(points, anchors) == torch.arange(64)).float().mean()
    assert recovered >= 0.95


def test_reverse_flow_posteriors_normalised_and_first_record_is_prior():
    anchors, latents = torch.randn(10, 6), torch.randn(7, 6)
    weights = torch.tensor([1.0, 2, 0, 1, 1, 3, 0, 1, 1, 1])
    _, posteriors = latents_to_anchors(latents, anchors, num_steps=10, weights=weights)
    torch.testing.assert_close(posteriors.sum(-1), torch.ones(10, 7))
    torch.testing.assert_close(posteriors[0], (weights / weights.sum()).expand(7, -1))
    assert (posteriors[:, :, weights == 0] == 0).all()  # zero-weight anchors never receive mass


def test_zero_weight_anchor_gets_no_mass_even_when_nearest():
    anchors = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    latents = torch.zeros(3, 2)  # sits on anchor 0
    posteriors = anchor_posteriors(latents, 0.01, anchors, weights=torch.tensor([0.0, 1.0]))
    assert (posteriors[:, 0] == 0).all() and torch.allclose(posteriors[:, 1], torch.ones(3))


def test_permuting_anchors_permutes_posteriors():
    anchors, latents = torch.randn(12, 5), torch.randn(9, 5)
    permutation = torch.randperm(12)
    points, posteriors = latents_to_anchors(latents, anchors, num_steps=20)
    points_p, posteriors_p = latents_to_anchors(latents, anchors[permutation], num_steps=20)
    torch.testing.assert_close(posteriors_p, posteriors[:, :, permutation], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(points_p, points, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------------------
def test_gradcheck_velocity():
    anchors = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    latents = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z, a: anchor_velocity(z, 0.4, a, weights), (latents, anchors))


@pytest.mark.parametrize("solver", ["euler", "dpm_solver++"])
def test_gradcheck_forward_flow(solver):
    anchors = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(5, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: anchors_to_latents(a, noise, num_steps=4, solver=solver), (anchors,))


def test_gradcheck_reverse_flow():
    anchors = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    latents = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)

    def flow(z, a):
        points, posteriors = latents_to_anchors(z, a, num_steps=5)
        return points, posteriors

    assert torch.autograd.gradcheck(flow, (latents, anchors))


@pytest.mark.parametrize("t", [1e-4, 1e-3, 0.3])
def test_float32_gradients_match_float64_at_small_t(t):
    """Saturated posteriors at small t: float32 gradients must stay exact (dv/dz = I / t on the own zone)."""
    generator = torch.Generator().manual_seed(5)
    anchors = separated_anchors(64, 16)
    latents = (1 - t) * anchors + t * torch.randn(64, 16, generator=generator)
    weights = torch.randn(64, 16, generator=generator)
    grads = []
    for dtype in (torch.float32, torch.float64):
        z, a = latents.to(dtype).requires_grad_(), anchors.to(dtype).requires_grad_()
        if dtype == torch.float64:
            velocity = (z - materialised_posterior_mean(z, t, a)[1]) / t
        else:
            velocity = anchor_velocity(z, t, a)
        grads.append(torch.autograd.grad((velocity * weights.to(dtype)).sum(), (z, a)))
    for grad32, grad64 in zip(*grads):
        assert rel_err(grad32, grad64) < 1e-4


@pytest.mark.parametrize("solver", ["euler", "dpm_solver++"])
def test_gradient_checkpointing_gives_same_gradients(solver):
    anchors = torch.randn(16, 4, requires_grad=True)
    noise = torch.randn(16, 4)
    grads = []
    for use_checkpoint in (False, True):
        latents = anchors_to_latents(anchors, noise, num_steps=5, solver=solver, gradient_checkpointing=use_checkpoint)
        _, posteriors = latents_to_anchors(latents, anchors.detach() * 0.5, num_steps=5, gradient_checkpointing=use_checkpoint)
        (grad,) = torch.autograd.grad(posteriors[-1, :, 0].sum() + latents.pow(2).sum(), anchors)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1])


# ---------------------------------------------------------------------------------------------------------
# solver details
# ---------------------------------------------------------------------------------------------------------
def test_dpm_solver_orders_follow_upstream():
    assert latent_flow._dpm_solver_orders(20) == [1, 2] + [3] * 18  # lower-order final inactive for >= 10
    assert latent_flow._dpm_solver_orders(5) == [1, 2, 3, 2, 1]
    assert latent_flow._dpm_solver_orders(1) == [1]
    grid = latent_flow.dpm_solver_time_grid(20)
    assert grid[0] == 1e-3 and math.isclose(grid[-1], 0.999) and len(grid) == 21


def test_dpm_solver_first_step_is_euler():
    anchors, noise = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    z = anchors_to_latents(anchors, noise, num_steps=1, solver="dpm_solver++")
    start, s, t = 1e-3 * noise + 0.999 * anchors, 1e-3, 0.999
    expected = start + (t - s) * anchor_velocity(start, s, anchors)
    torch.testing.assert_close(z, expected)


@pytest.mark.parametrize("solver", ["euler", "dpm_solver++"])
def test_append_own_anchor_equals_a_flow_per_query(solver):
    """Each query alone against bank + its own anchor: the batch-independent mode."""
    bank, anchors, noise = torch.randn(30, 4), torch.randn(5, 4), torch.randn(5, 4)
    batched = anchors_to_latents(anchors, noise, bank, num_steps=8, solver=solver, append_own_anchor=True, chunk_size=2)
    for i in range(5):
        alone = anchors_to_latents(anchors[i : i + 1], noise[i : i + 1], torch.cat([bank, anchors[i : i + 1]]), num_steps=8, solver=solver)
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-4, atol=1e-4)


def test_nearest_anchor():
    anchors = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.tensor([[9.0, 1.0], [0.5, 0.5], [1.0, 8.0]])
    assert nearest_anchor(points, anchors).tolist() == [1, 0, 2]


def test_gather_anchors_is_identity_in_one_process():
    anchors = torch.randn(4, 3)
    assert gather_anchors(anchors) is anchors


# ---------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: anchor_velocity(torch.randn(3), 0.5, torch.randn(4, 3)), "latents"),
        (lambda: anchor_velocity(torch.randn(2, 5), 0.5, torch.randn(4, 3)), "latent dimension 5"),
        (lambda: anchor_velocity(torch.randn(2, 3), 0.0, torch.randn(4, 3)), "flow time"),
        (lambda: anchor_velocity(torch.randn(2, 3), 0.5, torch.randn(0, 3)), "empty"),
        (lambda: anchor_velocity(torch.randn(2, 3), 0.5, torch.randn(4, 3), torch.ones(3)), "one per anchor"),
        (lambda: anchor_velocity(torch.randn(2, 3), 0.5, torch.randn(4, 3), -torch.ones(4)), "non-negative"),
        (lambda: anchor_velocity(torch.randn(2, 3), 0.5, torch.randn(4, 3), torch.zeros(4)), "all zero"),
        (lambda: anchors_to_latents(torch.randn(4, 3), torch.randn(4, 3), num_steps=0), "num_steps"),
        (lambda: anchors_to_latents(torch.randn(4, 3), torch.randn(4, 3), solver="rk4"), "unknown solver"),
        (lambda: anchors_to_latents(torch.randn(4, 3), torch.randn(5, 3)), "rows"),
        (lambda: anchors_to_latents(torch.randn(4, 3), torch.randn(4, 3), torch.randn(6, 2)), "reference_anchors"),
        (lambda: latents_to_anchors(torch.randn(4, 3), torch.randint(0, 3, (4, 3)), 5), "floating-point"),
    ],
)
def test_bad_input_raises_clear_error(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


# ---------------------------------------------------------------------------------------------------------
# upstream parity fixtures (FORMAT.md §5-§7): flows fed the stored upstream tensors
# ---------------------------------------------------------------------------------------------------------
def load_fixture(name):
    folder = parity_folder(name)
    return load_file(folder / "inputs.safetensors"), load_file(folder / "outputs.safetensors"), folder


@pytest.mark.parametrize("name", ["cifar_conditional_tiny", "hires_unconditional_tiny", "imagenet_contrastive_tiny"])
def test_parity_image_latent_flows(name):
    inputs, outputs, _ = load_fixture(name)
    anchors, noise = outputs["anchors"], inputs["eps"]
    for solver, key in (("dpm_solver++", "latent_dpm"), ("euler", "latent_euler")):
        assert rel_err(anchors_to_latents(anchors, noise, solver=solver), outputs[key]) < 2e-3, key
        latents_f64 = anchors_to_latents(anchors.double(), noise.double(), solver=solver)
        torch.testing.assert_close(latents_f64, outputs[f"{key}_f64"], atol=1e-9, rtol=0)
    if "latent_dpm_raw" in outputs:
        latents_raw = anchors_to_latents(outputs["anchors_raw"], noise)
        assert rel_err(latents_raw, outputs["latent_dpm_raw"]) < 2e-3


def test_parity_label_flows():
    inputs, outputs, folder = load_fixture("cifar_conditional_tiny")
    checkpoint = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)
    label_anchors = checkpoint["label_anchor_ema"]["shadow_params"][0].float()  # [10, d]
    labels, latents = inputs["labels"], outputs["latent_dpm"]
    class_weights = torch.bincount(labels, minlength=10).float() / labels.numel()
    torch.testing.assert_close(class_weights, outputs["class_weights"])
    for suffix, weights in (("", None), ("_weighted", class_weights)):
        points, posteriors = latents_to_anchors(latents, label_anchors, num_steps=100, weights=weights)
        torch.testing.assert_close(points, outputs[f"label_final{suffix}"], atol=1e-4, rtol=0)
        torch.testing.assert_close(posteriors, outputs[f"label_pdfs{suffix}"], atol=1e-4, rtol=0)
        unnormalised = outputs[f"label_pdfs{suffix}_unnormalized"]
        torch.testing.assert_close(posteriors, unnormalised / unnormalised.sum(-1, keepdim=True), atol=1e-4, rtol=0)
        assert torch.equal(nearest_anchor(points, label_anchors), outputs[f"label_pred{suffix}"])
    # label encoder: forward Euler, 100 steps, eps 1e-4, uniform weights over the label anchors
    own = label_anchors[labels]
    label_latent = anchors_to_latents(own, inputs["eps"], label_anchors, num_steps=100, solver="euler")
    assert rel_err(label_latent, outputs["label_latent"]) < 2e-3
    label_latent_f64 = anchors_to_latents(
        own.double(), inputs["eps"].double(), label_anchors.double(), num_steps=100, solver="euler"
    )
    torch.testing.assert_close(label_latent_f64, outputs["label_latent_f64"], atol=1e-9, rtol=0)


def test_parity_contrastive_flows():
    inputs, outputs, _ = load_fixture("imagenet_contrastive_tiny")
    anchors, noise = outputs["anchors"], inputs["eps"]
    latents = anchors_to_latents(anchors, 0.45 * noise, num_steps=20, solver="euler")
    assert rel_err(latents, outputs["latent_view1"]) < 2e-3
    latents_f64 = anchors_to_latents(anchors.double(), 0.45 * noise.double(), num_steps=20, solver="euler")
    torch.testing.assert_close(latents_f64, outputs["latent_view1_f64"], atol=1e-9, rtol=0)
    points, posteriors = latents_to_anchors(outputs["latent_view1"], outputs["anchors_view2"], num_steps=20)
    torch.testing.assert_close(points, outputs["assign_final"], atol=1e-4, rtol=0)
    torch.testing.assert_close(posteriors, outputs["assign_pdfs"], atol=1e-4, rtol=0)
