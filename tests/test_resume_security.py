"""Resume from any folder never runs code from it, and a run's state survives interruptions (in-process, tiny-joint).

* a payload (a pickle whose ``__reduce__`` creates a marker file) or garbage planted in every file of a real
  ``checkpoint-N`` in turn: resume never executes it and refuses the folder naming the file (cards: never read);
* older runs' ``custom_checkpoint_*.pkl`` state is read as plain data; any other custom state is refused;
* ``latest`` skips empty, foreign and file ``checkpoint-N`` entries; a full disk says "no space left on device";
* a resumed run's ``history.jsonl`` holds every step once; a checkpoint at ``--max_train_steps`` trains nothing and
  reports the run that trained; one beyond it is refused.
"""

import errno
import io
import json
import os
import pickle
import shutil

import pytest
import torch
from torch import nn

from lzn_hf import LZNModel
from lzn_hf import training as tu
from lzn_hf.training.checkpoints import UnsafeCheckpointError, verify_checkpoint


class Payload:
    """Unpickling this creates ``marker``: the proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class EncoderLoss(nn.Module):
    def __init__(self, lzn):
        super().__init__()
        self.lzn = lzn

    def forward(self, pixel_values):
        return self.lzn.get_image_anchors(pixel_values).pow(2).mean()


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def start_run(output_dir, **flags):
    """A tiny-joint run prepared as the scripts prepare theirs: ``(accelerator, loop, training_module)``."""
    from accelerate import Accelerator

    reset_accelerate()
    args = tu.resolve_recipe(tu.TrainingArguments(**{
        "config": "tiny-joint", "output_dir": str(output_dir), "train_batch_size": 4, "max_train_steps": 3, "logging_steps": 1,
        "checkpointing_steps": 2, "report_to": "none", "lr_warmup_steps": 5, **flags}))
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = LZNModel(tu.load_lzn_config("tiny-joint"))
    ema = tu.ModuleEMA(model, 0.9, parts=("image_encoder",))
    optimizer, lr_scheduler = tu.adam_with_warmup({"image_encoder": (model.image_encoder, 1e-3)}, args.lr_warmup_steps, **args.adam_options())
    dataset = tu.TensorImageDataset(torch.rand(8, 1, 8, 8) * 2 - 1)
    module, loop = tu.prepare_training(accelerator, args, EncoderLoss(model), optimizer, lr_scheduler, ema, dataset, "test")
    return accelerator, loop, module


def train(accelerator, loop, module):
    for batch in loop.batches():
        with accelerator.accumulate(module):
            loss = module(batch["pixel_values"])
            if loop.all_processes_finite(loss):
                accelerator.backward(loss)
                loop.record(loss=loss)
            loop.clip_and_step()
        loop.end_micro_batch()
    return loop.finish()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 3-update run with checkpoint-2 and checkpoint-3; then an accelerator prepared to resume (hooks registered)."""
    out = tmp_path_factory.mktemp("run")
    accelerator, loop, module = start_run(out)
    timing = train(accelerator, loop, module)
    accelerator, fresh, _ = start_run(tmp_path_factory.mktemp("fresh"))
    yield out, accelerator, fresh, timing
    reset_accelerate()


def tampered_copy(source, tmp_path, relative, content):
    """A copy of ``source`` (named like it, in a fresh output folder) with ``relative`` replaced by ``content``."""
    out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
    copy = out / source.name
    shutil.copytree(source, copy)
    target = copy / relative
    if callable(content):
        content(target)
    else:
        target.write_bytes(content)
    return out, copy


def test_checkpoints_hold_json_state_and_resume_restores_it(finished_run):
    out, accelerator, fresh, timing = finished_run
    checkpoint = out / "checkpoint-2"
    names = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()}
    assert not [n for n in names if "custom_checkpoint" in n] and "training_state.json" in names
    state = json.loads((checkpoint / "training_state.json").read_text())
    assert state["step"] == 2 and state["states"]["lr_scheduler"]["last_epoch"] == 2 and state["states"]["counters"]["train_wall_time_s"] > 0
    report = verify_checkpoint(checkpoint)
    assert {"optimizer.bin", "random_states_0.pkl", "lzn/model.safetensors", "training_state.json"} <= set(report["checked"])
    assert all(name.endswith(".md") for name in report["ignored"])
    step = tu.resume_from_checkpoint(accelerator, "latest", out, fresh.stateful)
    assert step == 3 and fresh.lr_scheduler.last_epoch == 3 and fresh.counters["train_wall_time_s"] == pytest.approx(timing["train_wall_time_s"])


