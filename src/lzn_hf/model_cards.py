"""Model cards (``README.md`` with YAML metadata) for saved LZN folders.

`write_model_card(folder)` looks at what a ``save_pretrained`` folder holds and writes a Hub model card:

* YAML metadata: ``library_name: lzn_hf``, ``pipeline_tag``, ``tags``, and, when given, ``datasets``,
  ``metrics`` (names), ``base_model``, ``license`` and a ``model-index`` with the metric values;
* a short description of the model, a usage snippet that runs as written (tested), a results table and any
  extra text.

Three kinds of folder, detected from the files (or passed as ``kind``):

| kind | folder | pipeline_tag |
|---|---|---|
| ``"pipeline"`` | `LZNPipeline.save_pretrained` (``model_index.json``) | ``unconditional-image-generation`` |
| ``"model"`` | `LZNModel.save_pretrained` | ``image-feature-extraction`` |
| ``"classifier"`` | `LZNForImageClassification.save_pretrained` | ``image-classification`` |

(The Hub has no tag for label-conditional generation: those pipelines get ``unconditional-image-generation``
plus the tag ``class-conditional-image-generation``.)

The ``save_pretrained`` methods of `LZNPipeline`, `LZNModel` and `LZNForImageClassification` call
:func:`write_model_card` with ``overwrite=False`` (an existing ``README.md`` is kept); training scripts call it
again with their datasets and metrics. Before a ``push_to_hub`` upload, :func:`prepare_upload` puts lzn_hf's
card in place of the generic card that transformers / diffusers write, and keeps a card already on the Hub.

Imports only huggingface_hub and the standard library: ``modeling_lzn`` reaches this module, and Hub remote
code copies it beside the model (design.md §2).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union
from urllib.parse import quote

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ._atomic import write_text_atomically

__all__ = ["MODEL_CARD_KINDS", "detect_kind", "model_card", "write_model_card", "is_generated_boilerplate", "prepare_upload",
           "markdown_text", "markdown_code"]

#: kind -> the pipeline_tag of its card
MODEL_CARD_KINDS: Dict[str, str] = {
    "pipeline": "unconditional-image-generation",
    "model": "image-feature-extraction",
    "classifier": "image-classification",
}
BASE_TAGS = ["lzn", "latent-zoning-networks"]
PAPER = "[Latent Zoning Network](https://arxiv.org/abs/2509.15591) (LZN, Lin et al., NeurIPS 2025)"
ORIGINAL_CODE = "https://github.com/microsoft/latent-zoning-networks"
# Phrases of the placeholder cards that transformers' and diffusers' push_to_hub write.
_BOILERPLATE = ("has been automatically generated", "[More Information Needed]")


# ----------------------------------------------------------------------------------------------------------
# user-supplied text in a card: shown literally, never markup or code
# ----------------------------------------------------------------------------------------------------------
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]#!|<>~&$])")  # parentheses are inert once brackets are escaped


def markdown_text(value: Any) -> str:
    """``value`` as one line of Markdown prose (a heading, a table cell, a sentence) that shows it literally: line
    breaks become spaces, and Markdown, HTML and math characters are backslash-escaped (``<script>`` stays text,
    ``|`` does not split a table, ``---`` on its own line cannot appear)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(value).split()))


