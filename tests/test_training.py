"""The training scripts, end to end, through `accelerate launch` subprocesses (CPU, offline, a few steps each).

* each script on a tiny image folder and on the digits; the saved folders load with `from_pretrained`;
* resume: a run resumed from `checkpoint-2` ends with the same weights and EMA as an uninterrupted run;
* two processes (gloo) with the same global batch give the same updates as one process;
* a non-finite loss on one process skips the update on every process; the decoder freeze;
* `--push_to_hub` offline fails with a clear message after saving everything (the upload call itself is
  checked with the network mocked in test_training_package.py).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from lzn_hf import LZNForImageClassification, LZNModel
from lzn_hf.training import load_digits, read_run_config
from lzn_test_utils import free_port

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def launch(script, *args, tmp_path, num_processes=1, expect_success=True, env=None, nonfinite_updates=()):
    """`accelerate launch` (as `python -m accelerate.commands.launch`) of an example script; returns the result.

    ``nonfinite_updates``: run it through tests/inject_nonfinite.py, which makes the last process's loss NaN at
    those updates."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--num_processes", str(num_processes)]
    if num_processes > 1:
        command += ["--multi_gpu", "--main_process_port", str(free_port())]
    if nonfinite_updates:
        command += [str(Path(__file__).with_name("inject_nonfinite.py")), *map(str, nonfinite_updates), "--"]
    command += [str(EXAMPLES / script), *map(str, args)]
    environment = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
        "OMP_NUM_THREADS": "1",  # tiny models: one thread per process is fastest, and robust on a busy machine
        **(env or {}),
    }
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
    if expect_success and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


def assert_same_weights(a, b, atol=0.0):
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=lambda m: f"{key}: {m}")


def card_metadata(folder):
    text = (Path(folder) / "README.md").read_text()
    return yaml.safe_load(text.split("---")[1])


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """18 real digits (classes 0-2) as RGB PNGs of odd sizes in class sub-folders a/, b/, c/."""
    root = tmp_path_factory.mktemp("imagefolder")
    images, labels = load_digits("train")
    for name, label in zip("abc", range(3)):
        (root / name).mkdir()
        for i, image in enumerate(images[labels == label][:6]):
            array = ((image[0].numpy() + 1) * 127.5).astype(np.uint8)
            Image.fromarray(array).convert("RGB").resize((11, 9)).save(root / name / f"{i}.png")
    return root


