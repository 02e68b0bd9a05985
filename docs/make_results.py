#!/usr/bin/env python
"""Tables and plots of docs/results.md from the run folders of docs/reproduce_results.sh.

Each run folder `RUNS/<kind>-<seed>` holds `metrics.json` (written by its training script) and
`eval_metrics.json` + `eval_samples.png` (written by `examples/evaluate.py`). This script prints the Markdown
tables (mean ± standard deviation over seeds, ddof = 1) and writes `docs/images/results.png` (the three
claims) and `docs/images/results_samples.png` (seed-0 samples of the four generators).

    python docs/make_results.py lzn-results
"""

import argparse
import json
from pathlib import Path

import numpy as np

KINDS = {
    "gen-lzn": "RF + LZN latent (`digits-generation`)",
    "gen-rf": "RF, no LZN latent (`--without_lzn_latent`)",
    "joint": "LZN joint model (`digits-joint`, train_joint.py)",
    "cond-rf": "class-conditional RF, no LZN latent",
    "rep": "LZN case study 2 (`digits-representation`)",
}


def load_runs(runs: Path):
    """{kind: [merged metrics of each seed]}; training metrics prefixed `train:`."""
    found = {}
    for kind in KINDS:
        seeds = []
        for folder in sorted(runs.glob(f"{kind}-[0-9]*")):
            if not (folder / "eval_metrics.json").is_file():
                continue
            merged = json.loads((folder / "eval_metrics.json").read_text())
            if (folder / "metrics.json").is_file():
                merged.update({f"train:{k}": v for k, v in json.loads((folder / "metrics.json").read_text()).items()})
            seeds.append(merged)
        if seeds:
            found[kind] = seeds
    return found


def stats(runs, kind, key, scale=1.0):
    """(mean, std, n) of `key` over the seeds of `kind` (std with ddof 1), or None."""
    values = [run[key] * scale for run in runs.get(kind, []) if isinstance(run.get(key), (int, float))]
    if not values:
        return None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values)


def cell(runs, kind, key, scale=1.0, digits=3, unit=""):
    value = stats(runs, kind, key, scale)
    return "–" if value is None else f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}{unit}"


def tables(runs) -> str:
    percent = dict(scale=100.0, digits=2, unit=" %")
    floor = stats(runs, "gen-lzn", "fd_digits/real_test") or stats(runs, "joint", "fd_digits/real_test")
    lines = ["### Case study 1: the same RF decoder with and without the LZN latent (unconditional)", "",
             "| decoder | seeds | FD, 1,000 samples ↓ | FD, 360 samples ↓ | reconstruction error ↓ | class-histogram TV ↓ |",
             "|---|---|---|---|---|---|"]
    for kind in ("gen-lzn", "gen-rf"):
        lines.append(f"| {KINDS[kind]} | {len(runs.get(kind, []))} | {cell(runs, kind, 'fd_digits')} | "
                     f"{cell(runs, kind, 'fd_digits/test_size_subset')} | {cell(runs, kind, 'reconstruction_error')} | "
                     f"{cell(runs, kind, 'judge/class_histogram_tv')} |")
    if floor:
        lines += ["", f"Real held-out digits (360) against the same reference: FD {floor[0]:.3f}."]
    lines += ["", "### Case study 3: joint generation + classification", "",
              "| model | seeds | batch mode, zero noise | batch mode, random noise | anchor bank | cross-entropy classifier |",
              "|---|---|---|---|---|---|",
              f"| {KINDS['joint']} | {len(runs.get('joint', []))} | {cell(runs, 'joint', 'accuracy/batch_zero_noise', **percent)} | "
              f"{cell(runs, 'joint', 'accuracy/batch_random_noise', **percent)} | {cell(runs, 'joint', 'accuracy/anchor_bank', **percent)} | "
              f"{cell(runs, 'joint', 'accuracy/cross_entropy_classifier', **percent)} |",
              "", "| generator | seeds | FD, 1,000 samples ↓ | FD, 360 samples ↓ | judge agreement ↑ | reconstruction error ↓ |",
              "|---|---|---|---|---|---|"]
    for kind in ("joint", "cond-rf"):
        lines.append(f"| {KINDS[kind]} | {len(runs.get(kind, []))} | {cell(runs, kind, 'fd_digits')} | "
                     f"{cell(runs, kind, 'fd_digits/test_size_subset')} | {cell(runs, kind, 'judge/agreement', **percent)} | "
                     f"{cell(runs, kind, 'reconstruction_error')} |")
    lines += ["", "### Case study 2: linear probe on frozen features (held-out accuracy)", "",
              "| features | seeds | linear probe |", "|---|---|---|"]
    rows = [("LZN case study 2 encoder (`digits-representation`)", "rep", "linear_probe/lzn"),
            ("randomly initialised encoder, same architecture", "rep", "linear_probe/random_init"),
            ("supervised encoder (cross-entropy), same architecture", "rep", "linear_probe/supervised"),
            ("raw pixels", "rep", "linear_probe/pixels"),
            ("for reference: the LZN joint model's encoder (labels used)", "joint", "linear_probe/lzn"),
            ("for reference: the case-1 LZN encoder (RF loss only)", "gen-lzn", "linear_probe/lzn")]
    for label, kind, key in rows:
        lines.append(f"| {label} | {len(runs.get(kind, []))} | {cell(runs, kind, key, **percent)} |")
    return "\n".join(lines)


