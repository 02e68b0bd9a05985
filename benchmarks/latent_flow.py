"""Speed and memory of the latent flow: lzn_hf's attention form vs upstream's materialised formula.

Run:  python benchmarks/latent_flow.py            (about 5 minutes on 2 CPU cores)
      python benchmarks/latent_flow.py --quick    (small sizes only)

Every case runs in a fresh subprocess so that its peak memory (ru_maxrss above the level after the inputs
were built) is its own. The machine's float32 matmul rate is measured in the same run; the fast path's
rate counts its two matrix products (4 B N d flops per velocity evaluation).
"""

import argparse
import multiprocessing as mp
import resource
import time

import torch

from lzn_hf.latent_flow import anchor_velocity, anchors_to_latents

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
    flow = fast_euler_flow if implementation == "lzn_hf" else materialised_euler_flow
    velocity = anchor_velocity if implementation == "lzn_hf" else materialised_velocity

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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the smallest size")
    args = parser.parse_args()
    sizes = SIZES[:1] if args.quick else SIZES

    rate = matmul_rate()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32 matmul rate: {rate / 1e9:.1f} GFLOP/s\n")
    header = f"| {'(B, N, d)':<18} | {'task':<20} | {'lzn_hf':>10} | {'baseline':>10} | {'speed-up':>8} | {'lzn_hf mem':>10} | {'baseline mem':>12} | {'% matmul':>8} |"
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for batch, num_anchors, dim in sizes:
        for task in ("velocity", "flow", "flow+grad"):
            repeats = 5 if task == "velocity" else 1
            fast_time, fast_mem = run_case("lzn_hf", task, batch, num_anchors, dim, repeats)
            estimate = baseline_memory_gb(batch, num_anchors, dim, task)
            if estimate <= BASELINE_MEMORY_LIMIT_GB:
                base_time, base_mem = run_case("baseline", task, batch, num_anchors, dim, 1)
                base_cells = f"{base_time * 1e3:8.0f}ms | {base_time / fast_time:7.0f}x | {fast_mem * 1e3:8.0f}MB | {base_mem * 1e3:10.0f}MB"
            else:
                base_cells = f"{'skipped':>10} | {'-':>8} | {fast_mem * 1e3:8.0f}MB | {'~' + format(estimate, '.0f') + 'GB est.':>12}"
            evaluations = 1 if task == "velocity" else 20
            flops = 4 * batch * num_anchors * dim * evaluations * (3 if task == "flow+grad" else 1)
            fraction = flops / fast_time / rate * 100
            print(f"| {str((batch, num_anchors, dim)):<18} | {task:<20} | {fast_time * 1e3:8.1f}ms | {base_cells} | {fraction:7.0f}% |")


if __name__ == "__main__":
    main()
