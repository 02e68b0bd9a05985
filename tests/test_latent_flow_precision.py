"""float32 flows at large anchor scales and common offsets agree with float64 as well as ordinary anchors do.

The flows are translation equivariant: shifting every anchor by ``c`` shifts ``z_t`` by ``(1 - t) c`` and
leaves the posteriors unchanged. The expanded logits ``(1-t)/t^2 z.a - (1-t)^2/(2t^2) ||a||^2`` are not
(they cancel catastrophically for anchors far from the origin), so lzn_hf evaluates them in a centred frame.
The yardstick for "as well as ordinary anchors" is the best float32 evaluation of the same problem moved to
the origin: upstream's materialised formula ``-||z - (1 - t) a||^2 / (2 t^2)`` on the centred anchors.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lzn_hf import latent_flow
from lzn_hf.latent_flow import anchor_posteriors, anchor_velocity, anchors_to_latents, latents_to_anchors

from test_latent_flow import materialised_posterior_mean, rel_err

OFFSETS = [0.0, 1e2, 1e3, 1e4]


def offset_problem(num_anchors, dim, batch, scale, offset, seed):
    """float32 anchors ``scale * randn + offset * u`` (u a random unit vector), own-anchor indices, noise, latents.

    Returns the problem and its centred twin ``anchors - c`` (c the float32 offset vector; the difference
    rounded once), the yardstick's input.
    """
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(dim, generator=generator, dtype=torch.float64)
    centre = (offset * direction / direction.norm()).float()  # [d]
    anchors = (scale * torch.randn(num_anchors, dim, generator=generator, dtype=torch.float64) + centre).float()
    own = torch.randint(0, num_anchors, (batch,), generator=generator)
    noise = torch.randn(batch, dim, generator=generator)
    latents = torch.randn(batch, dim, generator=generator)
    centred = (anchors.double() - centre.double()).float()
    return anchors, own, noise, latents, centre, centred


def shift(x, centre, factor):
    """``x - factor * centre`` rounded once (how the centred twin of a query is built)."""
    return (x.double() - factor * centre.double()).float()


def max_err(x, reference):
    return (x.double() - reference.double()).abs().max().item()


def materialised_reverse_flow(latents, anchors, num_steps):
    """Upstream's reverse Euler flow with the materialised posterior (same steps as latents_to_anchors)."""
    z, records = latents, []
    for k in range(num_steps):
        t = 1.0 - k / num_steps
        posteriors, mean = materialised_posterior_mean(z, t, anchors)
        records.append(posteriors)
        z = z - (1.0 / num_steps / t) * (z - mean)
    return z, torch.stack(records)


# ---------------------------------------------------------------------------------------------------------
# the example: anchors randn + c, whole flows
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("solver", ["euler", "dpm_solver++"])
def test_forward_flow_float32_matches_float64_at_any_offset(solver, offset):
    anchors, own, noise, _, centre, _ = offset_problem(256, 32, 256, 1.0, offset, seed=0)
    own_anchors = anchors[own]
    exact = anchors_to_latents(own_anchors.double(), noise.double(), anchors.double(), solver=solver)
    latents = anchors_to_latents(own_anchors, noise, anchors, solver=solver)
    # ordinary anchors (offset 0) are within 2e-3 relative of float64 (test_latent_flow.py); so is every offset
    assert rel_err(latents, exact) < 2e-3
    assert max_err(latents, exact) < 2e-2


@pytest.mark.parametrize("offset", OFFSETS)
def test_reverse_flow_float32_matches_float64_at_any_offset(offset):
    anchors, _, _, latents, centre, _ = offset_problem(64, 16, 128, 1.0, offset, seed=1)
    weights = torch.rand(64, generator=torch.Generator().manual_seed(1))
    points, posteriors = latents_to_anchors(latents, anchors, num_steps=50, weights=weights)
    points64, posteriors64 = latents_to_anchors(latents.double(), anchors.double(), num_steps=50, weights=weights.double())
    assert max_err(posteriors, posteriors64) < 1e-3
    assert max_err(points - centre, points64 - centre.double()) < 1e-4 + 4 * torch.finfo(torch.float32).eps * offset
    _, log_posteriors = latents_to_anchors(latents, anchors, num_steps=50, weights=weights, log_posteriors=True)
    assert max_err(log_posteriors.exp(), posteriors64) < 1e-3


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("t", [1.0, 0.5, 1e-2, 1e-4])
def test_single_evaluations_match_float64_at_any_offset(offset, t):
    anchors, own, noise, _, centre, _ = offset_problem(64, 16, 64, 3.0, offset, seed=2)
    latents = ((1 - t) * anchors[own].double() + t * noise.double()).float()  # on the path, rounded to float32
    velocity = anchor_velocity(latents, t, anchors)
    assert rel_err(velocity, anchor_velocity(latents.double(), t, anchors.double())) < 1e-4  # as test_latent_flow.py
    posteriors = anchor_posteriors(latents, t, anchors)
    assert max_err(posteriors, anchor_posteriors(latents.double(), t, anchors.double())) < 1e-5


