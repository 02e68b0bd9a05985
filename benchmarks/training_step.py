"""One training step of each case study in float32 vs bf16 autocast (and channels-last, torch.compile): time,
peak memory and the achieved convolution/matmul FLOP rate against the machine's measured matmul rates.

Run:  python benchmarks/training_step.py --threads 1                 (about 2 minutes on 2 busy CPU cores)
      python benchmarks/training_step.py --threads 1 --quick         (the digits presets only)
      python benchmarks/training_step.py --threads 1 --compile       (adds torch.compile of the networks; slow to build)
      python benchmarks/training_step.py --threads 1 --optimizer     (the Adam and EMA steps alone)
      python benchmarks/training_step.py --threads 1 --profile --quick   (where a step's time goes, per kind of kernel)

A step is what the example scripts do per update: the case study's training module (imported from
`examples/train_*.py`) forward under autocast as Accelerate applies it, backward, the Adam step (fused, as the
scripts build it) and the EMA step. Each preset runs in a fresh subprocess with every mode built side by side; the
timed steps are interleaved (one step of each mode, ``--repeats`` rounds) and each mode's time is its fastest
step, so that load from other jobs on a shared machine hits every mode alike. Memory: the activation memory of
the step (the bytes of every storage autograd saves for the backward, the part that grows with the batch and
halves in bf16), and the process's peak RSS per preset (weights, optimizer states, imports, all modes). The FLOPs are counted once per preset with ``torch.utils.flop_counter.FlopCounterMode``
(convolutions and matrix products, forward and backward); the bf16 and float32 matmul rates (2048² products) are
measured in the same process, interleaved with the timed rounds (the fastest of each), so every ratio in the
table comes from one run under one machine state.
"""

import argparse
import importlib.util
import multiprocessing as mp
import resource
import time
from pathlib import Path

import torch
from latent_flow import matmul_rate  # benchmarks/latent_flow.py

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: (preset, script, batch): the digits presets at their training batch, the CIFAR-10 presets at a small batch.
CASES = [
    ("digits-joint", "train_joint", 256),
    ("digits-generation", "train_generation", 256),
    ("digits-representation", "train_representation", 256),
    ("cifar10-generation", "train_generation", 16),
    ("cifar10-joint", "train_joint", 16),
]
MODES = ("float32", "bf16", "bf16+channels_last")


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_step(preset, script_name, batch, mode):
    """``(step, parameters)``: one training update of ``preset`` at ``batch`` in ``mode``, inputs fixed."""
    from lzn_hf import LZNModel
    from lzn_hf.training import TRAINING_RECIPES, ModuleEMA, adam_with_warmup, class_weights_from_labels, load_lzn_config

    script = load_script(script_name)
    torch.manual_seed(0)
    config = load_lzn_config(preset, None, None)
    model = LZNModel(config)
    recipe = TRAINING_RECIPES[preset]
    size, channels = config.image_encoder_config.image_size, config.image_encoder_config.num_channels
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(batch, channels, size, size, generator=generator) * 2 - 1
    latent_noise = torch.randn(batch, config.latent_dim, generator=generator)
    image_noise, sigmas = torch.randn(pixels.shape, generator=generator), torch.rand(batch, generator=generator)
    if script_name == "train_joint":
        module = script.JointTrainingModule(model)
        labels = torch.arange(batch) % config.num_classes
        inputs = (pixels, labels, latent_noise, image_noise, sigmas, class_weights_from_labels(labels, config.num_classes))
    elif script_name == "train_generation":
        module = script.GenerationTrainingModule(model)
        inputs = (pixels, latent_noise, image_noise, sigmas)
    else:
        module = script.RepresentationTrainingModule(model, recipe.get("cutoff", 0.2), 1.0, 0.0, False)
        inputs = (pixels, torch.rand(pixels.shape, generator=generator) * 2 - 1, latent_noise, torch.arange(batch))
    if "channels_last" in mode:
        model.to(memory_format=torch.channels_last)
        inputs = tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in inputs)
    forward = module
    if "compile" in mode:
        model.image_encoder = torch.compile(model.image_encoder)
        if model.image_decoder is not None:
            model.image_decoder = torch.compile(model.image_decoder)
    parts = {name: (getattr(model, name), 1e-4) for name in ("image_encoder", "image_decoder", "label_anchors") if getattr(model, name, None) is not None}
    optimizer, _ = adam_with_warmup(parts, warmup_steps=0)
    ema = ModuleEMA(model, 0.999)
    dtype = torch.bfloat16 if mode.startswith("bf16") else torch.float32

    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            outputs = forward(*inputs)
        loss = outputs[0] + outputs[1] if script_name == "train_joint" else (outputs[0] if isinstance(outputs, tuple) else outputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model)
        return loss.detach()

    return step


