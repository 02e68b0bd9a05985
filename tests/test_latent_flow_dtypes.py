"""The flows' dtype and device policy: compute in float32 (float64 when an input is float64), hand back the
caller's dtype, accept half precision, leave autocast, and name the arguments in every error."""

import pytest
import torch

from lzn_hf.latent_flow import anchor_posteriors, anchor_velocity, anchors_to_latents, latents_to_anchors, nearest_anchor

HALF = [torch.float16, torch.bfloat16]


def problem(seed=0, n=10, b=6, d=8):
    generator = torch.Generator().manual_seed(seed)
    anchors = torch.randn(n, d, generator=generator)
    return anchors, torch.randn(b, d, generator=generator), torch.randn(b, d, generator=generator), torch.rand(n, generator=generator)


# every public flow function, as (name, call(latents, anchors, noise, weights), dtype rule: the argument whose dtype the output takes)
CALLS = {
    "anchor_velocity": (lambda z, a, e, w: anchor_velocity(z, 0.3, a, w), "latents"),
    "anchor_posteriors": (lambda z, a, e, w: anchor_posteriors(z, 1e-3, a, w), "latents"),
    "anchors_to_latents euler": (lambda z, a, e, w: anchors_to_latents(a[: len(e)], e, a, num_steps=8, solver="euler"), "anchors"),
    "anchors_to_latents dpm_solver++": (lambda z, a, e, w: anchors_to_latents(a[: len(e)], e, a, num_steps=8, weights=w), "anchors"),
    "anchors_to_latents own anchor": (
        lambda z, a, e, w: anchors_to_latents(z, e, a, num_steps=8, solver="euler", append_own_anchor=True),
        "anchors",
    ),
    "latents_to_anchors": (lambda z, a, e, w: latents_to_anchors(z, a, 10, w), "latents"),
    "latents_to_anchors log": (lambda z, a, e, w: latents_to_anchors(z, a, 10, w, log_posteriors=True), "latents"),
}


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", list(CALLS))
def test_half_inputs_compute_in_float32_and_return_their_dtype(name, dtype):
    call, _ = CALLS[name]
    anchors, latents, noise, weights = problem()
    half = [x.to(dtype) for x in (latents, anchors, noise, weights)]
    outputs = as_tuple(call(*half))
    in_float32 = as_tuple(call(*[x.float() for x in half]))  # the same (rounded) inputs, computed in float32
    for output, reference in zip(outputs, in_float32):
        assert output.dtype == dtype
        assert torch.isfinite(output).all() or name.endswith("log")
        assert torch.equal(output, reference.to(dtype))


@pytest.mark.parametrize("dtype", HALF)
def test_half_log_posteriors_saturate_instead_of_overflowing(dtype):
    anchors, latents, _, _ = problem()
    _, log_posteriors = latents_to_anchors(latents.to(dtype), anchors.to(dtype), 20, log_posteriors=True)
    assert torch.isfinite(log_posteriors).all()  # float32 values down to -1e9 clamp at the dtype's minimum
    weights = torch.ones(len(anchors))
    weights[0] = 0
    _, log_posteriors = latents_to_anchors(latents.to(dtype), anchors.to(dtype), 20, weights, log_posteriors=True)
    assert (log_posteriors[:, :, 0] == -float("inf")).all() and torch.isfinite(log_posteriors[:, :, 1:]).all()


def test_float16_label_flow_is_finite():
    """Issue 14's case: a float16 label-anchor table, the label encoder's 100-step Euler flow from eps 1e-4."""
    table = (3 * torch.randn(10, 16, generator=torch.Generator().manual_seed(0))).half()
    labels = torch.arange(10).repeat(3)
    noise = torch.randn(30, 16, generator=torch.Generator().manual_seed(1)).half()
    latents = anchors_to_latents(table[labels], noise, table, num_steps=100, solver="euler")
    assert latents.dtype == torch.float16 and torch.isfinite(latents).all()
    points, posteriors = latents_to_anchors(latents, table, 100)
    assert (nearest_anchor(points, table) == labels).float().mean() > 0.9
    assert torch.isfinite(posteriors).all() and posteriors.dtype == torch.float16


@pytest.mark.parametrize("dtype", HALF)
def test_nearest_anchor_accepts_half(dtype):
    anchors = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=dtype)
    points = torch.tensor([[9.0, 1.0], [0.5, 0.5], [1.0, 8.0]], dtype=dtype)
    assert nearest_anchor(points, anchors).tolist() == [1, 0, 2]


