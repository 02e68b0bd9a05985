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

Precision: the expanded logits cancel catastrophically for anchors far from the origin (a common offset c of
1e4 left nothing of float32's 24 bits). The path is translation equivariant — shifting every anchor by c
shifts ``z_t`` by ``(1 - t) c`` and leaves the posteriors unchanged — so every function works in a centred
frame: anchors ``a_j - c`` (an exact subtraction, see ``_reference_point``), queries ``z - (1 - t) c``
(rounded once), the solver state kept in that frame and shifted back once at the end. The per-anchor
terms ``||a_j - c||^2`` are computed once per call, not per solver step.

Dtypes: computed in float32 whatever the inputs' dtype (float16 / bfloat16 included), in float64 when any
input is float64, outside any autocast region; results come back in the dtype of the argument they belong
to (``latents`` for velocities, posteriors and the reverse flow, ``anchors`` for the forward flow). All
tensor arguments must share one device. Value checks run in eager mode only (``_checks.is_tracing``), so
the flows compile with ``fullgraph=True`` and export with ``torch.export``.

Pure functions, no module state; everything is differentiable with respect to latents and anchors.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ._checks import check_finite, is_tracing

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
# input checks and the dtype / device policy
# ----------------------------------------------------------------------------------------------------------
def _check_matrix(name: str, x: torch.Tensor, dim: Optional[int] = None, dim_of: Optional[str] = None) -> None:
    """``x`` is a non-empty floating-point ``[rows, d]`` tensor (with ``d == dim``, the width of ``dim_of``).

    Metadata only: the values are checked by :func:`_check_device_and_values` once the devices agree.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"`{name}` must have shape [rows, d], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(x.shape)})")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"`{name}` has latent dimension {x.shape[1]}, expected {dim} (the width of `{dim_of}`)")


def _check_weights(weights: Optional[torch.Tensor], num_anchors: int, anchors_name: str) -> None:
    """One real weight per anchor (metadata; the values: :func:`_check_weight_values`)."""
    if weights is None:
        return
    if not isinstance(weights, torch.Tensor) or weights.ndim != 1 or weights.shape[0] != num_anchors:
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"`weights` must have shape [{num_anchors}] (one per anchor, a row of `{anchors_name}`), got {shape}")
    if weights.is_complex() or weights.dtype == torch.bool:
        raise TypeError(f"`weights` must be a real tensor, got dtype {weights.dtype}")


def _check_weight_values(weights: Optional[torch.Tensor]) -> None:
    """Non-negative, not all zero (eager only; NaN/Inf: :func:`_check_device_and_values`)."""
    if weights is None or is_tracing():
        return
    if bool((weights < 0).any()):
        raise ValueError("`weights` must be non-negative")
    if not bool((weights > 0).any()):
        raise ValueError("`weights` are all zero: at least one anchor must carry mass")


def _check_steps(num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a positive integer, got {num_steps!r}")


def _check_time(t: float) -> float:
    """t as a Python number (a traced float stays symbolic: compiled callers do not recompile per time)."""
    if isinstance(t, torch.Tensor):
        if t.numel() != 1:
            raise ValueError(f"flow time t must be a number or a one-element tensor, got shape {tuple(t.shape)}")
        t = float(t)
    elif isinstance(t, bool) or not isinstance(t, (int, float, torch.SymInt, torch.SymFloat)):
        raise TypeError(f"flow time t must be a number, got {type(t).__name__}")
    if not (0.0 < t <= 1.0):
        raise ValueError(f"flow time t must be in (0, 1], got {t}")
    return t


def _check_device_and_values(**tensors: Optional[torch.Tensor]) -> None:
    """One device for all given tensors (``None`` skipped; a mismatch names both arguments), then no NaN/Inf.

    The value checks run in eager mode only (skipped while compiling or exporting, see ``_checks``).
    """
    named = [(name, x) for name, x in tensors.items() if x is not None]
    first_name, first = named[0]
    for name, x in named[1:]:
        if x.device != first.device:
            raise ValueError(
                f"`{name}` is on device {x.device} but `{first_name}` is on {first.device}; move them to one device"
            )
    for name, x in named:
        check_finite(name, x)


def _compute_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """The flows' dtype policy: float64 when any input is float64, float32 otherwise (half inputs included)."""
    return torch.float64 if any(x is not None and x.dtype == torch.float64 for x in tensors) else torch.float32


def _needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors)


