#!/usr/bin/env python
"""Tables, verdicts and plots of docs/results.md from the run folders of docs/reproduce_results.sh (the 8x8
digits) or docs/reproduce_fashion_mnist.sh (Fashion-MNIST, plus one MNIST joint run).

Each run folder `RUNS/<kind>-<seed>` holds `metrics.json` (written by its training script) and
`eval_metrics.json` + `eval_samples.png` (written by `examples/evaluate.py`). This script prints the Markdown
tables (mean ± standard deviation over seeds, ddof = 1), one row per seed for the paired claims, and each
claim's verdict against the targets of its issue, and writes `docs/images/<prefix>.png` (the three claims) and
`docs/images/<prefix>_samples.png` (seed-0 samples of the four generators).

    python docs/make_results.py lzn-results
    python docs/make_results.py lzn-fashion-results --dataset fashion-mnist --copy_to docs/results/fashion-mnist

`--copy_to` also copies each evaluated run's small files (JSON and PNG, never weights) to `DIR/<run>/`.
"""

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np

DATASETS = {
    "digits": dict(
        title="scikit-learn's 8x8 digits", prefix="results", preset="digits", fd="fd_digits", fd_label="MLP features",
        kinds={
            "gen-lzn": "RF + LZN latent (`digits-generation`)",
            "gen-rf": "RF, no LZN latent (`--without_lzn_latent`)",
            "joint": "LZN joint model (`digits-joint`, train_joint.py)",
            "cond-rf": "class-conditional RF, no LZN latent",
            "rep": "LZN case study 2 (`digits-representation`)",
        }),
    "fashion-mnist": dict(
        title="Fashion-MNIST (28x28)", prefix="results_fashion_mnist", preset="fashion-mnist", fd="fd_cnn", fd_label="CNN-judge features",
        kinds={
            "gen-lzn": "RF + LZN latent (`fashion-mnist-generation`)",
            "gen-rf": "RF, no LZN latent (`--without_lzn_latent`)",
            "joint": "LZN joint model (`fashion-mnist-joint`, train_joint.py)",
            "cond-rf": "class-conditional RF, no LZN latent",
            "rep": "LZN case study 2 (`fashion-mnist-representation`)",
            "simclr": "SimCLR (`--objective simclr`), same encoder and budget",
            "mnist-joint": "MNIST: LZN joint model (`fashion-mnist-joint`)",
        }),
}
PERCENT = dict(scale=100.0, digits=2, unit=" %")


def run_folders(runs: Path, kind: str):
    """The ``<kind>-<seed>`` folders under ``runs`` (the seed a whole number: ``simclr-0-extra`` is not one)."""
    return [path for path in runs.glob(f"{kind}-[0-9]*") if re.fullmatch(rf"{re.escape(kind)}-\d+", path.name)]


def load_runs(runs: Path, kinds):
    """{kind: [merged metrics of each seed]} (each with its `seed`); training metrics prefixed `train:`."""
    found = {}
    for kind in kinds:
        seeds = []
        for folder in sorted(run_folders(runs, kind), key=lambda path: int(path.name.rsplit("-", 1)[1])):
            if not (folder / "eval_metrics.json").is_file():
                continue
            merged = json.loads((folder / "eval_metrics.json").read_text())
            if (folder / "metrics.json").is_file():
                merged.update({f"train:{k}": v for k, v in json.loads((folder / "metrics.json").read_text()).items()})
            merged["run_seed"] = int(folder.name.rsplit("-", 1)[1])
            seeds.append(merged)
        if seeds:
            found[kind] = seeds
    return found


def value_of(run, key, scale=1.0):
    value = run.get(key)
    return value * scale if isinstance(value, (int, float)) else None


def stats(runs, kind, key, scale=1.0):
    """(mean, std, n) of `key` over the seeds of `kind` (std with ddof 1), or None."""
    values = [v for v in (value_of(run, key, scale) for run in runs.get(kind, [])) if v is not None]
    if not values:
        return None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values)


def cell(runs, kind, key, scale=1.0, digits=3, unit=""):
    value = stats(runs, kind, key, scale)
    if value is None:
        return "–"
    return f"{value[0]:.{digits}f}{unit}" if value[2] == 1 else f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}{unit}"


