"""The latent-zoning core of LZN: the closed-form anchor flow between anchors and N(0, I).

Orientation (as upstream): **t = 0 is the anchor (data) side, t = 1 is the Gaussian side**, and the
probability path is ``z_t = (1 - t) * a_I + t * eps`` with ``I ~ pi`` over the anchors and ``eps ~ N(0, I)``.

The marginal velocity of that path has a closed form. For a query ``z`` at time ``t``::

    w_j(z, t) = softmax_j( log pi_j - ||z - (1 - t) a_j||^2 / (2 t^2) )     posterior p_t(j | z)
    v(z, t)   = (z - sum_j w_j a_j) / t                                     velocity dz/dt

Since ``||z||^2`` is the same for every anchor, the logits are ``(1 - t)/t^2 * z . a_j`` plus a per-anchor
bias: this is attention with the query ``z`` and the anchors as keys and values. The functions here evaluate
it with matrix products and a softmax (a fused ``scaled_dot_product_attention`` kernel when no gradient is
needed), never materialising upstream's ``[B, N, d]`` tensor: O(B N d) work in matmuls and O(B N) memory
per step at most.

Shapes: ``B`` queries, ``N`` anchors, ``d`` latent dimensions, ``S`` solver steps.

A latent depends on the anchor set it is computed against (the *reference anchors*): the zones are a
partition of R^d induced by all of them together. Every function takes that set explicitly.

Pure functions, no module state; everything is differentiable with respect to latents and anchors.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = [
    "SOLVERS",
    "DEFAULT_EPS",
    "anchor_velocity",
    "anchor_posteriors",
    "anchors_to_latents",
    "latents_to_anchors",
    "nearest_anchor",
    "gather_anchors",
    "dpm_solver_time_grid",
]

SOLVERS = ("euler", "dpm_solver++")
# Start offsets of the forward flows, as upstream: z(eps) = eps * noise + (1 - eps) * anchor.
DEFAULT_EPS = {"euler": 1e-4, "dpm_solver++": 1e-3}
# DPM-Solver++ grid end points (upstream's eps_start = eps_end = 1e-3) and order.
DPM_T_START, DPM_T_END, DPM_ORDER = 1e-3, 1.0 - 1e-3, 3
# Queries per chunk: bounds the [chunk, N] blocks of the attention evaluation.
DEFAULT_CHUNK_SIZE = 4096


# ----------------------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------------------
def _check_matrix(name: str, x: torch.Tensor, dim: Optional[int] = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"`{name}` must have shape [rows, d], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(x.shape)})")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"`{name}` has latent dimension {x.shape[1]}, expected {dim}")
    if not torch.isfinite(x).all():
        raise ValueError(f"`{name}` contains NaN or Inf")


def _check_weights(weights: Optional[torch.Tensor], num_anchors: int) -> None:
    if weights is None:
        return
    if not isinstance(weights, torch.Tensor) or weights.ndim != 1 or weights.shape[0] != num_anchors:
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"`weights` must have shape [{num_anchors}] (one per anchor), got {shape}")
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("`weights` must be finite and non-negative")
    if not (weights > 0).any():
        raise ValueError("`weights` are all zero: at least one anchor must carry mass")


def _check_steps(num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a positive integer, got {num_steps!r}")


def _check_time(t: float) -> float:
    t = float(t)
    if not (0.0 < t <= 1.0):
        raise ValueError(f"flow time t must be in (0, 1], got {t}")
    return t


# ----------------------------------------------------------------------------------------------------------
# the velocity field
# ----------------------------------------------------------------------------------------------------------
def _log_weights(weights: Optional[torch.Tensor], like: torch.Tensor) -> Optional[torch.Tensor]:
    """log pi as a [N] tensor (-inf for zero weights), or None for uniform weights."""
    if weights is None:
        return None
    return weights.to(like.dtype).log()


def _logit_bias(anchors: torch.Tensor, t: float, log_weights: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-anchor part of the logits: ``log pi_j - (1-t)^2 ||a_j||^2 / (2 t^2)``, ``[N]``."""
    bias = -0.5 * ((1.0 - t) / t) ** 2 * anchors.pow(2).sum(-1)  # [N]
    return bias if log_weights is None else bias + log_weights


