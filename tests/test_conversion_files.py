"""Bad files, bad checkpoints and bad output folders given to the converter (docs/reliability.md, "Conversion").

Every foreign or damaged input gets an error that says what it is and how to proceed; nothing is unpickled beyond
tensors and plain containers; the output folder is whole or absent.
"""

import gzip
import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conversion_test_utils import to_upstream
from PIL import Image
from safetensors.torch import save_file

from lzn_hf import LZNConfig, LZNModel
from lzn_hf.conversion import check_output_dir, convert_original_checkpoint, load_upstream_checkpoint, resolve_config, save_converted

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "convert_original_checkpoint.py"


class NotATensor:
    pass


@pytest.fixture(scope="module")
def tiny_checkpoint():
    """An upstream-format checkpoint of the tiny-joint preset (raw and EMA entries), and the model it came from."""
    torch.manual_seed(0)
    model = LZNModel(LZNConfig.from_preset("tiny-joint"))
    checkpoint = {}
    for part, network in (("encoder", model.image_encoder.network), ("decoder", model.image_decoder.network), ("label_anchor", model.label_anchors)):
        checkpoint[part] = to_upstream(network)
        checkpoint[f"{part}_ema"] = {"decay": 0.999, "num_updates": 1, "shadow_params": [t.clone() for t in checkpoint[part].values()]}
    return checkpoint, model


# ---------------------------------------------------------------------------------------------------------
# files that are not upstream checkpoints
# ---------------------------------------------------------------------------------------------------------
def _png(path):
    Image.new("RGB", (4, 4)).save(path, format="PNG")


def _npz(path):
    with open(path, "wb") as handle:  # np.savez appends ".npz" to a path; a handle keeps the name
        np.savez(handle, x=np.zeros(3))


