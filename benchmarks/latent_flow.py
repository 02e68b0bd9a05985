"""Speed, memory and precision of the latent flow: lzn_hf's attention form vs upstream's materialised formula
and vs lzn_hf's former (uncentred) expanded form.

Run:  python benchmarks/latent_flow.py                        (about 5 minutes on 2 CPU cores)
      python benchmarks/latent_flow.py --quick                (small sizes only)
      python benchmarks/latent_flow.py --quick --former --precision --no-baseline
            (the centred frame: speed against the former expanded form, and float32 error against float64
             for anchors at common offsets 0, 1e2, 1e3, 1e4, before / after; about 1 minute)

Every case runs in a fresh subprocess so that its peak memory (ru_maxrss above the level after the inputs
were built) is its own. The machine's float32 matmul rate is measured in the same run; the fast path's
rate counts its two matrix products (4 B N d flops per velocity evaluation).
"""

import argparse
import contextlib
import multiprocessing as mp
import resource
import time

import torch
import torch.nn.functional as F

from lzn_hf import latent_flow
from lzn_hf.latent_flow import anchor_posteriors, anchor_velocity, anchors_to_latents, latents_to_anchors

SIZES = [(250, 2000, 200), (2000, 2000, 200), (1024, 8192, 256)]
BASELINE_MEMORY_LIMIT_GB = 16.0  # the machine has 24 GB


# ------------------------------------------------------------------------------------------------------
# baseline: upstream's materialised [B, N, d] form, with the same Euler solver
# ------------------------------------------------------------------------------------------------------
def materialised_velocity(latents, t, anchors):
    implied_noise = (latents[:, None, :] - (1 - t) * anchors[None]) / t  # [B, N, d]
    logits = -0.5 * implied_noise.pow(2).sum(-1)  # [B, N]
    weights = torch.exp(logits - logits.max(-1, keepdim=True).values)
    weights = weights / weights.sum(-1, keepdim=True)
    return (weights[..., None] * (implied_noise - anchors[None])).sum(1)  # [B, d]


def materialised_euler_flow(anchors, noise, reference_anchors, num_steps=20, eps=1e-4):
    h = (1 - eps) / num_steps
    z = eps * noise + (1 - eps) * anchors
    for k in range(num_steps):
        z = z + h * materialised_velocity(z, eps + k * h, reference_anchors)
    return z


def fast_euler_flow(anchors, noise, reference_anchors, num_steps=20):
    return anchors_to_latents(anchors, noise, reference_anchors, num_steps=num_steps, solver="euler")


# ------------------------------------------------------------------------------------------------------
# lzn_hf's former expanded form: no centred frame, the bias -(1-t)^2/(2t^2) ||a||^2 recomputed every step
# ------------------------------------------------------------------------------------------------------
def former_posterior_mean(latents, t, anchors):
    bias = -0.5 * ((1.0 - t) / t) ** 2 * anchors.pow(2).sum(-1)  # [N], every evaluation
    if torch.is_grad_enabled() and (latents.requires_grad or anchors.requires_grad):
        return torch.addmm(bias, latents, anchors.T, alpha=(1.0 - t) / t**2).softmax(-1) @ anchors
    keys = torch.cat([anchors, bias[:, None]], dim=-1)[None, None]
    values = F.pad(anchors, (0, 1))[None, None]
    queries = torch.cat([latents * ((1.0 - t) / t**2), torch.ones_like(latents[:, :1])], dim=-1)
    return F.scaled_dot_product_attention(queries[None, None], keys, values, scale=1.0)[0, 0, :, :-1]


def former_checks(*tensors):
    """The former public functions' input value checks (one ``isfinite(x).all()`` per tensor argument)."""
    for x in tensors:
        if not torch.isfinite(x).all():
            raise ValueError("NaN or Inf")


def former_velocity(latents, t, anchors):
    former_checks(anchors, latents)
    return (latents - former_posterior_mean(latents, t, anchors)) / t