def payloads(marker):
    """The payload as torch.save writes it (zip format) and as a bare pickle."""
    buffer = io.BytesIO()
    torch.save({"state": Payload(marker)}, buffer)
    return {"torch.save": buffer.getvalue(), "pickle.dumps": pickle.dumps(Payload(marker))}


def test_a_payload_in_any_file_is_never_run_and_the_folder_is_refused(finished_run, tmp_path):
    out, accelerator, fresh, _ = finished_run
    checkpoint = out / "checkpoint-3"
    marker = tmp_path / "marker"
    files = sorted(p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file())
    tried, refused, ignored = 0, 0, []
    attempts = []
    for relative in files:
        for kind, payload in payloads(marker).items():
            attempts.append((relative, kind, payload))
        if relative.endswith((".json", ".safetensors")):
            attempts.append((relative, "garbage", b"\x00\xffnot this format{"))
    extra = [("custom_checkpoint_0.pkl", "torch.save"), ("custom_checkpoint_5.pkl", "torch.save"), ("lzn/custom_checkpoint_1.pkl", "pickle.dumps"),
             ("scaler.pt", "torch.save"), ("sampler.bin", "pickle.dumps"), ("lzn/pytorch_model.bin", "torch.save")]
    attempts += [(relative, kind, payloads(marker)[kind]) for relative, kind in extra]
    for relative, kind, payload in attempts:
        tried += 1
        target_out, copy = tampered_copy(checkpoint, tmp_path, relative, payload)
        try:
            tu.resume_from_checkpoint(accelerator, str(copy), target_out, fresh.stateful)
        except (UnsafeCheckpointError, ValueError) as error:
            refused += 1
            assert str(copy / relative) in str(error), (relative, kind, error)  # the error names the file
        else:
            ignored.append(relative)
        assert not marker.exists(), f"{relative} ({kind}): the payload ran"
    # only the model cards are never read (save_pretrained writes them; resume reads config and weights)
    assert ignored and all(name.endswith("README.md") for name in ignored), ignored
    print(f"payload test: {tried} folders tried, {refused} refused naming the file, {len(ignored)} ignored ({sorted(set(ignored))})")
    assert (tried, refused, len(ignored)) == (32, 28, 4)


def test_a_fifo_or_device_in_a_checkpoint_is_refused_not_read(finished_run, tmp_path):
    out, accelerator, fresh, _ = finished_run
    for make in (lambda target: os.mkfifo(target), lambda target: target.symlink_to("/dev/zero")):
        target_out, copy = tampered_copy(out / "checkpoint-2", tmp_path, "lzn/extra.json", make)
        with pytest.raises(UnsafeCheckpointError, match=r"lzn/extra\.json is not a regular file"):
            tu.resume_from_checkpoint(accelerator, str(copy), target_out, fresh.stateful)


def test_older_runs_custom_state_is_read_as_plain_data_and_objects_are_refused(finished_run, tmp_path):
    out, accelerator, fresh, _ = finished_run
    legacy_out = tmp_path / "legacy"
    legacy = legacy_out / "checkpoint-2"
    shutil.copytree(out / "checkpoint-2", legacy)
    states = json.loads((legacy / "training_state.json").read_text())["states"]
    (legacy / "training_state.json").unlink()
    torch.save({"skipped_steps": 4}, legacy / "custom_checkpoint_0.pkl")  # what register_for_checkpointing wrote
    torch.save(states["lr_scheduler"], legacy / "custom_checkpoint_1.pkl")
    assert tu.resume_from_checkpoint(accelerator, "latest", legacy_out, fresh.stateful) == 2
    assert fresh.counters["skipped_steps"] == 4 and fresh.lr_scheduler.last_epoch == 2
    marker = tmp_path / "marker"
    (legacy / "custom_checkpoint_1.pkl").write_bytes(payloads(marker)["torch.save"])
    with pytest.raises(UnsafeCheckpointError, match="custom_checkpoint_1.pkl is not a file of tensors and plain containers"):
        tu.resume_from_checkpoint(accelerator, str(legacy), legacy_out, fresh.stateful)
    assert not marker.exists()