def _activation_megabytes(step):
    """Run ``step`` once; ``(MB of every storage autograd saved for the backward, seconds, loss)``."""
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = step()
    return sum(saved.values()) / 1e6, time.perf_counter() - start, loss


def _run_preset(preset, script_name, batch, modes, threads, repeats, queue):
    """Every mode of one preset in this process, the timed steps interleaved (mode after mode, ``repeats``
    rounds), so that a burst of load on a shared machine hits every mode alike; the time is each mode's fastest."""
    torch.set_num_threads(threads)
    steps = {mode: build_step(preset, script_name, batch, mode) for mode in modes}
    results = {}
    for mode, step in steps.items():  # warm-up (and compilation); the activation memory
        activations, first, loss = _activation_megabytes(step)
        results[mode] = {"activations": activations, "first": first, "finite": bool(torch.isfinite(loss)), "times": []}
    rates = {torch.float32: 0.0, torch.bfloat16: 0.0}
    for _ in range(repeats):
        for mode, step in steps.items():
            start = time.perf_counter()
            loss = step()
            results[mode]["times"].append(time.perf_counter() - start)
            results[mode]["finite"] &= bool(torch.isfinite(loss))
        for dtype in rates:  # the matmul rates in the same rounds, under the same load: the fastest
            rates[dtype] = max(rates[dtype], matmul_rate(repeats=2, dtype=dtype))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # MB, the whole process
    queue.put(({mode: {**r, "seconds": min(r["times"])} for mode, r in results.items()}, peak_rss, rates))


