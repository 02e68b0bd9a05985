"""Hub remote code: a folder saved after `register_for_auto_class` loads with
`AutoModel.from_pretrained(path, trust_remote_code=True)` in a Python environment where lzn_hf is NOT installed,
and a pipeline folder saved with `LZNPipeline.save_pretrained(path, include_code=True)` loads with
`DiffusionPipeline.from_pretrained(path, trust_remote_code=True)` there (diffusers' custom pipeline and custom
components: `model_index.json` names `pipeline_lzn.py` at the root and `modeling_lzn.py` in each component folder).

The environment: a fresh venv (`python -m venv --without-pip`) whose only packages are the running
environment's site-packages, listed in a `.pth` file. Directories named in a `.pth` file are added to
`sys.path` as they are, without processing the `.pth` files inside them, so an editable install of lzn_hf
(itself a `.pth` entry pointing at `src/`) is not seen; a regular install of lzn_hf is hidden by mirroring
that site-packages directory without it. The subprocess checks that `import lzn_hf` really fails.
"""

import ast
import json
import os
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lzn_hf import LZNConfig, LZNForImageClassification, LZNImageProcessor, LZNModel, LZNPipeline, lzn_image_processor

# Top-level packages the copied files may import, besides the standard library and each other (design.md §2).
ALLOWED_IMPORTS = {"torch", "transformers", "huggingface_hub"}
# ... and the pipeline's own file (pipeline_lzn.py), which only the diffusers loader reads (scipy: imported on
# first use of sampler="rk45" only; diffusers' loader warns if it is missing).
PIPELINE_ALLOWED_IMPORTS = ALLOWED_IMPORTS | {"diffusers", "numpy", "scipy"}
PIPELINE_CALL = {"labels": [2], "num_inference_steps": 3, "output_type": "pt"}  # + generator=torch.manual_seed(0)


def site_dirs_without_lzn_hf(tmp_path: Path) -> list:
    """The running environment's site-packages, with any installed (non-editable) lzn_hf mirrored away."""
    dirs = []
    for directory in dict.fromkeys(site.getsitepackages() + [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]):
        directory = Path(directory)
        if not directory.is_dir():
            continue
        if (directory / "lzn_hf").exists():
            mirror = tmp_path / f"site-mirror-{len(dirs)}"
            mirror.mkdir()
            for entry in directory.iterdir():
                if not entry.name.startswith(("lzn_hf", "__editable__")):
                    (mirror / entry.name).symlink_to(entry)
            directory = mirror
        dirs.append(str(directory))
    return dirs


def make_venv_without_lzn_hf(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "parent_env.pth").write_text("\n".join(site_dirs_without_lzn_hf(tmp_path)) + "\n")
    return python


