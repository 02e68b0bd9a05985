"""Performance options of the training package (issue 15): CPU threads, mixed precision, fused Adam, for-each EMA.

* the thread count: each CPU process takes its share of the cores unless the user chose the count, and
  `accelerate launch`'s implicit ``OMP_NUM_THREADS=1`` is told apart from a user's explicit setting;
* under bf16 autocast the latent flows of all three scripts get float32 inputs with autocast off, while the
  networks run in bf16; a bf16 run of each script trains with finite losses and float32 weights and EMA;
* the fused Adam and the multi-tensor EMA equal the for-each Adam and the old per-tensor EMA formula to float
  tolerance.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import lzn_hf.modeling_lzn as modeling_lzn
from lzn_hf import LZNModel
from lzn_hf.training import ExponentialMovingAverage, adam_with_warmup, class_weights_from_labels, load_lzn_config
from lzn_hf.training.loop import LAUNCHER_MARKER, cpu_threads_per_process
from lzn_hf.training.optimization import fused_adam_supported

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"lzn_perf_{name}", EXAMPLES / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


# ---------------------------------------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------------------------------------
LAUNCHED = {LAUNCHER_MARKER: "NO", "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("environ, processes, cores, launcher, expected", [
    ({}, 1, 2, None, 2),                                                      # plain python, nothing set: all cores
    ({}, 2, 16, None, 8),                                                     # two processes share the cores
    ({}, 3, 2, None, 1),                                                      # never below one thread
    ({"OMP_NUM_THREADS": "1"}, 1, 2, None, None),                             # set by the user outside the launcher
    (LAUNCHED, 1, 2, ({"PATH": "/bin"}, ["accelerate", "launch", "train.py"]), 2),      # accelerate's implicit default
    (LAUNCHED, 1, 2, ({"OMP_NUM_THREADS": "1"}, ["accelerate", "launch", "train.py"]), None),  # launcher env: the user's
    (LAUNCHED, 1, 2, ({}, ["accelerate", "launch", "--num_cpu_threads_per_process", "1", "t.py"]), None),
    (LAUNCHED, 1, 2, ({}, ["accelerate", "launch", "--num_cpu_threads_per_process=1", "t.py"]), None),
    (LAUNCHED, 1, 2, None, 2),                                                # launcher unreadable: 1 is the default
    ({**LAUNCHED, "OMP_NUM_THREADS": "3"}, 1, 2, None, None),                 # ... any other value was chosen
])
def test_cpu_threads_per_process(environ, processes, cores, launcher, expected):
    assert cpu_threads_per_process(environ, processes, cores, launcher) == expected


def test_cpu_threads_per_process_rejects_bad_counts():
    with pytest.raises(ValueError, match="num_local_processes"):
        cpu_threads_per_process({}, 0, 2)


PROBE = """
import torch
from lzn_hf.training.loop import use_cpu_cores
use_cpu_cores(1)
print("THREADS", torch.get_num_threads())
"""


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads the launcher's settings from /proc")
def test_accelerate_launch_default_is_overridden_but_an_explicit_count_is_kept(tmp_path):
    """Real `accelerate launch` subprocesses: its implicit OMP_NUM_THREADS=1 becomes the core share; an explicit
    --num_cpu_threads_per_process 1 or OMP_NUM_THREADS=1 stays 1."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    cores = len(os.sched_getaffinity(0))
    environment = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    environment.update(ACCELERATE_USE_CPU="1", PYTHONPATH=os.pathsep.join(sys.path))
    base = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--num_processes", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no"]

    def threads(*flags, **env):
        result = subprocess.run([*base, *flags, str(probe)], env={**environment, **env}, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return int(result.stdout.split("THREADS")[1].split()[0])

    assert threads() == cores
    assert threads("--num_cpu_threads_per_process", "1") == 1
    assert threads(OMP_NUM_THREADS="1") == 1


# ---------------------------------------------------------------------------------------------------------
# mixed precision: the flows stay float32
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def flow_calls(monkeypatch):
    """Records, for every latent-flow call of the models and scripts, the dtypes of its tensor inputs and whether
    autocast was on."""
    calls = []

    def recording(function, name):
        def wrapped(*args, **kwargs):
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.is_floating_point()]
            calls.append((name, {t.dtype for t in tensors}, torch.is_autocast_enabled("cpu")))
            return function(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(modeling_lzn, "anchors_to_latents", recording(modeling_lzn.anchors_to_latents, "anchors_to_latents"))
    return calls, recording


def _inputs(config, batch, generator):
    size, channels = config.image_encoder_config.image_size, config.image_encoder_config.num_channels
    pixels = torch.rand(batch, channels, size, size, generator=generator) * 2 - 1
    return pixels, torch.randn(batch, config.latent_dim, generator=generator)


@pytest.mark.parametrize("script_name", ["train_joint", "train_generation", "train_representation"])
def test_flow_inputs_are_float32_under_bf16_autocast(script_name, flow_calls, monkeypatch):
    calls, recording = flow_calls
    script = load_script(script_name)
    if hasattr(script, "latents_to_anchors"):
        monkeypatch.setattr(script, "latents_to_anchors", recording(script.latents_to_anchors, "latents_to_anchors"))
    generator = torch.Generator().manual_seed(0)
    preset = {"train_joint": "tiny-joint", "train_generation": "tiny-generation", "train_representation": "tiny-representation"}[script_name]
    config = load_lzn_config(preset, None, None)
    torch.manual_seed(0)
    model = LZNModel(config)
    batch = 6
    pixels, latent_noise = _inputs(config, batch, generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.get_image_anchors(pixels).dtype == torch.bfloat16  # the networks do run in bf16
        if script_name == "train_joint":
            labels = torch.arange(batch) % config.num_classes
            outputs = script.JointTrainingModule(model)(pixels, labels, latent_noise, torch.randn_like(pixels), torch.rand(batch, generator=generator),
                                                        class_weights_from_labels(labels, config.num_classes))
        elif script_name == "train_generation":
            outputs = script.GenerationTrainingModule(model)(pixels, latent_noise, torch.randn_like(pixels), torch.rand(batch, generator=generator))
        else:
            other = torch.rand(pixels.shape, generator=generator) * 2 - 1
            outputs = script.RepresentationTrainingModule(model, 0.2, 1.0, 0.0, False)(pixels, other, latent_noise, torch.arange(batch))
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    losses = [o for o in outputs if isinstance(o, torch.Tensor)]
    assert losses and all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in losses)
    expected = {"anchors_to_latents"} | ({"latents_to_anchors"} if hasattr(script, "latents_to_anchors") else set())
    assert {name for name, _, _ in calls} == expected
    for name, dtypes, autocast_on in calls:
        assert dtypes == {torch.float32} and not autocast_on, (name, dtypes, autocast_on)


# ---------------------------------------------------------------------------------------------------------
# a bf16 run of each script
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def in_process_script(tmp_path, monkeypatch):
    from accelerate.state import AcceleratorState, GradientState

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # the user's choice: leave this process's threads alone
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")

    def run(name, *flags):
        script = load_script(name)
        try:
            script.main(*script.parse_args([str(f) for f in flags]))
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()

    return run


@pytest.mark.parametrize("script_name, preset, extra", [
    ("train_joint", "digits-joint", ["--decoder_freeze_step", "2"]),
    ("train_generation", "tiny-generation", ["--dataset_name", "digits"]),
    ("train_representation", "tiny-representation", ["--dataset_name", "digits", "--resolution", "16"]),
])
def test_bf16_training_smoke(script_name, preset, extra, in_process_script, tmp_path):
    out = tmp_path / "run"
    in_process_script(script_name, "--config", preset, *extra, "--output_dir", out, "--train_batch_size", 16, "--max_train_steps", 3,
                      "--logging_steps", 1, "--checkpointing_steps", 0, "--report_to", "none", "--skip_evaluation", "--mixed_precision", "bf16")
    history = [json.loads(line) for line in (out / "logs" / "history.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in history if "loss" in record]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    from safetensors.torch import load_file

    weights = load_file(str(out / "model" / "model.safetensors"))  # the EMA weights, float32
    assert {tensor.dtype for tensor in weights.values()} == {torch.float32}


# ---------------------------------------------------------------------------------------------------------
# fused Adam and the multi-tensor EMA
# ---------------------------------------------------------------------------------------------------------
def _two_modules(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8)), nn.Linear(5, 4)


def _train(fused, steps=5):
    first, second = _two_modules()
    optimizer, scheduler = adam_with_warmup({"first": (first, 1e-2), "second": (second, 3e-3)}, warmup_steps=2, fused=fused)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = first(torch.randn(2, 3, 6, 6, generator=generator)).pow(2).mean() + second(torch.randn(3, 5, generator=generator)).sin().sum()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return [p.detach().clone() for p in (*first.parameters(), *second.parameters())], optimizer


def test_fused_adam_equals_foreach_adam_to_float_tolerance():
    fused_params, fused_optimizer = _train(None)
    assert fused_optimizer.defaults["fused"] is True  # fused by default on CPU
    reference_params, reference_optimizer = _train(False)
    assert not reference_optimizer.defaults["fused"]
    for a, b in zip(fused_params, reference_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_adam_falls_back_where_the_device_has_no_kernel(monkeypatch):
    assert fused_adam_supported([torch.zeros(2)])

    class AdamWithoutFusedKernel(torch.optim.Adam):  # a device without the kernel: Adam refuses fused=True when built
        def __init__(self, params, fused=None, **kwargs):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
            super().__init__(params, fused=fused, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", AdamWithoutFusedKernel)
    assert not fused_adam_supported([torch.zeros(2)])
    optimizer, _ = adam_with_warmup({"m": (nn.Linear(2, 2), 1e-3)}, warmup_steps=0)
    assert not optimizer.defaults["fused"] and optimizer.defaults["foreach"]
    with pytest.raises(RuntimeError, match="fused=True"):
        adam_with_warmup({"m": (nn.Linear(2, 2), 1e-3)}, warmup_steps=0, fused=True)


def test_multi_tensor_ema_equals_the_per_tensor_formula():
    module = nn.Sequential(nn.Linear(7, 5), nn.Linear(5, 3))
    ema = ExponentialMovingAverage(module.parameters(), decay=0.999)
    reference = [p.detach().clone() for p in module.parameters()]
    generator = torch.Generator().manual_seed(0)
    for n in range(1, 40):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn(p.shape, generator=generator))
        ema.step(module.parameters())
        one_minus_decay = 1.0 - min(0.999, (1.0 + n) / (10.0 + n))
        for shadow, p in zip(reference, module.parameters()):
            shadow.sub_(one_minus_decay * (shadow - p.detach()))  # the formula before issue 15
    for shadow, expected in zip(ema.shadow_params, reference):
        torch.testing.assert_close(shadow, expected, rtol=1e-5, atol=1e-5)


def test_multi_tensor_ema_of_bf16_parameters_keeps_a_float32_average():
    module = nn.Linear(4, 3)
    ema = ExponentialMovingAverage([p.float() for p in module.parameters()], decay=0.9)
    ema.step([p.detach().to(torch.bfloat16) for p in module.parameters()])
    assert all(shadow.dtype == torch.float32 for shadow in ema.shadow_params)
