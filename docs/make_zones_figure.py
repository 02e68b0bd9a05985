"""Draw docs/images/zones.png: the latent zones that a handful of anchors induce in N(0, I).

A 2-D toy, computed with lzn_hf's own latent flow (`lzn_hf.latent_flow`):

* six anchors (the data side of the flow, t = 0);
* every point of a grid over the Gaussian latent space is sent back to the anchors by the reverse flow
  (`latents_to_anchors`) and coloured by the anchor it lands on (`nearest_anchor`): these are the zones;
* the shading is the N(0, I) density, so each zone's visible "weight" is its Gaussian mass, which is
  1/6 for every zone however different their shapes (the right panel measures it);
* curves are forward flows (`anchor_velocity`, Euler, t: 1e-4 -> 1) from each anchor with a few noise
  draws: every one ends inside its own anchor's zone.

    python docs/make_zones_figure.py            # writes docs/images/zones.png (about 10 s on 2 CPU cores)
    python docs/make_zones_figure.py --out x.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap, to_rgb  # noqa: E402

from lzn_hf.latent_flow import anchor_velocity, anchors_to_latents, latents_to_anchors, nearest_anchor  # noqa: E402

# Six anchors: uneven spacing on purpose, so the zones come out in different shapes.
ANCHORS = torch.tensor(
    [[-1.7, 1.1], [0.3, 1.8], [1.9, 0.6], [1.2, -1.5], [-0.6, -1.1], [-2.0, -1.6]], dtype=torch.float64
)
COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
LIMIT = 3.2  # the plotted square [-LIMIT, LIMIT]^2
GRID = 300  # grid points per axis for the zone map
REVERSE_STEPS = 150  # reverse-flow steps for the zone map
FORWARD_STEPS = 60  # Euler steps of the drawn forward trajectories
TRAJECTORIES_PER_ANCHOR = 5
EPS = 1e-4  # start offset of the Euler forward flow (upstream's)


def zone_map(anchors: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zone index of every grid point (reverse flow -> nearest anchor), with the grid coordinates."""
    axis = torch.linspace(-LIMIT, LIMIT, GRID, dtype=torch.float64)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    latents = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # [GRID^2, 2]
    points, _ = latents_to_anchors(latents, anchors, num_steps=REVERSE_STEPS)
    zones = nearest_anchor(points, anchors).reshape(GRID, GRID)
    return xs.numpy(), ys.numpy(), zones.numpy()


def forward_trajectories(anchors: torch.Tensor, noise: torch.Tensor, own: torch.Tensor) -> np.ndarray:
    """Euler forward flow from ``eps * noise + (1 - eps) * anchor``, every intermediate point: ``[S + 1, B, 2]``.

    The same update as ``anchors_to_latents(..., solver="euler")``; the end points are checked against it.
    """
    h = (1.0 - EPS) / FORWARD_STEPS
    z = EPS * noise + (1.0 - EPS) * own
    path = [z]
    for k in range(FORWARD_STEPS):
        z = z + h * anchor_velocity(z, EPS + k * h, anchors)
        path.append(z)
    expected = anchors_to_latents(own, noise, anchors, num_steps=FORWARD_STEPS, solver="euler", eps=EPS)
    torch.testing.assert_close(path[-1], expected)
    return torch.stack(path).numpy()