def former_euler_flow(anchors, noise, reference_anchors, num_steps=20, eps=1e-4):
    former_checks(anchors, noise, reference_anchors)
    h = (1 - eps) / num_steps
    z = eps * noise + (1 - eps) * anchors
    for k in range(num_steps):
        t = eps + k * h
        z = z + (h / t) * (z - former_posterior_mean(z, t, reference_anchors))
    return z


def baseline_memory_gb(batch, num_anchors, dim, task):
    """Rough peak of the materialised form: live [B, N, d] float32 tensors (more with autograd)."""
    tensors = {"velocity": 3, "flow": 3, "flow+grad": 3 + 2 * 20}[task]
    return tensors * batch * num_anchors * dim * 4 / 1e9


# ------------------------------------------------------------------------------------------------------
# one case in a subprocess
# ------------------------------------------------------------------------------------------------------
def _run_case(implementation, task, batch, num_anchors, dim, repeats, queue):
    torch.manual_seed(0)
    anchors = torch.randn(num_anchors, dim)
    queries = anchors[:batch].clone()
    noise = torch.randn(batch, dim)
    flow = {"lzn_hf": fast_euler_flow, "former": former_euler_flow, "baseline": materialised_euler_flow}[implementation]
    velocity = {"lzn_hf": anchor_velocity, "former": former_velocity, "baseline": materialised_velocity}[implementation]

    def once():
        if task == "velocity":
            with torch.no_grad():
                velocity(noise, 0.5, anchors)
        elif task == "flow":
            with torch.no_grad():
                flow(queries, noise, anchors)
        else:
            reference = anchors.clone().requires_grad_(True)
            own = queries.clone().requires_grad_(True)
            flow(own, noise, reference).pow(2).sum().backward()

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # GB
    once()  # warm-up, also the peak-memory run
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6 - before
    start = time.perf_counter()
    for _ in range(repeats):
        once()
    queue.put(((time.perf_counter() - start) / repeats, max(peak, 0.0)))