def _full_precision(device: torch.device):
    """Leave autocast (a bf16/fp16 region around the call) so that the flows' matmuls stay float32."""
    if device.type in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _to_caller(x: torch.Tensor, dtype: torch.dtype, saturate: bool = False) -> torch.Tensor:
    """Cast a result to the caller's dtype; ``saturate`` clamps finite values beyond its range (log posteriors)."""
    if x.dtype == dtype:
        return x
    if saturate and torch.finfo(dtype).max < torch.finfo(x.dtype).max:
        x = torch.where(torch.isinf(x), x, x.clamp(torch.finfo(dtype).min, torch.finfo(dtype).max))
    return x.to(dtype)


# ----------------------------------------------------------------------------------------------------------
# the centred frame
# ----------------------------------------------------------------------------------------------------------
def _reference_point(anchors: torch.Tensor) -> torch.Tensor:
    """The origin ``c`` of the centred frame, ``[d]``: a common offset of the anchors, removed exactly.

    Per coordinate, ``c`` lies within a factor 2 of every anchor's value when one such value exists (all
    anchors of one sign, spanning less than a factor 4): then every ``a_j - c`` is exact in floating point
    (Sterbenz), so the centred anchors are the anchors, only without their offset. Otherwise ``c = 0``: the
    values straddle zero or spread over more than a factor 4, so the offset is at most 4/3 of the spread and
    there is nothing to gain (ordinary anchors keep exactly their uncentred arithmetic).

    Any fixed point gives the same flow in exact arithmetic (the path is translation equivariant), so ``c``
    carries no gradient and the gradients of the result are those of the uncentred formula.
    """
    low, high = torch.aminmax(anchors.detach(), dim=0)  # [d]
    middle = 0.5 * low + 0.5 * high
    positive = (low > 0) & (high <= 4 * low)  # [high / 2, 2 low] is not empty
    negative = (high < 0) & (low >= 4 * high)  # [2 high, low / 2] is not empty
    centre = torch.where(positive, torch.minimum(torch.maximum(middle, 0.5 * high), 2 * low), torch.zeros_like(middle))
    return torch.where(negative, torch.minimum(torch.maximum(middle, 2 * high), 0.5 * low), centre)