def test_mixed_dtypes_are_promoted_by_the_rule():
    anchors, latents, noise, weights = problem()
    # half with float32: computed in float32, returned in the dtype of the argument the output belongs to
    velocity = anchor_velocity(latents.half(), 0.3, anchors)
    assert velocity.dtype == torch.float16 and torch.equal(velocity, anchor_velocity(latents.half().float(), 0.3, anchors).half())
    latents_out = anchors_to_latents(anchors[:6].bfloat16(), noise, anchors, num_steps=5)
    assert latents_out.dtype == torch.bfloat16
    assert torch.equal(latents_out, anchors_to_latents(anchors[:6].bfloat16().float(), noise, anchors, num_steps=5).bfloat16())
    # any float64 input (weights included) makes the computation float64; the output keeps the caller's dtype
    points, posteriors = latents_to_anchors(latents, anchors.double(), 10)
    points64, posteriors64 = latents_to_anchors(latents.double(), anchors.double(), 10)
    assert points.dtype == posteriors.dtype == torch.float32
    assert torch.equal(points, points64.float()) and torch.equal(posteriors, posteriors64.float())
    velocity = anchor_velocity(latents, 0.3, anchors, weights.double())
    assert torch.equal(velocity, anchor_velocity(latents.double(), 0.3, anchors.double(), weights.double()).float())
    assert nearest_anchor(latents.half(), anchors.double()).dtype == torch.int64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flows_leave_autocast(dtype):
    anchors, latents, noise, weights = problem()
    expected = [anchors_to_latents(anchors[:6], noise, anchors, num_steps=5), latents_to_anchors(latents, anchors, 5, weights)[1]]
    with torch.autocast("cpu", dtype=dtype):
        inside = [anchors_to_latents(anchors[:6], noise, anchors, num_steps=5), latents_to_anchors(latents, anchors, 5, weights)[1]]
    for got, want in zip(inside, expected):
        assert got.dtype == torch.float32 and torch.equal(got, want)


def test_gradients_reach_half_inputs():
    anchors, _, _, _ = problem()
    noise = torch.randn(anchors.shape, generator=torch.Generator().manual_seed(1))
    anchors = anchors.bfloat16().requires_grad_()
    latents = anchors_to_latents(anchors, noise, num_steps=4, solver="euler")
    (grad,) = torch.autograd.grad(latents.float().pow(2).sum(), anchors)
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad).all() and grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------
# errors name the public arguments
# ---------------------------------------------------------------------------------------------------------
META = torch.zeros(4, 3, device="meta")
NAN = torch.tensor([[0.0, float("nan"), 1.0]])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: anchor_velocity(torch.randn(2, 3), 0.5, META), "`anchors` is on device meta but `latents` is on cpu"),
        (lambda: anchor_posteriors(torch.randn(2, 3), 0.5, torch.randn(4, 3), torch.ones(4, device="meta")), "`weights` is on device meta"),
        (lambda: anchors_to_latents(torch.randn(4, 3), META), "`noise` is on device meta but `anchors` is on cpu"),
        (lambda: anchors_to_latents(torch.randn(4, 3), torch.randn(4, 3), META[:2]), "`reference_anchors` is on device meta"),
        (lambda: latents_to_anchors(META[:2], torch.randn(4, 3)), "`anchors` is on device cpu but `latents` is on meta"),
        (lambda: nearest_anchor(torch.randn(2, 3), META), "`anchors` is on device meta but `points` is on cpu"),
        (lambda: anchor_velocity(NAN, 0.5, torch.randn(4, 3)), "`latents` contains NaN or Inf"),
        (lambda: anchor_velocity(torch.randn(2, 3), 0.5, NAN), "`anchors` contains NaN or Inf"),
        (lambda: anchors_to_latents(torch.randn(1, 3), NAN.half()), "`noise` contains NaN or Inf"),
        (lambda: anchors_to_latents(torch.randn(1, 3), torch.randn(1, 3), NAN.bfloat16()), "`reference_anchors` contains NaN"),
        (lambda: latents_to_anchors(torch.randn(2, 3), torch.randn(3, 3), 5, torch.tensor([1.0, float("inf"), 1.0])), "`weights` contains NaN"),
        (lambda: nearest_anchor(NAN.half(), torch.randn(4, 3)), "`points` contains NaN or Inf"),
        (lambda: anchor_velocity(torch.randn(2, 5).half(), 0.5, torch.randn(4, 3)), r"`latents` has latent dimension 5, expected 3 \(the width of `anchors`\)"),
        (lambda: anchors_to_latents(torch.randn(4, 3), torch.randn(4, 2).bfloat16()), "`noise` has latent dimension 2"),
        (lambda: anchor_velocity(torch.randn(2, 3), "0.5", torch.randn(4, 3)), "flow time t must be a number"),
        (lambda: anchor_velocity(torch.randn(2, 3), torch.tensor([0.5, 0.4]), torch.randn(4, 3)), "one-element tensor"),
        (lambda: anchor_velocity(torch.randn(2, 3), torch.tensor(1.5), torch.randn(4, 3)), r"flow time t must be in \(0, 1\]"),
        (lambda: latents_to_anchors(torch.randn(2, 3), torch.randn(3, 3), 5, torch.ones(3, dtype=torch.bool)), "real tensor"),
    ],
)
def test_errors_name_the_argument(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_zero_dim_tensor_time_is_accepted():
    anchors, latents, _, _ = problem()
    torch.testing.assert_close(anchor_velocity(latents, torch.tensor(0.25), anchors), anchor_velocity(latents, 0.25, anchors), rtol=0, atol=0)