def run_case(implementation, task, batch, num_anchors, dim, repeats):
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run_case, args=(implementation, task, batch, num_anchors, dim, repeats, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def matmul_rate(size=2048, repeats=10, dtype=torch.float32):
    """The machine's matmul rate (flop/s) in ``dtype`` with the current thread count."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)  # flop/s


# ------------------------------------------------------------------------------------------------------
# precision at common offsets: float32 against float64, with and without the centred frame
# ------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def uncentred():
    """The same code with the frame's origin pinned at 0: the former expanded logits' arithmetic."""
    reference_point = latent_flow._reference_point
    latent_flow._reference_point = lambda anchors: torch.zeros_like(anchors[0])
    try:
        yield
    finally:
        latent_flow._reference_point = reference_point


def precision_errors(offset, num_anchors=256, dim=32, seed=0):
    """Max |float32 - float64| of each flow for anchors ``randn + offset`` (float32 inputs, both dtypes)."""
    generator = torch.Generator().manual_seed(seed)
    anchors = torch.randn(num_anchors, dim, generator=generator) + offset
    noise, latents = torch.randn(2, num_anchors, dim, generator=generator)
    t = 0.5
    on_path = ((1 - t) * anchors.double() + t * noise.double()).float()
    cases = {
        "euler latents": lambda a, e, z, q: anchors_to_latents(a, e, solver="euler"),
        "dpm_solver++ latents": lambda a, e, z, q: anchors_to_latents(a, e),
        "reverse posteriors": lambda a, e, z, q: latents_to_anchors(z, a, num_steps=100)[1],
        "velocity (t=0.5, rel.)": lambda a, e, z, q: anchor_velocity(q, t, a),
        "posteriors (t=0.5)": lambda a, e, z, q: anchor_posteriors(q, t, a),
    }
    errors = {}
    for name, case in cases.items():
        exact = case(anchors.double(), noise.double(), latents.double(), on_path.double())
        single = case(anchors, noise, latents, on_path).double()
        errors[name] = ((single - exact).norm() / exact.norm()).item() if "rel." in name else (single - exact).abs().max().item()
    return errors


def precision_table():
    print("\nfloat32 vs float64, anchors randn(256, 32) + offset (max abs error; the velocity: relative error)\n")
    rows = {}
    for offset in (0.0, 1e2, 1e3, 1e4):
        with uncentred():
            before = precision_errors(offset)
        after = precision_errors(offset)
        for name in after:
            rows.setdefault(name, []).append((before[name], after[name]))
    header = f"| {'before / after':<24} | " + " | ".join(f"{'offset ' + format(o, 'g'):>19}" for o in (0.0, 1e2, 1e3, 1e4)) + " |"
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for name, cells in rows.items():
        print(f"| {name:<24} | " + " | ".join(f"{b:9.2g} / {a:7.2g}" for b, a in cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the smallest size")
    parser.add_argument("--former", action="store_true", help="also time lzn_hf's former (uncentred) expanded form")
    parser.add_argument("--no-baseline", action="store_true", help="skip upstream's materialised formula")
    parser.add_argument("--precision", action="store_true", help="the float32-vs-float64 table at common offsets")
    args = parser.parse_args()
    sizes = SIZES[:1] if args.quick else SIZES

    rate = matmul_rate()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32 matmul rate: {rate / 1e9:.1f} GFLOP/s\n")
    former = f" {'former':>10} | {'vs former':>9} |" if args.former else ""
    header = f"| {'(B, N, d)':<18} | {'task':<20} | {'lzn_hf':>10} |{former} {'baseline':>10} | {'speed-up':>8} | {'lzn_hf mem':>10} | {'baseline mem':>12} | {'% matmul':>8} |"
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for batch, num_anchors, dim in sizes:
        for task in ("velocity", "flow", "flow+grad"):
            repeats = {"velocity": 10, "flow": 3, "flow+grad": 2}[task] if args.former else (5 if task == "velocity" else 1)
            fast_time, fast_mem = run_case("lzn_hf", task, batch, num_anchors, dim, repeats)
            former_cells = ""
            if args.former:  # alternate the two, best of two each: fair under a shared machine's noise
                former_time = run_case("former", task, batch, num_anchors, dim, repeats)[0]
                fast_time = min(fast_time, run_case("lzn_hf", task, batch, num_anchors, dim, repeats)[0])
                former_time = min(former_time, run_case("former", task, batch, num_anchors, dim, repeats)[0])
                former_cells = f" {former_time * 1e3:8.1f}ms | {former_time / fast_time:8.2f}x |"
            estimate = baseline_memory_gb(batch, num_anchors, dim, task)
            if not args.no_baseline and estimate <= BASELINE_MEMORY_LIMIT_GB:
                base_time, base_mem = run_case("baseline", task, batch, num_anchors, dim, 1)
                base_cells = f"{base_time * 1e3:8.0f}ms | {base_time / fast_time:7.0f}x | {fast_mem * 1e3:8.0f}MB | {base_mem * 1e3:10.0f}MB"
            else:
                skipped = "-" if args.no_baseline else "~" + format(estimate, ".0f") + "GB est."
                base_cells = f"{'skipped':>10} | {'-':>8} | {fast_mem * 1e3:8.0f}MB | {skipped:>12}"
            evaluations = 1 if task == "velocity" else 20
            flops = 4 * batch * num_anchors * dim * evaluations * (3 if task == "flow+grad" else 1)
            fraction = flops / fast_time / rate * 100
            print(f"| {str((batch, num_anchors, dim)):<18} | {task:<20} | {fast_time * 1e3:8.1f}ms |{former_cells} {base_cells} | {fraction:7.0f}% |")
    if args.precision:
        precision_table()


if __name__ == "__main__":
    main()