def paired(runs, kind_a, kind_b, key):
    """[(seed, a, b)] for the seeds both kinds have."""
    b_by_seed = {run["run_seed"]: value_of(run, key) for run in runs.get(kind_b, [])}
    return [(run["run_seed"], value_of(run, key), b_by_seed[run["run_seed"]]) for run in runs.get(kind_a, [])
            if run["run_seed"] in b_by_seed and value_of(run, key) is not None and b_by_seed[run["run_seed"]] is not None]


def tables(runs, profile) -> str:
    kinds, fd = profile["kinds"], profile["fd"]
    floor = stats(runs, "gen-lzn", f"{fd}/real_test") or stats(runs, "joint", f"{fd}/real_test")
    subset = any(f"{fd}/test_size_subset" in run for seeds in runs.values() for run in seeds)
    subset_head, subset_rule = (" FD, held-out-size subset ↓ |", "---|") if subset else ("", "")

    def subset_cell(kind):
        return f" {cell(runs, kind, f'{fd}/test_size_subset')} |" if subset else ""

    lines = ["### Case study 1: the same RF decoder with and without the LZN latent (unconditional)", "",
             f"| decoder | seeds | FD ({profile['fd_label']}), all samples ↓ |{subset_head} reconstruction error ↓ | class-histogram TV ↓ |",
             f"|---|---|---|{subset_rule}---|---|"]
    for kind in ("gen-lzn", "gen-rf"):
        lines.append(f"| {kinds[kind]} | {len(runs.get(kind, []))} | {cell(runs, kind, fd)} |{subset_cell(kind)} "
                     f"{cell(runs, kind, 'reconstruction_error')} | {cell(runs, kind, 'judge/class_histogram_tv')} |")
    if floor:
        lines += ["", f"Real held-out images against the same reference: FD {floor[0]:.3f}."]
    pairs_fd, pairs_rec = paired(runs, "gen-lzn", "gen-rf", fd), paired(runs, "gen-lzn", "gen-rf", "reconstruction_error")
    if pairs_fd:
        rec_by_seed = {seed: (a, b) for seed, a, b in pairs_rec}
        lines += ["", "| seed | FD with / without the LZN latent | reconstruction error with / without |", "|---|---|---|"]
        for seed, a, b in pairs_fd:
            rec = rec_by_seed.get(seed)
            lines.append(f"| {seed} | {a:.3f} / {b:.3f} | " + ("–" if rec is None else f"{rec[0]:.3f} / {rec[1]:.3f}") + " |")
    lines += ["", "### Case study 3: joint generation + classification", "",
              "| model | seeds | batch mode, zero noise | batch mode, random noise | anchor bank | cross-entropy classifier |",
              "|---|---|---|---|---|---|"]
    for kind in ("joint", "mnist-joint"):
        if kind in kinds and (kind == "joint" or kind in runs):
            lines.append(f"| {kinds[kind]} | {len(runs.get(kind, []))} | {cell(runs, kind, 'accuracy/batch_zero_noise', **PERCENT)} | "
                         f"{cell(runs, kind, 'accuracy/batch_random_noise', **PERCENT)} | {cell(runs, kind, 'accuracy/anchor_bank', **PERCENT)} | "
                         f"{cell(runs, kind, 'accuracy/cross_entropy_classifier', **PERCENT)} |")
    lines += ["", f"| generator | seeds | FD ({profile['fd_label']}), all samples ↓ |{subset_head} judge agreement ↑ | reconstruction error ↓ |",
              f"|---|---|---|{subset_rule}---|---|"]
    for kind in ("joint", "cond-rf", "mnist-joint"):
        if kind in kinds and (kind != "mnist-joint" or kind in runs):
            lines.append(f"| {kinds[kind]} | {len(runs.get(kind, []))} | {cell(runs, kind, fd)} |{subset_cell(kind)} "
                         f"{cell(runs, kind, 'judge/agreement', **PERCENT)} | {cell(runs, kind, 'reconstruction_error')} |")
    lines += ["", "### Case study 2: linear probe on frozen features (held-out accuracy)", "",
              "| features | seeds | linear probe |", "|---|---|---|"]
    for label, kind, key in probe_rows(runs, profile):
        lines.append(f"| {label} | {len(runs.get(kind, []))} | {cell(runs, kind, key, **PERCENT)} |")
    return "\n".join(lines)