@pytest.mark.parametrize("offset", OFFSETS)
def test_append_own_anchor_float32_matches_float64_at_any_offset(offset):
    bank, own, noise, _, _, _ = offset_problem(200, 8, 32, 1.0, offset, seed=3)
    own_anchors = bank[own] + 0.1 * noise  # not members of the bank
    exact = anchors_to_latents(own_anchors.double(), noise.double(), bank.double(), solver="euler", append_own_anchor=True)
    latents = anchors_to_latents(own_anchors, noise, bank, solver="euler", append_own_anchor=True)
    assert rel_err(latents, exact) < 2e-3


# ---------------------------------------------------------------------------------------------------------
# gradients (the flows are trained through): float32 against float64 at large offsets
# ---------------------------------------------------------------------------------------------------------
GRADIENT_CASES = {
    "euler": lambda anchors, noise, latents: anchors_to_latents(anchors, noise, num_steps=10, solver="euler"),
    "dpm_solver++": lambda anchors, noise, latents: anchors_to_latents(anchors, noise, num_steps=10),
    "own anchor": lambda anchors, noise, latents: anchors_to_latents(
        anchors[:8], noise[:8], anchors[8:], num_steps=10, solver="euler", append_own_anchor=True
    ),
    "reverse posteriors": lambda anchors, noise, latents: latents_to_anchors(latents, anchors, num_steps=20)[1][10],
    "reverse log posteriors": lambda anchors, noise, latents: latents_to_anchors(latents, anchors, 3, log_posteriors=True)[1],
    "reverse points": lambda anchors, noise, latents: latents_to_anchors(latents, anchors, num_steps=3)[0],
    "velocity": lambda anchors, noise, latents: anchor_velocity(0.99 * anchors + 0.01 * noise, 0.01, anchors),
    "posteriors": lambda anchors, noise, latents: anchor_posteriors(0.3 * latents + 0.7 * anchors, 0.3, anchors),
}


@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize("case", list(GRADIENT_CASES))
def test_float32_gradients_match_float64_at_large_offset(case, offset):
    anchors, _, noise, latents, _, _ = offset_problem(32, 8, 32, 1.0, offset, seed=4)
    flow = GRADIENT_CASES[case]
    cotangent = torch.randn(flow(anchors, noise, latents).shape, generator=torch.Generator().manual_seed(4))
    grads = []
    for dtype in (torch.float32, torch.float64):
        a, z = anchors.to(dtype).requires_grad_(), latents.to(dtype).requires_grad_()
        output = flow(a, noise.to(dtype), z)
        grads.append(torch.autograd.grad((output * cotangent.to(dtype)).sum(), (a, z), allow_unused=True))
    for grad32, grad64 in zip(*grads):
        if grad64 is not None:
            assert rel_err(grad32, grad64) < 2e-3, case


def test_uncentred_expanded_form_loses_precision_at_large_offset():
    """The class of bug fixed here: without the centred frame the same code is off by orders of magnitude."""
    anchors, own, noise, _, _, _ = offset_problem(256, 32, 256, 1.0, 1e4, seed=0)
    exact = anchors_to_latents(anchors.double(), noise.double(), solver="euler")
    reference_point = latent_flow._reference_point
    latent_flow._reference_point = lambda a: torch.zeros_like(a[0])
    try:
        uncentred_error = max_err(anchors_to_latents(anchors, noise, solver="euler"), exact)
    finally:
        latent_flow._reference_point = reference_point
    assert uncentred_error > 1.0 and max_err(anchors_to_latents(anchors, noise, solver="euler"), exact) < 2e-2


def test_reference_point_subtracts_exactly():
    anchors = torch.tensor([[1e4 + 0.1, -3.0, -5e3], [1e4 - 2.7, 4.0, -5e3 - 1.3], [1e4 + 1.9, 0.5, -5e3 + 0.7]])
    centre = latent_flow._reference_point(anchors)
    assert centre[1] == 0  # values straddling zero: nothing to remove
    assert abs(centre[0] - 1e4) < 3 and abs(centre[2] + 5e3) < 2
    centred = anchors - centre
    assert torch.equal(centred.double(), anchors.double() - centre.double())  # exact (Sterbenz)


