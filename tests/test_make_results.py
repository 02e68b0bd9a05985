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