FOREIGN_FILES = {  # kind: (how to make it, what the error says it looks like)
    "text": (lambda p: p.write_text("hello, this is not a checkpoint\n"), "a text file"),
    "blank": (lambda p: p.write_text("  \n\n"), "a text file"),
    "png": (_png, "a PNG image"),
    "json": (lambda p: p.write_text(json.dumps({"encoder": [1, 2]})), "a JSON file;"),
    "config_json": (lambda p: p.write_text(json.dumps({"summary": {}})), r"a JSON file \(a config\? pass it as the config"),
    "safetensors": (lambda p: save_file({"model.module.anchor": torch.zeros(3, 4)}, str(p)), "a safetensors file .*from_pretrained.*load_file"),
    "lfs_pointer": (lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n"), "a Git LFS pointer.*git lfs pull"),
    "html": (lambda p: p.write_text("<!DOCTYPE html><html><body>Not found</body></html>"), "an HTML page"),
    "gzip": (lambda p: p.write_bytes(gzip.compress(b"x" * 100)), "a gzip-compressed file"),
    "npz": (_npz, r"a NumPy \.npz archive"),
    "npy": (lambda p: np.save(p.open("wb"), np.zeros(3)), r"a NumPy \.npy array"),
    "zip": (lambda p: zipfile.ZipFile(p, "w").writestr("a.txt", "a"), r"a zip archive without the data\.pkl .*a\.txt"),
    "pickle": (lambda p: p.write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01."), "a plain Python pickle"),
    "binary": (lambda p: p.write_bytes(bytes(range(256)) * 4), "an unrecognised binary file"),
}


@pytest.mark.parametrize("kind", sorted(FOREIGN_FILES))
def test_foreign_file_says_what_it_is(tmp_path, kind):
    make, looks_like = FOREIGN_FILES[kind]
    path = tmp_path / "model.pt"  # the extension never decides
    make(path)
    with pytest.raises(ValueError, match=f"is not a PyTorch checkpoint: it looks like {looks_like}") as info:
        load_upstream_checkpoint(path)
    assert "unsafe" not in str(info.value) and "weights_only=False" not in str(info.value)


def test_missing_empty_and_folder_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint: no file at .*hf_hub_download"):
        load_upstream_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty file \(0 bytes\)"):
        load_upstream_checkpoint(tmp_path / "empty.pt")
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({}, folder / "000008000-000200000.pt")
    with pytest.raises(IsADirectoryError, match=r"is a folder, not a checkpoint file; the \.pt files in it: \['000008000-000200000.pt'\]"):
        load_upstream_checkpoint(folder)
    (tmp_path / "converted").mkdir()
    (tmp_path / "converted" / "config.json").write_text("{}")
    with pytest.raises(IsADirectoryError, match="already converted: load it with from_pretrained"):
        load_upstream_checkpoint(tmp_path / "converted")


def test_truncated_and_corrupt_checkpoints(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"encoder": {"w": torch.arange(1000.0)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # an interrupted download: the zip directory at the end is gone
    with pytest.raises(ValueError, match="truncated or corrupt zip archive"):
        load_upstream_checkpoint(path)
    torch.save({"encoder": {"w": torch.arange(3.0)}}, path)
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(tmp_path / "flipped.pt", "w") as damaged:
        for info in source.infolist():  # a readable archive whose pickle stream has two bad bytes
            data = source.read(info)
            damaged.writestr(info, data[:20] + b"\xff\xfe" + data[22:] if info.filename.endswith("data.pkl") else data)
    with pytest.raises(ValueError, match="damaged PyTorch file .*Unsupported operand"):
        load_upstream_checkpoint(tmp_path / "flipped.pt")
    with zipfile.ZipFile(tmp_path / "ckpt2.pt", "w") as archive:  # a zip with a data.pkl and nothing else
        archive.writestr("ckpt2/data.pkl", b"\x80\x02garbage that is no pickle")
    with pytest.raises(ValueError, match="damaged PyTorch file"):
        load_upstream_checkpoint(tmp_path / "ckpt2.pt")
    legacy = tmp_path / "legacy.pt"
    torch.save({"encoder": {"w": torch.ones(3)}}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_upstream_checkpoint(legacy)["encoder"]["w"], torch.ones(3))  # the legacy format is read
    torch.save({"encoder": {"w": torch.ones(2)}}, tmp_path / "legacy4.pt", _use_new_zipfile_serialization=False, pickle_protocol=4)
    with pytest.warns(UserWarning, match="pickle protocol 4"), pytest.raises(ValueError, match="pickle feature .*pickle protocol above 2"):
        load_upstream_checkpoint(tmp_path / "legacy4.pt")  # recognised as legacy PyTorch, not called "a plain pickle"
    legacy.write_bytes(legacy.read_bytes()[:-20])
    with pytest.raises(ValueError, match="damaged PyTorch file"):
        load_upstream_checkpoint(legacy)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_checkpoint_with_objects_is_refused_without_advice_to_load_unsafely(tmp_path, legacy):
    path = tmp_path / "evil.pt"
    torch.save({"encoder": {}, "payload": NotATensor()}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ValueError, match="holds Python objects other than tensors and plain containers .*NotATensor") as info:
        load_upstream_checkpoint(path)
    assert "unsafe" not in str(info.value) and "weights_only=False" not in str(info.value) and "trust" not in str(info.value)


def test_pytorch_files_that_are_not_upstream_checkpoints(tmp_path):
    torch.save({"model": {}, "step": 3}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"not an upstream LZN checkpoint: expected an 'encoder' entry, found \['model', 'step'\]"):
        load_upstream_checkpoint(tmp_path / "other.pt")
    torch.save({"model.module.anchor": torch.zeros(3, 4)}, tmp_path / "state_dict.pt")
    with pytest.raises(ValueError, match=r"holds one state dict .*pass \{'encoder': state_dict, \.\.\.\}"):
        load_upstream_checkpoint(tmp_path / "state_dict.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not an upstream LZN checkpoint"):
        load_upstream_checkpoint(tmp_path / "list.pt")


# ---------------------------------------------------------------------------------------------------------
# checkpoints that do not fit the config
# ---------------------------------------------------------------------------------------------------------
def test_good_checkpoint_round_trips(tiny_checkpoint):
    checkpoint, model = tiny_checkpoint
    for use_ema in (True, False):
        converted = convert_original_checkpoint(checkpoint, "tiny-joint", use_ema=use_ema)
        for key, value in model.state_dict().items():
            assert torch.equal(converted.state_dict()[key], value), key


def test_missing_and_unused_parts(tiny_checkpoint):
    checkpoint, _ = tiny_checkpoint
    without_labels = {key: value for key, value in checkpoint.items() if not key.startswith("label_anchor")}
    with pytest.raises(ValueError, match=r"no 'label_anchor' entry \(label anchors\), which this config needs; it holds \['encoder', 'decoder'\]"):
        convert_original_checkpoint(without_labels, "tiny-joint")
    with pytest.raises(ValueError, match=r"also holds \['label_anchor'\] \(label anchors\), which this config has no place for"):
        convert_original_checkpoint(checkpoint, "tiny-generation")
    with pytest.raises(ValueError, match="no decoder_ema entry; pass use_ema=False"):
        convert_original_checkpoint({key: value for key, value in checkpoint.items() if key != "decoder_ema"}, "tiny-joint")


def test_wrong_architecture_names_the_presets_to_use(tiny_checkpoint):
    checkpoint, _ = tiny_checkpoint
    with pytest.raises(ValueError, match=r"encoder is an NCSN\+\+ encoder .* but the config builds a ResNet-GN encoder .*'cifar10-joint'"):
        convert_original_checkpoint({"encoder": checkpoint["encoder"]}, "tiny-representation", use_ema=False)
    torch.manual_seed(0)
    resnet = LZNModel(LZNConfig.from_preset("tiny-representation")).image_encoder.network
    with pytest.raises(ValueError, match=r"encoder is a ResNet-GN encoder .*'imagenet-representation'"):
        convert_original_checkpoint({"encoder": to_upstream(resnet)}, "digits-representation", use_ema=False)


def test_wrong_keys_shapes_and_values_are_listed(tiny_checkpoint):
    checkpoint, _ = tiny_checkpoint
    encoder = dict(checkpoint["encoder"])
    first = next(iter(encoder))
    encoder.pop(first)
    encoder["model.module.extra.weight"] = torch.zeros(1)
    broken = {**checkpoint, "encoder": encoder}
    with pytest.raises(ValueError, match=rf"encoder state dict does not fit the model: missing keys 1: \[{first[13:]}\]; unexpected keys 1: \[extra.weight\]"):
        convert_original_checkpoint(broken, "tiny-joint", use_ema=False)
    # another config of the same architecture: shape mismatches, listed
    with pytest.raises(ValueError, match="shape mismatches"):
        convert_original_checkpoint(checkpoint, "digits-joint", use_ema=False)
    with pytest.raises(ValueError, match="upstream decoder entry should be a state dict"):
        convert_original_checkpoint({**checkpoint, "decoder": [1, 2]}, "tiny-joint", use_ema=False)
    with pytest.raises(ValueError, match="label_anchor EMA entry should be a dict with a 'shadow_params' list"):
        convert_original_checkpoint({**checkpoint, "label_anchor_ema": {"decay": 0.9}}, "tiny-joint")
    nan_anchor = {"model.module.anchor": checkpoint["label_anchor"]["model.module.anchor"].clone().index_fill_(0, torch.tensor([1]), float("nan"))}
    with pytest.raises(ValueError, match=r"label_anchor state dict holds NaN or Inf values in 1: \[anchor\]"):
        convert_original_checkpoint({**checkpoint, "label_anchor": nan_anchor}, "tiny-joint", use_ema=False)
    bad_shadow = {**checkpoint["label_anchor_ema"], "shadow_params": ["not a tensor"]}
    with pytest.raises(ValueError, match="holds values that are not tensors at positions 1: \\[0\\]"):
        convert_original_checkpoint({**checkpoint, "label_anchor_ema": bad_shadow}, "tiny-joint")


def test_bad_config_arguments(tmp_path):
    with pytest.raises(ValueError, match="'nope' is neither a preset nor an existing file: pass a preset"):
        resolve_config("nope")
    with pytest.raises(ValueError, match="is a folder"):
        resolve_config(tmp_path)
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a JSON file"):
        resolve_config(tmp_path / "c.json")
    (tmp_path / "c.json").write_text("[1]")
    with pytest.raises(ValueError, match="holds a JSON list"):
        resolve_config(tmp_path / "c.json")
    (tmp_path / "c.json").write_text(json.dumps({"summary": {"image_size": 8}}))
    with pytest.raises(ValueError, match="reference config lacks the setting 'image_channels'"):
        resolve_config(tmp_path / "c.json")
    LZNConfig.from_preset("tiny-joint").save_pretrained(tmp_path / "model")  # an lzn_hf config.json is a config too
    assert resolve_config(tmp_path / "model" / "config.json").image_decoder_config.num_classes == 3


# ---------------------------------------------------------------------------------------------------------
# the output folder: whole or absent
# ---------------------------------------------------------------------------------------------------------
def test_output_folder_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        check_output_dir(tmp_path / "file")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="exists and is not empty; pass overwrite=True"):
        check_output_dir(tmp_path / "mine")
    with pytest.raises(FileExistsError, match="is not a model folder .*refusing to replace it"):
        check_output_dir(tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="the parent folder does not exist"):
        check_output_dir(tmp_path / "no" / "such")
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty") == tmp_path / "empty"


def test_save_is_atomic_and_overwrite_replaces_a_model_folder(tiny_checkpoint, tmp_path, monkeypatch):
    _, model = tiny_checkpoint
    target = tmp_path / "out"
    save_converted(model, target)
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in target.iterdir()}
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def fail(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(LZNModel, "save_pretrained", fail)
    with pytest.raises(OSError, match="No space left"):
        save_converted(model, target, overwrite=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # the old folder, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary sibling left behind

    pipe = save_converted(model, target, pipeline=True, overwrite=True)
    assert (target / "model_index.json").is_file() and not (target / "config.json").exists()  # replaced, not mixed
    assert type(pipe).__name__ == "LZNPipeline" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="pipeline=True .* needs a generation checkpoint"):
        save_converted(LZNModel(LZNConfig.from_preset("tiny-representation")), tmp_path / "rep", pipeline=True)


def _run_script(capsys, *argv):
    spec = importlib.util.spec_from_file_location("convert_original_checkpoint", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as info:
        script.main([str(arg) for arg in argv])
    return info.value.code, capsys.readouterr().err


def test_script_reports_bad_input_without_traceback_and_keeps_existing_folders(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("keep")
    common = ["--config", "tiny-joint", "--checkpoint_path", tmp_path / "notes.txt"]
    code, err = _run_script(capsys, *common, "--output_dir", tmp_path / "new")
    assert code == 2 and "error: checkpoint" in err and "looks like a text file" in err and not (tmp_path / "new").exists()
    code, err = _run_script(capsys, *common, "--output_dir", tmp_path / "out", "--overwrite")
    assert code == 2 and "is not a model folder" in err and (tmp_path / "out" / "keep.txt").read_text() == "keep"
    code, err = _run_script(capsys, "--config", "tiny-representation", "--checkpoint_path", tmp_path / "notes.txt", "--output_dir", tmp_path / "new", "--pipeline")
    assert code == 2 and "--pipeline needs a generation checkpoint" in err
