"""lzn_hf.training: arguments, recipes, data, noise, augmentations, EMA, schedules, checkpoints, Hub upload, outputs
(in-process, fast)."""

import json
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lzn_hf import LZNConfig, LZNModel
from lzn_hf import training as tu


# ---------------------------------------------------------------------------------------------------------
# recipes and arguments
# ---------------------------------------------------------------------------------------------------------
@dataclass
class ScriptFlags:
    _argument_group_name = "script"

    decoder_freeze_step: int = tu.flag(None, "a script's own flag")
    switch: bool = tu.flag(False)


def parse(argv, default_config="digits-joint"):
    args, script = tu.parse_training_arguments("test", {"config": default_config, "output_dir": "out"}, ScriptFlags, argv=argv)
    assert isinstance(script, ScriptFlags)
    return args


def test_recipe_fills_unset_flags_and_flags_win():
    args = parse([])
    recipe = tu.TRAINING_RECIPES["digits-joint"]
    assert isinstance(args, tu.TrainingArguments) and args.recipe == "digits-joint" and args.output_dir == "out"
    assert (args.learning_rate_encoder, args.learning_rate_decoder, args.learning_rate_label_anchors) == (1e-3, 2e-3, 1e-2)
    assert args.max_train_steps == recipe["max_train_steps"] and args.global_batch_size == 256 and args.dataset_name == "digits"
    assert args.ema_decay == 0.9999 and args.random_flip is False and args.report_to == "tensorboard"
    args = parse(["--config", "cifar10-joint", "--learning_rate_encoder", "0.5", "--no-random_flip", "--report_to", "none"])
    assert args.learning_rate_encoder == 0.5 and args.learning_rate_decoder == 2e-3 and args.learning_rate_label_anchors == 1e-4
    assert args.ema_decay == 0.999999 and args.global_batch_size == 2000 and args.random_flip is False and args.report_to is None
    assert tu.local_batch_size(args.train_batch_size, args.global_batch_size, 8) == 250
    assert parse(["--random_flip"]).random_flip is True
    assert args.adam_options() == {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "fused": None, "schedule": "constant",
                                   "total_steps": args.max_train_steps}
    assert args.lr_scheduler == "constant" and parse(["--lr_scheduler", "cosine"]).adam_options()["schedule"] == "cosine"
    assert parse(["--no-adam_fused"]).adam_options()["fused"] is False and parse(["--adam_fused"]).adam_options()["fused"] is True


def test_resolution_returns_a_copy_and_the_record_has_no_token():
    raw = tu.TrainingArguments(config="digits-joint", hub_token="secret")
    resolved = tu.resolve_recipe(raw)
    assert raw.max_train_steps is None and resolved.max_train_steps == 1500  # the input is not mutated
    record = resolved.to_record()
    assert "hub_token" not in record and record["seed"] == 0 and json.loads(json.dumps(record)) == record


def test_script_flags_help_keeps_one_name_per_flag_and_the_groups(capsys):
    with pytest.raises(SystemExit):
        tu.parse_training_arguments("DESCRIPTION", {"config": "digits-joint"}, ScriptFlags, argv=["--help"])
    text = capsys.readouterr().out
    assert "DESCRIPTION" in text and "--random_flip, --no-random_flip" in text and "--switch" in text
    assert all(group in text for group in ("model:", "data:", "optimisation:", "checkpoints, logging and the Hub:", "script:"))
    assert "--max-train-steps" not in text and "(default:digits-joint)" in "".join(text.split())


@pytest.mark.parametrize("argv, message", [
    (["--max_train_steps", "0"], "--max_train_steps"),
    (["--ema_decay", "1.0"], "--ema_decay"),
    (["--config", "afhq-cat-generation"], "--train_data_dir"),
    (["--config", "nope.json"], "not a preset"),
    (["--recipe", "nope"], "unknown --recipe"),
    (["--train_data_dir", "x", "--dataset_name", "y"], "not both"),
    (["--output_dir", __file__], "--output_dir .* exists and is not a folder"),
])
def test_bad_arguments_name_the_flag(argv, message):
    with pytest.raises(ValueError, match=message):
        parse(argv)


def test_an_image_folder_replaces_the_recipes_dataset():
    args = parse(["--train_data_dir", "some/folder"])
    assert args.dataset_name is None and args.train_data_dir == "some/folder"


