"""docs/make_results.py: mean ± std over seeds from run folders, and the PNGs of docs/results.md."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "make_results.py"


def _run_folder(root: Path, name: str, metrics: dict, with_samples: bool = False):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "eval_metrics.json").write_text(json.dumps(metrics))
    (folder / "metrics.json").write_text(json.dumps({"seed": int(name.rsplit("-", 1)[1])}))
    if with_samples:
        Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(folder / "eval_samples.png")


def test_tables_and_plots(tmp_path):
    runs = tmp_path / "runs"
    for seed, (fd_lzn, fd_rf) in enumerate([(0.1, 0.3), (0.3, 0.5)]):
        _run_folder(runs, f"gen-lzn-{seed}", {"fd_digits": fd_lzn, "reconstruction_error": 0.4}, with_samples=True)
        _run_folder(runs, f"gen-rf-{seed}", {"fd_digits": fd_rf, "reconstruction_error": 0.5})
        _run_folder(runs, f"rep-{seed}", {"linear_probe/lzn": 0.9 + 0.02 * seed, "linear_probe/random_init": 0.95})
    (runs / "gen-rf-7").mkdir()  # a run folder not evaluated yet is ignored
    (runs / "rep-0-extra").mkdir()  # nor a folder whose name only starts like a run's
    (runs / "rep-0-extra" / "eval_metrics.json").write_text(json.dumps({"linear_probe/lzn": 0.0}))
    images = tmp_path / "images"
    result = subprocess.run([sys.executable, str(SCRIPT), str(runs), "--images", str(images)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # mean ± std with ddof 1: (0.1, 0.3) -> 0.200 ± 0.141
    assert "| 2 | 0.200 ± 0.141 |" in result.stdout
    assert "| 2 | 0.400 ± 0.141 |" in result.stdout
    assert "91.00 ± 1.41 %" in result.stdout and "95.00 ± 0.00 %" in result.stdout
    assert "| LZN joint model (`digits-joint`, train_joint.py) | 0 | – |" in result.stdout  # missing kinds show a dash
    for png in ("results.png", "results_samples.png"):
        assert Image.open(images / png).size[0] > 100


def test_no_runs_is_an_error(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--images", str(tmp_path / "img")], capture_output=True, text=True)
    assert result.returncode != 0 and "eval_metrics.json" in result.stderr


def test_fashion_mnist_tables_verdicts_and_copies(tmp_path):
    """--dataset fashion-mnist: the CNN-judge FD, one row per seed of claim 1, SimCLR and backbone probe rows, a verdict
    per claim computed from the figures, and --copy_to copying JSON and PNG files but never weights."""
    runs = tmp_path / "runs"
    for seed in range(2):
        _run_folder(runs, f"gen-lzn-{seed}", {"fd_cnn": 1.0 + seed, "reconstruction_error": 0.30}, with_samples=True)
        # seed 1: the baseline has the lower FD, so claim 1 cannot hold "in every seed"
        _run_folder(runs, f"gen-rf-{seed}", {"fd_cnn": [1.5, 1.8][seed], "reconstruction_error": 0.40})
        _run_folder(runs, f"joint-{seed}", {"accuracy/batch_zero_noise": 0.90, "accuracy/anchor_bank": 0.89,
                                            "accuracy/cross_entropy_classifier": 0.905, "judge/agreement": 0.88, "fd_cnn": 2.0})
        _run_folder(runs, f"rep-{seed}", {"linear_probe/lzn": 0.80, "linear_probe/lzn_backbone": 0.85, "linear_probe/random_init": 0.78,
                                          "linear_probe/random_init_backbone": 0.80, "linear_probe/pixels": 0.79})
        _run_folder(runs, f"simclr-{seed}", {"linear_probe/simclr": 0.83})
    # one MNIST joint run: 3 points short of cross-entropy, samples recognised
    _run_folder(runs, "mnist-joint-0", {"accuracy/batch_zero_noise": 0.95, "accuracy/anchor_bank": 0.96,
                                        "accuracy/cross_entropy_classifier": 0.98, "judge/agreement": 0.90, "fd_cnn": 3.0})
    (runs / "joint-0" / "model").mkdir()
    (runs / "joint-0" / "model" / "model.safetensors").write_bytes(b"weights")
    result = subprocess.run([sys.executable, str(SCRIPT), str(runs), "--dataset", "fashion-mnist", "--images", str(tmp_path / "img"),
                             "--copy_to", str(tmp_path / "copied")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "| 2 | 1.500 ± 0.707 |" in out  # gen-lzn FD over the seeds
    assert "| 0 | 1.000 / 1.500 | 0.300 / 0.400 |" in out and "| 1 | 2.000 / 1.800 | 0.300 / 0.400 |" in out
    assert "SimCLR encoder, same architecture, views and budget — anchor | 2 | 83.00 ± 0.00 %" in out
    assert "pre-head backbone feature | 2 | 85.00 ± 0.00 %" in out
    assert "FD lower in 1 of 2 seeds, reconstruction lower in 2 of 2: **does not hold**" in out
    assert "90.00 % (anchor bank 89.00 %) vs 90.50 %, judge 88.0 %: **holds** (2 seeds)" in out  # within 1 point, judge >= 85 %
    assert "| MNIST: LZN joint model (`fashion-mnist-joint`) | 1 | 95.00 % |" in out
    assert ("Claim 3 on MNIST (accuracy within 1 point of a cross-entropy classifier, samples judged as their class ≥ 85 %): "
            "95.00 % (anchor bank 96.00 %) vs 98.00 %, judge 90.0 %: **does not hold** (the accuracy target is missed, "
            "the judge target met) (1 seed).") in out
    claim_2 = out.split("Claim 2")[1].splitlines()[0]
    # the backbone clears +3 points over the best random-init feature (80 %) and over pixels (79 %); the anchor does not
    assert "pre-head backbone feature 85.00 % (+5.0 over the best random-init feature, +6.0 over pixels" in claim_2
    assert "anchor 80.00 % (+0.0 over the best random-init feature, +1.0 over pixels, -3.0 vs SimCLR's)" in claim_2
    assert "**holds for the pre-head backbone feature**, not for the anchor (2 seeds)" in claim_2
    for png in ("results_fashion_mnist.png", "results_fashion_mnist_samples.png"):
        assert Image.open(tmp_path / "img" / png).size[0] > 100
    copied = tmp_path / "copied"
    assert sorted(p.name for p in copied.iterdir()) == sorted([f"{k}-{s}" for k in ("gen-lzn", "gen-rf", "joint", "rep", "simclr") for s in range(2)] + ["mnist-joint-0"])
    assert sorted(p.name for p in (copied / "gen-lzn-0").iterdir()) == ["eval_metrics.json", "eval_samples.png", "metrics.json"]
    assert not list(copied.rglob("*.safetensors"))
