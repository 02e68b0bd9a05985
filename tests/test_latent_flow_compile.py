"""The flows trace: torch.compile(fullgraph=True) and torch.export see no data-dependent Python checks, new flow
times do not force recompilation, and per-anchor terms are computed once per flow call, not per step."""

import pytest
import torch
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode

from lzn_hf._checks import check_finite, is_tracing
from lzn_hf.latent_flow import anchor_posteriors, anchor_velocity, anchors_to_latents, latents_to_anchors, nearest_anchor

BACKEND = "aot_eager"  # Dynamo + AOTAutograd: the whole tracing stack of torch.compile, without the C++ codegen


def problem(offset=0.0):
    generator = torch.Generator().manual_seed(0)
    anchors = torch.randn(12, 4, generator=generator) + offset
    return anchors, torch.randn(12, 4, generator=generator), torch.randn(5, 4, generator=generator), torch.rand(12, generator=generator)


FLOWS = {
    "velocity": lambda a, e, z, w: anchor_velocity(z, 0.3, a, w),
    "posteriors": lambda a, e, z, w: anchor_posteriors(z, 0.01, a, w),
    "euler": lambda a, e, z, w: anchors_to_latents(a, e, num_steps=4, solver="euler"),
    "dpm_solver++": lambda a, e, z, w: anchors_to_latents(a, e, num_steps=4, weights=w),
    "own anchor": lambda a, e, z, w: anchors_to_latents(a[:5], e[:5], a[5:], num_steps=3, solver="euler", append_own_anchor=True),
    "reverse": lambda a, e, z, w: latents_to_anchors(z, a, 5, w, log_posteriors=True),
    "nearest": lambda a, e, z, w: nearest_anchor(z.half(), a),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", list(FLOWS))
def test_flows_compile_fullgraph_and_match_eager(name):
    inputs = problem(offset=1e3)
    compiled = torch.compile(FLOWS[name], fullgraph=True, backend=BACKEND)
    torch.testing.assert_close(compiled(*inputs), FLOWS[name](*inputs), rtol=1e-6, atol=1e-5)


def test_compiled_flow_with_gradients_matches_eager():
    anchors, noise, _, _ = problem(offset=1e2)
    grads = []
    for flow in (FLOWS["dpm_solver++"], torch.compile(FLOWS["dpm_solver++"], fullgraph=True, backend=BACKEND)):
        a = anchors.clone().requires_grad_()
        grads.append(torch.autograd.grad(flow(a, noise, None, None).pow(2).sum(), a)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("solver", ["euler", "dpm_solver++"])
def test_flows_export_and_match_eager(solver):
    class Encode(torch.nn.Module):
        def forward(self, anchors, noise):
            return anchors_to_latents(anchors, noise, num_steps=4, solver=solver)

    class Decode(torch.nn.Module):
        def forward(self, latents, anchors, weights):
            return latents_to_anchors(latents, anchors, 5, weights)

    anchors, noise, latents, weights = problem(offset=1e3)
    encode = torch.export.export(Encode(), (anchors, noise)).module()
    torch.testing.assert_close(encode(anchors, noise), Encode()(anchors, noise), rtol=1e-6, atol=1e-5)
    decode = torch.export.export(Decode(), (latents, anchors, weights)).module()
    for got, want in zip(decode(latents, anchors, weights), Decode()(latents, anchors, weights)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_value_checks_run_in_eager_mode_only():
    assert not is_tracing()
    with pytest.raises(ValueError, match="`x` contains NaN or Inf"):
        check_finite("x", torch.tensor([float("nan")]))
    seen = []

    def probe(x):
        seen.append(is_tracing())
        check_finite("x", x)  # would be a graph break / data-dependent guard if it ran while tracing
        return x + 1

    class Probe(torch.nn.Module):
        def forward(self, x):
            return probe(x)

    torch.compile(probe, fullgraph=True, backend=BACKEND)(torch.zeros(2))
    torch.export.export(Probe(), (torch.zeros(2),))
    assert seen == [True, True]


def test_new_times_do_not_force_recompilation():
    anchors, noise, latents, _ = problem()
    velocity = torch.compile(anchor_velocity, fullgraph=True, backend=BACKEND)
    for t in (0.9, 0.5, 0.3, 0.1, 0.05):
        velocity(latents, t, anchors)
    assert counters["stats"]["unique_graphs"] <= 2  # the first time specialised, then one graph with a symbolic t
    torch._dynamo.reset()
    counters.clear()
    encode = torch.compile(lambda a, e, eps: anchors_to_latents(a, e, num_steps=4, eps=eps), fullgraph=True, backend=BACKEND)
    for eps in (1e-3, 2e-3, 5e-3):
        encode(anchors + eps, noise, eps)
    assert counters["stats"]["unique_graphs"] <= 2


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func] = self.counts.get(func, 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", ["euler", "dpm_solver++", "own anchor", "reverse", "grad"])
def test_anchor_norms_are_computed_once_per_flow_call(case):
    """Issue 15: ||a_j - c||^2 is a per-call term, not a per-step one (the solver's steps only add matmuls)."""
    anchors, noise, latents, _ = problem()

    def squares(num_steps):
        with CountOps() as mode:
            if case == "reverse":
                latents_to_anchors(latents, anchors, num_steps)
            elif case == "own anchor":
                anchors_to_latents(anchors[:5], noise[:5], anchors[5:], num_steps=num_steps, solver="euler", append_own_anchor=True)
            elif case == "grad":
                anchors_to_latents(anchors.clone().requires_grad_(), noise, num_steps=num_steps).sum().backward()
            else:
                anchors_to_latents(anchors, noise, num_steps=num_steps, solver=case)
        return mode.counts.get(torch.ops.aten.pow.Tensor_Scalar, 0)

    assert squares(2) == squares(9) > 0