def test_global_batch_must_split_over_processes():
    with pytest.raises(ValueError, match="--train_batch_size"):
        tu.local_batch_size(None, parse([]).global_batch_size, 3)


def test_every_recipe_has_a_preset_and_paper_values():
    from lzn_hf.configuration_lzn import LZN_PRESETS

    assert set(tu.TRAINING_RECIPES) <= set(LZN_PRESETS)
    paper = {  # lzn-method.md §4.1: global batch, iterations, LR encoder / decoder, EMA decay
        "cifar10-generation": (2000, 50_000, 2.5e-5, 1e-3, 0.999999),
        "afhq-cat-generation": (256, 60_000, 2e-6, 2e-4, 0.999999),
        "celebahq-generation": (256, 350_000, 4e-6, 2e-4, 0.9999),
        "lsun-bedroom-generation": (256, 2_050_000, 2e-6, 2e-4, 0.99999),
        "imagenet-representation": (8192, 5_000_000, 8e-4, None, 0.9999),
        "cifar10-joint": (2000, 200_000, 5e-5, 2e-3, 0.999999),
    }
    for name, (batch, steps, lr_enc, lr_dec, decay) in paper.items():
        recipe = tu.TRAINING_RECIPES[name]
        assert (recipe["global_batch_size"], recipe["max_train_steps"], recipe["learning_rate_encoder"], recipe["ema_decay"]) == (batch, steps, lr_enc, decay)
        assert lr_dec is None or recipe["learning_rate_decoder"] == lr_dec
        assert recipe["lr_warmup_steps"] == 5000


def test_load_lzn_config_preset_path_and_overrides(tmp_path):
    config = tu.load_lzn_config("tiny-joint", image_flow_solver="euler", image_flow_num_steps=7)
    assert (config.image_flow_solver, config.image_flow_num_steps) == ("euler", 7)
    config.save_pretrained(tmp_path)
    assert tu.load_lzn_config(str(tmp_path)).image_flow_num_steps == 7
    assert tu.load_lzn_config(str(tmp_path / "config.json"), image_flow_num_steps=3).image_flow_num_steps == 3


# ---------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------
def test_digits_split_is_fixed_stratified_and_scaled():
    train_x, train_y = tu.load_digits("train")
    test_x, test_y = tu.load_digits("test")
    assert train_x.shape == (1437, 1, 8, 8) and test_x.shape == (360, 1, 8, 8)
    assert train_x.dtype == torch.float32 and train_x.min() == -1.0 and train_x.max() == 1.0
    assert torch.bincount(test_y).tolist() == torch.bincount(test_y).tolist() and torch.bincount(test_y).min() >= 35
    all_x, _ = tu.load_digits("all")
    rows = {tuple(x.flatten().tolist()) for x in all_x}
    assert len(rows) > 1700  # (the set has a few duplicate images)
    again_x, again_y = tu.load_digits("test")
    assert torch.equal(again_x, test_x) and torch.equal(again_y, test_y)
    big, _ = tu.load_digits("test", resolution=16, num_channels=3)
    assert big.shape == (360, 3, 16, 16) and big.min() >= -1 and big.max() <= 1


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(tmp_path / "images" / name / f"{i}.png")
    return tmp_path / "images"


def test_image_folder_loader_resizes_scales_and_labels(image_folder, tmp_path):
    dataset, names = tu.load_image_dataset(8, 1, train_data_dir=str(image_folder), cache_dir=str(tmp_path / "cache"))
    assert names == ["cat", "dog"] and len(dataset) == 6
    item = dataset[0]
    assert item["pixel_values"].shape == (1, 8, 8) and -1 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1
    assert sorted({dataset[i]["labels"] for i in range(6)}) == [0, 1]
    pixel_values, labels = tu.stack_dataset(dataset)
    assert pixel_values.shape == (6, 1, 8, 8) and labels.tolist() == [dataset[i]["labels"] for i in range(6)]
    rgb, _ = tu.load_image_dataset(16, 3, train_data_dir=str(image_folder), cache_dir=str(tmp_path / "cache"))
    assert rgb[0]["pixel_values"].shape == (3, 16, 16)
    with pytest.raises(RuntimeError, match="imagefolder|image folder"):
        tu.load_image_dataset(8, 1, train_data_dir=str(tmp_path / "missing"))