def top_level_imports(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.fixture(scope="module")
def saved_folders(tmp_path_factory):
    """A model folder (AutoModel) and a classifier folder (AutoModelForImageClassification + image processor),
    saved with remote code, and reference outputs computed with lzn_hf."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        for cls in (LZNConfig, LZNModel, LZNForImageClassification, LZNImageProcessor):
            monkeypatch.setattr(cls, "_auto_class", None)  # restored afterwards: other tests save without auto_map
        LZNConfig.register_for_auto_class()
        LZNModel.register_for_auto_class("AutoModel")
        LZNForImageClassification.register_for_auto_class("AutoModelForImageClassification")
        LZNImageProcessor.register_for_auto_class()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny models: one thread is fastest, and immune to a busy machine
        try:
            return save_remote_code_folders(tmp_path_factory.mktemp("remote_code"))
        finally:
            torch.set_num_threads(threads)


def save_remote_code_folders(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = LZNModel(LZNConfig.from_preset("tiny-joint")).eval()
    model.save_pretrained(tmp_path / "model")
    classifier = LZNForImageClassification(model.config).eval()
    classifier.load_state_dict(model.state_dict(), strict=False)
    classifier.build_anchor_bank(torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    classifier.save_pretrained(tmp_path / "classifier")
    lzn_image_processor(8, 1).save_pretrained(tmp_path / "classifier")

    pipe = LZNPipeline(image_decoder=model.image_decoder, label_anchors=model.label_anchors)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "pipeline", include_code=True)

    pixel_values = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    noise = torch.randn(3, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = {
            "pixel_values": pixel_values,
            "noise": noise,
            "anchors": model.get_image_anchors(pixel_values),
            "latents": model.get_image_latents(pixel_values, noise=noise),
            "label_latents": model.get_label_latents([0, 2], noise=noise[:2]),
            "logits": classifier(pixel_values).logits,
            "pipeline_images": pipe(**PIPELINE_CALL, generator=torch.manual_seed(0)).images,
        }
    save_file(reference, tmp_path / "reference.safetensors")
    return tmp_path


def test_remote_code_folders_import_only_torch_transformers_and_siblings(saved_folders):
    for folder in ("model", "classifier"):
        files = sorted((saved_folders / folder).glob("*.py"))
        assert {"configuration_lzn.py", "modeling_lzn.py"} <= {path.name for path in files}
        siblings = {path.stem for path in files}
        for path in files:
            outside = top_level_imports(path) - siblings - set(sys.stdlib_module_names) - ALLOWED_IMPORTS - {"__future__"}
            assert not outside, f"{folder}/{path.name} imports {sorted(outside)}: remote code may only import {sorted(ALLOWED_IMPORTS)}"
    config = json.loads((saved_folders / "model" / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_lzn.LZNConfig", "AutoModel": "modeling_lzn.LZNModel"}


def relative_imports(path: Path) -> set:
    return {node.module for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom) and node.level == 1}


def test_pipeline_folder_carries_its_code(saved_folders):
    folder = saved_folders / "pipeline"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_lzn", "LZNPipeline"]
    assert index["image_decoder"] == ["modeling_lzn", "LZNImageDecoder"] and index["label_anchors"] == ["modeling_lzn", "LZNLabelAnchors"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]  # library components carry no code
    source = Path(sys.modules["lzn_hf"].__file__).parent
    for subfolder, entry, allowed in (("", "pipeline_lzn", PIPELINE_ALLOWED_IMPORTS), ("image_decoder", "modeling_lzn", ALLOWED_IMPORTS),
                                      ("label_anchors", "modeling_lzn", ALLOWED_IMPORTS)):
        files = {path.stem: path for path in (folder / subfolder).glob("*.py")}
        # the module graph decides what is copied: the entry file and every sibling it reaches with `from .x import`
        reached, frontier = set(), {entry}
        while frontier:
            reached |= frontier
            frontier = set().union(*(relative_imports(source / f"{name}.py") for name in frontier)) - reached
        assert set(files) == reached, (subfolder, sorted(files), sorted(reached))
        for name, path in files.items():
            assert path.read_text() == (source / f"{name}.py").read_text()
            outside = top_level_imports(path) - set(files) - set(sys.stdlib_module_names) - allowed - {"__future__"}
            assert not outside, f"{subfolder}/{path.name} imports {sorted(outside)}"
        # diffusers' loader copies only the files an entry file imports directly (for a local folder): these must
        # already be all the files it needs
        assert relative_imports(files[entry]) == reached - {entry}, f"{entry}.py must import every sibling it needs directly"


def test_code_folder_loads_with_installed_lzn_hf_without_trust(saved_folders):
    from diffusers import DiffusionPipeline

    from lzn_hf.modeling_lzn import LZNImageDecoder, LZNLabelAnchors

    folder = saved_folders / "pipeline"
    pipe = LZNPipeline.from_pretrained(folder)  # the installed code; nothing from the folder is imported
    assert type(pipe) is LZNPipeline and type(pipe.image_decoder) is LZNImageDecoder and type(pipe.label_anchors) is LZNLabelAnchors
    pipe.set_progress_bar_config(disable=True)
    reference = load_file(saved_folders / "reference.safetensors")
    torch.testing.assert_close(pipe(**PIPELINE_CALL, generator=torch.manual_seed(0)).images, reference["pipeline_images"], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(folder)  # the folder's code runs only when trusted


def test_unconditional_code_folder(tmp_path):
    torch.manual_seed(0)
    model = LZNModel(LZNConfig.from_preset("tiny-generation"))
    pipe = LZNPipeline(image_decoder=model.image_decoder)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path, include_code=True)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_lzn", "LZNPipeline"] and index["label_anchors"] == [None, None]
    assert (tmp_path / "image_decoder" / "modeling_lzn.py").is_file() and not (tmp_path / "label_anchors").exists()
    card = (tmp_path / "README.md").read_text()
    assert "pipe(num_images=4" in card and "DiffusionPipeline.from_pretrained" in card, card
    assert "Needs only `torch` and `diffusers`" in card and "Needs the `lzn_hf` package" not in card, card
    loaded = LZNPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    call = {"batch_size": 2, "num_inference_steps": 2, "output_type": "pt"}
    torch.testing.assert_close(loaded(**call, generator=torch.manual_seed(0)).images, pipe(**call, generator=torch.manual_seed(0)).images, rtol=0, atol=0)


SUBPROCESS_SCRIPT = textwrap.dedent(
    """
    import importlib.util, re, sys
    from pathlib import Path

    assert importlib.util.find_spec("lzn_hf") is None, "lzn_hf is importable: the environment is not clean"
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForImageClassification, pipeline
    from PIL import Image

    root = Path(sys.argv[1])
    reference = load_file(root / "reference.safetensors")
    model = AutoModel.from_pretrained(root / "model", trust_remote_code=True).eval()
    assert type(model).__name__ == "LZNModel" and type(model).__module__.startswith("transformers_modules."), type(model)
    # same code, same weights: equal up to float32 rounding (thread counts change summation orders, and the
    # flows amplify rounding by 1/t near t = 0, see docs/conventions.md)
    with torch.no_grad():
        torch.testing.assert_close(model.get_image_anchors(reference["pixel_values"]), reference["anchors"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.get_image_latents(reference["pixel_values"], noise=reference["noise"]), reference["latents"], rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(model.get_label_latents([0, 2], noise=reference["noise"][:2]), reference["label_latents"], rtol=2e-3, atol=2e-3)

    classifier = AutoModelForImageClassification.from_pretrained(root / "classifier", trust_remote_code=True).eval()
    with torch.no_grad():
        probabilities = classifier(reference["pixel_values"]).logits.softmax(-1)
    torch.testing.assert_close(probabilities, reference["logits"].softmax(-1), rtol=0, atol=1e-3)
    classify = pipeline("image-classification", model=str(root / "classifier"), trust_remote_code=True)
    labels = {entry["label"] for entry in classify(Image.new("L", (8, 8)), top_k=3)}
    assert labels == {"zero", "one", "two"}, labels

    # the model card's usage snippet, as written
    (snippet,) = re.findall(r"```python\\n(.*?)```", (root / "model" / "README.md").read_text(), flags=re.S)
    assert "trust_remote_code=True" in snippet
    exec(snippet, {})

    # the pipeline: diffusers' custom pipeline (pipeline_lzn.py) and custom components (modeling_lzn.py)
    from diffusers import DiffusionPipeline

    call = {"labels": [2], "num_inference_steps": 3, "output_type": "pt"}
    pipe = DiffusionPipeline.from_pretrained(root / "pipeline", trust_remote_code=True)
    assert type(pipe).__module__.endswith(".pipeline_lzn") and type(pipe.image_decoder).__module__.endswith(".modeling_lzn"), type(pipe)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(**call, generator=torch.manual_seed(0)).images
    torch.testing.assert_close(images, reference["pipeline_images"], rtol=0, atol=1e-4)
    pipe.save_pretrained(root / "pipeline-resaved")  # a pipeline loaded from its code keeps carrying it
    again = DiffusionPipeline.from_pretrained(root / "pipeline-resaved", trust_remote_code=True)
    again.set_progress_bar_config(disable=True)
    torch.testing.assert_close(again(**call, generator=torch.manual_seed(0)).images, images, rtol=0, atol=0)
    (snippet,) = re.findall(r"```python\\n(.*?)```", (root / "pipeline" / "README.md").read_text(), flags=re.S)
    assert "DiffusionPipeline.from_pretrained" in snippet and "trust_remote_code=True" in snippet, snippet
    exec(snippet, {})

    leaked = sorted(name for name in sys.modules if name == "lzn_hf" or name.startswith("lzn_hf."))
    assert not leaked, leaked
    print("remote code OK")
    """
)


def test_remote_code_loads_without_lzn_hf_installed(saved_folders):
    python = make_venv_without_lzn_hf(saved_folders)
    script = saved_folders / "check_remote_code.py"
    script.write_text(SUBPROCESS_SCRIPT)
    workdir = saved_folders / "elsewhere"  # not the repository: no src/ on the path
    workdir.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(saved_folders / "modules"), HF_HOME=str(saved_folders / "hf_home"), OMP_NUM_THREADS="1")

    clean = subprocess.run([str(python), "-c", "import lzn_hf"], cwd=workdir, env=env, capture_output=True, text=True)
    assert clean.returncode != 0 and "No module named 'lzn_hf'" in clean.stderr, "the fresh venv must not see lzn_hf"

    result = subprocess.run([str(python), str(script), str(saved_folders)], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-6000:]}"
    assert "remote code OK" in result.stdout