def zone_masses(anchors: torch.Tensor, num_samples: int = 20000) -> np.ndarray:
    """Fraction of N(0, I) samples in each zone (Monte Carlo)."""
    samples = torch.randn(num_samples, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    points, _ = latents_to_anchors(samples, anchors, num_steps=REVERSE_STEPS)
    return np.bincount(nearest_anchor(points, anchors).numpy(), minlength=len(anchors)) / num_samples


def draw(out: Path) -> None:
    anchors = ANCHORS
    num_anchors = len(anchors)
    xs, ys, zones = zone_map(anchors)

    own_index = torch.arange(num_anchors).repeat_interleave(TRAJECTORIES_PER_ANCHOR)
    noise = torch.randn(len(own_index), 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    paths = forward_trajectories(anchors, noise, anchors[own_index])  # [S + 1, B, 2]
    end_zones = nearest_anchor(latents_to_anchors(torch.from_numpy(paths[-1]), anchors, REVERSE_STEPS)[0], anchors)
    masses = zone_masses(anchors)

    # Zone colours, faded towards white where the Gaussian density is low.
    density = np.exp(-0.5 * (xs**2 + ys**2))  # N(0, I) up to a constant, peak 1
    rgb = np.array([to_rgb(c) for c in COLOURS])[zones]  # [GRID, GRID, 3]
    shade = 0.25 + 0.75 * density[..., None] ** 0.6
    image = 1.0 - shade * (1.0 - rgb)

    fig, (ax, bars) = plt.subplots(1, 2, figsize=(10.5, 5.3), gridspec_kw={"width_ratios": [2.4, 1]})
    ax.imshow(image, origin="lower", extent=(-LIMIT, LIMIT, -LIMIT, LIMIT), interpolation="bilinear")
    ax.contour(xs, ys, zones, levels=np.arange(num_anchors) + 0.5, colors="white", linewidths=1.4)
    radius = np.sqrt(xs**2 + ys**2)
    contours = ax.contour(xs, ys, radius, levels=[1, 2, 3], colors="0.25", linewidths=0.7, linestyles="dashed")
    label_at = [(r * np.cos(np.radians(50)), r * np.sin(np.radians(50))) for r in (1, 2, 3)]
    ax.clabel(contours, fmt={1: "1σ", 2: "2σ", 3: "3σ"}, fontsize=8, inline_spacing=2, manual=label_at)

    for b in range(paths.shape[1]):
        colour = COLOURS[own_index[b]]
        ax.plot(paths[:, b, 0], paths[:, b, 1], color="black", linewidth=2.4, alpha=0.55, solid_capstyle="round")
        ax.plot(paths[:, b, 0], paths[:, b, 1], color=colour, linewidth=1.4, solid_capstyle="round")
        ax.plot(*paths[-1, b], marker="o", markersize=5.5, color=colour, markeredgecolor="white", markeredgewidth=1.0)
    for i, (x, y) in enumerate(anchors.tolist()):
        ax.plot(x, y, marker="*", markersize=19, color=COLOURS[i], markeredgecolor="black", markeredgewidth=1.2, zorder=5)
        ax.annotate(f"$a_{i + 1}$", (x, y), xytext=(9, 7), textcoords="offset points", fontsize=12, weight="bold", zorder=6,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    ax.set_xlim(-LIMIT, LIMIT)
    ax.set_ylim(-LIMIT, LIMIT)
    ax.set_aspect("equal")
    ax.set_xticks(range(-3, 4))
    ax.set_yticks(range(-3, 4))
    ax.set_title("Zones of the latent space N(0, I) induced by six anchors", fontsize=12)
    ax.plot([], [], color="0.3", linewidth=1.4, label="forward flow: anchor → latent")
    ax.plot([], [], linestyle="none", marker="o", color="0.3", markeredgecolor="white", label="latents (t = 1)")
    ax.plot([], [], linestyle="none", marker="*", markersize=12, color="0.6", markeredgecolor="black", label="anchors (t = 0)")
    ax.legend(loc="lower right", fontsize=8.5, framealpha=0.9)

    positions = np.arange(num_anchors)
    bars.bar(positions, masses, color=COLOURS, edgecolor="black", linewidth=0.8)
    bars.axhline(1.0 / num_anchors, color="black", linestyle="--", linewidth=1)
    bars.text(num_anchors - 0.5, 1.0 / num_anchors + 0.006, "1/6", ha="right", fontsize=10)
    bars.set_xticks(positions, [f"$a_{i + 1}$" for i in positions], fontsize=11)
    bars.set_ylim(0, 0.25)
    bars.set_ylabel("Gaussian mass of the zone")
    bars.set_title("Each zone holds 1/N of the mass", fontsize=12)
    bars.spines[["top", "right"]].set_visible(False)
    hits = int((end_zones == own_index).sum())
    bars.text(0.5, 0.93, f"{hits}/{len(own_index)} forward-flow latents\nland in their own anchor's zone",
              transform=bars.transAxes, ha="center", va="top", fontsize=9)

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130, bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)
    print(f"wrote {out} (zone masses {np.round(masses, 3).tolist()}, {hits}/{len(own_index)} latents in own zone)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "images" / "zones.png")
    draw(parser.parse_args().out)


if __name__ == "__main__":
    main()
