"""What a training run reports: model-card sections and run cards, sample grids, the logged history and its
curves, the tracker configuration."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np


def dataset_id(args: argparse.Namespace) -> str:
    """The dataset name model cards use: ``sklearn-digits``, the Hub id, or ``imagefolder``."""
    if args.train_data_dir is not None:
        return "imagefolder"
    return "sklearn-digits" if args.dataset_name == "digits" else args.dataset_name


def training_markdown(args: argparse.Namespace, script: str, extra: Optional[Mapping[str, Any]] = None) -> str:
    """A "## Training" section for model cards: the command line's essentials and the hyper-parameters."""
    rows = {
        "script": f"`examples/{script}`",
        "config (preset)": f"`{args.config}`",
        "data": f"`{dataset_id(args)}`",
        "updates": args.max_train_steps,
        "global batch (anchors per zone set)": args.global_batch_size,
        "learning rates (encoder / decoder / label anchors)":
            f"{args.learning_rate_encoder} / {args.learning_rate_decoder} / {args.learning_rate_label_anchors}",
        "warm-up updates": args.lr_warmup_steps,
        "EMA decay (warm-up: min(decay, (1 + n) / (10 + n)))": args.ema_decay,
        "seed": args.seed,
        **(extra or {}),
    }
    lines = ["## Training", "", "| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def write_run_card(folder, title: str, description: str, *, pipeline_tag: str, datasets: Sequence[str], usage: str,
                   metrics: Optional[Mapping[str, float]] = None, tags: Sequence[str] = (), extra_text: str = "") -> Path:
    """The ``README.md`` at the root of a training output folder (the Hub repo's card when pushed).

    lzn_hf's model card (:func:`lzn_hf.model_cards.write_model_card`: YAML metadata with library ``lzn_hf``, the
    pipeline tag, datasets, metrics and a model index of their values; usage, results, the method) with the run's
    title, a ``description`` of what the folder holds, a ``usage`` snippet and ``extra_text`` (the training section).
    Metric values are rounded to 4 digits. The saved model folders inside get their own cards.
    """
    from ..model_cards import write_model_card

    metrics = {name: round(float(value), 4) for name, value in (metrics or {}).items()}
    # the root holds no model of its own: kind "model" reads nothing from it, every text of the card is the run's
    return write_model_card(folder, "model", title=title, description=description, usage=usage, pipeline_tag=pipeline_tag,
                            datasets=datasets, metrics=metrics, tags=tags, extra_text=extra_text, license="mit")


def save_image_grid(rows: Sequence[np.ndarray], path, row_labels: Optional[Sequence[str]] = None, scale: int = 4, pad: int = 2) -> Path:
    """A PNG grid, one row per entry of ``rows`` (each ``[K, H, W, C]`` floats in [0, 1]), nearest-neighbour
    upscaled by ``scale``; ``row_labels`` are written at the left of each row."""
    from PIL import Image, ImageDraw

    rows = [np.asarray(r, dtype=np.float32) for r in rows]
    num_cols = max(len(r) for r in rows)
    height, width, channels = rows[0].shape[1:]
    cell_h, cell_w = height * scale, width * scale
    label_w = 0 if row_labels is None else 8 * max(len(str(s)) for s in row_labels) + 2 * pad
    canvas = Image.new("RGB", (label_w + num_cols * (cell_w + pad) + pad, len(rows) * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(rows):
        top = pad + i * (cell_h + pad)
        if row_labels is not None:
            draw.text((pad, top + cell_h // 2 - 5), str(row_labels[i]), fill="black")
        for j, image in enumerate(row):
            array = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
            tile = Image.fromarray(array[..., 0] if channels == 1 else array).convert("RGB").resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (label_w + pad + j * (cell_w + pad), top))
    canvas.save(path)
    return Path(path)


class TrainingHistory:
    """Logged values per step, appended to a JSON-lines file (kept across resumes; a resumed step replaces
    the values logged earlier at the same or a later step)."""

    def __init__(self, path):
        self.path = Path(path)

    def append(self, step: int, values: Mapping[str, float]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": int(step), **{k: float(v) for k, v in values.items()}}) + "\n")

    def read(self) -> Dict[str, List[Tuple[int, float]]]:
        """``{name: [(step, value), ...]}``, steps increasing, the latest write winning after a resume."""
        if not self.path.is_file():
            return {}
        records: List[Dict[str, float]] = []
        for line in self.path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                while records and records[-1]["step"] >= record["step"]:  # a resume rewrote these steps
                    records.pop()
                records.append(record)
        series: Dict[str, List[Tuple[int, float]]] = {}
        for record in records:
            for key, value in record.items():
                if key != "step":
                    series.setdefault(key, []).append((int(record["step"]), float(value)))
        return series


def save_training_curves(history: Mapping[str, List[Tuple[int, float]]], path, keys: Optional[Sequence[str]] = None, title: str = "") -> Optional[Path]:
    """A PNG with one panel per logged quantity (``keys``, default: all), via matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in (keys or sorted(history)) if history.get(k)]
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for axis, key in zip(axes.flat, keys):
        steps, values = zip(*history[key])
        axis.plot(steps, values, linewidth=1.0)
        axis.set_title(key, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(keys):]:
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def tracker_config(args: argparse.Namespace) -> Dict[str, Any]:
    """``vars(args)`` with values trackers accept (TensorBoard hparams take numbers, strings and booleans)."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in vars(args).items()}