def probe_rows(runs, profile):
    """(label, kind, key) of the probe table; `_backbone` rows where the runs measured the pre-head feature."""
    preset = profile["preset"]
    rows = [(f"LZN case study 2 encoder (`{preset}-representation`)", "rep", "linear_probe/lzn")]
    if "simclr" in profile["kinds"]:
        rows.append(("SimCLR encoder, same architecture, views and budget", "simclr", "linear_probe/simclr"))
    rows += [("randomly initialised encoder, same architecture", "rep", "linear_probe/random_init"),
             ("supervised encoder (cross-entropy), same architecture", "rep", "linear_probe/supervised"),
             ("raw pixels", "rep", "linear_probe/pixels"),
             ("for reference: the LZN joint model's encoder (labels used)", "joint", "linear_probe/lzn"),
             ("for reference: the case-1 LZN encoder (RF loss only)", "gen-lzn", "linear_probe/lzn")]
    with_backbone = []
    for label, kind, key in rows:
        with_backbone.append((label + (" — anchor" if key != "linear_probe/pixels" else ""), kind, key))
        if stats(runs, kind, key + "_backbone") is not None:
            with_backbone.append((label + " — pre-head backbone feature", kind, key + "_backbone"))
    if not any(stats(runs, kind, key) for _, kind, key in with_backbone if key.endswith("_backbone")):
        return rows  # no backbone feature measured (the digits runs): the labels stay as they were
    return with_backbone


def claim_2_baselines(runs):
    """(best random-init feature, raw pixels) as (mean %, std, seeds) or None: claim 2's target is 3 points above both.

    The best of the random-init encoder's anchor and backbone: a random network's backbone may be far worse than its
    anchor, and the claim is about what training adds over the better one."""
    random_init, random_backbone, pixels = (stats(runs, "rep", key, 100) for key in (
        "linear_probe/random_init", "linear_probe/random_init_backbone", "linear_probe/pixels"))
    candidates = [value for value in (random_init, random_backbone) if value]
    return (max(candidates, key=lambda value: value[0]) if candidates else None), pixels


