"""A browser demo of a joint LZN model (Gradio): generate digits, classify an image, look at the zones.

    pip install -c constraints/cpu.txt -e ".[demo]"
    accelerate launch examples/train_joint.py          # the main job: writes lzn-digits-joint/
    python examples/app.py                             # then open http://127.0.0.1:7860
    python examples/app.py --model your-name/lzn-digits  # a Hub repo with model/, pipeline/, classifier/
    python examples/app.py --export_space space/       # a folder to push as a Gradio Space

Tabs: **Generate** (classes -> samples, `LZNPipeline`), **Classify** (an uploaded or drawn image -> top-k
classes, the anchor-bank classifier: the same image always gets the same answer) and **Zones** (the zones
the label anchors induce in N(0, I) and where the image's latent falls, from `lzn_hf.latent_flow`). The logic
lives in `app_logic.py` beside this file; this file is the user interface and the command line. Nothing is
sent anywhere: Gradio's analytics are off and the page uses no web fonts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry, no version check
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import app_logic  # noqa: E402  (beside this file)
from app_logic import DemoInputError, LZNDemo  # noqa: E402

DEFAULT_MODEL_ARG = "lzn-digits-joint"  # --export_space rewrites this line to point a Space at its model
HERE = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL_ARG,
                        help="a training output folder (model/, pipeline/, classifier/) or a Hub repo id with the same "
                             f"layout (default: {DEFAULT_MODEL_ARG}, the main job's output).")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to serve on (default 127.0.0.1; 0.0.0.0: every interface; a Space sets it).")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--export_space", metavar="DIR", default=None,
                        help="write a Gradio Space (README.md front matter, requirements.txt, app) to DIR and exit.")
    parser.add_argument("--space_title", default="LZN demo", help="the Space's title (with --export_space).")
    return parser.parse_args(argv)


def shown_errors(function):
    """Run `function`; a DemoInputError becomes a Gradio error message (a toast) instead of a traceback."""
    import functools

    import gradio as gr

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except DemoInputError as error:
            raise gr.Error(str(error), title="Please check the input") from None

    return wrapper


def build_app(demo: LZNDemo):
    """The Gradio Blocks of the three tabs for a loaded model."""
    import gradio as gr

    names = demo.class_names

    @shown_errors
    def on_generate(classes, per_class, steps, seed, progress=gr.Progress(track_tqdm=True)):
        progress(0, desc="sampling")
        return app_logic.generate(demo, classes, per_class, steps, seed)

    def chosen_image(source, upload, drawing, invert):
        is_drawing = source == "Draw"
        return app_logic.prepare_image(drawing if is_drawing else upload, demo.image_size, demo.num_channels,
                                       invert=invert, is_drawing=is_drawing)

    @shown_errors
    def on_classify(source, upload, drawing, invert, top_k):
        prepared = chosen_image(source, upload, drawing, invert)
        return app_logic.classify(demo, prepared, top_k), app_logic.preview(prepared)

    @shown_errors
    def on_zones(use_image, source, upload, drawing, invert):
        prepared = chosen_image(source, upload, drawing, invert) if use_image else None
        return app_logic.zones_figure(demo, prepared)

    with gr.Blocks(title="LZN demo", analytics_enabled=False) as blocks:
        gr.Markdown(f"# Latent Zoning Networks\nOne Gaussian latent space for images and labels. Model: {demo.describe()}.")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                gr.Markdown("Label → label anchor → forward flow into its zone of N(0, I) → latent → image decoder.")
                with gr.Row():
                    with gr.Column(scale=1):
                        classes = gr.CheckboxGroup(names, value=names, label="Classes")
                        per_class = gr.Slider(1, app_logic.MAX_IMAGES_PER_CLASS, value=4, step=1, label="Images per class")
                        steps = gr.Slider(1, app_logic.MAX_STEPS, value=10, step=1, label="Sampling steps")
                        seed = gr.Number(0, precision=0, minimum=0, label="Seed")
                        generate = gr.Button("Generate", variant="primary", elem_id="generate-button")
                    with gr.Column(scale=2):
                        grid = gr.Image(label="Samples, one row per class", type="pil", interactive=False,
                                        format="png", elem_id="generate-output")
                        generate_caption = gr.Markdown(elem_id="generate-caption")
            with gr.Tab("Classify", id="classify"):
                gr.Markdown("Image → anchor → forward flow over the anchor bank → latent → reverse flow over the label "
                            "anchors → class. Deterministic: the same image always gets the same answer.")
                with gr.Row():
                    with gr.Column():
                        source = gr.Radio(["Upload", "Draw"], value="Upload", label="Image source")
                        upload = gr.Image(label="Upload an image", type="pil", sources=["upload", "clipboard"],
                                          image_mode=None, elem_id="classify-upload")
                        drawing = gr.Sketchpad(label="Draw a digit, large (the strokes are read as light on dark)",
                                               type="pil", canvas_size=(280, 280), fixed_canvas=True, layers=False,
                                               brush=gr.Brush(default_size=22, colors=["#000000"], default_color="#000000",
                                                              color_mode="fixed"),
                                               image_mode="RGBA", visible=False, elem_id="classify-draw")
                        invert = gr.Checkbox(False, label="Invert colours (for dark digits on a light background)")
                        top_k = gr.Slider(1, len(names), value=min(3, len(names)), step=1, label="Top-k classes")
                        classify = gr.Button("Classify", variant="primary", elem_id="classify-button")
                    with gr.Column():
                        label = gr.Label(label="Top classes", num_top_classes=len(names), elem_id="classify-output")
                        seen = gr.Image(label="What the model sees (resized)", interactive=False, format="png",
                                        elem_id="classify-preview")
            with gr.Tab("Zones", id="zones"):
                gr.Markdown("The label anchors split N(0, I) into one zone per class of equal Gaussian mass. The picture "
                            "is a 2-D slice of the latent space through the anchors' two main directions; with an image "
                            "(from the Classify tab) the slice passes through the image's latent.")
                use_image = gr.Checkbox(True, label="Place the Classify tab's image")
                draw_zones = gr.Button("Draw the zones", variant="primary", elem_id="zones-button")
                zones = gr.Image(label="Zones", interactive=False, format="png", elem_id="zones-output")
                zones_caption = gr.Markdown(elem_id="zones-caption")

        source.change(lambda choice: (gr.update(visible=choice == "Upload"), gr.update(visible=choice == "Draw")),
                      source, [upload, drawing])
        generate.click(on_generate, [classes, per_class, steps, seed], [grid, generate_caption])
        classify.click(on_classify, [source, upload, drawing, invert, top_k], [label, seen])
        draw_zones.click(on_zones, [use_image, source, upload, drawing, invert], [zones, zones_caption])
    return blocks


def offline_theme():
    """Gradio's default look with system fonts: the default theme would fetch web fonts from the internet."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])


def main(args: argparse.Namespace) -> None:
    try:
        if args.export_space:
            import gradio as gr

            import lzn_hf

            out = app_logic.export_space(args.export_space, args.model, lzn_hf_dir=Path(lzn_hf.__file__).parent,
                                         app_dir=HERE, gradio_version=gr.__version__, title=args.space_title)
            print(f"wrote a Gradio Space to {out}: push it with `hf upload your-name/space-name {out} --repo-type space`")
            return
        demo = LZNDemo.from_folder(app_logic.resolve_model(args.model), source=args.model)
    except DemoInputError as error:
        sys.exit(f"error: {error}")
    build_app(demo).queue().launch(server_name=args.host, server_port=args.port, theme=offline_theme())


if __name__ == "__main__":
    main(parse_args())
