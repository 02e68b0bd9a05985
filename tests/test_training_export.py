"""The end of a run, in-process: exported folders are whole or absent, and every user-supplied name that lands in a
card or a usage snippet is shown literally (hostile folder names, class names, config paths)."""

import ast
import importlib.util
import json
import re
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lzn_hf import LZNConfig, LZNForImageClassification, LZNModel
from lzn_hf import training as tu
from lzn_hf.image_processing_lzn import lzn_image_processor
from lzn_hf.model_cards import markdown_code, markdown_text, write_model_card

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: a folder name that is code, front matter, HTML, math and a table cell at once
HOSTILE = 'x"); import os; os.system("touch PWNED") #\n---\n<script>alert(1)</script> ``` $x$ | [a](b) \'q\''


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return LZNModel(LZNConfig.from_preset("tiny-joint")).eval()


def script(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python_block(text):
    (block,) = re.findall(r"^(`{3,})python\n(.*?)\n\1$", text, flags=re.S | re.M)
    return block[1]


def front_matter(text):
    assert text.startswith("---\n")
    return yaml.safe_load(text[4 : text.index("\n---\n", 4)])


def test_an_export_stopped_midway_leaves_the_old_folder(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    tu.save_model_folder(tiny_model(0), folder)
    old = load_file(str(folder / "model.safetensors"))

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt  # the weights and config of the new model are written by now

    monkeypatch.setattr(type(lzn_image_processor(8, 1)), "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        tu.save_model_folder(tiny_model(1), folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left
    new = load_file(str(folder / "model.safetensors"))
    assert all(torch.equal(old[k], new[k]) for k in old)  # the old folder, whole
    LZNModel.from_pretrained(folder)
    monkeypatch.undo()

    # a process killed mid-export leaves hidden siblings: the next export removes them and replaces the folder
    (tmp_path / ".model.partial-abc").mkdir()
    (tmp_path / ".model.old-abc").mkdir()
    tu.save_model_folder(tiny_model(1), folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    replaced = load_file(str(folder / "model.safetensors"))
    assert any(not torch.equal(old[k], replaced[k]) for k in old)  # the new folder, whole
    card = (folder / "README.md").read_text()
    assert json.dumps(str(folder)) in card and ".partial" not in card  # the card names the final folder
    assert {".*.partial*", ".*.old-*"} <= set(tu.HUB_IGNORE_PATTERNS)


def test_a_full_disk_during_export_says_so_and_keeps_the_old_folder(tmp_path, monkeypatch):
    import errno

    tu.save_model_folder(tiny_model(0), tmp_path / "model")
    model = tiny_model(1)

    def full_disk(folder, *args, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save_pretrained", full_disk)
    with pytest.raises(OSError, match=r"no space left on device while writing .*model \("):
        tu.save_model_folder(model, tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    LZNModel.from_pretrained(tmp_path / "model")


def test_an_export_over_a_file_or_an_unreadable_run_config_is_a_clear_error(tmp_path):
    (tmp_path / "model").write_text("not a folder")
    with pytest.raises(FileExistsError, match=r"model exists and is not a folder"):
        tu.save_model_folder(tiny_model(), tmp_path / "model")
    (tmp_path / "run_config.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ValueError, match="run_config.json is not valid JSON"):
        tu.read_run_config(tmp_path)


def test_markdown_helpers_show_text_literally():
    assert markdown_text("a\n---\nb") == "a --- b"
    assert markdown_text("<script>|*x*") == "\\<script\\>\\|\\*x\\*"
    assert markdown_code("a`b|c") == "``a`b\\|c``" and markdown_code("`x") == "`` `x ``"


def check_card(text, hostile_name):
    """The card's code runs as the snippet author wrote it and its prose holds no raw markup from the name."""
    meta = front_matter(text)
    assert meta["library_name"] == "lzn_hf"
    code = python_block(text)
    tree = ast.parse(code)
    calls = {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
             for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert "system" not in calls and "PWNED" not in "".join(n.id for n in ast.walk(tree) if isinstance(n, ast.Name))
    assert any(isinstance(n, ast.Constant) and isinstance(n.value, str) and hostile_name in n.value for n in ast.walk(tree))
    body = text[text.index("\n---\n", 4) + 5 :]
    assert "<script>" not in body.replace(code, "") and "\n---\n" not in body
    return code


def test_run_cards_quote_a_hostile_output_dir(tmp_path, monkeypatch):
    joint = script("train_joint")
    out = tmp_path / HOSTILE
    model = tiny_model()
    model.config.label_anchors_config.id2label = {0: "<b>cat</b>", 1: "a|b\n---", 2: "`rm -rf`"}
    model.config.id2label = dict(model.config.label_anchors_config.id2label)
    tu.save_model_folder(model, out / "model")
    tu.save_pipeline_folder(model, out / "pipeline")
    classifier = LZNForImageClassification.from_pretrained(out / "model")
    tu.save_model_folder(classifier, out / "classifier")
    args, joint_args, _ = joint.parse_args(["--config", "tiny-joint", "--output_dir", str(out), "--train_data_dir", "a`b|<i>c\n"])
    joint.write_cards(args, joint_args, 4, {"train_wall_time_s": 1.0, "accuracy/anchor_bank": 0.5})
    code = check_card((out / "README.md").read_text(), str(out))
    assert "| data | `imagefolder` |" in (out / "README.md").read_text()
    for sub in ("model", "pipeline", "classifier"):
        text = (out / sub / "README.md").read_text()
        check_card(text, str(out / sub)) if sub != "pipeline" else front_matter(text)
        assert "<b>cat</b>" not in text.replace(python_block(text), "")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "card", "exec"), namespace)  # the snippet loads the hostile-named folder as written
    assert len(namespace["images"]) == 12 and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("name", ["train_generation", "train_representation"])
def test_other_scripts_quote_a_hostile_output_dir(tmp_path, name):
    module = script(name)
    out = tmp_path / HOSTILE
    args, extra = module.parse_args(["--config", "tiny-joint", "--output_dir", str(out), "--skip_evaluation"])
    metrics = {"num_processes": 1, "train_wall_time_s": 2.0, "train_updates": 1}
    history = tu.TrainingHistory(tmp_path / "none.jsonl")
    data = (None,) if name == "train_generation" else (None, None)  # class names / the train and test sets
    module.export(args, extra, 4, tiny_model(), *data, history, metrics, time.time())
    check_card((out / "README.md").read_text(), str(out))


def test_write_model_card_escapes_titles_datasets_and_metric_names(tmp_path):
    tu.save_model_folder(tiny_model(), tmp_path / "m")
    write_model_card(tmp_path / "m", title=HOSTILE, datasets=["<d>|x"], metrics={"acc|<i>": 0.5}, base_model="a/b) [x](y")
    text = (tmp_path / "m" / "README.md").read_text()
    meta = front_matter(text)
    assert meta["model-index"][0]["name"] == HOSTILE  # YAML keeps the name exactly
    body = text[text.index("\n---\n", 4) + 5 :]
    assert body.startswith("\n# x\"); import os; os.system(\"touch PWNED\") \\# --- \\<script\\>") and "<script>" not in body and "<i>" not in body
    assert "| acc\\|\\<i\\> | 0.5 |" in body and "\n---\n" not in body


def test_a_corrupt_image_is_named_before_training_and_when_drawn(tmp_path):
    import datasets
    from PIL import Image

    folder = tmp_path / "images"
    for name in "ab":
        (folder / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (9, 7), (40 * i, 90, 200)).save(folder / name / f"{i}.png")
    good = (folder / "a" / "0.png").read_bytes()
    (folder / "b" / "broken.png").write_bytes(good[: len(good) // 2])  # truncated mid-file
    with pytest.raises(ValueError, match=r"1 of the 5 images of image folder .* cannot be read .*\n  .*b/broken\.png"):
        tu.load_image_dataset(8, 1, train_data_dir=str(folder), cache_dir=str(tmp_path / "cache"))
    (folder / "b" / "broken.png").unlink()
    dataset, names = tu.load_image_dataset(8, 1, train_data_dir=str(folder), cache_dir=str(tmp_path / "cache"))
    assert names == ["a", "b"] and dataset[0]["pixel_values"].shape == (1, 8, 8)

    # a saved dataset is not checked up front (its images may be many): the image drawn names itself
    rows = datasets.Dataset.from_dict({"image": [{"bytes": good, "path": "fine.png"}, {"bytes": b"garbage", "path": "row-1.png"}],
                                       "label": [0, 1]}).cast_column("image", datasets.Image())
    rows.save_to_disk(str(tmp_path / "saved"))
    dataset, _ = tu.load_image_dataset(8, 1, dataset_name=str(tmp_path / "saved"))
    assert dataset[0]["pixel_values"].shape == (1, 8, 8)
    with pytest.raises(ValueError, match=r"cannot read the image row-1\.png of dataset .*saved"):
        dataset[1]