def verdicts(runs, profile) -> str:
    """Each claim against its issue's target, from the figures above (`–` where runs are missing)."""
    fd, lines = profile["fd"], ["### Verdicts (targets of issue 16)", ""]
    pairs_fd, pairs_rec = paired(runs, "gen-lzn", "gen-rf", fd), paired(runs, "gen-lzn", "gen-rf", "reconstruction_error")
    if pairs_fd and pairs_rec:
        fd_wins = sum(a < b for _, a, b in pairs_fd)
        rec_wins = sum(a < b for _, a, b in pairs_rec)
        holds = fd_wins == len(pairs_fd) and rec_wins == len(pairs_rec)
        lines.append(f"- Claim 1 (FD and reconstruction lower with the LZN latent in every seed): FD lower in {fd_wins} of "
                     f"{len(pairs_fd)} seeds, reconstruction lower in {rec_wins} of {len(pairs_rec)}: "
                     f"**{'holds' if holds else 'does not hold'}** ({len(pairs_fd)} seed{'s' * (len(pairs_fd) != 1)}).")
    for kind, claim in (("joint", "Claim 3"), ("mnist-joint", "Claim 3 on MNIST")):
        joint, ce = stats(runs, kind, "accuracy/batch_zero_noise", 100), stats(runs, kind, "accuracy/cross_entropy_classifier", 100)
        judge, bank = stats(runs, kind, "judge/agreement", 100), stats(runs, kind, "accuracy/anchor_bank", 100)
        if not (joint and ce and judge):
            continue
        # two targets: accuracy within 1 point of cross-entropy, and samples judged as their class >= 85 %
        targets = {"accuracy": joint[0] >= ce[0] - 1.0, "judge": judge[0] >= 85.0}
        met, missed = [name for name in targets if targets[name]], [name for name in targets if not targets[name]]
        verdict = "**holds**" if not missed else "**does not hold**"
        if missed and met:
            verdict += f" (the {missed[0]} target is missed, the {met[0]} target met)"
        lines.append(f"- {claim} (accuracy within 1 point of a cross-entropy classifier, samples judged as their class ≥ 85 %): "
                     f"{joint[0]:.2f} % (anchor bank {bank[0]:.2f} %) vs {ce[0]:.2f} %, judge {judge[0]:.1f} %: "
                     f"{verdict} ({joint[2]} seed{'s' * (joint[2] != 1)}).")
    lzn, (random_init, pixels) = stats(runs, "rep", "linear_probe/lzn", 100), claim_2_baselines(runs)
    if lzn and random_init and pixels:
        # each LZN feature against the best random-init feature and against raw pixels: +3 points over both
        best_random = random_init[0]
        simclr = {"anchor": stats(runs, "simclr", "linear_probe/simclr", 100),
                  "pre-head backbone feature": stats(runs, "simclr", "linear_probe/simclr_backbone", 100)}
        features = [("anchor", lzn), ("pre-head backbone feature", stats(runs, "rep", "linear_probe/lzn_backbone", 100))]
        parts, passing, failing = [], [], []
        for name, value in features:
            if value is None:
                continue
            over_random, over_pixels = value[0] - best_random, value[0] - pixels[0]
            text = f"{name} {value[0]:.2f} % ({over_random:+.1f} over the best random-init feature, {over_pixels:+.1f} over pixels"
            if simclr[name]:
                text += f", {value[0] - simclr[name][0]:+.1f} vs SimCLR's"
            parts.append(text + ")")
            (passing if over_random >= 3.0 and over_pixels >= 3.0 else failing).append(name)
        if not passing:
            verdict = "**does not hold**"
        elif not failing:
            verdict = "**holds**"
        else:
            verdict = f"**holds for the {' and '.join(passing)}**, not for the {' and '.join(failing)}"
        lines.append(f"- Claim 2 (probe ≥ 3 points above the same encoder at random initialisation and above raw pixels; "
                     f"random init {best_random:.2f} %, pixels {pixels[0]:.2f} %): {'; '.join(parts)}: "
                     f"{verdict} ({lzn[2]} seed{'s' * (lzn[2] != 1)}).")
    return "\n".join(lines) if len(lines) > 2 else ""


def bar_panel(axis, runs, bars, title, ylabel, scale=1.0):
    labels, means, stds = [], [], []
    for label, kind, key in bars:
        value = stats(runs, kind, key, scale)
        if value is not None:
            labels.append(label), means.append(value[0]), stds.append(value[1])
    positions = np.arange(len(labels))
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2", "#937860", "#da8bc3", "#8c8c8c"]
    axis.bar(positions, means, yerr=stds, capsize=4, color=colors[: len(labels)])
    axis.set_xticks(positions, labels, rotation=20, ha="right", fontsize=8)
    axis.set_title(title, fontsize=10)
    axis.set_ylabel(ylabel, fontsize=9)
    if means and scale == 100.0:  # accuracies: a window around the bars
        low = min(m - s for m, s in zip(means, stds))
        axis.set_ylim(max(0.0, np.floor(low / 5) * 5 - 5), 100)


