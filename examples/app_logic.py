"""The logic of the LZN demo (`examples/app.py`): loading, generation, classification, the zones picture and
the Space export, in plain functions that need neither Gradio nor a browser (tested in `tests/test_app.py`).

Everything goes through lzn_hf's public entry points: `LZNPipeline` (label -> image),
`LZNForImageClassification` with its anchor bank (image -> class, deterministic), its image processor, and
`lzn_hf.latent_flow` (the zones). Bad user input raises :class:`DemoInputError`, whose message the app shows
as is.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError
from transformers import AutoImageProcessor

from lzn_hf import LZNForImageClassification
from lzn_hf._atomic import atomic_folder
from lzn_hf.latent_flow import anchor_velocity, latents_to_anchors, nearest_anchor
from lzn_hf.pipeline_lzn import LZNPipeline

DEFAULT_MODEL = "lzn-digits-joint"
MAIN_JOB = "accelerate launch examples/train_joint.py"
SUBFOLDERS = ("model", "pipeline", "classifier")
MAX_IMAGES_PER_CLASS = 8
MAX_STEPS = 50
GRID_CELL = 64  # generated images are upscaled (nearest) to about this many pixels
ZONE_GRID = 100  # grid points per axis of the zone slice
ZONE_SAMPLES = 3000  # N(0, I) samples that measure the zones' Gaussian mass
ZONE_REVERSE_STEPS = 40  # reverse-flow steps of the zone picture (each grid point, each sample)


class DemoInputError(ValueError):
    """A bad input from the user (no image, an unknown class, ...); the message is meant to be shown as is."""


# ----------------------------------------------------------------------------------------------------------
# the model: a training output folder or a Hub repo id
# ----------------------------------------------------------------------------------------------------------
def missing_subfolders(folder: Path) -> List[str]:
    """Which of `model/`, `pipeline/`, `classifier/` a training output folder lacks."""
    return [name for name in SUBFOLDERS if not (folder / name).is_dir()]


def looks_like_repo_id(text: str) -> bool:
    """`owner/name` with no path syntax: what the Hub accepts as a model repo id."""
    parts = text.split("/")
    return (len(parts) == 2 and all(parts) and not text.startswith((".", "~"))
            and all(part.replace("-", "").replace("_", "").replace(".", "").isalnum() for part in parts))


def resolve_model(model: str, cache_dir: Optional[str] = None) -> Path:
    """A local training output folder (`model/`, `pipeline/`, `classifier/`) for `model`.

    `model` is a local folder (as written by `examples/train_joint.py`) or a Hub repo id holding the same
    layout (downloaded with `huggingface_hub.snapshot_download`, only those three folders).
    """
    folder = Path(model).expanduser()
    if folder.is_dir():
        missing = missing_subfolders(folder)
        if missing:
            raise DemoInputError(
                f"--model {model!r} is a folder but has no {', '.join(f'{name}/' for name in missing)}: expected a "
                f"training output folder with model/, pipeline/ and classifier/ (written by `{MAIN_JOB}`)")
        return folder
    if looks_like_repo_id(model):
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(model, allow_patterns=[f"{name}/**" for name in SUBFOLDERS], cache_dir=cache_dir))
        missing = missing_subfolders(path)
        if missing:
            raise DemoInputError(f"Hub repo {model!r} has no {', '.join(f'{name}/' for name in missing)}: expected "
                                 "a training output folder with model/, pipeline/ and classifier/")
        return path
    hint = f"run the main job first: `{MAIN_JOB}` writes {DEFAULT_MODEL}/" if Path(model).name == DEFAULT_MODEL else \
        "pass a training output folder (model/, pipeline/, classifier/) or a Hub repo id (owner/name)"
    raise DemoInputError(f"model {model!r} not found: {hint}")


@dataclass
class LZNDemo:
    """The loaded model parts the demo needs and the zone samples it caches."""

    pipeline: LZNPipeline
    classifier: LZNForImageClassification
    image_processor: object  # the classifier folder's LZNImageProcessor
    source: str = ""
    _zone_cache: Dict[str, object] = field(default_factory=dict, repr=False)

    @classmethod
    def from_folder(cls, folder, source: Optional[str] = None) -> "LZNDemo":
        folder = Path(folder)
        pipeline = LZNPipeline.from_pretrained(folder / "pipeline")
        if not pipeline.is_conditional:
            raise DemoInputError(f"{folder / 'pipeline'} is an unconditional pipeline: the demo needs a label-conditional model")
        classifier = LZNForImageClassification.from_pretrained(folder / "classifier").eval()
        if classifier.anchor_bank is None:
            raise DemoInputError(f"{folder / 'classifier'} has no anchor bank: the demo's classification needs one "
                                 "(`LZNForImageClassification.build_anchor_bank`, written by the training scripts)")
        image_processor = AutoImageProcessor.from_pretrained(folder / "classifier")
        return cls(pipeline, classifier, image_processor, source or str(folder))

    @property
    def class_names(self) -> List[str]:
        """Class names in index order (`id2label`)."""
        id2label = self.pipeline.id2label
        return [str(id2label[index]) for index in sorted(id2label)]

    @property
    def image_size(self) -> int:
        return self.classifier.config.image_encoder_config.image_size

    @property
    def num_channels(self) -> int:
        return self.classifier.config.image_encoder_config.num_channels

    @property
    def label_anchors(self) -> torch.Tensor:
        """`[C, d]` the label anchors (float32)."""
        return self.classifier.label_anchors().detach().float()

    def describe(self) -> str:
        return (f"`{self.source}`: {len(self.class_names)} classes, {self.image_size}×{self.image_size} "
                f"{'grayscale' if self.num_channels == 1 else 'RGB'} images, latent dimension "
                f"{self.label_anchors.shape[1]}, anchor bank of {self.classifier.anchor_bank.shape[0]} training images")


# ----------------------------------------------------------------------------------------------------------
# Generate: classes -> image grid
# ----------------------------------------------------------------------------------------------------------
def check_int(name: str, value, low: int, high: int) -> int:
    """`value` (an int, a whole float or a numeric string, as UI widgets send) as an int in [low, high]."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DemoInputError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise DemoInputError(f"{name} must be between {low} and {high}, got {value}")
    return int(value)