def _anchor_logits(latents: torch.Tensor, t: float, anchors: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Logits of the posterior over anchors, up to a per-query constant: ``[B, N]`` (one matmul)."""
    return torch.addmm(bias, latents, anchors.T, alpha=(1.0 - t) / t**2)


def _posterior_mean(latents, t: float, anchors, log_weights: Optional[torch.Tensor], chunk_size: int):
    """sum_j w_j(z, t) a_j for every query: ``[B, d]``, over query chunks.

    With autograd: matmul -> softmax -> matmul, which keeps the ``[b, N]`` posterior for backward (exact
    gradients even where the posterior saturates at small t). Without: a fused attention kernel with O(b)
    memory, the logit bias folded in as an extra key column (``[z (1-t)/t^2, 1] . [a_j, bias_j]``) and the
    values zero-padded to the same width, as fused kernels require.
    """
    bias = _logit_bias(anchors, t, log_weights)  # [N]
    differentiable = torch.is_grad_enabled() and (latents.requires_grad or anchors.requires_grad)
    if not differentiable:
        keys = torch.cat([anchors, bias[:, None]], dim=-1)[None, None]  # [1, 1, N, d + 1]
        values = F.pad(anchors, (0, 1))[None, None]  # [1, 1, N, d + 1]
    outputs = []
    for start in range(0, latents.shape[0], chunk_size):
        chunk = latents[start : start + chunk_size]  # [b, d]
        if differentiable:
            outputs.append(_anchor_logits(chunk, t, anchors, bias).softmax(-1) @ anchors)  # [b, d]
        else:
            queries = torch.cat([chunk * ((1.0 - t) / t**2), torch.ones_like(chunk[:, :1])], dim=-1)  # [b, d + 1]
            mean = F.scaled_dot_product_attention(queries[None, None], keys, values, scale=1.0)
            outputs.append(mean[0, 0, :, :-1])  # [b, d]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def _posterior_mean_with_own(latents, t: float, anchors, own_anchors, chunk_size: int):
    """Like :func:`_posterior_mean`, but query i's anchor set is ``anchors`` plus its own anchor ``own_anchors[i]``."""
    bias = _logit_bias(anchors, t, None)  # [N]
    scale = (1.0 - t) / t**2
    outputs = []
    for start in range(0, latents.shape[0], chunk_size):
        chunk, own = latents[start : start + chunk_size], own_anchors[start : start + chunk_size]  # [b, d]
        own_logit = scale * (chunk * own).sum(-1) - 0.5 * ((1.0 - t) / t) ** 2 * own.pow(2).sum(-1)  # [b]
        logits = torch.cat([_anchor_logits(chunk, t, anchors, bias), own_logit[:, None]], dim=-1)  # [b, N + 1]
        posteriors = logits.softmax(-1)
        outputs.append(posteriors[:, :-1] @ anchors + posteriors[:, -1:] * own)  # [b, d]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def anchor_velocity(
    latents: torch.Tensor,
    t: float,
    anchors: torch.Tensor,
    weights: Optional[torch.Tensor] = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """The closed-form marginal velocity dz/dt of the anchor flow (lzn-method.md §1.3).

    Args:
        latents: ``[B, d]`` query points z.
        t: flow time in (0, 1] (a float or 0-d tensor; 0 = anchors, 1 = Gaussian).
        anchors: ``[N, d]`` reference anchors.
        weights: optional ``[N]`` non-negative anchor weights pi (upstream's class weights); a zero weight
            means that anchor never receives mass. ``None`` = uniform.
        chunk_size: queries evaluated at once.

    Returns:
        ``[B, d]`` velocity ``(z - sum_j w_j a_j) / t``.
    """
    _check_matrix("anchors", anchors)
    _check_matrix("latents", latents, anchors.shape[1])
    _check_weights(weights, anchors.shape[0])
    t = _check_time(t)
    return (latents - _posterior_mean(latents, t, anchors, _log_weights(weights, anchors), chunk_size)) / t


def anchor_posteriors(
    latents: torch.Tensor,
    t: float,
    anchors: torch.Tensor,
    weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The normalised posterior p_t(j | z) over anchors: ``[B, N]``, rows sum to 1."""
    _check_matrix("anchors", anchors)
    _check_matrix("latents", latents, anchors.shape[1])
    _check_weights(weights, anchors.shape[0])
    t = _check_time(t)
    bias = _logit_bias(anchors, t, _log_weights(weights, anchors))
    return _anchor_logits(latents, t, anchors, bias).softmax(-1)  # [B, N]


# ----------------------------------------------------------------------------------------------------------
# forward flow: anchors -> latents
# ----------------------------------------------------------------------------------------------------------
def dpm_solver_time_grid(num_steps: int) -> list:
    """Upstream's DPM-Solver++ grid: ``num_steps + 1`` times uniform in t from 1e-3 up to 0.999."""
    return [DPM_T_START + (DPM_T_END - DPM_T_START) * k / num_steps for k in range(num_steps + 1)]


def _dpm_solver_orders(num_steps: int, order: int = DPM_ORDER) -> list:
    """Order of each multistep update: warm-up 1, 2, ...; lower orders at the end when fewer than 10 steps."""
    orders = []
    for step in range(1, num_steps + 1):
        step_order = min(order, step)
        if num_steps < 10:
            step_order = min(step_order, num_steps + 1 - step)
        orders.append(step_order)
    return orders


def _lambda(t: float) -> float:
    """Half log-SNR of the rectified-flow schedule alpha = 1 - t, sigma = t."""
    return math.log((1.0 - t) / t)


def _dpm_solver_pp_update(z, t_next, history, order):
    """One multistep DPM-Solver++ (data prediction) update in the schedule alpha_t = 1 - t, sigma_t = t.

    ``history`` holds the last ``order`` pairs ``(t_j, posterior-mean anchor at t_j)``, newest last.
    """
    t0, m0 = history[-1]
    h = _lambda(t_next) - _lambda(t0)
    phi1 = math.expm1(-h)
    alpha_next = 1.0 - t_next
    z_next = (t_next / t0) * z - (alpha_next * phi1) * m0
    if order == 1:
        return z_next
    t1, m1 = history[-2]
    r0 = (_lambda(t0) - _lambda(t1)) / h
    d1_0 = (m0 - m1) / r0
    if order == 2:
        return z_next - (0.5 * alpha_next * phi1) * d1_0
    t2, m2 = history[-3]
    r1 = (_lambda(t1) - _lambda(t2)) / h
    d1_1 = (m1 - m2) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    return z_next + (alpha_next * phi2) * d1 - (alpha_next * phi3) * d2


def _maybe_checkpoint(fn, use_checkpoint: bool, *args):
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def anchors_to_latents(
    anchors: torch.Tensor,
    noise: torch.Tensor,
    reference_anchors: Optional[torch.Tensor] = None,
    num_steps: int = 20,
    solver: str = "dpm_solver++",
    eps: Optional[float] = None,
    weights: Optional[torch.Tensor] = None,
    gradient_checkpointing: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    append_own_anchor: bool = False,
) -> torch.Tensor:
    """Forward flow (lzn-method.md §1.4): map each anchor to a latent in its zone of N(0, I).

    Starts at ``eps * noise + (1 - eps) * anchors`` at t = eps and integrates the anchor velocity over
    ``reference_anchors`` towards t = 1.

    Args:
        anchors: ``[B, d]`` the queries' own anchors.
        noise: ``[B, d]`` prior noise (fresh N(0, I) draws, possibly scaled; 0 gives the zone centre).
        reference_anchors: ``[N, d]`` the anchor set defining the zones; defaults to ``anchors`` (the batch).
        num_steps: solver steps (= velocity evaluations).
        solver: ``"euler"`` (uniform steps from eps to 1, default eps 1e-4) or ``"dpm_solver++"`` (multistep
            order 3 on upstream's time-uniform grid from 1e-3 to 0.999, default eps 1e-3; stops at t = 0.999).
        eps: start offset; defaults to the solver's upstream value (``DEFAULT_EPS``). For ``"dpm_solver++"``
            the grid always starts at 1e-3, as upstream.
        weights: optional ``[N]`` anchor weights pi (upstream's forward flows use uniform weights).
        gradient_checkpointing: recompute each velocity evaluation in backward instead of storing it.
        append_own_anchor: each query's zones are those of ``reference_anchors`` plus its own anchor (the
            batch-independent mode: a fixed bank of reference anchors, completed by the query itself).

    Returns:
        ``[B, d]`` latents.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
    _check_matrix("anchors", anchors)
    _check_matrix("noise", noise, anchors.shape[1])
    if noise.shape[0] != anchors.shape[0]:
        raise ValueError(f"`noise` has {noise.shape[0]} rows but `anchors` has {anchors.shape[0]}")
    reference_anchors = anchors if reference_anchors is None else reference_anchors
    _check_matrix("reference_anchors", reference_anchors, anchors.shape[1])
    _check_weights(weights, reference_anchors.shape[0])
    _check_steps(num_steps)
    eps = DEFAULT_EPS[solver] if eps is None else float(eps)
    if not (0.0 < eps < 1.0):
        raise ValueError(f"`eps` must be in (0, 1), got {eps}")
    log_weights = _log_weights(weights, reference_anchors)
    if append_own_anchor and weights is not None:
        raise ValueError("`append_own_anchor` supports uniform weights only")

    def posterior_mean(z, t):  # [B, d]
        if append_own_anchor:
            return _posterior_mean_with_own(z, t, reference_anchors, anchors, chunk_size)
        return _posterior_mean(z, t, reference_anchors, log_weights, chunk_size)

    z = eps * noise + (1.0 - eps) * anchors  # [B, d]
    if solver == "euler":
        h = (1.0 - eps) / num_steps
        for k in range(num_steps):
            t = eps + k * h
            mean = _maybe_checkpoint(posterior_mean, gradient_checkpointing, z, t)
            z = z + (h / t) * (z - mean)
        return z

    grid = dpm_solver_time_grid(num_steps)
    history = [(grid[0], _maybe_checkpoint(posterior_mean, gradient_checkpointing, z, grid[0]))]
    for step, order in enumerate(_dpm_solver_orders(num_steps), start=1):
        z = _dpm_solver_pp_update(z, grid[step], history, order)
        if step < num_steps:
            history = history[-(DPM_ORDER - 1) :] + [
                (grid[step], _maybe_checkpoint(posterior_mean, gradient_checkpointing, z, grid[step]))
            ]
    return z


# ----------------------------------------------------------------------------------------------------------
# reverse flow: latents -> anchors
# ----------------------------------------------------------------------------------------------------------
def _posterior_step(z, t, anchors, log_weights, log_posteriors):
    """Posterior [B, N] (or its log) and posterior-mean anchor [B, d] at time t (the posterior is kept)."""
    logits = _anchor_logits(z, t, anchors, _logit_bias(anchors, t, log_weights))  # [B, N]
    if log_posteriors:
        record = logits.log_softmax(-1)
        return record, record.exp() @ anchors
    posteriors = logits.softmax(-1)
    return posteriors, posteriors @ anchors


def latents_to_anchors(
    latents: torch.Tensor,
    anchors: torch.Tensor,
    num_steps: int = 100,
    weights: Optional[torch.Tensor] = None,
    gradient_checkpointing: bool = False,
    log_posteriors: bool = False,
):
    """Reverse flow (lzn-method.md §1.5): integrate from t = 1 down to t = 1/S with Euler steps.

    Args:
        latents: ``[B, d]`` latents (points of N(0, I)).
        anchors: ``[N, d]`` the anchor set (e.g. label anchors, or the other view's anchors).
        num_steps: Euler steps S.
        weights: optional ``[N]`` anchor weights pi (class weights).
        log_posteriors: record log posteriors (log-softmax: finite where the posterior underflows to 0).

    Returns:
        ``(points [B, d], posteriors [S, B, N])`` where ``points`` is the end point (close to one anchor)
        and ``posteriors[k]`` is the normalised posterior p_t(j | z_k) recorded at the pre-step time
        ``t_k = 1 - k / S`` (so ``posteriors[0]`` equals the normalised weights).
    """
    _check_matrix("anchors", anchors)
    _check_matrix("latents", latents, anchors.shape[1])
    _check_weights(weights, anchors.shape[0])
    _check_steps(num_steps)
    log_weights = _log_weights(weights, anchors)
    h = 1.0 / num_steps
    z, records = latents, []
    for k in range(num_steps):
        t = 1.0 - k * h
        posteriors, mean = _maybe_checkpoint(
            _posterior_step, gradient_checkpointing, z, t, anchors, log_weights, log_posteriors
        )
        records.append(posteriors)
        z = z - (h / t) * (z - mean)
    return z, torch.stack(records)


def nearest_anchor(points: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Index of the closest anchor (Euclidean) for each point: LongTensor ``[B]``."""
    _check_matrix("anchors", anchors)
    _check_matrix("points", points, anchors.shape[1])
    distances = torch.cdist(points, anchors, compute_mode="donot_use_mm_for_euclid_dist")  # [B, N]
    return distances.argmin(dim=-1)


# ----------------------------------------------------------------------------------------------------------
# distributed
# ----------------------------------------------------------------------------------------------------------
class _AllGather(torch.autograd.Function):
    """all_gather along dim 0 whose backward hands each rank the summed gradient of its own rows."""

    @staticmethod
    def forward(ctx, tensor):
        world_size = torch.distributed.get_world_size()
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.rows = torch.distributed.get_rank(), tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad_output):
        grad = grad_output.contiguous()
        torch.distributed.all_reduce(grad)  # every rank's loss depends on every rank's anchors
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_anchors(anchors: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's ``[B, d]`` anchors into the global ``[W * B, d]`` anchor set.

    Differentiable: gradients of all ranks' losses flow back to the rank that owns each anchor, so
    (with DDP's gradient averaging) the update equals the single-process update on the global batch.
    The identity when torch.distributed is not initialised or has one process. Every rank must pass
    the same number of rows (use ``drop_last`` or even batches).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return anchors
    if torch.distributed.get_world_size() == 1:
        return anchors
    return _AllGather.apply(anchors)