def plots(runs, profile, images: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fd = profile["fd"]
    figure, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    generators = [("RF + LZN", "gen-lzn"), ("RF", "gen-rf"), ("joint LZN", "joint"), ("cond. RF", "cond-rf")]
    bar_panel(axes[0], runs, [(label, kind, fd) for label, kind in generators],
              f"Fréchet distance ({profile['fd_label']})", "FD (lower is better)")
    bar_panel(axes[1], runs, [(label, kind, "reconstruction_error") for label, kind in generators],
              "Reconstruction error (20 Euler steps each way)", "mean L2 in [-1, 1] (lower is better)")
    bar_panel(axes[2], runs, [("batch, zero noise", "joint", "accuracy/batch_zero_noise"),
                              ("batch, random noise", "joint", "accuracy/batch_random_noise"),
                              ("anchor bank", "joint", "accuracy/anchor_bank"),
                              ("cross-entropy", "joint", "accuracy/cross_entropy_classifier")],
              "Case 3: held-out accuracy", "accuracy (%)", scale=100.0)
    probes = [("LZN case 2", "rep", "linear_probe/lzn"), ("LZN pre-head", "rep", "linear_probe/lzn_backbone"),
              ("SimCLR", "simclr", "linear_probe/simclr"), ("SimCLR pre-head", "simclr", "linear_probe/simclr_backbone"),
              ("random init", "rep", "linear_probe/random_init"), ("supervised", "rep", "linear_probe/supervised"),
              ("pixels", "rep", "linear_probe/pixels")]
    bar_panel(axes[3], runs, probes, "Case 2: linear probe (anchor unless pre-head)", "accuracy (%)", scale=100.0)
    # claim 2's target: 3 points above the best random-init feature and above raw pixels (the verdict's rule)
    baselines = [value for value in claim_2_baselines(runs) if value]
    if baselines:
        target = max(value[0] for value in baselines) + 3.0
        axes[3].axhline(target, color="black", linestyle="--", linewidth=1)
        axes[3].text(0.98, target, " target ", transform=axes[3].get_yaxis_transform(), ha="right", va="bottom", fontsize=8)
    seeds = max(len(seeds) for seeds in runs.values())
    spread = "one seed so far" if seeds == 1 else f"mean ± std over up to {seeds} seeds"
    figure.suptitle(f"LZN at CPU scale on {profile['title']} ({spread})", fontsize=11)
    figure.tight_layout()
    images.mkdir(parents=True, exist_ok=True)
    path = images / f"{profile['prefix']}.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def sample_figure(runs_dir: Path, profile, images: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    panels = [(kind, runs_dir / f"{kind}-0" / "eval_samples.png") for kind in ("gen-lzn", "gen-rf", "joint", "cond-rf")]
    panels = [(kind, path) for kind, path in panels if path.is_file()]
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.6))
    for axis, (kind, path) in zip(np.atleast_1d(axes), panels):
        axis.imshow(Image.open(path), cmap="gray")
        axis.set_title(profile["kinds"][kind].replace("`", ""), fontsize=8)
        axis.axis("off")
    figure.tight_layout()
    path = images / f"{profile['prefix']}_samples.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def copy_small_files(runs_dir: Path, kinds, destination: Path) -> int:
    """Each evaluated run's JSON and PNG files (not its weights) into destination/<run>/; returns the runs copied."""
    copied = 0
    for kind in kinds:
        for folder in sorted(run_folders(runs_dir, kind)):
            if not (folder / "eval_metrics.json").is_file():
                continue
            target = destination / folder.name
            target.mkdir(parents=True, exist_ok=True)
            for path in sorted([*folder.glob("*.json"), *folder.glob("*.png")]):
                shutil.copyfile(path, target / path.name)
            copied += 1
    return copied


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="the folder holding <kind>-<seed> run folders")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="digits", help="which reproduction the runs are (default digits)")
    parser.add_argument("--images", type=Path, default=Path(__file__).parent / "images")
    parser.add_argument("--copy_to", type=Path, default=None, help="copy each evaluated run's JSON and PNG files to DIR/<run>/")
    args = parser.parse_args()
    profile = DATASETS[args.dataset]
    runs = load_runs(args.runs, profile["kinds"])
    if not runs:
        raise SystemExit(f"no <kind>-<seed>/eval_metrics.json under {args.runs}: run the reproduction script first")
    print(tables(runs, profile))
    text = verdicts(runs, profile)
    if text:
        print("\n" + text)
    written = [plots(runs, profile, args.images), sample_figure(args.runs, profile, args.images)]
    if args.copy_to is not None:
        print(f"\ncopied {copy_small_files(args.runs, profile['kinds'], args.copy_to)} runs' JSON and PNG files to {args.copy_to}")
    print("\nwrote " + " and ".join(str(path) for path in written if path is not None))


if __name__ == "__main__":
    main()