def test_subsets_are_seeded_and_stratified_not_the_first_rows():
    """Issue 16: image folders list their rows class by class; a subset must hold every class in its share."""
    labels = torch.arange(10).repeat_interleave(100)  # 1,000 rows sorted by class, as an image folder
    chosen = tu.stratified_indices(labels, 200)
    assert len(chosen) == 200 and torch.equal(chosen, chosen.sort().values) and len(set(chosen.tolist())) == 200
    assert torch.bincount(labels[chosen], minlength=10).tolist() == [20] * 10
    assert torch.equal(chosen, tu.stratified_indices(labels, 200)) and not torch.equal(chosen, tu.stratified_indices(labels, 200, seed=1))
    uneven = torch.cat([torch.zeros(900, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    assert torch.bincount(uneven[tu.stratified_indices(uneven, 50)]).tolist() == [45, 5]
    assert torch.equal(tu.stratified_indices(labels, 5000), torch.arange(1000))  # the whole split, in its order
    assert len(set(tu.stratified_indices(None, 30, num_rows=100).tolist())) == 30  # unlabelled: a seeded random subset
    dataset = tu.TensorImageDataset(labels.float().view(-1, 1, 1, 1), labels)
    images, subset_labels = tu.stack_dataset(dataset, 100)
    assert torch.bincount(subset_labels).tolist() == [10] * 10 and torch.equal(images.flatten().long(), subset_labels)
    whole, whole_labels = tu.stack_dataset(dataset)
    assert torch.equal(whole_labels, labels)


def test_image_folder_subsets_see_every_class(image_folder, tmp_path):
    dataset, _ = tu.load_image_dataset(8, 1, train_data_dir=str(image_folder), cache_dir=str(tmp_path / "cache"))
    assert tu.dataset_labels(dataset).tolist() == [0, 0, 0, 1, 1, 1]  # sorted by class
    _, labels = tu.stack_dataset(dataset, 2)
    assert sorted(labels.tolist()) == [0, 1]
    truncated, _ = tu.load_image_dataset(8, 1, train_data_dir=str(image_folder), cache_dir=str(tmp_path / "cache"), max_samples=4)
    assert sorted(tu.dataset_labels(truncated).tolist()) == [0, 0, 1, 1]
    digits, _, _ = tu.load_training_data(tu.DataArguments(dataset_name="digits", max_train_samples=100), 8, 1, with_test=False)
    assert len(digits) == 100 and torch.bincount(digits.labels).min() >= 9


def test_a_dataset_saved_with_save_to_disk_loads_with_column_detection(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image as ImageFeature

    rng = np.random.default_rng(0)
    features = Features({"img": ImageFeature(), "fine_label": ClassLabel(names=["a", "b", "c"]), "extra": ClassLabel(names=["x"])})

    def split(count):
        images = [Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)) for _ in range(count)]
        return Dataset.from_dict({"img": images, "fine_label": [i % 3 for i in range(count)], "extra": [0] * count}, features=features)

    DatasetDict({"train": split(9), "test": split(3)}).save_to_disk(str(tmp_path / "saved"))
    assert tu.is_saved_dataset(str(tmp_path / "saved")) and not tu.is_saved_dataset(str(tmp_path))
    train, test, names = tu.load_training_data(tu.DataArguments(dataset_name=str(tmp_path / "saved")), 4, 1)
    assert names == ["a", "b", "c"] and len(train) == 9 and len(test) == 3
    item = train[4]
    assert item["pixel_values"].shape == (1, 4, 4) and item["labels"] == 1 and -1 <= item["pixel_values"].min()
    assert tu.dataset_labels(test).tolist() == [0, 1, 2]
    assert tu.dataset_id(str(tmp_path / "saved")) == "saved-dataset"
    split(4).save_to_disk(str(tmp_path / "single"))  # one Dataset: the training split, no held-out split
    train, test, _ = tu.load_training_data(tu.DataArguments(dataset_name=str(tmp_path / "single")), 4, 1)
    assert len(train) == 4 and test is None
    with pytest.raises(ValueError, match="label column 'nope' not found"):
        tu.load_image_dataset(4, 1, dataset_name=str(tmp_path / "saved"), label_column="nope")


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    sampler = tu.EpochShuffleSampler(50, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == list(range(50)) and first != second
    sampler.set_epoch(0)
    assert list(sampler) == first == list(tu.EpochShuffleSampler(50, seed=3))


# ---------------------------------------------------------------------------------------------------------
# noise and augmentations
# ---------------------------------------------------------------------------------------------------------
def test_rank_draws_are_slices_of_the_global_draw():
    whole = tu.rank_randn([8, 3], tu.step_generator(0, 5), 0, 1)
    parts = [tu.rank_randn([4, 3], tu.step_generator(0, 5), rank, 2) for rank in range(2)]
    assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(whole, tu.rank_randn([8, 3], tu.step_generator(0, 6), 0, 1))
    uniform = tu.rank_rand([8], tu.step_generator(1, 0), 0, 1)
    assert torch.equal(torch.cat([tu.rank_rand([4], tu.step_generator(1, 0), r, 2) for r in range(2)]), uniform)


def test_random_flip():
    images = torch.arange(8.0).view(2, 1, 2, 2)
    flipped = tu.random_flip(images, torch.tensor([0.2, 0.9]))
    assert torch.equal(flipped[0], images[0].flip(-1)) and torch.equal(flipped[1], images[1])


@pytest.mark.parametrize("channels", [1, 3])
def test_simclr_augment_range_determinism_and_rank_slicing(channels):
    images = torch.rand(6, channels, 16, 16) * 2 - 1
    views = tu.simclr_augment(images, torch.Generator().manual_seed(0))
    assert views.shape == images.shape and views.min() >= -1 and views.max() <= 1 and torch.isfinite(views).all()
    assert torch.equal(views, tu.simclr_augment(images, torch.Generator().manual_seed(0)))
    assert not torch.allclose(views, tu.simclr_augment(images, torch.Generator().manual_seed(1)))
    halves = [tu.simclr_augment(images[3 * r : 3 * r + 3], torch.Generator().manual_seed(0), process_index=r, num_processes=2) for r in range(2)]
    torch.testing.assert_close(torch.cat(halves), views)


def test_simclr_identity_settings_keep_the_image():
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    same = tu.simclr_augment(images, torch.Generator().manual_seed(0), crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0,
                             jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    torch.testing.assert_close(same, images, atol=1e-5, rtol=0)
    gray = tu.simclr_augment(images, torch.Generator().manual_seed(0), crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0,
                             jitter_prob=0.0, grayscale_prob=1.0, blur_prob=0.0)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])


# ---------------------------------------------------------------------------------------------------------
# optimisation
# ---------------------------------------------------------------------------------------------------------
def test_ema_uses_upstreams_warmup_formula():
    param = torch.nn.Parameter(torch.zeros(3))
    ema = tu.ExponentialMovingAverage([param], decay=0.5)
    with torch.no_grad():
        param.fill_(1.0)
    ema.step([param])  # n = 1: decay min(0.5, 2 / 11)
    torch.testing.assert_close(ema.shadow_params[0], torch.full((3,), 1 - 2 / 11))
    assert ema.effective_decay(1) == pytest.approx(2 / 11) and ema.effective_decay(100) == 0.5
    big = tu.ExponentialMovingAverage([param], decay=0.9999)
    assert big.effective_decay(50_000) == pytest.approx(50_001 / 50_010)
    with pytest.raises(ValueError, match="decay"):
        tu.ExponentialMovingAverage([param], decay=1.0)


def test_module_ema_per_part_skip_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = LZNModel(LZNConfig.from_preset("tiny-joint"))
    ema = tu.ModuleEMA(model, decay=0.9)
    assert ema.parts == ["image_encoder", "image_decoder", "label_anchors"]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.step(model, skip={"image_decoder"})
    assert ema.num_updates == {"image_encoder": 1, "image_decoder": 0, "label_anchors": 1}
    averaged = ema.averaged_model(model)
    decoder_before = next(iter(ema.averages["image_decoder"].shadow_params))
    torch.testing.assert_close(next(averaged.image_decoder.parameters()), decoder_before)
    torch.testing.assert_close(averaged.label_anchors.anchors, model.label_anchors.anchors - 2 / 11)  # p0 + (1 - 2/11) * 1
    ema.save_pretrained(tmp_path / "ema", model)
    other = tu.ModuleEMA(LZNModel(LZNConfig.from_preset("tiny-joint")), decay=0.5)
    other.load_pretrained(tmp_path / "ema", LZNModel)
    assert other.num_updates == ema.num_updates and other.averages["image_encoder"].decay == 0.9
    for a, b in zip(other.averages["label_anchors"].shadow_params, ema.averages["label_anchors"].shadow_params):
        assert torch.equal(a, b)


def test_param_groups_and_linear_warmup():
    encoder, decoder = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    groups = tu.module_param_groups({"image_encoder": (encoder, 1.0), "image_decoder": (decoder, 2.0), "label_anchors": (None, 3.0)})
    assert [(g["name"], g["lr"], len(g["params"])) for g in groups] == [("image_encoder", 1.0, 2), ("image_decoder", 2.0, 2)]
    optimizer = torch.optim.Adam(groups)
    scheduler = tu.linear_warmup(optimizer, 4)
    lrs = []
    for _ in range(6):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0])
    assert tu.linear_warmup(torch.optim.Adam(encoder.parameters(), lr=0.1), 0).get_last_lr() == [0.1]
    with pytest.raises(ValueError, match="no trainable"):
        tu.module_param_groups({"image_encoder": (None, 1.0)})


