"""What a training run reports: the training section of its model cards, sample grids, the logged history and
its curves, the tracker configuration."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .._atomic import write_atomically

if TYPE_CHECKING:
    from .arguments import TrainingArguments


def dataset_id(dataset_name: Optional[str], train_data_dir: Optional[str] = None) -> str:
    """The dataset name model cards use: ``sklearn-digits``, the Hub id, ``imagefolder``, or ``saved-dataset``
    (a folder written by ``save_to_disk``: a local path says nothing on the Hub)."""
    from .data import is_saved_dataset

    if train_data_dir is not None:
        return "imagefolder"
    if is_saved_dataset(dataset_name):
        return "saved-dataset"
    return "sklearn-digits" if dataset_name == "digits" else dataset_name


def training_markdown(arguments: "TrainingArguments", global_batch_size: int, script: str, extra: Optional[Mapping[str, Any]] = None) -> str:
    """A "## Training" section for model cards: the command line's essentials and the hyper-parameters (every value
    escaped: a path or name from the command line shows literally, never as markup)."""
    from ..model_cards import markdown_code, markdown_text

    rows = {
        "script": markdown_code(f"examples/{script}"),
        "config (preset)": markdown_code(arguments.config),  # a preset name or a user's path: shown literally
        "data": markdown_code(dataset_id(arguments.dataset_name, arguments.train_data_dir)),
        "updates": arguments.max_train_steps,
        "global batch (anchors per zone set)": global_batch_size,
        "learning rates (encoder / decoder / label anchors)":
            f"{arguments.learning_rate_encoder} / {arguments.learning_rate_decoder} / {arguments.learning_rate_label_anchors}",
        "warm-up updates": arguments.lr_warmup_steps,
        "learning-rate schedule": arguments.lr_scheduler or "constant",
        "gradient-norm clip": arguments.max_grad_norm,
        "EMA decay (warm-up: min(decay, (1 + n) / (10 + n)))": arguments.ema_decay,
        "seed": arguments.seed,
        **(extra or {}),
    }
    code = {"script", "config (preset)", "data"}
    lines = ["## Training", "", "| setting | value |", "|---|---|"] + [
        f"| {markdown_text(k)} | {v if k in code else markdown_text(v)} |" for k, v in rows.items()]
    return "\n".join(lines)


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
    write_atomically(path, lambda temporary: canvas.save(temporary, format="PNG"))
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

    def truncate(self, step: int) -> int:
        """Keep only the records of steps up to ``step`` (a run resumed from ``checkpoint-{step}`` logs the later
        steps again; ``step`` 0: a new run in the same folder). Rewritten atomically; returns the records dropped.
        A line that is not JSON (a run killed mid-write) is dropped too."""
        if not self.path.is_file():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                keep = isinstance(record, dict) and int(record["step"]) <= step
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            write_atomically(self.path, lambda temporary: temporary.write_text("".join(f"{line}\n" for line in kept)))
        return dropped

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
    write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=110, format="png"))
    plt.close(figure)
    return Path(path)


def tracker_config(flags: Mapping[str, Any]) -> Dict[str, Any]:
    """``flags`` with values trackers accept (TensorBoard hparams take numbers, strings and booleans)."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flags.items()}