def run_preset(*args):
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run_preset, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def count_flops(preset, script_name, batch):
    """Convolution and matmul FLOPs of one forward + backward (the same in every mode)."""
    from torch.utils.flop_counter import FlopCounterMode

    step = build_step(preset, script_name, batch, "float32")
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def optimizer_and_ema_times(preset, rounds=5):
    """``{name: seconds}``: one Adam step (for-each vs fused) and one EMA step (the per-tensor formula before
    issue 15 vs ``_foreach_lerp_``) over every parameter of ``preset``'s model, the fastest of ``rounds``
    interleaved calls."""
    from lzn_hf import LZNModel
    from lzn_hf.training import ExponentialMovingAverage, adam_with_warmup, load_lzn_config

    model = LZNModel(load_lzn_config(preset, None, None))
    parameters = list(model.parameters())
    for p in parameters:
        p.grad = torch.randn_like(p) * 1e-3
    foreach, fused = (adam_with_warmup({"all": (model, 1e-4)}, 0, fused=flag)[0] for flag in (False, True))
    ema, shadows = ExponentialMovingAverage(parameters, 0.999), [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def per_tensor_ema():
        for shadow, p in zip(shadows, parameters):
            shadow.sub_(1e-3 * (shadow - p))

    calls = {"Adam for-each": foreach.step, "Adam fused": fused.step, "EMA per-tensor": per_tensor_ema,
             "EMA _foreach_lerp_": lambda: ema.step(parameters)}
    times = {name: float("inf") for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name] = min(times[name], time.perf_counter() - start)
    return times


#: ``--profile``: kernel families of a step, by the exact name of the ATen operator that does the work (self time;
#: a trailing ``*`` matches a prefix).
KERNEL_FAMILIES = {
    "conv forward": ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution", "aten::conv2d"),
    "conv backward": ("aten::convolution_backward",),
    "matmul": ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::matmul", "aten::_scaled_dot_product*"),
    "group norm": ("aten::native_group_norm", "aten::native_group_norm_backward"),
}


def kernel_shares(preset, script_name, batch, mode, steps=3):
    """``(seconds per step, {family: share of the step's self CPU time}, ATen calls per step)`` from torch.profiler
    over ``steps`` steps after two warm-up steps (profiler overhead included: the shares are what counts)."""
    from torch.profiler import ProfilerActivity, profile

    step = build_step(preset, script_name, batch, mode)
    step(), step()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step()
    seconds = (time.perf_counter() - start) / steps
    events = [event for event in profiler.key_averages() if event.key.startswith("aten::")]
    total = sum(event.self_cpu_time_total for event in profiler.key_averages())

    def member(name, names):
        return any(name == n or (n.endswith("*") and name.startswith(n[:-1])) for n in names)

    shares = {family: sum(e.self_cpu_time_total for e in events if member(e.key, names)) / total for family, names in KERNEL_FAMILIES.items()}
    shares["everything else"] = 1.0 - sum(shares.values())
    return seconds, shares, sum(event.count for event in events) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (one step of each mode) after one warm-up step each")
    parser.add_argument("--quick", action="store_true", help="the digits presets only")
    parser.add_argument("--presets", nargs="+", help="only these presets")
    parser.add_argument("--compile", action="store_true", help="add bf16 + torch.compile of the encoder and decoder")
    parser.add_argument("--optimizer", action="store_true", help="only the Adam and EMA steps (digits-joint, cifar10-joint)")
    parser.add_argument("--profile", action="store_true", help="only the share of each kernel family in a float32 and a bf16 step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [case for case in CASES if (not args.quick or case[0].startswith("digits")) and (not args.presets or case[0] in args.presets)]
    modes = MODES + (("bf16+compile",) if args.compile else ())

    if args.optimizer:
        print("| model (parameters) | " + " | ".join(("Adam for-each", "Adam fused", "EMA per-tensor", "EMA _foreach_lerp_")) + " |\n|---|---|---|---|---|")
        for preset in ("digits-joint", "cifar10-joint"):
            times = optimizer_and_ema_times(preset)
            print(f"| {preset} | " + " | ".join(f"{t * 1e3:.1f} ms" for t in times.values()) + " |", flush=True)
        return
    if args.profile:
        print("| preset (batch) | mode | step (profiled) | " + " | ".join([*KERNEL_FAMILIES, "everything else"]) + " | ATen calls per step (nested included) |")
        print("|---|---|---|" + "---|" * (len(KERNEL_FAMILIES) + 2))
        for preset, script_name, batch in cases:
            for mode in MODES[:2]:
                seconds, shares, calls = kernel_shares(preset, script_name, batch, mode)
                print(f"| {preset} ({batch}) | {mode} | {seconds * 1e3:.0f} ms | " + " | ".join(f"{100 * s:.0f} %" for s in shares.values())
                      + f" | {calls:.0f} |", flush=True)
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s); timed rounds: {args.repeats}\n")
    print("| preset (batch) | mode | step (fastest) | speed-up vs float32 | activation memory | vs float32 | conv+matmul rate | "
          "% of bf16 matmul | % of float32 matmul |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset, script_name, batch in cases:
        flops = count_flops(preset, script_name, batch)
        results, peak_rss, rates = run_preset(preset, script_name, batch, modes, args.threads, args.repeats)
        reference = results["float32"]
        for mode, r in results.items():
            rate = flops / r["seconds"]
            note = "" if r["finite"] else " (non-finite loss)"
            note += f" (first step {r['first']:.0f} s)" if "compile" in mode else ""
            print(f"| {preset} ({batch}) | {mode}{note} | {r['seconds'] * 1e3:.0f} ms | {reference['seconds'] / r['seconds']:.2f}× | "
                  f"{r['activations']:.0f} MB | {r['activations'] / max(reference['activations'], 1e-9):.2f}× | {rate / 1e9:.1f} GFLOP/s | "
                  f"{100 * rate / rates[torch.bfloat16]:.0f} % | {100 * rate / rates[torch.float32]:.0f} % |", flush=True)
        print(f"| {preset}: {flops / 1e9:.2f} GFLOP per step; process peak RSS {peak_rss:.0f} MB; 2048² matmul float32 "
              f"{rates[torch.float32] / 1e9:.0f}, bf16 {rates[torch.bfloat16] / 1e9:.0f} GFLOP/s | | | | | | | | |", flush=True)

if __name__ == "__main__":
    main()