def test_freeze_keeps_gradients_flowing_through():
    encoder, decoder = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    tu.freeze_module(decoder)
    decoder(encoder(torch.randn(3, 2))).sum().backward()
    assert decoder.weight.grad is None and encoder.weight.grad is not None
    module = torch.nn.ModuleDict({"encoder": encoder, "decoder": decoder})
    assert {id(p) for p in tu.trainable_parameters(module)} == {id(p) for p in encoder.parameters()}


def test_all_processes_finite_and_class_weights_single_process():
    accelerator = SimpleNamespace(num_processes=1)
    assert tu.all_processes_finite(accelerator, torch.tensor(1.0))
    assert not tu.all_processes_finite(accelerator, torch.tensor(float("nan")))
    assert not tu.all_processes_finite(accelerator, torch.tensor([1.0, float("inf")]))
    weights = tu.global_class_weights(accelerator, torch.tensor([0, 0, 2, 1]), 4)
    assert weights.tolist() == [0.5, 0.25, 0.25, 0.0]


def test_forward_guards_float32_gather_and_nonfinite_loss():
    anchors = torch.randn(3, 4, dtype=torch.bfloat16, requires_grad=True)
    with tu.float32_flows("cpu"):
        as_float, reference = tu.gather_float32_anchors(anchors)  # one process: the reference is the batch itself
        assert as_float.dtype == reference.dtype == torch.float32 and torch.equal(reference, as_float)
        assert torch.matmul(as_float, reference.T).dtype == torch.float32
        assert tu.nonfinite_loss(reference, reference) is None
        broken = reference * torch.tensor([1.0, float("inf"), 1.0, 1.0])
        nan = tu.nonfinite_loss(reference, broken)
        assert nan is not None and nan.ndim == 0 and torch.isnan(nan) and nan.requires_grad


