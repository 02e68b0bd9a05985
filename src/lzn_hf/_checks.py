"""Input checks that keep clear errors in eager mode and stay out of the way of torch.compile / torch.export.

Checks of *metadata* (types, shapes, dtypes, devices) are plain Python and trace fine. Checks of *values*
(``torch.isfinite(x).all()``, ``(x < 0).any()``, ``.item()`` range checks) read tensor data: in a traced
graph they are a graph break (``torch.compile(fullgraph=True)`` fails) or a data-dependent guard
(``torch.export.export`` fails). They run in eager mode only; guard them with :func:`is_tracing`.
"""

from __future__ import annotations

import torch

__all__ = ["is_tracing", "check_finite"]


def is_tracing() -> bool:
    """True while torch.compile, torch.export (strict or not) or torch.jit.trace traces the calling code.

    ``torch.compiler.is_compiling()`` covers Dynamo (compile, strict export) and non-strict export in
    torch >= 2.5; inside Dynamo it is a constant, so a guarded check leaves no trace in the graph.
    """
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise ``ValueError("`name` contains NaN or Inf")`` in eager mode; skipped while tracing."""
    if is_tracing() or x.numel() == 0:
        return
    extremes = torch.stack(torch.aminmax(x)) if x.is_floating_point() else None  # one pass; NaN propagates
    if extremes is not None and not bool(torch.isfinite(extremes).all()):
        raise ValueError(f"`{name}` contains NaN or Inf")