# ---------------------------------------------------------------------------------------------------------
# properties over scales and offsets up to 1e4 (hypothesis)
# ---------------------------------------------------------------------------------------------------------
# The centred frame makes every float32 result at an offset the float32 result of the same anchors moved to
# the origin (``a - c``, c the frame's origin, an exact subtraction), up to the rounding of the output shift:
# the offset costs nothing, and at the origin the tests of test_latent_flow.py and test_reliability.py hold.
@st.composite
def problems(draw, max_anchors=12, max_dim=5):
    num_anchors = draw(st.integers(2, max_anchors), label="N")
    dim = draw(st.integers(1, max_dim), label="d")
    batch = draw(st.integers(1, 6), label="B")
    scale = 10 ** draw(st.floats(-1, 4), label="log10 scale")
    offset = draw(st.one_of(st.just(0.0), st.floats(0, 4).map(lambda x: 10**x)), label="offset")
    seed = draw(st.integers(0, 2**31 - 1), label="seed")
    anchors, own, noise, latents, _, _ = offset_problem(num_anchors, dim, batch, scale, offset, seed)
    centre = latent_flow._reference_point(anchors)
    at_origin = anchors - centre
    assert torch.equal(at_origin.double(), anchors.double() - centre.double())  # exact: nothing is rounded away
    return anchors, own, noise, latents, centre, at_origin


def assert_shifted(result, at_origin, shift):
    """``result == at_origin + shift`` up to the rounding of that addition (a few ulps of the result)."""
    expected = at_origin.double() + shift.double()
    slack = 4 * torch.finfo(torch.float32).eps * (expected.abs() + shift.double().abs()) + 1e-30
    assert ((result.double() - expected).abs() <= slack).all()


@settings(max_examples=40, deadline=None)
@given(problem=problems(), solver=st.sampled_from(["euler", "dpm_solver++"]), own_anchor=st.booleans())
def test_property_forward_flow_at_an_offset_is_the_flow_at_the_origin(problem, solver, own_anchor):
    anchors, own, noise, _, centre, at_origin = problem
    kwargs = dict(num_steps=6, solver=solver, append_own_anchor=own_anchor)
    latents = anchors_to_latents(anchors[own], noise, anchors, **kwargs)
    latents_at_origin = anchors_to_latents(at_origin[own], noise, at_origin, **kwargs)
    assert torch.isfinite(latents).all()
    end_shift = 0.0 if solver == "euler" else 1.0 - latent_flow.DPM_T_END  # (1 - t_end) c: the frame at the end time
    assert_shifted(latents, latents_at_origin, end_shift * centre)


@settings(max_examples=40, deadline=None)
@given(problem=problems(), log_posteriors=st.booleans())
def test_property_reverse_flow_at_an_offset_is_the_flow_at_the_origin(problem, log_posteriors):
    anchors, _, _, latents, centre, at_origin = problem
    weights = torch.rand(len(anchors), generator=torch.Generator().manual_seed(len(anchors)))
    points, posteriors = latents_to_anchors(latents, anchors, 10, weights, log_posteriors=log_posteriors)
    points_at_origin, posteriors_at_origin = latents_to_anchors(latents, at_origin, 10, weights, log_posteriors=log_posteriors)
    assert torch.equal(posteriors, posteriors_at_origin)
    assert_shifted(points, points_at_origin, centre)


@settings(max_examples=40, deadline=None)
@given(problem=problems(), t=st.sampled_from([1.0, 0.7, 0.3, 0.1, 1e-2, 1e-3, 1e-4]), on_path=st.booleans())
def test_property_single_evaluations_at_an_offset_are_those_at_the_origin(problem, t, on_path):
    anchors, own, noise, latents, centre, at_origin = problem
    if on_path:
        latents = ((1 - t) * anchors[own].double() + t * noise.double()).float()
    latents_at_origin = shift(latents, centre, 1 - t)  # z - (1 - t) c, rounded once
    assert_shifted(anchor_velocity(latents, t, anchors), anchor_velocity(latents_at_origin, t, at_origin), -centre)
    assert torch.equal(anchor_posteriors(latents, t, anchors), anchor_posteriors(latents_at_origin, t, at_origin))