def test_rectified_flow_loss_matches_upstreams_orientation():
    torch.manual_seed(0)
    decoder = LZNModel(LZNConfig.from_preset("tiny-joint")).image_decoder
    x, noise, latents = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 1, 8, 8), torch.randn(4, 16)
    sigmas, labels = torch.rand(4) * 0.999, torch.tensor([0, 1, 2, 0])
    t = 1 - sigmas
    x_t = t.view(-1, 1, 1, 1) * x + (1 - t.view(-1, 1, 1, 1)) * noise  # upstream: t = 1 is data
    expected = ((x - noise) - decoder.upstream_velocity(x_t, t, latents, labels)).pow(2).mean()
    torch.testing.assert_close(tu.rectified_flow_loss(decoder, x, latents, noise, sigmas, labels), expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# checkpoints, Hub, outputs
# ---------------------------------------------------------------------------------------------------------
def test_a_deletion_killed_midway_never_leaves_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    """Pruning renames a checkpoint out of the checkpoint-N namespace before deleting its files: a kill mid-delete
    (here an interrupt after the first file) leaves a hidden .checkpoint-N.deleted-* that resume never considers and
    the next save clears, never a checkpoint-N folder missing files."""
    import shutil
    from pathlib import Path

    from lzn_hf.training.checkpoints import _checkpoint_steps, remove_deleted_leftovers

    for step in (1, 2):
        (tmp_path / f"checkpoint-{step}" / "lzn").mkdir(parents=True)
        for name in ("lzn/config.json", "lzn/model.safetensors", "optimizer.bin"):
            (tmp_path / f"checkpoint-{step}" / name).write_text("x")
    real_rmtree = shutil.rmtree

    def killed_rmtree(path, *args, **kwargs):
        next(p for p in Path(path).rglob("*") if p.is_file()).unlink()  # one file gone, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        tu.prune_checkpoints(tmp_path, 1)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert [name for _, name in _checkpoint_steps(tmp_path)] == ["checkpoint-2"]  # the survivor, whole
    assert sorted(p.name for p in (tmp_path / "checkpoint-2").rglob("*")) == ["config.json", "lzn", "model.safetensors", "optimizer.bin"]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".checkpoint-1.deleted-")]
    assert len(leftovers) == 1
    assert remove_deleted_leftovers(tmp_path) == leftovers and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]