def check_class_names(class_names: Sequence[str], known: Sequence[str]) -> List[str]:
    """The chosen class names, in the model's order; unknown names raise DemoInputError listing the valid ones."""
    if not class_names:
        raise DemoInputError("choose at least one class")
    unknown = [name for name in class_names if name not in known]
    if unknown:
        raise DemoInputError(f"unknown class {', '.join(map(repr, unknown))}; the classes are: {', '.join(known)}")
    return [name for name in known if name in set(class_names)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def image_grid(rows: Sequence[np.ndarray], row_names: Sequence[str], cell: int = GRID_CELL, gap: int = 4) -> Image.Image:
    """Images `[n, H, W, C]` in [0, 1] per row -> one RGB grid, upscaled (nearest) to about `cell` pixels,
    each row labelled with its name on the left."""
    height, width = rows[0].shape[1:3]
    scale = max(1, cell // max(height, width))
    cell_h, cell_w = height * scale, width * scale
    margin = 14 + 11 * max(len(name) for name in row_names)
    columns = max(len(images) for images in rows)
    grid = Image.new("RGB", (margin + columns * (cell_w + gap) + gap, len(rows) * (cell_h + gap) + gap), "white")
    draw, font = ImageDraw.Draw(grid), _font(20)
    for r, (images, name) in enumerate(zip(rows, row_names)):
        top = gap + r * (cell_h + gap)
        draw.text((8, top + cell_h // 2), name, fill="black", font=font, anchor="lm")
        for c, array in enumerate(images):
            pixels = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
            tile = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).convert("RGB")
            grid.paste(tile.resize((cell_w, cell_h), Image.NEAREST), (margin + gap + c * (cell_w + gap), top))
    return grid


def generate(demo: LZNDemo, class_names: Sequence[str], images_per_class=4, num_inference_steps=10, seed=0) -> Tuple[Image.Image, str]:
    """Classes -> `images_per_class` samples each through `LZNPipeline` -> (grid image, caption)."""
    names = check_class_names(class_names, demo.class_names)
    per_class = check_int("images per class", images_per_class, 1, MAX_IMAGES_PER_CLASS)
    steps = check_int("steps", num_inference_steps, 1, MAX_STEPS)
    seed = check_int("seed", seed, 0, 2**31 - 1)
    start = time.perf_counter()
    images = demo.pipeline(labels=names, num_images_per_label=per_class, num_inference_steps=steps,
                           generator=torch.Generator().manual_seed(seed), output_type="np").images  # [n, H, W, C]
    rows = [images[i * per_class:(i + 1) * per_class] for i in range(len(names))]
    caption = (f"{per_class} image{'s' if per_class > 1 else ''} of each of {len(names)} class"
               f"{'es' if len(names) > 1 else ''} ({', '.join(names)}), {steps} steps, seed {seed}: "
               f"{time.perf_counter() - start:.1f} s")
    return image_grid(rows, names), caption


# ----------------------------------------------------------------------------------------------------------
# Classify: image -> top-k classes
# ----------------------------------------------------------------------------------------------------------
def as_pil(image) -> Optional[Image.Image]:
    """A PIL image from what Gradio hands over: PIL, a numpy array, a file path, or an ImageEditor /
    Sketchpad value (a dict with `composite`); None for no image. Raises DemoInputError for unusable ones."""
    if isinstance(image, dict):
        image = image.get("composite")
    if image is None:
        return None
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as opened:
                return opened.copy()
        except (OSError, UnidentifiedImageError):
            raise DemoInputError("the file is not an image that can be read (PNG, JPEG, WebP, ...)") from None
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or image.size == 0 or (image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
            raise DemoInputError(f"unusable image array of shape {image.shape}: expected H x W (x 1, 3 or 4)")
        if image.dtype != np.uint8:
            scale = 255.0 if image.max(initial=0) <= 1.0 else 1.0
            image = np.clip(image * scale, 0, 255).astype(np.uint8)
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
    if not isinstance(image, Image.Image):
        raise DemoInputError(f"unusable image of type {type(image).__name__}")
    if min(image.size) == 0:
        raise DemoInputError(f"the image is empty ({image.size[0]}x{image.size[1]} pixels)")
    return image


def flatten_alpha(image: Image.Image) -> Image.Image:
    """Transparent pixels onto black (a sketch's empty canvas is the dark background of the digits)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image


def drawing_ink(image: Image.Image) -> Image.Image:
    """A drawing -> its strokes as light on black ("L"), whatever the brush colour: on a transparent canvas the
    strokes are the opaque pixels; on an opaque one, whatever differs from the canvas colour (read at the border)."""
    rgba = image.convert("RGBA")
    alpha = rgba.getchannel("A")
    if alpha.getextrema()[0] < 255:
        return alpha
    gray = np.asarray(rgba.convert("L"), dtype=np.float32)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return Image.fromarray(np.abs(gray - np.median(border)).clip(0, 255).astype(np.uint8))


def crop_to_content(image: Image.Image, margin: float = 0.15) -> Image.Image:
    """The square around the non-black pixels, with a margin (a drawing's strokes, centred). Raises
    DemoInputError for an empty drawing."""
    box = image.convert("L").point(lambda value: 255 if value > 20 else 0).getbbox()
    if box is None:
        raise DemoInputError("the drawing is empty: draw something first")
    left, top, right, bottom = box
    side = max(right - left, bottom - top) * (1 + 2 * margin)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    square = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
    return ImageOps.pad(image.crop(square), (round(side),) * 2, color="black") if side >= 1 else image


def prepare_image(image, image_size: int, num_channels: int, invert: bool = False, is_drawing: bool = False) -> Image.Image:
    """Any image -> the model's input as a PIL image: `image_size` square, "L" or "RGB" for 1 or 3 channels.

    Transparency becomes black; `invert` turns dark-on-light images light-on-dark (the digits' polarity); a
    drawing becomes light strokes on black (:func:`drawing_ink`), cropped to its strokes. No image raises
    DemoInputError.
    """
    pil = as_pil(image)
    if pil is None:
        raise DemoInputError("no image: upload one or draw one first" if not is_drawing else "no drawing: draw something first")
    pil = (drawing_ink(pil) if is_drawing else flatten_alpha(pil)).convert("RGB")
    if is_drawing:
        pil = crop_to_content(pil)
    if invert:
        pil = ImageOps.invert(pil)
    pil = pil.resize((image_size, image_size), Image.LANCZOS if min(pil.size) > image_size else Image.BICUBIC)
    return pil.convert("L" if num_channels == 1 else "RGB")


def pixel_values(demo: LZNDemo, prepared: Image.Image) -> torch.Tensor:
    """A prepared PIL image -> `[1, C, H, W]` in [-1, 1] through the classifier folder's image processor."""
    return demo.image_processor(images=prepared, return_tensors="pt")["pixel_values"]


@torch.no_grad()
def classify(demo: LZNDemo, prepared: Image.Image, top_k: int = 3) -> Dict[str, float]:
    """A prepared image -> `{class name: probability}` of the `top_k` most likely classes (anchor-bank mode:
    zero prior noise, the bank plus the image's own anchor define the zones; the same image always gets the
    same answer)."""
    top_k = check_int("top-k", top_k, 1, len(demo.class_names))
    probabilities = demo.classifier(pixel_values(demo, prepared)).logits.softmax(-1)[0]  # [C]
    values, indices = probabilities.topk(top_k)
    return {demo.class_names[i]: float(v) for v, i in zip(values.tolist(), indices.tolist())}


def preview(prepared: Image.Image, size: int = 160) -> Image.Image:
    """The model's input, upscaled (nearest) so people see what the model sees."""
    return prepared.resize((size, size), Image.NEAREST)


# ----------------------------------------------------------------------------------------------------------
# Zones: a slice through the latent space
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def image_latent(demo: LZNDemo, prepared: Image.Image) -> torch.Tensor:
    """The image's latent `[1, d]` exactly as the classifier computes it: its anchor's forward flow over the
    anchor bank plus itself, zero prior noise (the centre of its zone)."""
    anchors = demo.classifier.get_image_anchors(pixel_values(demo, prepared))  # [1, d]
    return demo.classifier.get_image_latents(anchors=anchors, noise=torch.zeros_like(anchors),
                                             reference_anchors=demo.classifier.anchor_bank, append_own_anchor=True).float()


def anchor_plane(anchors: torch.Tensor) -> torch.Tensor:
    """`[d, 2]` orthonormal basis of the anchors' two main directions (PCA of the centred anchors)."""
    centred = anchors - anchors.mean(0, keepdim=True)
    basis = torch.linalg.svd(centred.double(), full_matrices=False).Vh[:2].T  # [d, 2]
    if basis.shape[1] < 2:  # a single class: any second direction
        extra = torch.linalg.qr(torch.cat([basis, torch.eye(anchors.shape[1], dtype=basis.dtype)[:, :2]], 1)).Q
        basis = extra[:, :2]
    return basis.float()


def zones_of(latents: torch.Tensor, anchors: torch.Tensor, num_steps: int = ZONE_REVERSE_STEPS) -> torch.Tensor:
    """Zone index `[B]` of each latent: reverse flow over the anchors, then the nearest anchor."""
    points, _ = latents_to_anchors(latents, anchors, num_steps=num_steps)
    return nearest_anchor(points, anchors)


def reverse_flow_path(latent: torch.Tensor, anchors: torch.Tensor, num_steps: int = ZONE_REVERSE_STEPS) -> torch.Tensor:
    """Every Euler point of the reverse flow from `latent` `[1, d]`: `[S + 1, d]` (t = 1 -> 1/S), the update
    of `latents_to_anchors` written out with `anchor_velocity`."""
    path, z, h = [latent], latent, 1.0 / num_steps
    for k in range(num_steps):
        z = z - h * anchor_velocity(z, 1.0 - k * h, anchors)
        path.append(z)
    return torch.cat(path)


@dataclass
class ZoneSlice:
    """What the Zones picture shows, as numbers: a 2-D slice of the latent space and points placed in it."""

    extent: float  # the slice covers [-extent, extent]^2 (plane coordinates)
    zones: np.ndarray  # [G, G] zone index of each grid point (rows: second coordinate)
    density: np.ndarray  # [G, G] N(0, I) density along the slice, relative to its peak
    anchors_2d: np.ndarray  # [C, 2] label anchors projected onto the plane
    masses: np.ndarray  # [C] fraction of N(0, I) samples in each zone
    latent_2d: Optional[np.ndarray] = None  # [2] the image's latent (lies in the slice)
    path_2d: Optional[np.ndarray] = None  # [S + 1, 2] its reverse flow, projected
    latent_zone: Optional[int] = None  # the zone the image's latent lies in


def zone_slice(demo: LZNDemo, latent: Optional[torch.Tensor] = None, grid: int = ZONE_GRID) -> ZoneSlice:
    """The zones on the plane spanned by the label anchors' two main directions, through the image's latent
    (through the origin without one), so that the latent lies in the slice and its colour is its zone. The
    slice spans at least 3 standard deviations and takes in the anchors and the latent (at most 8)."""
    anchors = demo.label_anchors  # [C, d]
    basis = anchor_plane(anchors)  # [d, 2]
    shown = anchors @ basis if latent is None else torch.cat([anchors @ basis, latent @ basis])  # [C (+1), 2]
    extent = float(min(8.0, max(3.0, 1.12 * shown.abs().max())))
    offset = torch.zeros(anchors.shape[1]) if latent is None else latent[0] - basis @ (basis.T @ latent[0])  # [d]
    axis = torch.linspace(-extent, extent, grid)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    plane = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # [G*G, 2]
    latents = offset + plane @ basis.T  # [G*G, d]
    zones = zones_of(latents, anchors).reshape(grid, grid).numpy()
    density = np.exp(-0.5 * plane.pow(2).sum(-1).reshape(grid, grid).numpy())  # offset is orthogonal to the plane
    if "masses" not in demo._zone_cache:
        samples = torch.randn(ZONE_SAMPLES, anchors.shape[1], generator=torch.Generator().manual_seed(0))
        demo._zone_cache["masses"] = np.bincount(zones_of(samples, anchors).numpy(), minlength=len(anchors)) / ZONE_SAMPLES
    result = ZoneSlice(extent, zones, density, (anchors @ basis).numpy(), demo._zone_cache["masses"])
    if latent is not None:
        result.latent_2d = (latent[0] @ basis).numpy()
        result.path_2d = (reverse_flow_path(latent, anchors) @ basis).numpy()
        result.latent_zone = int(demo.classifier.classify_latents(latent).predictions[0])  # as the classifier decides
    return result


def zone_colours(count: int) -> np.ndarray:
    """`[count, 3]` distinct RGB colours in [0, 1]."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if count <= 10 else "tab20" if count <= 20 else "hsv"]
    return np.array([cmap(i if count <= 20 else i / count)[:3] for i in range(count)])


def zones_figure(demo: LZNDemo, prepared: Optional[Image.Image] = None, grid: int = ZONE_GRID) -> Tuple[Image.Image, str]:
    """The Zones picture (PIL) and a caption: the zone slice with the anchors and, for an image, its latent
    and reverse flow; beside it the Gaussian mass of each zone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = time.perf_counter()
    latent = None if prepared is None else image_latent(demo, prepared)
    data = zone_slice(demo, latent, grid)
    names, colours = demo.class_names, zone_colours(len(demo.class_names))
    rgb = colours[data.zones]  # [G, G, 3]
    shade = 0.25 + 0.75 * data.density[..., None] ** 0.6
    picture = 1.0 - shade * (1.0 - rgb)

    fig, (ax, bars) = plt.subplots(1, 2, figsize=(11, 5.4), gridspec_kw={"width_ratios": [1.6, 1]})
    extent = data.extent
    ax.imshow(picture, origin="lower", extent=(-extent, extent, -extent, extent), interpolation="nearest")
    axis = np.linspace(-extent, extent, data.zones.shape[0])
    ax.contour(axis, axis, data.zones, levels=np.arange(len(names)) + 0.5, colors="white", linewidths=1.0)
    for i, (x, y) in enumerate(data.anchors_2d):
        if abs(x) <= extent and abs(y) <= extent:
            ax.plot(x, y, marker="*", markersize=17, color=colours[i], markeredgecolor="black", markeredgewidth=1.0, zorder=5)
            ax.annotate(names[i], (x, y), xytext=(7, 6), textcoords="offset points", fontsize=11, weight="bold", zorder=6,
                        bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    title = "Zones of N(0, I): a slice through the anchors' main plane"
    if data.latent_2d is not None:
        path = data.path_2d
        ax.plot(path[:, 0], path[:, 1], color="black", linewidth=2.6, alpha=0.6, zorder=7)
        ax.plot(path[:, 0], path[:, 1], color="white", linewidth=1.2, zorder=7, label="reverse flow (projected)")
        ax.plot(*data.latent_2d, marker="o", markersize=12, color=colours[data.latent_zone], markeredgecolor="black",
                markeredgewidth=2.0, zorder=8, linestyle="none", label=f"your image's latent: zone {names[data.latent_zone]}")
        ax.legend(loc="lower right", fontsize=9, framealpha=0.9)
        title = "Zones of N(0, I): the slice through your image's latent"
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xlabel("main direction 1 of the label anchors")
    ax.set_ylabel("main direction 2")
    ax.set_title(title, fontsize=11)

    positions = np.arange(len(names))
    bars.bar(positions, data.masses, color=colours, edgecolor="black", linewidth=0.8)
    bars.axhline(1.0 / len(names), color="black", linestyle="--", linewidth=1)
    bars.set_xticks(positions, names, fontsize=10 if len(names) <= 12 else 7, rotation=0 if len(names) <= 12 else 90)
    bars.set_ylabel(f"Gaussian mass of the zone ({ZONE_SAMPLES} samples)")
    bars.set_title(f"Each zone holds about 1/{len(names)} of N(0, I)", fontsize=11)
    bars.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    canvas = fig.canvas
    canvas.draw()
    image = Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
    plt.close(fig)
    caption = ("Colours: the zone (class) each latent of the slice belongs to, found by lzn_hf's reverse flow; "
               "stars: label anchors projected onto the plane; shading: N(0, I) density. ")
    if data.latent_zone is not None:
        caption += f"Your image's latent lies in zone {names[data.latent_zone]}. "
    return image, caption + f"({time.perf_counter() - start:.1f} s)"


# ----------------------------------------------------------------------------------------------------------
# Space export
# ----------------------------------------------------------------------------------------------------------
def space_requirements(gradio_version: str) -> str:
    """requirements.txt of the Space: lzn_hf's own requirements, read from the installed lzn_hf's metadata (so
    they follow setup.cfg), and what the app adds: gradio pinned to `gradio_version`, matplotlib."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        declared = requires("lzn_hf") or []
    except PackageNotFoundError:
        raise DemoInputError("--export_space needs lzn_hf installed (pip install -e \".[demo]\")") from None
    lines = ["# lzn_hf's requirements (its package is copied beside app.py), then the app's"]
    lines += [requirement for requirement in declared if ";" not in requirement]  # no extras
    lines += [f"gradio=={gradio_version}", "matplotlib>=3.7"]
    return "\n".join(lines) + "\n"


def space_readme(title: str, model: str, gradio_version: str) -> str:
    """A Gradio Space's README.md: YAML front matter (sdk, app_file, ...) and what the Space shows."""
    return f"""---
title: {title}
emoji: 🔢
colorFrom: indigo
colorTo: green
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
license: mit
tags:
  - lzn_hf
  - latent-zoning-networks
---

# {title}

A demo of a [Latent Zoning Network](https://arxiv.org/abs/2509.15591) (LZN) model, `{model}`, made with lzn_hf:

- **Generate**: pick classes, get samples (label → label anchor → latent → image);
- **Classify**: upload or draw an image, get the top classes (image → latent → reverse flow → class);
- **Zones**: see the zones the label anchors induce in N(0, I) and where your image's latent falls.

Exported by `python examples/app.py --model {model} --export_space DIR` (lzn_hf's `examples/app.py`).
"""


def export_space(out_dir, model: str, lzn_hf_dir, app_dir, gradio_version: str, title: str = "LZN demo") -> Path:
    """Write a Gradio Space to `out_dir`: `README.md` (front matter), `requirements.txt`, `app.py`,
    `app_logic.py`, a copy of the `lzn_hf` package and, for a local model folder, its `model/`, `pipeline/`,
    `classifier/` (the Space then runs offline; a Hub repo id is downloaded when the Space starts).

    Written into a hidden temporary sibling, then renamed into place (`lzn_hf._atomic.atomic_folder`); an
    existing non-empty `out_dir` is an error.
    """
    out_dir = Path(out_dir)
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise DemoInputError(f"--export_space {str(out_dir)!r} exists and is not a folder: choose a new folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DemoInputError(f"--export_space {str(out_dir)!r} exists and is not empty: choose a new folder")
    local = Path(model).expanduser()
    if local.is_dir():
        resolve_model(model)  # checks the layout
        space_model = "model_files"
    elif looks_like_repo_id(model):
        space_model = model
    else:
        resolve_model(model)  # raises the not-found message
    with atomic_folder(out_dir) as staging:  # overwrite=False: replaces an empty out_dir, never a non-empty one
        app_dir = Path(app_dir)
        app_text = (app_dir / "app.py").read_text(encoding="utf-8")
        marker = f'DEFAULT_MODEL_ARG = "{DEFAULT_MODEL}"'
        if marker not in app_text:
            raise RuntimeError(f"app.py has no line {marker!r} to point the Space at its model")
        (staging / "app.py").write_text(app_text.replace(marker, f'DEFAULT_MODEL_ARG = "{space_model}"'), encoding="utf-8")
        shutil.copy2(app_dir / "app_logic.py", staging / "app_logic.py")
        shutil.copytree(lzn_hf_dir, staging / "lzn_hf", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if local.is_dir():
            for name in SUBFOLDERS:
                shutil.copytree(local / name, staging / space_model / name)
        (staging / "requirements.txt").write_text(space_requirements(gradio_version), encoding="utf-8")
        (staging / "README.md").write_text(space_readme(title, model, gradio_version), encoding="utf-8")
    return out_dir