# ---------------------------------------------------------------------------------------------------------
# case study 3
# ---------------------------------------------------------------------------------------------------------
def test_joint_on_an_image_folder_saves_loadable_folders(image_folder, tmp_path):
    from lzn_hf.pipeline_lzn import LZNPipeline

    out = tmp_path / "joint"
    launch("train_joint.py", "--config", "tiny-joint", "--train_data_dir", image_folder, "--output_dir", out, "--train_batch_size", 4,
           "--max_train_steps", 3, "--checkpointing_steps", 2, "--checkpoints_total_limit", 1, "--logging_steps", 1,
           "--num_samples_per_class", 2, "--judge_samples_per_class", 2, "--num_inference_steps", 2, tmp_path=tmp_path)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]  # checkpoint-2 pruned to the limit
    assert {p.name for p in (out / "checkpoint-3").iterdir()} >= {"lzn", "lzn_ema", "optimizer.bin", "training_state.json"}
    model = LZNModel.from_pretrained(out / "model")
    assert model.config.num_classes == 3
    pipeline = LZNPipeline.from_pretrained(out / "pipeline")
    images = pipeline(labels=[0, 2], num_inference_steps=2, output_type="pt", generator=torch.manual_seed(0)).images
    assert images.shape == (2, 1, 8, 8) and 0 <= images.min() and images.max() <= 1
    classifier = LZNForImageClassification.from_pretrained(out / "classifier")
    assert classifier.anchor_bank.shape == (18, 16)
    assert classifier(torch.rand(2, 1, 8, 8) * 2 - 1).logits.shape == (2, 3)
    for folder, tag in ((out, "image-classification"), (out / "pipeline", "unconditional-image-generation"),
                        (out / "model", "image-feature-extraction"), (out / "classifier", "image-classification")):
        meta = card_metadata(folder)
        assert meta["library_name"] == "lzn_hf" and meta["pipeline_tag"] == tag and meta["datasets"] == ["imagefolder"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_updates"] == 3 and "judge/agreement_with_conditioning_class" in metrics
    assert Image.open(out / "samples.png").size[1] > 3 * 8 and (out / "training_curves.png").is_file()
    assert list((out / "logs").rglob("events.out.tfevents.*")), "no TensorBoard events"
    history = [json.loads(line) for line in (out / "logs" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3] and {"rf_loss", "label_loss", "grad_norm", "lr/label_anchors", "skipped_steps"} <= set(history[0])
    record = read_run_config(out)  # what evaluation needs, as data
    assert record["script"] == "train_joint.py" and record["flags"]["train_data_dir"] == str(image_folder)
    assert record["global_batch_size"] == 4 and record["flags"]["seed"] == 0 and "hub_token" not in record["flags"]
    assert record["script_flags"]["judge_samples_per_class"] == 2
    # issue 16: evaluate.py finds the image folder in the run's record (no --train_data_dir again)
    result = subprocess.run([sys.executable, str(EXAMPLES / "evaluate.py"), str(out), "--num_samples", "6", "--num_inference_steps", "2",
                             "--probe_epochs", "2", "--noise_draws", "1", "--reconstruction_steps", "2"],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((out / "eval_metrics.json").read_text())
    assert evaluated["dataset"] == "imagefolder" and evaluated["num_train_images"] == 18 and evaluated["batch_size"] == 4

    # issue 12: a recovery run after an export killed midway (model/ and metrics.json gone) resumes at
    # --max_train_steps: no update, the same model again, and the timings of the run that trained (not zeros)
    weights_before = weights(out / "model")
    shutil.rmtree(out / "model")
    (out / "metrics.json").unlink()
    result = launch("train_joint.py", "--config", "tiny-joint", "--train_data_dir", image_folder, "--output_dir", out, "--train_batch_size", 4,
                    "--max_train_steps", 3, "--resume_from_checkpoint", "latest", "--logging_steps", 1, "--num_samples_per_class", 2,
                    "--judge_samples_per_class", 2, "--num_inference_steps", 2, "--ce_ceiling_steps", 0, tmp_path=tmp_path)
    assert "no update to do" in result.stdout + result.stderr
    recovered = json.loads((out / "metrics.json").read_text())
    assert recovered["train_updates"] == 3 and recovered["updates_this_run"] == 0
    assert recovered["train_wall_time_s"] == pytest.approx(metrics["train_wall_time_s"], rel=1e-6)
    assert all(torch.equal(weights_before[k], weights(out / "model")[k]) for k in weights_before)
    assert f"| training wall time (s) | {round(metrics['train_wall_time_s'])} |" in (out / "README.md").read_text()
    assert [json.loads(line)["step"] for line in (out / "logs" / "history.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert "judge/agreement" in evaluated and evaluated["lzn_latent"] == "label_zone"


# Adam with a large epsilon is linear in the gradient: the first Adam steps would otherwise turn float rounding
# of near-zero gradients (summed in a different order by the all-reduce) into sign flips of whole learning rates.
JOINT_DIGITS = ["--config", "digits-joint", "--max_train_steps", 3, "--decoder_freeze_step", 2,
                "--checkpointing_steps", 1, "--logging_steps", 1, "--skip_evaluation", "--num_samples_per_class", 1, "--report_to", "none",
                "--adam_epsilon", 1.0, "--lr_warmup_steps", 0, "--learning_rate_encoder", 0.5, "--learning_rate_decoder", 0.5,
                "--learning_rate_label_anchors", 0.5]


@pytest.fixture(scope="module")
def joint_digits(tmp_path_factory):
    """Case study 3 on the digits, global batch 16, 3 updates (the 2nd with a NaN loss on the last process, the
    decoder frozen after the 2nd): one process, and the same run resumed from its checkpoint-2."""
    tmp = tmp_path_factory.mktemp("joint-digits")
    single = tmp / "single"
    launch("train_joint.py", *JOINT_DIGITS, "--train_batch_size", 16, "--output_dir", single, tmp_path=tmp, nonfinite_updates=[2])
    resumed = tmp / "resumed"
    resumed.mkdir()
    shutil.copytree(single / "checkpoint-2", resumed / "checkpoint-2")
    result = launch("train_joint.py", *JOINT_DIGITS, "--train_batch_size", 16, "--output_dir", resumed, "--resume_from_checkpoint", "latest",
                    tmp_path=tmp, nonfinite_updates=[2])
    return {"single": single, "resumed": resumed, "resume_log": result.stdout + result.stderr, "tmp": tmp}


def test_joint_digits_skip_freeze_and_artifacts(joint_digits):
    single = joint_digits["single"]
    metrics = json.loads((single / "metrics.json").read_text())
    assert metrics["skipped_steps"] == 1 and metrics["train_updates"] == 3 and metrics["global_batch_size"] == 16
    # update 2 was skipped: nothing moved, the EMA did not update
    assert_same_weights(single / "checkpoint-1" / "lzn", single / "checkpoint-2" / "lzn")
    assert json.loads((single / "checkpoint-2" / "lzn_ema" / "ema_state.json").read_text())["image_encoder"]["num_updates"] == 1
    # after the freeze (update 2) the decoder and its EMA stay; the encoder and the label anchors go on
    raw2, raw3 = weights(single / "checkpoint-2" / "lzn"), weights(single / "checkpoint-3" / "lzn")
    ema2, ema3 = weights(single / "checkpoint-2" / "lzn_ema"), weights(single / "checkpoint-3" / "lzn_ema")
    decoder_keys = [key for key in raw2 if key.startswith("image_decoder.")]
    assert decoder_keys and all(torch.equal(raw2[k], raw3[k]) and torch.equal(ema2[k], ema3[k]) for k in decoder_keys)
    assert any(not torch.equal(raw2[k], raw3[k]) for k in raw2 if k.startswith("image_encoder."))
    assert not torch.equal(raw2["label_anchors.anchors"], raw3["label_anchors.anchors"])
    assert not torch.equal(ema2["label_anchors.anchors"], ema3["label_anchors.anchors"])
    state = json.loads((single / "checkpoint-3" / "lzn_ema" / "ema_state.json").read_text())
    assert (state["image_encoder"]["num_updates"], state["image_decoder"]["num_updates"]) == (2, 1)
    LZNModel.from_pretrained(single / "model")
    assert LZNForImageClassification.from_pretrained(single / "classifier").anchor_bank.shape == (1437, 32)


def test_resume_continues_from_the_saved_step(joint_digits):
    single, resumed = joint_digits["single"], joint_digits["resumed"]
    assert "resuming from" in joint_digits["resume_log"] and str(resumed / "checkpoint-2") in joint_digits["resume_log"]
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["train_updates"] == 3 and metrics["updates_this_run"] == 1  # the model's updates; this run's share
    assert metrics["skipped_steps"] == 1  # the counter came back with the checkpoint
    assert [json.loads(line)["step"] for line in (resumed / "logs" / "history.jsonl").read_text().splitlines()] == [3]
    # same data position, noise, optimizer, scheduler, EMA and freeze state as the uninterrupted run
    assert_same_weights(resumed / "checkpoint-3" / "lzn", single / "checkpoint-3" / "lzn", atol=1e-6)
    assert_same_weights(resumed / "checkpoint-3" / "lzn_ema", single / "checkpoint-3" / "lzn_ema", atol=1e-6)
    assert (resumed / "checkpoint-3" / "lzn_ema" / "ema_state.json").read_text() == (single / "checkpoint-3" / "lzn_ema" / "ema_state.json").read_text()


def test_two_processes_give_the_single_process_updates(joint_digits):
    """Two gloo ranks with 8 images each = one process with the same 16: same updates (anchors are gathered
    with gradients, class weights and the NaN-skip decision are global, noise depends on the global index)."""
    tmp = joint_digits["tmp"]
    double = tmp / "double"
    launch("train_joint.py", *JOINT_DIGITS, "--train_batch_size", 8, "--output_dir", double, tmp_path=tmp, num_processes=2,
           nonfinite_updates=[2])
    metrics = json.loads((double / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["global_batch_size"] == 16 and metrics["skipped_steps"] == 1
    for step in (1, 3):
        assert_same_weights(double / f"checkpoint-{step}" / "lzn", joint_digits["single"] / f"checkpoint-{step}" / "lzn", atol=1e-5)
        assert_same_weights(double / f"checkpoint-{step}" / "lzn_ema", joint_digits["single"] / f"checkpoint-{step}" / "lzn_ema", atol=1e-5)
    before, after = weights(double / "checkpoint-1" / "lzn"), weights(double / "checkpoint-3" / "lzn")
    assert max((before[k] - after[k]).abs().max() for k in before) > 1e-3  # updates are >= 100x the tolerance
    assert (double / "checkpoint-3" / "random_states_1.pkl").is_file()


# ---------------------------------------------------------------------------------------------------------
# case study 1
# ---------------------------------------------------------------------------------------------------------
def test_generation_on_an_image_folder(image_folder, tmp_path):
    from lzn_hf.pipeline_lzn import LZNPipeline

    out = tmp_path / "generation"
    launch("train_generation.py", "--config", "tiny-generation", "--train_data_dir", image_folder, "--output_dir", out,
           "--train_batch_size", 4, "--max_train_steps", 2, "--checkpointing_steps", 1, "--num_samples", 4, "--num_inference_steps", 2,
           "--report_to", "none", tmp_path=tmp_path)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    LZNModel.from_pretrained(out / "model")
    images = LZNPipeline.from_pretrained(out / "pipeline")(num_images=2, num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 8, 8, 1)
    assert card_metadata(out / "pipeline")["pipeline_tag"] == "unconditional-image-generation"
    assert card_metadata(out)["datasets"] == ["imagefolder"] and card_metadata(out / "model")["library_name"] == "lzn_hf"
    assert (out / "samples.png").is_file() and json.loads((out / "metrics.json").read_text())["train_updates"] == 2


def test_generation_on_digits_push_to_hub_offline_fails_clearly_after_saving(tmp_path):
    out = tmp_path / "generation-digits"
    result = launch("train_generation.py", "--config", "tiny-generation", "--dataset_name", "digits", "--output_dir", out,
                    "--train_batch_size", 8, "--max_train_steps", 2, "--checkpointing_steps", 0, "--num_samples", 4,
                    "--num_inference_steps", 2, "--report_to", "none", "--push_to_hub", "--hub_model_id", "someone/lzn-test",
                    tmp_path=tmp_path, expect_success=False)
    assert result.returncode == 1
    assert "push to the Hub repo 'someone/lzn-test' failed" in result.stderr and f"Everything is saved in {out}" in result.stderr
    assert not list(out.glob("checkpoint-*"))
    LZNModel.from_pretrained(out / "model")
    assert (out / "pipeline" / "model_index.json").is_file() and (out / "samples.png").is_file()


# ---------------------------------------------------------------------------------------------------------
# case study 2
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data", ["imagefolder", "digits"])
def test_representation(data, image_folder, tmp_path):
    out = tmp_path / "representation"
    source = ["--train_data_dir", image_folder] if data == "imagefolder" else ["--dataset_name", "digits", "--max_eval_samples", 200]
    launch("train_representation.py", "--config", "tiny-representation", *source, "--resolution", 16, "--output_dir", out,
           "--train_batch_size", 6, "--max_train_steps", 2, "--checkpointing_steps", 2, "--report_to", "none", tmp_path=tmp_path)
    model = LZNModel.from_pretrained(out / "model")
    features = model.get_image_features(torch.rand(2, 3, 16, 16) * 2 - 1).pooler_output
    assert features.shape == (2, model.image_encoder.feature_dim)
    assert (out / "checkpoint-2" / "lzn_ema" / "ema_state.json").is_file() and (out / "views.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert ("accuracy/linear_probe" in metrics) == (data == "digits")
    assert card_metadata(out)["pipeline_tag"] == "image-feature-extraction"


def test_skip_evaluation_loads_no_evaluation_images(image_folder, tmp_path, monkeypatch):
    """In-process run of train_representation.py: with --skip_evaluation only the training split is loaded."""
    import importlib.util

    from accelerate.state import AcceleratorState, GradientState

    from lzn_hf.training import data

    loaded = []
    load = data.load_image_dataset
    monkeypatch.setattr(data, "load_image_dataset", lambda *a, split="train", **kw: loaded.append(split) or load(*a, split=split, **kw))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    spec = importlib.util.spec_from_file_location("lzn_train_representation", EXAMPLES / "train_representation.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "skip"
    try:
        script.main(*script.parse_args(["--config", "tiny-representation", "--train_data_dir", str(image_folder), "--resolution", "16",
                                         "--output_dir", str(out), "--train_batch_size", "6", "--max_train_steps", "1",
                                         "--checkpointing_steps", "0", "--report_to", "none", "--skip_evaluation"]))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert loaded == ["train"] and (out / "model" / "model.safetensors").is_file() and not (out / "views.png").exists()
    assert read_run_config(out)["flags"]["skip_evaluation"] is True


# ---------------------------------------------------------------------------------------------------------
# crash safety: SIGKILL at random moments (mid-step and mid-save), then resume
# ---------------------------------------------------------------------------------------------------------
def test_sigkill_never_leaves_a_checkpoint_that_resume_would_pick(tmp_path):
    import random
    import signal
    import time

    out = tmp_path / "killed"
    args = ["--config", "digits-joint", "--dataset_name", "digits", "--train_batch_size", 8, "--max_train_steps", 40,
            "--checkpointing_steps", 1, "--checkpoints_total_limit", 3, "--skip_evaluation", "--report_to", "none",
            "--num_samples_per_class", 1, "--output_dir", out]
    command = [sys.executable, str(EXAMPLES / "train_joint.py"), *map(str, args)]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)
    for attempt in range(3):
        process = subprocess.Popen([*command, "--resume_from_checkpoint", "latest"], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and not [p for p in out.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]:
            time.sleep(0.05)  # wait for training to be under way, with a first complete checkpoint
        time.sleep(rng.uniform(0.0, 1.5))  # then kill at a random moment: mid-step or mid-save
        assert process.poll() is None, "training exited before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
        complete = sorted(p for p in out.glob("checkpoint-*") if p.name.split("-")[-1].isdigit())
        assert complete, f"attempt {attempt}: no complete checkpoint"
        for checkpoint in complete:  # every folder that resume could pick loads
            LZNModel.from_pretrained(checkpoint / "lzn")
            LZNModel.from_pretrained(checkpoint / "lzn_ema")
            assert (checkpoint / "optimizer.bin").is_file()
        assert len(complete) <= 3
    result = subprocess.run([*command, "--resume_from_checkpoint", "latest"], env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout + result.stderr
    assert (out / "checkpoint-40").is_dir()  # trained to the end after the kills
    LZNModel.from_pretrained(out / "model")
    assert not list(out.glob("*.partial"))