def test_prune_checkpoints_and_resume_latest(tmp_path):
    for step in (5, 10, 20, 100):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-x").mkdir()
    (tmp_path / "checkpoint-200.partial").mkdir()  # an interrupted save: never picked, never counted
    assert tu.prune_checkpoints(tmp_path, 2) == ["checkpoint-5", "checkpoint-10"]
    assert tu.prune_checkpoints(tmp_path, 1) == ["checkpoint-20"]
    assert tu.prune_checkpoints(tmp_path, None) == []
    (tmp_path / "checkpoint-3").mkdir()  # just saved by a run restarted below an earlier run's checkpoint-100
    assert tu.prune_checkpoints(tmp_path, 1, keep="checkpoint-3") == ["checkpoint-100"] and (tmp_path / "checkpoint-3").is_dir()
    (tmp_path / "checkpoint-100").mkdir()
    loaded, printed = [], []
    accelerator = SimpleNamespace(print=printed.append, load_state=loaded.append)
    # empty checkpoint-N folders are skipped, saying so (a real one is picked: test_resume_security.py)
    assert tu.resume_from_checkpoint(accelerator, "latest", tmp_path) == 0 and loaded == []
    assert printed[0] == f"skipping {tmp_path / 'checkpoint-100'}: an empty folder" and "no complete checkpoint" in printed[-1]
    assert tu.resume_from_checkpoint(accelerator, "latest", tmp_path / "empty") == 0
    assert tu.resume_from_checkpoint(accelerator, None, tmp_path) == 0
    with pytest.raises(FileNotFoundError):
        tu.resume_from_checkpoint(accelerator, "checkpoint-7", tmp_path)
    with pytest.raises(ValueError, match="checkpoint-N"):
        tu.resume_from_checkpoint(accelerator, "checkpoint-x", tmp_path)
    assert tu.resume_position(23, batches_per_epoch=11, gradient_accumulation_steps=1) == (2, 1)
    assert tu.resume_position(7, batches_per_epoch=11, gradient_accumulation_steps=2) == (1, 2)  # 6 updates per epoch


def test_push_folder_to_hub_uploads_the_final_folder_only(tmp_path, monkeypatch):
    import huggingface_hub

    calls = {}
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: calls.setdefault("create", (repo_id, kw)) and SimpleNamespace(repo_id=f"me/{repo_id}"))
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kw: calls.setdefault("upload", kw))
    assert tu.push_folder_to_hub(tmp_path / "lzn-run", "lzn-run", token="t", private=True, commit_message="m") == "me/lzn-run"
    assert calls["create"] == ("lzn-run", {"exist_ok": True, "token": "t", "private": True})
    upload = calls["upload"]
    assert upload["repo_id"] == "me/lzn-run" and upload["folder_path"] == str(tmp_path / "lzn-run") and upload["commit_message"] == "m"
    assert {"checkpoint-*", "checkpoint-*/**", "logs/**"} <= set(upload["ignore_patterns"]) and upload["token"] == "t"

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(huggingface_hub, "create_repo", offline)
    with pytest.raises(RuntimeError, match=r"push to the Hub repo 'lzn-run' failed .* saved in .*lzn-run"):
        tu.push_folder_to_hub(tmp_path / "lzn-run")


