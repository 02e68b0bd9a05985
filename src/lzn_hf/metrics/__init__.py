"""`evaluate` metric modules shipped with lzn_hf, loadable offline by path.

    import evaluate
    from lzn_hf.metrics import metric_path
    fd = evaluate.load(metric_path("frechet_distance"))
    fd.compute(predictions=generated_features, references=real_features)
"""

from pathlib import Path

__all__ = ["metric_path", "METRICS"]

METRICS = ("frechet_distance",)


def metric_path(name: str) -> str:
    """Local folder of the `evaluate` module `name` (pass it to `evaluate.load`)."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; available: {METRICS}")
    return str(Path(__file__).parent / name)
