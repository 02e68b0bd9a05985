"""examples/app.py, the Gradio demo: its logic (examples/app_logic.py) on a tiny model, the command line and the
Space export, and the app itself driven by headless Chromium.

The browser test needs gradio and selenium (`pip install -e ".[demo]"`) and Debian's `chromium` +
`chromium-driver`; it skips, saying which is missing, without them. `LZN_APP_MODEL=folder` runs it on a trained
model instead of the tiny one, and `LZN_APP_SCREENSHOTS=dir` keeps its screenshots there (how
docs/images/app_*.png are made, see docs/hub.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lzn_hf import LZNConfig, LZNForImageClassification, LZNModel
from lzn_hf.image_processing_lzn import lzn_image_processor
from lzn_test_utils import free_port
from lzn_hf.latent_flow import latents_to_anchors
from lzn_hf.pipeline_lzn import LZNPipeline

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CHROMIUM = os.environ.get("LZN_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LZN_CHROMEDRIVER", "/usr/bin/chromedriver")
# a closed network: no background traffic, no sandbox (root), no GPU; a fresh profile per run (--user-data-dir)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1250"]


def load_example(name: str):
    """examples/<name>.py as module `name` (registered, so that app.py's `import app_logic` finds it)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


logic = load_example("app_logic")


def save_tiny_run(folder: Path) -> Path:
    """A training output folder (model/, pipeline/, classifier/ with an anchor bank) of the untrained
    `tiny-joint` preset: 8x8 grayscale, 3 classes (zero, one, two), latent dimension 16."""
    torch.manual_seed(0)
    model = LZNModel(LZNConfig.from_preset("tiny-joint")).eval()
    model.save_pretrained(folder / "model")
    lzn_image_processor(8, 1).save_pretrained(folder / "model")
    LZNPipeline(image_decoder=model.image_decoder, label_anchors=model.label_anchors).save_pretrained(folder / "pipeline")
    classifier = LZNForImageClassification.from_pretrained(folder / "model").eval()
    classifier.build_anchor_bank(torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    classifier.save_pretrained(folder / "classifier")
    lzn_image_processor(8, 1).save_pretrained(folder / "classifier")
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return save_tiny_run(tmp_path_factory.mktemp("run") / "lzn-tiny")


@pytest.fixture(scope="module")
def demo(run_dir):
    demo = logic.LZNDemo.from_folder(run_dir)
    demo.pipeline.set_progress_bar_config(disable=True)
    return demo


def digit_image(size: int = 64, index: int = 0) -> Image.Image:
    """A digit from scikit-learn's digits (light on dark, as the model was trained), upscaled to `size`."""
    from sklearn.datasets import load_digits

    pixels = (load_digits().images[-1 - index] * 255 / 16).astype(np.uint8)
    return Image.fromarray(pixels, mode="L").resize((size, size), Image.NEAREST)


# ---------------------------------------------------------------------------------------------------------
# the model argument
# ---------------------------------------------------------------------------------------------------------
def test_missing_default_model_says_run_the_main_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(logic.DemoInputError, match="run the main job first: `accelerate launch examples/train_joint.py`"):
        logic.resolve_model(logic.DEFAULT_MODEL)


def test_incomplete_folder_names_what_is_missing(run_dir, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(run_dir / "pipeline", partial / "pipeline")
    with pytest.raises(logic.DemoInputError, match=r"has no model/, classifier/"):
        logic.resolve_model(str(partial))
    with pytest.raises(logic.DemoInputError, match="not found: pass a training output folder"):
        logic.resolve_model(str(tmp_path / "nowhere" / "x"))
    assert logic.resolve_model(str(run_dir)) == run_dir


def test_hub_repo_id_downloads_the_three_folders(run_dir, monkeypatch):
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, allow_patterns=None, cache_dir=None):
        calls.append((repo_id, allow_patterns))
        return str(run_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)  # no network in tests
    assert logic.resolve_model("someone/lzn-digits") == run_dir
    assert calls == [("someone/lzn-digits", ["model/**", "pipeline/**", "classifier/**"])]
    assert logic.looks_like_repo_id("someone/lzn-digits") and not logic.looks_like_repo_id("./a/b")
    assert not logic.looks_like_repo_id("a/b/c") and not logic.looks_like_repo_id("lzn-digits-joint")


def test_unconditional_or_bankless_models_are_refused(run_dir, tmp_path):
    folder = tmp_path / "no-bank"
    shutil.copytree(run_dir, folder)
    shutil.rmtree(folder / "classifier")
    classifier = LZNForImageClassification.from_pretrained(run_dir / "model")
    classifier.save_pretrained(folder / "classifier")
    lzn_image_processor(8, 1).save_pretrained(folder / "classifier")
    with pytest.raises(logic.DemoInputError, match="has no anchor bank"):
        logic.LZNDemo.from_folder(folder)


# ---------------------------------------------------------------------------------------------------------
# Generate
# ---------------------------------------------------------------------------------------------------------
def test_generate_grid_rows_per_class_and_determinism(demo):
    assert demo.class_names == ["zero", "one", "two"]
    grid, caption = logic.generate(demo, ["two", "zero"], images_per_class=3, num_inference_steps=2, seed=5)
    again, _ = logic.generate(demo, ["zero", "two"], images_per_class=3, num_inference_steps=2, seed=5)
    other, _ = logic.generate(demo, ["zero"], images_per_class=3, num_inference_steps=2, seed=6)
    cell = 8 * (logic.GRID_CELL // 8)
    assert grid.mode == "RGB" and grid.size[1] == 2 * (cell + 4) + 4  # two rows (classes), in the model's order
    assert grid.size[0] > 3 * (cell + 4)  # three columns plus the names
    assert np.array_equal(np.asarray(grid), np.asarray(again))
    first_row = np.asarray(grid)[: np.asarray(other).shape[0]]
    assert np.asarray(other).shape[1] == grid.size[0] and not np.array_equal(first_row, np.asarray(other))
    assert caption.startswith("3 images of each of 2 classes (zero, two), 2 steps, seed 5")


@pytest.mark.parametrize("classes, per_class, steps, seed, message", [
    (["seven"], 1, 2, 0, "unknown class 'seven'; the classes are: zero, one, two"),
    ([], 1, 2, 0, "choose at least one class"),
    (["zero"], 0, 2, 0, "images per class must be between 1 and 8, got 0"),
    (["zero"], 1, 51, 0, "steps must be between 1 and 50, got 51"),
    (["zero"], 1, 2.5, 0, "steps must be a whole number, got 2.5"),
    (["zero"], 1, 2, None, "seed must be a whole number, got None"),
    (["zero"], 1, 2, -1, "seed must be between 0 and"),
])  # fmt: skip
def test_generate_bad_inputs_get_clear_messages(demo, classes, per_class, steps, seed, message):
    with pytest.raises(logic.DemoInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        logic.generate(demo, classes, per_class, steps, seed)


def test_widget_numbers_are_accepted(demo):
    assert logic.check_int("seed", 3.0, 0, 9) == 3 and logic.check_int("seed", "4", 0, 9) == 4
    with pytest.raises(logic.DemoInputError, match="whole number"):
        logic.check_int("seed", True, 0, 9)


# ---------------------------------------------------------------------------------------------------------
# Classify
# ---------------------------------------------------------------------------------------------------------
def test_prepare_image_any_upload_to_the_model_input(tmp_path):
    rgba = Image.new("RGBA", (90, 60), (0, 0, 0, 0))
    assert logic.prepare_image(rgba, 8, 1).size == (8, 8) and logic.prepare_image(rgba, 8, 1).mode == "L"
    assert logic.prepare_image(rgba, 32, 3).mode == "RGB" and logic.prepare_image(rgba, 32, 3).size == (32, 32)
    floats = np.zeros((20, 20, 3), dtype=np.float32)
    floats[5:15, 8:12] = 1.0
    prepared = np.asarray(logic.prepare_image(floats, 8, 1))
    assert prepared.max() > 200 and prepared[0, 0] == 0  # [0, 1] floats are scaled to bytes
    inverted = np.asarray(logic.prepare_image(Image.fromarray(255 - (floats * 255).astype(np.uint8)), 8, 1, invert=True))
    np.testing.assert_array_equal(inverted, prepared)
    path = tmp_path / "digit.png"
    digit_image().save(path)
    assert logic.prepare_image(str(path), 8, 1).size == (8, 8)


def test_prepare_image_bad_inputs_get_clear_messages(tmp_path):
    with pytest.raises(logic.DemoInputError, match="no image: upload one or draw one first"):
        logic.prepare_image(None, 8, 1)
    with pytest.raises(logic.DemoInputError, match="no drawing: draw something first"):
        logic.prepare_image({"composite": None, "layers": []}, 8, 1, is_drawing=True)
    with pytest.raises(logic.DemoInputError, match="the drawing is empty"):
        logic.prepare_image({"composite": Image.new("RGBA", (50, 50))}, 8, 1, is_drawing=True)
    with pytest.raises(logic.DemoInputError, match=r"unusable image array of shape \(4, 4, 2\)"):
        logic.prepare_image(np.zeros((4, 4, 2), np.uint8), 8, 1)
    with pytest.raises(logic.DemoInputError, match="the image is empty"):
        logic.prepare_image(Image.new("L", (0, 5)), 8, 1)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(logic.DemoInputError, match="not an image that can be read"):
        logic.prepare_image(str(text), 8, 1)


@pytest.mark.parametrize("canvas, stroke", [
    (Image.new("RGBA", (200, 200), (0, 0, 0, 0)), (0, 0, 0, 255)),  # a black brush on a transparent canvas
    (Image.new("RGBA", (200, 200), (0, 0, 0, 0)), (255, 255, 255, 255)),  # a white one
    (Image.new("RGB", (200, 200), "white"), (0, 0, 0)),  # dark ink on white paper
])  # fmt: skip
def test_drawing_becomes_light_strokes_on_black_cropped_to_them(canvas, stroke):
    canvas.paste(stroke, (150, 20, 170, 80))  # a short bar in the top right corner
    prepared = np.asarray(logic.prepare_image({"composite": canvas}, 8, 1, is_drawing=True))
    assert prepared[:, 3:5].mean() > 100 and prepared[:, :2].max() < 60  # light, centred, filling the height
    assert prepared[1:7, 3:5].min() > 100


def test_classify_top_k_deterministic_and_same_as_the_transformers_pipeline(demo, run_dir):
    from transformers import pipeline

    import lzn_hf  # noqa: F401  (registers the LZN classes)

    prepared = logic.prepare_image(digit_image(), demo.image_size, demo.num_channels)
    scores = logic.classify(demo, prepared, top_k=2)
    assert list(scores) and len(scores) == 2 and set(scores) <= set(demo.class_names)
    assert list(scores.values()) == sorted(scores.values(), reverse=True) and sum(scores.values()) <= 1 + 1e-6
    assert logic.classify(demo, prepared, top_k=2) == scores  # the same image, the same answer
    reference = pipeline("image-classification", model=str(run_dir / "classifier"))(prepared, top_k=2)
    assert [entry["label"] for entry in reference] == list(scores)
    np.testing.assert_allclose([entry["score"] for entry in reference], list(scores.values()), rtol=1e-4, atol=1e-6)
    with pytest.raises(logic.DemoInputError, match="top-k must be between 1 and 3, got 4"):
        logic.classify(demo, prepared, top_k=4)
    assert logic.preview(prepared).size == (160, 160)


# ---------------------------------------------------------------------------------------------------------
# Zones
# ---------------------------------------------------------------------------------------------------------
def test_zone_slice_holds_the_latent_in_its_zone(demo):
    prepared = logic.prepare_image(digit_image(), demo.image_size, demo.num_channels)
    latent = logic.image_latent(demo, prepared)  # [1, d]
    data = logic.zone_slice(demo, latent, grid=41)
    anchors = demo.label_anchors
    basis = logic.anchor_plane(anchors)
    torch.testing.assert_close(basis.T @ basis, torch.eye(2), rtol=0, atol=1e-5)
    assert data.zones.shape == (41, 41) and set(np.unique(data.zones)) <= set(range(3))
    np.testing.assert_allclose(data.masses.sum(), 1.0) and np.testing.assert_allclose(data.masses, 1 / 3, atol=0.05)
    np.testing.assert_allclose(data.anchors_2d, (anchors @ basis).numpy(), rtol=1e-5)
    np.testing.assert_allclose(data.latent_2d, (latent[0] @ basis).numpy(), rtol=1e-5)
    assert abs(data.latent_2d).max() <= data.extent
    # the latent's zone is the class the classifier gives the image
    assert demo.class_names[data.latent_zone] == next(iter(logic.classify(demo, prepared, top_k=1)))
    # the drawn reverse flow is latent_to_anchors' Euler flow, step by step
    path = logic.reverse_flow_path(latent, anchors, num_steps=20)
    torch.testing.assert_close(path[-1:], latents_to_anchors(latent, anchors, num_steps=20)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data.path_2d[0], data.latent_2d, rtol=1e-5, atol=1e-6)


def test_zones_figure_with_and_without_an_image(demo):
    pytest.importorskip("matplotlib")
    plain, caption = logic.zones_figure(demo, grid=31)
    assert plain.size[0] > 600 and "lies in zone" not in caption
    prepared = logic.prepare_image(digit_image(), demo.image_size, demo.num_channels)
    placed, caption = logic.zones_figure(demo, prepared, grid=31)
    assert f"lies in zone {next(iter(logic.classify(demo, prepared, top_k=1)))}" in caption
    assert not np.array_equal(np.asarray(plain), np.asarray(placed))


# ---------------------------------------------------------------------------------------------------------
# the command line and the Space export
# ---------------------------------------------------------------------------------------------------------
def test_command_line_without_the_main_job_output(tmp_path, monkeypatch, capsys):
    app = load_example("app")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="error: model 'lzn-digits-joint' not found: run the main job first"):
        app.main(app.parse_args([]))
    args = app.parse_args(["--model", "a/b", "--port", "7000", "--export_space", "out"])
    assert (args.model, args.port, args.export_space) == ("a/b", 7000, "out")


def test_export_space_local_model(run_dir, tmp_path):
    import lzn_hf

    out = logic.export_space(tmp_path / "space", str(run_dir), lzn_hf_dir=Path(lzn_hf.__file__).parent, app_dir=EXAMPLES,
                             gradio_version="6.31.0", title="LZN tiny")
    readme = (out / "README.md").read_text()
    front = yaml.safe_load(readme.split("---")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py" and front["sdk_version"] == "6.31.0"
    assert front["title"] == "LZN tiny" and "lzn_hf" in front["tags"]
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert "gradio==6.31.0" in requirements and any(line.startswith("diffusers") for line in requirements)
    assert 'DEFAULT_MODEL_ARG = "model_files"' in (out / "app.py").read_text()
    for name in ("model", "pipeline", "classifier"):
        assert (out / "model_files" / name / "README.md").is_file()
    assert (out / "lzn_hf" / "pipeline_lzn.py").is_file() and not list(out.rglob("__pycache__"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".space-")]  # no staging folder left behind
    # the Space is self-contained: its lzn_hf copy and its model folder are what app.py uses
    probe = ("import sys; sys.argv = ['app.py']; import app; args = app.parse_args(); import lzn_hf, app_logic; "
             "print(lzn_hf.__file__); print(app_logic.resolve_model(args.model))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=out, capture_output=True, text=True, timeout=300,
                            env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(out)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(out / "lzn_hf" / "__init__.py"), "model_files"]
    with pytest.raises(logic.DemoInputError, match="exists and is not empty"):
        logic.export_space(out, str(run_dir), lzn_hf_dir=Path(lzn_hf.__file__).parent, app_dir=EXAMPLES, gradio_version="6.31.0")


def test_export_space_hub_model_and_missing_model(tmp_path):
    import lzn_hf

    out = logic.export_space(tmp_path / "space", "someone/lzn-digits", lzn_hf_dir=Path(lzn_hf.__file__).parent,
                             app_dir=EXAMPLES, gradio_version="6.31.0")
    assert 'DEFAULT_MODEL_ARG = "someone/lzn-digits"' in (out / "app.py").read_text() and not (out / "model_files").exists()
    with pytest.raises(logic.DemoInputError, match="run the main job first"):
        logic.export_space(tmp_path / "other", str(tmp_path / "lzn-digits-joint"), lzn_hf_dir=Path(lzn_hf.__file__).parent,
                           app_dir=EXAMPLES, gradio_version="6.31.0")
    assert not (tmp_path / "other").exists()


# ---------------------------------------------------------------------------------------------------------
# the app in a real browser
# ---------------------------------------------------------------------------------------------------------
def browser_requirements() -> str:
    """Why the browser test cannot run here ('' when it can)."""
    missing = [name for name in ("gradio", "selenium") if importlib.util.find_spec(name) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (pip install -e \".[demo]\")"
    absent = [path for path in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(path) and os.access(path, os.X_OK))]
    if absent:
        return f"no {' / '.join(absent)} (apt-get install chromium chromium-driver)"
    return ""


@pytest.fixture
def served_app(run_dir, tmp_path):
    """The app on a local port, serving the tiny model (or LZN_APP_MODEL's); yields (url, demo)."""
    reason = browser_requirements()
    if reason and os.environ.get("LZN_REQUIRE_BROWSER"):  # .ci/run, once it has installed them
        pytest.fail(f"browser test required (LZN_REQUIRE_BROWSER) but {reason}")
    if reason:
        pytest.skip(f"browser test: {reason}")
    app = load_example("app")
    model = os.environ.get("LZN_APP_MODEL") or str(run_dir)
    demo = logic.LZNDemo.from_folder(logic.resolve_model(model), source=Path(model).name)
    blocks = app.build_app(demo).queue()
    port = free_port()
    blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                  theme=app.offline_theme())
    try:
        yield f"http://127.0.0.1:{port}/", demo
    finally:
        blocks.close()


@pytest.fixture
def browser(tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager: never download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, what: str, timeout: float = 120.0):
    """Poll `condition(driver)` until truthy; fail naming `what` (with the page's visible text) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition(driver)
        except Exception:  # the element is not there yet, or is being re-rendered
            value = None
        if value:
            return value
        time.sleep(0.25)
    text = driver.execute_script("return document.body ? document.body.innerText : ''")
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; the page shows:\n{text[:2000]}")


def loaded_image(driver, elem_id: str):
    """The rendered <img> of a gradio Image component, once its picture has loaded (naturalWidth > 0)."""
    return driver.execute_script(
        "const img = document.querySelector(arguments[0] + ' img');"
        "return img && img.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight] : null;",
        f"#{elem_id}")


def open_tab(driver, name: str) -> None:
    from selenium.webdriver.common.by import By

    tab = wait_for(driver, lambda d: next(b for b in d.find_elements(By.CSS_SELECTOR, "button[role='tab']") if b.text.strip() == name),
                   f"the {name} tab")
    tab.click()


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"app_{name}.png"
    driver.save_screenshot(str(path))
    keep = os.environ.get("LZN_APP_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


@pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:Warning", "ignore:The copy keyword is deprecated:Warning")  # gradio's
def test_app_in_headless_chromium(served_app, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, demo = served_app
    names = demo.class_names
    browser.get(url)
    wait_for(browser, lambda d: d.find_element(By.ID, "generate-button").is_displayed(), "the app to render")

    # Generate: all classes, the default images per class and steps
    browser.find_element(By.ID, "generate-button").click()
    size = wait_for(browser, lambda d: loaded_image(d, "generate-output"), "the generated grid")
    assert size[1] >= len(names) * 8  # one row per class
    caption = wait_for(browser, lambda d: d.find_element(By.ID, "generate-caption").text, "the caption")
    assert f"of each of {len(names)} classes" in caption
    assert screenshot(browser, tmp_path, "generate").stat().st_size > 0

    # Classify: no image first -> a clear message, then an uploaded digit -> top classes with their names
    open_tab(browser, "Classify")
    browser.find_element(By.ID, "classify-button").click()
    wait_for(browser, lambda d: "no image: upload one or draw one first" in d.find_element(By.TAG_NAME, "body").text,
             "the no-image message")
    browser.execute_script("document.querySelectorAll('.toast-close').forEach(button => button.click());")
    digit = tmp_path / "digit.png"
    digit_image(160).save(digit)
    browser.find_element(By.CSS_SELECTOR, "#classify-upload input[type='file']").send_keys(str(digit))
    wait_for(browser, lambda d: loaded_image(d, "classify-upload"), "the uploaded image")
    browser.find_element(By.ID, "classify-button").click()
    wait_for(browser, lambda d: loaded_image(d, "classify-preview"), "what the model sees")
    expected = logic.classify(demo, logic.prepare_image(digit, demo.image_size, demo.num_channels), top_k=3)
    shown = wait_for(browser, lambda d: d.find_element(By.ID, "classify-output").text, "the top classes")
    top = next(iter(expected))
    assert top in shown and f"{round(100 * expected[top])}%" in shown.replace(" ", ""), shown
    assert screenshot(browser, tmp_path, "classify").stat().st_size > 0

    # Zones: with the uploaded image placed in its zone
    open_tab(browser, "Zones")
    browser.find_element(By.ID, "zones-button").click()
    wait_for(browser, lambda d: loaded_image(d, "zones-output"), "the zones picture")
    caption = wait_for(browser, lambda d: d.find_element(By.ID, "zones-caption").text, "the zones caption")
    assert f"lies in zone {top}" in caption
    assert screenshot(browser, tmp_path, "zones").stat().st_size > 0

    # Classify a drawing: pick the brush, draw a stroke, classify
    from selenium.webdriver.common.action_chains import ActionChains

    open_tab(browser, "Classify")
    next(e for e in browser.find_elements(By.CSS_SELECTOR, "label") if e.text.strip() == "Draw").click()
    brush = wait_for(browser, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#classify-draw button')].find(b => /brush/i.test("
        "(b.getAttribute('aria-label') || '') + (b.getAttribute('title') || '')));"), "the brush tool")
    brush.click()
    canvas = wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#classify-draw canvas"), "the sketchpad")
    ActionChains(browser).move_to_element_with_offset(canvas, 0, -70).click_and_hold().move_by_offset(0, 35) \
        .move_by_offset(0, 35).move_by_offset(0, 35).move_by_offset(0, 35).release().perform()
    previous = browser.execute_script("return document.querySelector('#classify-preview img').src")
    browser.find_element(By.ID, "classify-button").click()
    wait_for(browser, lambda d: d.execute_script("const i = document.querySelector('#classify-preview img');"
                                                 "return i && i.complete && i.naturalWidth > 0 && i.src != arguments[0];",
                                                 previous), "the drawing's classification")
    assert "draw something first" not in browser.find_element(By.TAG_NAME, "body").text
    screenshot(browser, tmp_path, "draw")

    # offline: the page asked nothing of any host but the app's own
    hosts = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            parsed = urlparse(message["params"]["request"]["url"])
            if parsed.scheme in ("http", "https", "ws", "wss"):
                hosts.add(parsed.hostname)
    assert hosts == {"127.0.0.1"}, hosts