def test_run_config_is_written_atomically_and_read_back(tmp_path):
    args = parse(["--train_data_dir", "images", "--seed", "4"])
    path = tu.write_run_config(tmp_path, "train_joint.py", args.to_record(), script_flags={"decoder_freeze_step": 5}, global_batch_size=64)
    assert path.name == tu.RUN_CONFIG_FILE and not list(tmp_path.glob("*.partial"))
    record = tu.read_run_config(tmp_path)
    assert record["script"] == "train_joint.py" and record["flags"]["train_data_dir"] == "images" and record["flags"]["seed"] == 4
    assert record["global_batch_size"] == 64 and record["script_flags"] == {"decoder_freeze_step": 5}
    assert tu.read_run_config(tmp_path / "none") is None
    with pytest.raises(ValueError, match="Hub token"):
        tu.write_run_config(tmp_path, "x", {"hub_token": "secret"})
    (tmp_path / "bad" ).mkdir()
    (tmp_path / "bad" / tu.RUN_CONFIG_FILE).write_text("[1, 2")
    with pytest.raises(ValueError, match="run_config.json is not valid JSON"):
        tu.read_run_config(tmp_path / "bad")


def test_run_card_metadata_and_training_section(tmp_path):
    args = parse(["--train_data_dir", "x"])
    assert tu.dataset_id(args.dataset_name, args.train_data_dir) == "imagefolder" and tu.dataset_id("digits") == "sklearn-digits"
    training = tu.training_markdown(args, 64, "train_joint.py", {"extra": 1})
    assert "| global batch (anchors per zone set) | 64 |" in training and "| extra | 1 |" in training
    path = tu.write_run_card(tmp_path, "title", "text", pipeline_tag="image-classification", datasets=["sklearn-digits"],
                             metrics={"accuracy/anchor_bank": 0.95}, usage="x = 1", extra_text=training)
    text = path.read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["library_name"] == "lzn_hf" and meta["pipeline_tag"] == "image-classification"
    assert meta["datasets"] == ["sklearn-digits"] and meta["metrics"] == ["accuracy"]
    result = meta["model-index"][0]["results"][0]
    assert result["metrics"][0] == {"type": "accuracy", "value": 0.95, "name": "accuracy/anchor_bank"}
    assert "```python\nx = 1\n```" in text and "## Training" in text


def test_training_history_keeps_the_latest_run_after_a_resume(tmp_path):
    history = tu.TrainingHistory(tmp_path / "logs" / "history.jsonl")
    for step in (1, 2, 3):
        history.append(step, {"loss": step})
    for step in (2, 3, 4):  # resumed from step 1
        history.append(step, {"loss": 10 * step})
    assert history.read()["loss"] == [(1, 1.0), (2, 20.0), (3, 30.0), (4, 40.0)]
    assert tu.TrainingHistory(tmp_path / "none.jsonl").read() == {}


def test_pngs(tmp_path):
    rows = [np.random.rand(3, 8, 8, 1), np.random.rand(2, 8, 8, 1)]
    image = Image.open(tu.save_image_grid(rows, tmp_path / "grid.png", row_labels=["a", "b"], scale=2, pad=1))
    assert image.size[1] == 2 * (16 + 1) + 1
    curves = tu.save_training_curves({"loss": [(1, 1.0), (2, 0.5)], "lr": [(1, 0.1)]}, tmp_path / "curves.png")
    assert Image.open(curves).size[0] > 100
    assert tu.save_training_curves({}, tmp_path / "none.png") is None


def test_tracker_config_is_scalar_only():
    config = tu.tracker_config(dict(a=1, b=None, c=[1, 2], d="x", e=True))
    assert config == {"a": 1, "b": "None", "c": "[1, 2]", "d": "x", "e": True}
    json.dumps(config)


def test_batch_mode_accuracy_and_judge_run_on_a_tiny_model():
    from lzn_hf import LZNForImageClassification
    from lzn_hf.evaluation import batch_mode_accuracy, fit_pixel_judge

    torch.manual_seed(0)
    classifier = LZNForImageClassification(LZNConfig.from_preset("tiny-joint")).eval()
    images, labels = torch.rand(10, 1, 8, 8) * 2 - 1, torch.arange(10) % 3
    for noise in ("zero", "random"):
        accuracy = batch_mode_accuracy(classifier, images, labels, batch_size=4, noise=noise, filler=images)
        assert 0.0 <= accuracy <= 1.0
    a = batch_mode_accuracy(classifier, images, labels, batch_size=4, noise="random", seed=1)
    assert a == batch_mode_accuracy(classifier, images, labels, batch_size=4, noise="random", seed=1)
    judge = fit_pixel_judge(*tu.load_digits("train"))
    test_x, test_y = tu.load_digits("test")
    assert judge.score(((test_x + 1) / 2).reshape(len(test_x), -1).numpy(), test_y.numpy()) > 0.98  # ~99 % on real digits