def markdown_code(value: Any) -> str:
    """``value`` as one inline code span (one line; a fence longer than any backtick run inside; ``|`` escaped so
    that it stays in its table cell)."""
    text = " ".join(str(value).split()).replace("|", "\\|")
    fence = "`" * (1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _code_block(code: str, language: str = "python") -> list:
    """A fenced code block whose fence is longer than any backtick run of ``code`` (a string inside cannot close it)."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", code)), default=0))
    return [f"{fence}{language}", code, fence]


# ----------------------------------------------------------------------------------------------------------
# reading a saved folder
# ----------------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def detect_kind(folder: Union[str, os.PathLike]) -> str:
    """``"pipeline"``, ``"model"`` or ``"classifier"`` from the files of a ``save_pretrained`` folder of an
    ``LZNPipeline``, ``LZNModel`` or ``LZNForImageClassification``; ``ValueError`` (naming the folder) otherwise."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        class_name = _read_json(folder / "model_index.json").get("_class_name")
        if isinstance(class_name, list) and len(class_name) == 2:  # a folder that carries its code: [module, class]
            class_name = class_name[1]
        if class_name != "LZNPipeline":
            raise ValueError(f"{folder}/model_index.json is not an LZNPipeline's (_class_name={class_name!r})")
        return "pipeline"
    if (folder / "config.json").is_file():
        config = _read_json(folder / "config.json")
        architectures = config.get("architectures") or []
        if "LZNForImageClassification" in architectures:
            return "classifier"
        if "LZNModel" in architectures or (config.get("model_type") == "lzn" and not architectures):
            return "model"
        raise ValueError(f"{folder}/config.json is not an LZNModel or LZNForImageClassification config (architectures={architectures})")
    raise ValueError(f"{folder} holds neither model_index.json (a pipeline) nor config.json (a model); pass `kind` explicitly")


def _folder_facts(folder: Path, kind: str) -> Dict[str, Any]:
    """What the card says about the model: shapes, classes, parts, remote code."""
    facts: Dict[str, Any] = {"id2label": {}, "auto_map": {}, "has_processor": (folder / "preprocessor_config.json").is_file()}
    if kind == "pipeline":
        index = _read_json(folder / "model_index.json") if (folder / "model_index.json").is_file() else {}
        decoder = folder / "image_decoder" / "config.json"
        if decoder.is_file():
            config = _read_json(decoder)
            facts.update(image_size=config.get("image_size"), num_channels=config.get("num_channels"), latent_dim=config.get("latent_dim"))
        anchors = folder / "label_anchors" / "config.json"
        if (index.get("label_anchors") or [None])[0] is not None and anchors.is_file():
            facts["id2label"] = _read_json(anchors).get("id2label") or {}
        facts["scheduler"] = (index.get("scheduler") or [None, None])[1]
        facts["carries_code"] = isinstance(index.get("_class_name"), list)  # save_pretrained(include_code=True)
        return facts
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    encoder = config.get("image_encoder_config") or {}
    facts.update(
        image_size=encoder.get("image_size"),
        num_channels=encoder.get("num_channels"),
        latent_dim=encoder.get("latent_dim"),
        encoder_type=encoder.get("encoder_type", "ncsnpp"),
        has_decoder=config.get("image_decoder_config") is not None,
        anchor_bank_size=config.get("anchor_bank_size", 0),
        auto_map=config.get("auto_map") or {},
    )
    if config.get("label_anchors_config") is not None:
        facts["id2label"] = config.get("id2label") or config["label_anchors_config"].get("id2label") or {}
    return facts


def _class_names(facts: Mapping[str, Any]) -> list:
    id2label = facts["id2label"]
    return [id2label[key] for key in sorted(id2label, key=int)]


def _image_shape(facts: Mapping[str, Any]) -> str:
    size, channels = facts.get("image_size"), facts.get("num_channels")
    return f"{size}×{size}×{channels}" if size and channels else "image"


# ----------------------------------------------------------------------------------------------------------
# the card's text
# ----------------------------------------------------------------------------------------------------------
def _description(kind: str, facts: Mapping[str, Any]) -> str:
    names = _class_names(facts)
    shape, dim = _image_shape(facts), facts.get("latent_dim")
    classes = f"{len(names)} classes: {', '.join(map(markdown_text, names[:10]))}{', ...' if len(names) > 10 else ''}" if names else ""
    if kind == "pipeline":
        if names:
            return (f"A label-conditional image generator built on a {PAPER}: class label → label anchor → a latent in "
                    f"that label's zone of N(0, I) ({dim}-d) → rectified-flow decoder → {shape} image. {classes}.")
        return (f"An unconditional image generator built on a {PAPER}: a latent drawn from N(0, I) ({dim}-d) → "
                f"rectified-flow decoder → {shape} image.")
    encoder = {"ncsnpp": "NCSN++ encoder with multi-scale latent heads", "resnet_gn": "ResNet-GN encoder with a projection head"}
    encoder = encoder.get(facts.get("encoder_type"), "image encoder")
    if kind == "classifier":
        text = (f"An image classifier built on a {PAPER}: {shape} image in [-1, 1] → {dim}-d anchor ({encoder}) → "
                f"image latent in N(0, I) → reverse flow over the label anchors → class. {classes}.")
        if facts.get("anchor_bank_size"):
            text += (f" A bank of {facts['anchor_bank_size']} reference anchors of training images is stored with the "
                     "weights, so a prediction does not depend on the other images of the batch.")
        return text
    text = (f"The image encoder of a {PAPER} ({encoder}): {shape} images in [-1, 1] → {dim}-d anchors, and their "
            "latents, points of the anchors' zones of N(0, I) computed by the closed-form latent flow.")
    parts = (["a rectified-flow image decoder (generation)"] if facts.get("has_decoder") else []) + (
        [f"label anchors (classification; {classes})"] if names else [])
    if parts:
        text += " The model also holds " + " and ".join(parts) + "."
    return text


def _usage(kind: str, facts: Mapping[str, Any], reference: str) -> str:
    """A snippet that runs as written against the saved folder / repo `reference`."""
    reference = json.dumps(reference)  # a double-quoted Python string
    names = _class_names(facts)
    size, channels = facts.get("image_size") or 32, facts.get("num_channels") or 3
    auto_map = facts.get("auto_map") or {}
    if kind == "pipeline":
        if facts.get("carries_code"):
            load = f"pipe = DiffusionPipeline.from_pretrained({reference}, trust_remote_code=True)  # the folder's code; no lzn_hf needed"
            lines = ["import torch", "from diffusers import DiffusionPipeline", "", load]
        else:
            lines = ["import torch", "from lzn_hf.pipeline_lzn import LZNPipeline", "", f"pipe = LZNPipeline.from_pretrained({reference})"]
        if names:
            lines.append(f"images = pipe(labels=[{json.dumps(str(names[0]))}], num_images_per_label=4, generator=torch.manual_seed(0)).images  # PIL images")
        else:
            lines.append("images = pipe(num_images=4, generator=torch.manual_seed(0)).images  # PIL images")
        return "\n".join(lines)
    pixels = f"pixel_values = torch.rand(2, {channels}, {size}, {size}) * 2 - 1  # images in [-1, 1], [B, C, H, W]"
    if kind == "classifier":
        if "AutoModelForImageClassification" in auto_map:
            load = ["import torch", "from transformers import AutoModelForImageClassification", "",
                    f"model = AutoModelForImageClassification.from_pretrained({reference}, trust_remote_code=True)  # no lzn_hf needed"]
        else:
            load = ["import torch", "from lzn_hf import LZNForImageClassification", "",
                    f"model = LZNForImageClassification.from_pretrained({reference})"]
        lines = load + [pixels, "with torch.no_grad():", "    predictions = model(pixel_values).logits.argmax(-1)  # class indices, [B]"]
        if facts.get("has_processor") and "AutoModelForImageClassification" not in auto_map:
            lines += ["", "from PIL import Image", "from transformers import pipeline", "",
                      f"classify = pipeline(\"image-classification\", model={reference})",
                      f"classify(Image.new(\"{'L' if channels == 1 else 'RGB'}\", ({size}, {size})), top_k=3)"]
        return "\n".join(lines)
    if "AutoModel" in auto_map:
        load = ["import torch", "from transformers import AutoModel", "",
                f"model = AutoModel.from_pretrained({reference}, trust_remote_code=True)  # no lzn_hf needed"]
    else:
        load = ["import torch", "from lzn_hf import LZNModel", "", f"model = LZNModel.from_pretrained({reference})"]
    lines = load + [
        pixels,
        "with torch.no_grad():",
        "    anchors = model.get_image_anchors(pixel_values)    # [B, d], batch-independent",
        "    features = model.get_image_features(pixel_values).pooler_output  # [B, F], the representation",
        "    latents = model.get_image_latents(pixel_values, generator=torch.manual_seed(0))  # [B, d], zones of this batch",
    ]
    if names:
        lines.append("    classes = model.classify_latents(latents).predictions  # label decoder, [B]")
    return "\n".join(lines)


def _format_value(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"


def _check_inputs(kind: str, datasets, metrics) -> None:
    if kind not in MODEL_CARD_KINDS:
        raise ValueError(f"unknown model card kind {kind!r}; expected one of {sorted(MODEL_CARD_KINDS)}")
    if not all(isinstance(name, str) and name for name in datasets):
        raise ValueError(f"`datasets` must be a list of dataset names, got {datasets!r}")
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"metric names must be non-empty strings, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"metric {name!r} must be a finite number, got {value!r}")


def model_card(
    folder: Union[str, os.PathLike],
    kind: Optional[str] = None,
    *,
    datasets: Sequence[str] = (),
    metrics: Optional[Mapping[str, float]] = None,
    base_model: Optional[str] = None,
    extra_text: str = "",
    repo_id: Optional[str] = None,
    title: Optional[str] = None,
    description: Optional[str] = None,
    tags: Sequence[str] = (),
    license: Optional[str] = None,
    dataset_name: Optional[str] = None,
    pipeline_tag: Optional[str] = None,
    usage: Optional[str] = None,
) -> ModelCard:
    """Build (without writing) the model card of a saved folder; see :func:`write_model_card`."""
    folder = Path(folder)
    kind = detect_kind(folder) if kind is None else kind
    if isinstance(datasets, str):
        raise ValueError(f"`datasets` must be a list of dataset names, got the string {datasets!r}")
    datasets, metrics = list(datasets or []), dict(metrics or {})
    _check_inputs(kind, datasets, metrics)
    facts = _folder_facts(folder, kind)
    reference = repo_id or os.fspath(folder)
    pipeline_tag = pipeline_tag or MODEL_CARD_KINDS[kind]
    title = title or (repo_id or folder.resolve().name)

    card_tags = list(BASE_TAGS)
    if kind == "pipeline":
        card_tags += ["image-generation", "class-conditional-image-generation" if facts["id2label"] else "unconditional-image-generation"]
    if facts.get("auto_map"):
        card_tags.append("custom_code")
    card_tags += [tag for tag in tags if tag not in card_tags]

    eval_results = None
    if metrics and datasets:
        eval_results = [
            EvalResult(task_type=pipeline_tag, dataset_type=datasets[0], dataset_name=dataset_name or datasets[0],
                       metric_type=name.split("/")[0], metric_name=name, metric_value=float(value))
            for name, value in metrics.items()
        ]
    data = ModelCardData(
        library_name="lzn_hf",
        pipeline_tag=pipeline_tag,
        tags=card_tags,
        datasets=datasets or None,
        metrics=sorted({name.split("/")[0] for name in metrics}) or None,
        base_model=base_model,
        license=license,
        model_name=title if eval_results else None,
        eval_results=eval_results,
    )

    sections = [f"# {markdown_text(title)}", "", description or _description(kind, facts), ""]
    if base_model:
        sections += [f"Fine-tuned from [{markdown_text(base_model)}](https://huggingface.co/{quote(str(base_model), safe='/')}).", ""]
    if facts.get("carries_code"):
        needs = "Needs only `torch` and `diffusers`: the pipeline's code ships with the weights (`trust_remote_code=True`)."
    elif facts.get("auto_map"):
        needs = "Needs only `torch` and `transformers`: the model code ships with the weights (`trust_remote_code=True`)."
    else:
        needs = "Needs the `lzn_hf` package."
    sections += ["## Usage", "", needs, "", *_code_block((usage or _usage(kind, facts, reference)).strip()), ""]
    if metrics:
        on = f" on {markdown_text(dataset_name or ', '.join(datasets))}" if datasets else ""
        sections += [f"## Results{on}", "", "| metric | value |", "|---|---|"]
        sections += [f"| {markdown_text(name)} | {_format_value(float(value))} |" for name, value in metrics.items()] + [""]
    if extra_text.strip():
        sections += [extra_text.strip(), ""]
    sections += ["## Method", "",
                 "LZN puts every data type into one shared Gaussian latent space. An encoder maps each sample to an "
                 "*anchor*; the anchors split N(0, I) into disjoint *zones* through a closed-form flow, and a latent "
                 "is a point of its sample's zone. Decoders map latents back to data: generation is label → latent → "
                 "image, classification is image → latent → label.", "",
                 f"Paper: Lin et al., *Latent Zoning Network*, NeurIPS 2025, [arXiv 2509.15591](https://arxiv.org/abs/2509.15591). "
                 f"The authors' code: {ORIGINAL_CODE}.", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(sections))


def write_model_card(folder: Union[str, os.PathLike], kind: Optional[str] = None, *, overwrite: bool = True, **card_fields) -> Optional[Path]:
    """Write ``folder/README.md``: the model card of a saved LZN folder.

    Args:
        folder: a ``save_pretrained`` folder of an `LZNPipeline`, `LZNModel` or `LZNForImageClassification`.
        kind: ``"pipeline"``, ``"model"`` or ``"classifier"``; detected from the files when None.
        overwrite: False keeps an existing ``README.md`` (what ``save_pretrained`` does).
        **card_fields: the keyword arguments of :func:`model_card`:

            - ``datasets``: Hub dataset ids (or names) the model was trained on, e.g. ``["cifar10"]``;
            - ``metrics``: ``{name: value}``, e.g. ``{"accuracy": 0.9447, "fid": 2.59}``; a ``/`` suffix names a
              variant (``"accuracy/anchor_bank"``: metric type ``accuracy``). With ``datasets`` they also go
              into a ``model-index`` (Hub evaluation results);
            - ``base_model``: the Hub id of a model this one was fine-tuned or converted from;
            - ``extra_text``: Markdown appended after the results (training details, caveats, ...);
            - ``repo_id`` (used in the usage snippet instead of the folder path), ``title``, ``description``,
              ``tags`` (added), ``license``, ``dataset_name`` (display name of ``datasets[0]``),
              ``pipeline_tag`` and ``usage`` (replace the defaults).

    Returns:
        The path written, or None when ``overwrite=False`` kept an existing card.
    """
    path = Path(folder) / "README.md"
    if path.exists() and not overwrite:
        return None
    card = model_card(folder, kind, **card_fields)
    return write_text_atomically(path, str(card))  # a reader (or a push) never sees half a card


# ----------------------------------------------------------------------------------------------------------
# push_to_hub
# ----------------------------------------------------------------------------------------------------------
def is_generated_boilerplate(card: ModelCard) -> bool:
    """True for the placeholder cards transformers' / diffusers' ``push_to_hub`` create when a repo has none."""
    if card.data.to_dict().get("library_name") == "lzn_hf":
        return False
    return any(phrase in card.text for phrase in _BOILERPLATE) or not card.text.strip()


def prepare_upload(folder: Union[str, os.PathLike], repo_id: str) -> bool:
    """Called just before ``push_to_hub`` uploads ``folder`` to ``repo_id``.

    transformers and diffusers have by then written ``README.md``: the card already on the Hub (kept, as they
    do), or a generic placeholder, which is replaced by lzn_hf's card with ``repo_id`` in the usage snippet.
    Returns True when lzn_hf's card was written.
    """
    path = Path(folder) / "README.md"
    if path.is_file() and not is_generated_boilerplate(ModelCard.load(path)):
        return False
    try:
        write_model_card(folder, repo_id=repo_id)
    except ValueError:  # not a folder lzn_hf knows how to describe: leave the library's card
        return False
    return True