def _minus(x: torch.Tensor, centre: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
    """``x - factor * centre``, rounded once (in float64 when computing in float32).

    For a query on the path at a large common offset, ``x`` and ``factor * centre`` agree in most leading
    digits: a float32 product ``factor * centre`` would already carry an error of ``ulp(c)``, as large as
    the whole centred value. float64 keeps the difference exact up to its final rounding; it is O(B d)
    elementwise work (none on MPS, which has no float64: there the product is rounded in float32).
    """
    if factor == 0.0:
        return x
    if x.dtype == torch.float32 and x.device.type != "mps":
        return (x.double() - factor * centre.double()).float()
    return x - factor * centre


class _Field(NamedTuple):
    """The reference anchors in the centred frame, with the per-anchor terms every evaluation reuses.

    Built once per call: ``||a_j - c||^2`` (and the fused kernel's keys) are not recomputed per solver step.
    """

    anchors: torch.Tensor  # [N, d] a_j - c
    sq_norms: torch.Tensor  # [N] ||a_j - c||^2
    log_weights: Optional[torch.Tensor]  # [N] log pi_j (-inf for zero weights), None = uniform
    keys: Optional[torch.Tensor]  # [N, d + k] fused-kernel keys [a_j - c, ||a_j - c||^2 (, log pi_j)]; None with autograd
    values: Optional[torch.Tensor]  # [N, d + k] the keys themselves: only the first d output columns are kept


def _make_field(centred: torch.Tensor, weights: Optional[torch.Tensor], fused: bool) -> _Field:
    sq_norms = centred.pow(2).sum(-1)  # [N]
    log_weights = None if weights is None else weights.to(centred.dtype).log()
    keys = values = None
    if fused:
        columns = [centred, sq_norms[:, None]] + ([] if log_weights is None else [log_weights[:, None]])
        keys = torch.cat(columns, dim=-1)
        values = keys  # the kernel's output columns past d (weighted sums of the extra columns) are discarded
    return _Field(centred, sq_norms, log_weights, keys, values)


# ----------------------------------------------------------------------------------------------------------
# the velocity field (all in the centred frame)
# ----------------------------------------------------------------------------------------------------------
def _coefficients(t: float):
    """Logit coefficients at time t: ``(1-t)/t^2`` on ``z . a_j`` and ``-(1-t)^2 / (2 t^2)`` on ``||a_j||^2``."""
    return (1.0 - t) / t**2, -0.5 * ((1.0 - t) / t) ** 2


def _anchor_logits(z: torch.Tensor, t: float, field: _Field) -> torch.Tensor:
    """Logits of the posterior over anchors, up to a per-query constant: ``[B, N]`` (one matmul)."""
    scale, norm_coefficient = _coefficients(t)
    bias = norm_coefficient * field.sq_norms  # [N]
    if field.log_weights is not None:
        bias = bias + field.log_weights
    return torch.addmm(bias, z * scale, field.anchors.T)  # (a tensor product, not alpha=: a traced t stays symbolic)


def _posterior_mean(z: torch.Tensor, t: float, field: _Field, chunk_size: int) -> torch.Tensor:
    """sum_j w_j(z, t) a_j for every query: ``[B, d]``, over query chunks.

    With autograd (``field.keys is None``): matmul -> softmax -> matmul, which keeps the ``[b, N]``
    posterior for backward (exact gradients even where the posterior saturates at small t). Without: a fused
    attention kernel with O(b) memory; the per-anchor terms are extra key columns, their time coefficients
    extra query columns (``[z (1-t)/t^2, -(1-t)^2/(2t^2), 1] . [a_j, ||a_j||^2, log pi_j]``); the keys serve
    as values too (fused kernels want equal widths) and the output columns past ``d`` are dropped.
    """
    scale, norm_coefficient = _coefficients(t)
    outputs = []
    for start in range(0, z.shape[0], chunk_size):
        chunk = z[start : start + chunk_size]  # [b, d]
        if field.keys is None:
            outputs.append(_anchor_logits(chunk, t, field).softmax(-1) @ field.anchors)  # [b, d]
            continue
        columns = [chunk * scale, torch.ones_like(chunk[:, :1]) * norm_coefficient]
        if field.log_weights is not None:
            columns.append(chunk.new_ones((chunk.shape[0], 1)))
        queries = torch.cat(columns, dim=-1)  # [b, d + k]
        mean = F.scaled_dot_product_attention(queries[None, None], field.keys[None, None], field.values[None, None], scale=1.0)
        outputs.append(mean[0, 0, :, : chunk.shape[1]])  # [b, d]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def _posterior_mean_with_own(z, t: float, field: _Field, own, own_sq_norms, chunk_size: int):
    """Like :func:`_posterior_mean`, but query i's anchor set is the field plus its own anchor ``own[i]``."""
    scale, norm_coefficient = _coefficients(t)
    outputs = []
    for start in range(0, z.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        chunk, own_chunk = z[rows], own[rows]  # [b, d]
        own_logit = scale * (chunk * own_chunk).sum(-1) + norm_coefficient * own_sq_norms[rows]  # [b]
        logits = torch.cat([_anchor_logits(chunk, t, field), own_logit[:, None]], dim=-1)  # [b, N + 1]
        posteriors = logits.softmax(-1)
        outputs.append(posteriors[:, :-1] @ field.anchors + posteriors[:, -1:] * own_chunk)  # [b, d]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def _query_frame(latents, t, anchors, weights, fused: bool):
    """Shared set-up of the single-evaluation functions: (centred queries, field, centre) in the compute dtype."""
    dtype = _compute_dtype(latents, anchors, weights)
    reference = anchors.to(dtype)
    centre = _reference_point(reference)
    field = _make_field(reference - centre, weights, fused)  # exact by the choice of c
    return _minus(latents.to(dtype), centre, 1.0 - t), field, centre  # z - (1 - t) c


def _check_queries(latents, t, anchors, weights) -> float:
    _check_matrix("anchors", anchors)
    _check_matrix("latents", latents, anchors.shape[1], "anchors")
    _check_weights(weights, anchors.shape[0], "anchors")
    _check_device_and_values(latents=latents, anchors=anchors, weights=weights)
    _check_weight_values(weights)
    return _check_time(t)


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
        t: flow time in (0, 1] (a Python float, or a 0-d tensor in eager mode; 0 = anchors, 1 = Gaussian).
        anchors: ``[N, d]`` reference anchors.
        weights: optional ``[N]`` non-negative anchor weights pi (upstream's class weights); a zero weight
            means that anchor never receives mass. ``None`` = uniform.
        chunk_size: queries evaluated at once.

    Returns:
        ``[B, d]`` velocity ``(z - sum_j w_j a_j) / t``, in the dtype of ``latents`` (computed in float32,
        or float64 when an input is float64).
    """
    t = _check_queries(latents, t, anchors, weights)
    with _full_precision(anchors.device):
        z, field, centre = _query_frame(latents, t, anchors, weights, fused=not _needs_grad(latents, anchors, weights))
        velocity = (z - _posterior_mean(z, t, field, chunk_size)) / t - centre  # the frame shift's velocity is -c
    return _to_caller(velocity, latents.dtype)


def anchor_posteriors(
    latents: torch.Tensor,
    t: float,
    anchors: torch.Tensor,
    weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The normalised posterior p_t(j | z) over anchors: ``[B, N]``, rows sum to 1, in the dtype of ``latents``."""
    t = _check_queries(latents, t, anchors, weights)
    with _full_precision(anchors.device):
        z, field, _ = _query_frame(latents, t, anchors, weights, fused=False)
        posteriors = _anchor_logits(z, t, field).softmax(-1)  # [B, N]
    return _to_caller(posteriors, latents.dtype)


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

    ``history`` holds the last ``order`` pairs ``(t_j, posterior-mean anchor at t_j)``, newest last. The
    update is exactly equivariant under the centred frame (z -> z - (1-t) c, means -> means - c): the
    coefficients of the data predictions sum to ``alpha_next``.
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
        ``[B, d]`` latents in the dtype of ``anchors`` (computed in float32, or float64 when an input is
        float64).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
    _check_matrix("anchors", anchors)
    _check_matrix("noise", noise, anchors.shape[1], "anchors")
    if noise.shape[0] != anchors.shape[0]:
        raise ValueError(f"`noise` has {noise.shape[0]} rows but `anchors` has {anchors.shape[0]}")
    own_is_reference = reference_anchors is None
    reference_anchors = anchors if own_is_reference else reference_anchors
    _check_matrix("reference_anchors", reference_anchors, anchors.shape[1], "anchors")
    _check_weights(weights, reference_anchors.shape[0], "reference_anchors")
    _check_device_and_values(anchors=anchors, noise=noise, reference_anchors=None if own_is_reference else reference_anchors, weights=weights)
    _check_weight_values(weights)
    _check_steps(num_steps)
    eps = DEFAULT_EPS[solver] if eps is None else float(eps)
    if not (0.0 < eps < 1.0):
        raise ValueError(f"`eps` must be in (0, 1), got {eps}")
    if append_own_anchor and weights is not None:
        raise ValueError("`append_own_anchor` supports uniform weights only")

    with _full_precision(anchors.device):
        dtype = _compute_dtype(anchors, noise, reference_anchors, weights)
        reference = reference_anchors.to(dtype)
        centre = _reference_point(reference)
        fused = not (append_own_anchor or _needs_grad(anchors, noise, reference_anchors, weights))
        field = _make_field(reference - centre, weights, fused)  # exact by the choice of c
        own = field.anchors if own_is_reference else _minus(anchors.to(dtype), centre)  # [B, d], rounded once
        own_sq_norms = own.pow(2).sum(-1) if append_own_anchor else None  # [B]

        def posterior_mean(z, t):  # [B, d], centred
            if append_own_anchor:
                return _posterior_mean_with_own(z, t, field, own, own_sq_norms, chunk_size)
            return _posterior_mean(z, t, field, chunk_size)

        # The whole solve runs in the centred frame z' = z - (1 - t) c, where latents and means stay at the
        # scale of the anchors' spread, whatever their common offset.
        z = eps * noise.to(dtype) + (1.0 - eps) * own  # [B, d]
        if solver == "euler":
            h = (1.0 - eps) / num_steps
            for k in range(num_steps):
                t = eps + k * h
                mean = _maybe_checkpoint(posterior_mean, gradient_checkpointing, z, t)
                z = z + (h / t) * (z - mean)
            t_end = 1.0
        else:
            grid = dpm_solver_time_grid(num_steps)
            history = [(grid[0], _maybe_checkpoint(posterior_mean, gradient_checkpointing, z, grid[0]))]
            for step, order in enumerate(_dpm_solver_orders(num_steps), start=1):
                z = _dpm_solver_pp_update(z, grid[step], history, order)
                if step < num_steps:
                    history = history[-(DPM_ORDER - 1) :] + [
                        (grid[step], _maybe_checkpoint(posterior_mean, gradient_checkpointing, z, grid[step]))
                    ]
            t_end = grid[-1]
        if t_end < 1.0:
            z = z + (1.0 - t_end) * centre
    return _to_caller(z, anchors.dtype)


# ----------------------------------------------------------------------------------------------------------
# reverse flow: latents -> anchors
# ----------------------------------------------------------------------------------------------------------
def _posterior_step(z, t, field, log_posteriors):
    """Posterior [B, N] (or its log) and centred posterior-mean anchor [B, d] at time t (the posterior is kept)."""
    logits = _anchor_logits(z, t, field)  # [B, N]
    if log_posteriors:
        record = logits.log_softmax(-1)
        return record, record.exp() @ field.anchors
    posteriors = logits.softmax(-1)
    return posteriors, posteriors @ field.anchors


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
        log_posteriors: record log posteriors (log-softmax: finite where the posterior underflows to 0;
            in float16 output, values below float16's range saturate at its minimum).

    Returns:
        ``(points [B, d], posteriors [S, B, N])``, both in the dtype of ``latents`` (computed in float32, or
        float64 when an input is float64), where ``points`` is the end point (close to one anchor) and
        ``posteriors[k]`` is the normalised posterior p_t(j | z_k) recorded at the pre-step time
        ``t_k = 1 - k / S`` (so ``posteriors[0]`` equals the normalised weights).
    """
    _check_matrix("anchors", anchors)
    _check_matrix("latents", latents, anchors.shape[1], "anchors")
    _check_weights(weights, anchors.shape[0], "anchors")
    _check_device_and_values(latents=latents, anchors=anchors, weights=weights)
    _check_weight_values(weights)
    _check_steps(num_steps)
    with _full_precision(anchors.device):
        dtype = _compute_dtype(latents, anchors, weights)
        reference = anchors.to(dtype)
        centre = _reference_point(reference)
        field = _make_field(reference - centre, weights, fused=False)  # exact by the choice of c
        h = 1.0 / num_steps
        z, records = latents.to(dtype), []  # at t = 1 the centred frame z - (1 - t) c is z itself
        for k in range(num_steps):
            t = 1.0 - k * h
            posteriors, mean = _maybe_checkpoint(_posterior_step, gradient_checkpointing, z, t, field, log_posteriors)
            records.append(posteriors)
            z = z - (h / t) * (z - mean)
        points = z + centre  # the end time 1 - S h = 0: the frame shift is the whole of c
        records = torch.stack(records)
    return _to_caller(points, latents.dtype), _to_caller(records, latents.dtype, saturate=log_posteriors)


def nearest_anchor(points: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Index of the closest anchor (Euclidean) for each point: LongTensor ``[B]``.

    Distances from coordinate differences (no ``||p||^2 - 2 p.a + ||a||^2`` expansion, so no cancellation
    at large offsets), computed in float32 for half-precision inputs (float64 when an input is float64).
    """
    _check_matrix("anchors", anchors)
    _check_matrix("points", points, anchors.shape[1], "anchors")
    _check_device_and_values(points=points, anchors=anchors)
    dtype = _compute_dtype(points, anchors)
    distances = torch.cdist(points.to(dtype), anchors.to(dtype), compute_mode="donot_use_mm_for_euclid_dist")  # [B, N]
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