def bar_panel(axis, runs, bars, title, ylabel, scale=1.0):
    labels, means, stds = [], [], []
    for label, kind, key in bars:
        value = stats(runs, kind, key, scale)
        if value is not None:
            labels.append(label), means.append(value[0]), stds.append(value[1])
    positions = np.arange(len(labels))
    axis.bar(positions, means, yerr=stds, capsize=4, color=["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2"][: len(labels)])
    axis.set_xticks(positions, labels, rotation=20, ha="right", fontsize=8)
    axis.set_title(title, fontsize=10)
    axis.set_ylabel(ylabel, fontsize=9)


def plots(runs, images: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    bar_panel(axes[0], runs, [("RF + LZN", "gen-lzn", "fd_digits"), ("RF", "gen-rf", "fd_digits"),
                              ("joint LZN", "joint", "fd_digits"), ("cond. RF", "cond-rf", "fd_digits")],
              "Fréchet distance (MLP features, 1,000 samples)", "FD (lower is better)")
    bar_panel(axes[1], runs, [("RF + LZN", "gen-lzn", "reconstruction_error"), ("RF", "gen-rf", "reconstruction_error"),
                              ("joint LZN", "joint", "reconstruction_error"), ("cond. RF", "cond-rf", "reconstruction_error")],
              "Reconstruction error (20 Euler steps each way)", "mean L2 in [-1, 1] (lower is better)")
    bar_panel(axes[2], runs, [("batch, zero noise", "joint", "accuracy/batch_zero_noise"),
                              ("batch, random noise", "joint", "accuracy/batch_random_noise"),
                              ("anchor bank", "joint", "accuracy/anchor_bank"),
                              ("cross-entropy", "joint", "accuracy/cross_entropy_classifier")],
              "Case 3: held-out accuracy", "accuracy (%)", scale=100.0)
    axes[2].set_ylim(80, 100)
    bar_panel(axes[3], runs, [("LZN case 2", "rep", "linear_probe/lzn"), ("random init", "rep", "linear_probe/random_init"),
                              ("supervised", "rep", "linear_probe/supervised"), ("pixels", "rep", "linear_probe/pixels")],
              "Case 2: linear probe", "accuracy (%)", scale=100.0)
    axes[3].set_ylim(80, 100)
    figure.suptitle("LZN at CPU scale on scikit-learn's 8x8 digits (mean ± std over 3 seeds)", fontsize=11)
    figure.tight_layout()
    images.mkdir(parents=True, exist_ok=True)
    figure.savefig(images / "results.png", dpi=110)
    plt.close(figure)


def sample_figure(runs_dir: Path, images: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    panels = [(kind, runs_dir / f"{kind}-0" / "eval_samples.png") for kind in ("gen-lzn", "gen-rf", "joint", "cond-rf")]
    panels = [(kind, path) for kind, path in panels if path.is_file()]
    if not panels:
        return
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.6))
    for axis, (kind, path) in zip(np.atleast_1d(axes), panels):
        axis.imshow(Image.open(path), cmap="gray")
        axis.set_title(KINDS[kind].replace("`", ""), fontsize=8)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(images / "results_samples.png", dpi=100)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="the folder holding <kind>-<seed> run folders")
    parser.add_argument("--images", type=Path, default=Path(__file__).parent / "images")
    args = parser.parse_args()
    runs = load_runs(args.runs)
    if not runs:
        raise SystemExit(f"no <kind>-<seed>/eval_metrics.json under {args.runs}: run docs/reproduce_results.sh first")
    print(tables(runs))
    plots(runs, args.images)
    sample_figure(args.runs, args.images)
    print(f"\nwrote {args.images / 'results.png'} and {args.images / 'results_samples.png'}")


if __name__ == "__main__":
    main()