def test_latest_skips_empty_foreign_and_file_checkpoints(finished_run, tmp_path, capsys):
    out, accelerator, fresh, _ = finished_run
    run = tmp_path / "run"
    shutil.copytree(out / "checkpoint-2", run / "checkpoint-2")
    (run / "checkpoint-9").mkdir()
    (run / "checkpoint-8").write_text("a file")
    (run / "checkpoint-7").mkdir()
    (run / "checkpoint-7" / "model.safetensors").write_bytes(b"x")  # another tool's folder
    shutil.copytree(out / "checkpoint-2", run / "checkpoint-6")
    (run / "checkpoint-6" / "optimizer.bin").unlink()
    assert tu.resume_from_checkpoint(accelerator, "latest", run, fresh.stateful) == 2
    printed = capsys.readouterr().out
    for name, reason in (("checkpoint-9", "an empty folder"), ("checkpoint-8", "not a folder"), ("checkpoint-7", "no lzn/config.json with its model.safetensors (not a checkpoint of an lzn_hf run)"),
                         ("checkpoint-6", "no optimizer.bin")):
        assert f"skipping {run / name}: {reason}" in printed
    with pytest.raises(ValueError, match="checkpoint-7 is not a complete lzn_hf checkpoint"):
        tu.resume_from_checkpoint(accelerator, "checkpoint-7", run, fresh.stateful)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        tu.resume_from_checkpoint(accelerator, "checkpoint-8", run, fresh.stateful)
    empty = tmp_path / "only-bad"
    (empty / "checkpoint-3").mkdir(parents=True)
    assert tu.resume_from_checkpoint(accelerator, "latest", empty, fresh.stateful) == 0
    assert "no complete checkpoint" in capsys.readouterr().out


@pytest.mark.parametrize("failure", ["enospc", "torch-writer", "safetensors"])
def test_a_full_disk_says_so_and_where_and_keeps_the_last_checkpoint(finished_run, tmp_path, monkeypatch, failure):
    out, accelerator, fresh, _ = finished_run
    shutil.copytree(out / "checkpoint-2", tmp_path / "checkpoint-2")

    def full_disk(path):
        os.makedirs(path, exist_ok=True)
        if failure == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        if failure == "safetensors":
            from safetensors import SafetensorError

            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 123 vs 45: basic_ios::clear: iostream error")

    monkeypatch.setattr(accelerator, "save_state", full_disk)
    if failure == "torch-writer":
        monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1024))
    with pytest.raises(OSError, match=r"no space left on device while writing .*checkpoint-4\.partial") as raised:
        tu.save_checkpoint(accelerator, tmp_path, 4, stateful=fresh.stateful)
    assert raised.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]  # no partial folder, the last checkpoint kept


def test_resume_logs_each_step_once_and_max_steps_is_respected(tmp_path):
    first_accelerator, loop, module = start_run(tmp_path, max_train_steps=3)
    first = train(first_accelerator, loop, module)
    history = tmp_path / "logs" / "history.jsonl"
    assert [json.loads(line)["step"] for line in history.read_text().splitlines()] == [1, 2, 3]
    shutil.rmtree(tmp_path / "checkpoint-3")  # killed after update 3, before its checkpoint
    accelerator, loop, module = start_run(tmp_path, max_train_steps=4, resume_from_checkpoint="latest")
    assert loop.global_step == 2 and [json.loads(line)["step"] for line in history.read_text().splitlines()] == [1, 2]
    resumed = train(accelerator, loop, module)
    assert [json.loads(line)["step"] for line in history.read_text().splitlines()] == [1, 2, 3, 4]
    assert resumed["train_updates"] == 4 and resumed["updates_this_run"] == 2 and resumed["train_wall_time_s"] > 0

    # a recovery run at --max_train_steps: no update, the timings of the runs that trained (not zeros)
    accelerator, loop, module = start_run(tmp_path, max_train_steps=4, resume_from_checkpoint="latest")
    recovery = train(accelerator, loop, module)
    assert recovery["train_updates"] == 4 and recovery["updates_this_run"] == 0
    assert recovery["train_wall_time_s"] == pytest.approx(json.loads((tmp_path / "checkpoint-4" / "training_state.json").read_text())
                                                          ["states"]["counters"]["train_wall_time_s"])
    assert [json.loads(line)["step"] for line in history.read_text().splitlines()] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="is at update 4, beyond --max_train_steps 3"):
        start_run(tmp_path, max_train_steps=3, resume_from_checkpoint="latest")
    assert first["train_updates"] == 3
    reset_accelerate()
