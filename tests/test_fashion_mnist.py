"""Fashion-MNIST and MNIST (issue 16), on tiny data built here: the 28x28 presets and recipes, the cosine schedule,
the SimCLR baseline's NT-Xent loss, the CNN judge, the pinned linear probe, and the evaluation of a 28x28 run."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lzn_hf import LZN_PRESETS, LZNConfig, LZNModel
from lzn_hf.evaluation import (CNNJudge, PixelSVCJudge, encoder_features, fit_cnn_judge, fit_image_judge, probe_accuracies, probed_features,
                               uses_cnn_judge)
from lzn_hf.training import (TRAINING_RECIPES, TrainingArguments, learning_rate_schedule, load_training_data, nt_xent_logits, nt_xent_loss,
                             resolve_recipe, stack_dataset)

FASHION_PRESETS = ["fashion-mnist-joint", "fashion-mnist-generation", "fashion-mnist-representation"]


def blob_images(num_per_class: int, num_classes: int = 3, size: int = 28, seed: int = 0):
    """uint8 images ``[N, size, size]``: class c is a bright horizontal band in the c-th third, plus noise."""
    generator = np.random.default_rng(seed)
    images = generator.integers(0, 60, size=(num_classes * num_per_class, size, size)).astype(np.uint8)
    labels = np.repeat(np.arange(num_classes), num_per_class)
    band = size // num_classes
    for index, label in enumerate(labels):
        images[index, label * band : (label + 1) * band] += 150
    return images, labels


@pytest.fixture(scope="module")
def fashion_like(tmp_path_factory):
    """A save_to_disk DatasetDict laid out as scripts/prepare_fashion_mnist.py writes it (image + label), 28x28."""
    from lzn_hf.datasets_offline import FASHION_MNIST_CLASS_NAMES, save_image_dataset

    folder = tmp_path_factory.mktemp("fashion") / "fashion-mnist"
    splits = {"train": blob_images(6, num_classes=10, seed=0), "test": blob_images(3, num_classes=10, seed=1)}
    save_image_dataset(splits, FASHION_MNIST_CLASS_NAMES, folder)
    return folder


# ---------------------------------------------------------------------------------------------------------
# presets and recipes
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FASHION_PRESETS)
def test_fashion_presets_are_28x28_one_channel(name):
    config = LZNConfig.from_preset(name)
    parts = [config.image_encoder_config] + ([config.image_decoder_config] if config.image_decoder_config is not None else [])
    assert all((part.image_size, part.num_channels, part.latent_dim) == (28, 1, 64) for part in parts)
    assert (config.image_decoder_config is not None) == (name != "fashion-mnist-representation")
    assert config.num_classes == (10 if name == "fashion-mnist-joint" else 0)
    recipe = TRAINING_RECIPES[name]
    assert recipe["lr_scheduler"] == "cosine" and 0 < recipe["lr_warmup_steps"] < recipe["max_train_steps"]


def test_fashion_encoder_size_and_backbone_feature():
    torch.manual_seed(0)
    encoder = LZNModel(LZNConfig.from_preset("fashion-mnist-representation")).image_encoder.eval()
    assert 1.1e6 < sum(p.numel() for p in encoder.parameters()) < 1.3e6  # the calibration encoder
    images = torch.rand(3, 1, 28, 28) * 2 - 1
    output = encoder(images, output_hidden_states=True, return_dict=True)
    assert output.anchors.shape == (3, 64)
    backbone = encoder_features(encoder, images, "backbone")
    assert backbone.shape == (3, sum(hidden.shape[1] for hidden in output.hidden_states))
    torch.testing.assert_close(backbone[:, :16], output.hidden_states[0].mean(dim=(2, 3)))
    torch.testing.assert_close(encoder_features(encoder, images), output.pooler_output)
    assert list(probed_features(encoder)) == ["pooler_output", "backbone"]


def test_fashion_recipe_resolves_with_a_saved_dataset_path(fashion_like):
    args = resolve_recipe(TrainingArguments(config="fashion-mnist-representation", dataset_name=str(fashion_like)))
    assert args.lr_scheduler == "cosine" and args.global_batch_size == 256 and args.dataset_name == str(fashion_like)
    assert args.adam_options()["schedule"] == "cosine" and args.adam_options()["total_steps"] == args.max_train_steps
    with pytest.raises(ValueError, match="--lr_warmup_steps"):
        resolve_recipe(TrainingArguments(config="fashion-mnist-representation", dataset_name="x", max_train_steps=10, lr_warmup_steps=10))


def test_saved_fashion_layout_columns_and_classes(fashion_like):
    class Data:  # the DataArguments fields load_training_data reads
        dataset_name, train_data_dir, dataset_config_name = str(fashion_like), None, None
        image_column = label_column = cache_dir = max_train_samples = None

    train, test, class_names = load_training_data(Data, 28, 1)
    assert class_names[:3] == ["T-shirt/top", "Trouser", "Pullover"] and len(train) == 60 and len(test) == 30
    images, labels = stack_dataset(train, 30)
    assert images.shape == (30, 1, 28, 28) and images.min() >= -1 and images.max() <= 1
    assert torch.bincount(labels).tolist() == [3] * 10  # stratified, although the rows are sorted by class


# ---------------------------------------------------------------------------------------------------------
# the learning-rate schedule
# ---------------------------------------------------------------------------------------------------------
def test_cosine_schedule_warms_up_then_decays_to_zero():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = learning_rate_schedule(optimizer, 2, "cosine", total_steps=6)
    rates = []
    for _ in range(6):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    expected = [0.0, 0.05] + [0.1 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert rates == pytest.approx(expected)
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0)
    constant = learning_rate_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), 4)
    assert constant.get_last_lr() == pytest.approx([0.025])  # upstream's LinearLR from lr / warm-up, unchanged
    with pytest.raises(ValueError, match="schedule"):
        learning_rate_schedule(optimizer, 0, "linear")
    with pytest.raises(ValueError, match="total_steps"):
        learning_rate_schedule(optimizer, 5, "cosine", total_steps=5)


# ---------------------------------------------------------------------------------------------------------
# SimCLR's NT-Xent
# ---------------------------------------------------------------------------------------------------------
def direct_nt_xent(z1, z2, temperature):
    """NT-Xent written out: 2B samples, sample i's positive is its other view, the denominator all k != i."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    count = len(z1)
    total = 0.0
    for i in range(2 * count):
        positive = (i + count) % (2 * count)
        similarities = [float(z[i] @ z[k]) / temperature for k in range(2 * count)]
        denominator = sum(math.exp(s) for k, s in enumerate(similarities) if k != i)
        total += -(similarities[positive] - math.log(denominator))
    return total / (2 * count)


def test_nt_xent_matches_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 4, generator=generator), torch.randn(5, 4, generator=generator)
    for temperature in (0.5, 0.1):
        assert nt_xent_loss(z1, z2, temperature=temperature).item() == pytest.approx(direct_nt_xent(z1, z2, temperature), rel=1e-5)
    # the same as cross-entropy over the full similarity matrix with its diagonal removed
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarity = (z @ z.T / 0.5).masked_fill(torch.eye(10, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(5, 10), torch.arange(5)])
    torch.testing.assert_close(nt_xent_loss(z1, z2), F.cross_entropy(similarity, target))
    # a perfect pairing with dissimilar images costs less than a random one
    basis = torch.eye(5) * 10
    assert nt_xent_loss(basis, basis).item() < nt_xent_loss(z1, z2).item()


def test_nt_xent_over_processes_equals_the_global_batch():
    """Two processes of 3 images each: the mean of the per-process losses (local queries, gathered keys) is the
    one-process loss of the 6 images, and so are its gradients."""
    generator = torch.Generator().manual_seed(1)
    z1 = torch.randn(6, 8, generator=generator, requires_grad=True)
    z2 = torch.randn(6, 8, generator=generator, requires_grad=True)
    whole = nt_xent_loss(z1, z2, temperature=0.3)
    per_rank = [nt_xent_loss(z1[r * 3 : (r + 1) * 3], z2[r * 3 : (r + 1) * 3], z1, z2, torch.arange(3) + 3 * r, temperature=0.3)
                for r in range(2)]
    split = sum(per_rank) / 2
    torch.testing.assert_close(split, whole)
    grads_whole = torch.autograd.grad(whole, (z1, z2))
    grads_split = torch.autograd.grad(split, (z1, z2))
    for a, b in zip(grads_whole, grads_split):
        torch.testing.assert_close(a, b)
    logits, positives = nt_xent_logits(z1[3:], z2[3:], z1, z2, torch.arange(3) + 3, temperature=0.3)
    assert logits.shape == (6, 12) and positives.tolist() == [9, 10, 11, 3, 4, 5]
    assert torch.isinf(logits[torch.arange(6), torch.tensor([3, 4, 5, 9, 10, 11])]).all()


def test_nt_xent_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(torch.randn(2, 3), torch.randn(2, 3), temperature=0.0)
    with pytest.raises(ValueError, match="views"):
        nt_xent_loss(torch.randn(2, 3), torch.randn(3, 3))


# ---------------------------------------------------------------------------------------------------------
# the judge of 28x28 images
# ---------------------------------------------------------------------------------------------------------
def as_pixels(images):
    return torch.from_numpy(images).float().unsqueeze(1) / 127.5 - 1.0


def test_cnn_judge_learns_tiny_data_deterministically():
    train, train_labels = blob_images(20, seed=0)
    test, test_labels = blob_images(10, seed=1)
    train, test = as_pixels(train), as_pixels(test)
    train_labels, test_labels = torch.from_numpy(train_labels), torch.from_numpy(test_labels)
    judge = fit_cnn_judge(train, train_labels, epochs=3, batch_size=16, seed=0)
    assert isinstance(judge, CNNJudge) and judge.kind == "cnn"
    assert judge.accuracy(test, test_labels) == 1.0
    features = judge.features(test)
    assert features.shape == (30, 128) and features.dtype == np.float64 and (features >= 0).all()
    again = fit_cnn_judge(train, train_labels, epochs=3, batch_size=16, seed=0)
    np.testing.assert_array_equal(again.features(test), features)
    with pytest.raises(ValueError, match="at least 16"):
        CNNJudge(8, 1, 10)
    with pytest.raises(ValueError, match="square"):
        fit_cnn_judge(torch.zeros(4, 1, 28, 20), torch.zeros(4, dtype=torch.long))


def test_a_cached_judge_is_loaded_not_trained_again(tmp_path, monkeypatch):
    train, train_labels = blob_images(10, seed=0)
    train, train_labels = as_pixels(train), torch.from_numpy(train_labels)
    test = as_pixels(blob_images(4, seed=1)[0])
    trained = fit_cnn_judge(train, train_labels, epochs=2, batch_size=16, cache_dir=tmp_path)
    [saved] = tmp_path.glob("*.safetensors")
    assert not list(tmp_path.glob(".*"))  # written atomically: no temporary sibling left behind

    def no_training(*args, **kwargs):
        raise AssertionError("the cached judge was trained again")

    monkeypatch.setattr(torch.optim, "Adam", no_training)
    loaded = fit_cnn_judge(train, train_labels, epochs=2, batch_size=16, cache_dir=tmp_path)
    np.testing.assert_array_equal(loaded.features(test), trained.features(test))
    assert not loaded.training
    for changed in ({"epochs": 3}, {"seed": 1}, {"lr": 2e-3}):  # another recipe is another judge
        with pytest.raises(AssertionError, match="trained again"):
            fit_cnn_judge(train, train_labels, **{"epochs": 2, "batch_size": 16, "cache_dir": tmp_path, **changed})
    other_labels = train_labels.flip(0)  # other data too
    with pytest.raises(AssertionError, match="trained again"):
        fit_cnn_judge(train, other_labels, epochs=2, batch_size=16, cache_dir=tmp_path)
    monkeypatch.undo()

    saved.write_bytes(saved.read_bytes()[:100])  # a truncated file is trained again and replaced
    again = fit_cnn_judge(train, train_labels, epochs=2, batch_size=16, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.features(test), trained.features(test))
    assert saved.stat().st_size > 1000 and len(list(tmp_path.glob("*.safetensors"))) == 1


def test_the_evaluation_judge_cache_option(tmp_path, monkeypatch):
    from lzn_hf.evaluation import default_judge_cache_dir
    from lzn_hf.evaluation.run import judge_cache_dir

    monkeypatch.setenv("LZN_HF_CACHE", str(tmp_path / "cache"))
    assert default_judge_cache_dir() == tmp_path / "cache" / "judges" == judge_cache_dir(None) == judge_cache_dir("")
    assert judge_cache_dir("none") is None and judge_cache_dir("None") is None
    assert judge_cache_dir(str(tmp_path / "mine")) == tmp_path / "mine"
    monkeypatch.delenv("LZN_HF_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import importlib

    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)
    try:
        assert default_judge_cache_dir() == tmp_path / "hf" / "lzn_hf" / "judges"
    finally:
        monkeypatch.undo()
        importlib.reload(huggingface_hub.constants)


def test_the_judge_is_chosen_by_image_size():
    images, labels = blob_images(8, size=8, seed=0)
    small = fit_image_judge(as_pixels(images), torch.from_numpy(labels))
    assert isinstance(small, PixelSVCJudge) and small.accuracy(as_pixels(images), torch.from_numpy(labels)) == 1.0
    assert not uses_cnn_judge(torch.zeros(1, 1, 8, 8)) and uses_cnn_judge(torch.zeros(1, 1, 28, 28))
    large = fit_image_judge(as_pixels(blob_images(8, seed=0)[0]), torch.from_numpy(labels), seed=0)
    assert large.kind == "cnn"


# ---------------------------------------------------------------------------------------------------------
# the pinned probe
# ---------------------------------------------------------------------------------------------------------
def test_probe_protocol_rows():
    train, train_labels = blob_images(10, seed=0)
    test, test_labels = blob_images(5, seed=1)
    args = (as_pixels(train), torch.from_numpy(train_labels), as_pixels(test), torch.from_numpy(test_labels))
    assert probe_accuracies(None, *args, epochs=20, lr=1e-2, seed=0) == {"pixels": 1.0}
    torch.manual_seed(0)
    encoder = LZNModel(LZNConfig.from_preset("fashion-mnist-representation")).image_encoder
    accuracies = probe_accuracies(encoder, *args, epochs=5, lr=1e-2, seed=0)
    assert sorted(accuracies) == ["backbone", "pooler_output"] and all(0 <= a <= 1 for a in accuracies.values())
    resnet = LZNModel(LZNConfig.from_preset("tiny-representation")).image_encoder
    assert list(probed_features(resnet)) == ["pooler_output"]
    with pytest.raises(ValueError, match="feature"):
        encoder_features(encoder, args[0], "anchors")


def test_presets_cover_the_recipes():
    assert set(FASHION_PRESETS) <= set(LZN_PRESETS) and set(FASHION_PRESETS) <= set(TRAINING_RECIPES)


# ---------------------------------------------------------------------------------------------------------
# evaluation of a 28x28 run folder on a saved dataset (randomly initialised models: the plumbing, not the numbers)
# ---------------------------------------------------------------------------------------------------------
def test_evaluate_a_fashion_joint_run(fashion_like, tmp_path):
    from test_evaluate_script import save_run

    from lzn_hf.evaluation import EvaluationArguments, evaluate

    folder = save_run(tmp_path / "joint", "fashion-mnist-joint", "train_joint.py", {"dataset_name": str(fashion_like)}, global_batch_size=16)
    with torch.no_grad():
        metrics = evaluate(EvaluationArguments(path=folder, num_samples=10, max_eval_samples=40, num_inference_steps=1, reconstruction_steps=1,
                                               noise_draws=1, probe_epochs=2, reconstruction_samples=20,
                                               judge_cache_dir=str(tmp_path / "judges")))
    assert metrics["judge/kind"] == "cnn" and 0 <= metrics["judge/accuracy_real_test"] <= 1
    assert metrics["fd_cnn/feature_classifier_accuracy_real_test"] == metrics["judge/accuracy_real_test"]  # one network, both roles
    assert all(math.isfinite(metrics[key]) for key in ("fd_cnn", "fd_cnn/real_test", "judge/agreement", "reconstruction_error"))
    assert {"linear_probe/lzn", "linear_probe/lzn_backbone", "accuracy/anchor_bank"} <= set(metrics)
    assert metrics["probe/protocol"]["train_images"] == 40 and metrics["probe/protocol"]["test_images"] == 30
    assert metrics["num_train_images"] == 40 and metrics["num_test_images"] == 30 and metrics["reconstruction_samples"] == 20
    assert metrics["judge/num_train_images"] == 60  # the judge learns from the whole training split, not the subset
    assert len(list((tmp_path / "judges").glob("*.safetensors"))) == 1  # kept for the next run on this dataset


# ---------------------------------------------------------------------------------------------------------
# the SimCLR baseline through examples/train_representation.py
# ---------------------------------------------------------------------------------------------------------
def test_simclr_objective_end_to_end(tmp_path):
    import json

    from test_training import card_metadata, launch

    from lzn_hf.training import read_run_config

    out = tmp_path / "simclr"
    launch("train_representation.py", "--config", "tiny-representation", "--dataset_name", "digits", "--max_eval_samples", 100, "--resolution", 16,
           "--objective", "simclr", "--temperature", 0.2, "--lr_scheduler", "cosine", "--output_dir", out, "--train_batch_size", 6,
           "--max_train_steps", 3, "--checkpointing_steps", 0, "--report_to", "none", "--logging_steps", 1, tmp_path=tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objective"] == "simclr" and 0 <= metrics["accuracy/linear_probe"] <= 1 and metrics["probe/protocol"]["train_images"] == 100
    record = read_run_config(out)
    assert record["script_flags"]["objective"] == "simclr" and record["flags"]["lr_scheduler"] == "cosine"
    assert "SimCLR" in (out / "README.md").read_text() and card_metadata(out)["pipeline_tag"] == "image-feature-extraction"
    history = [json.loads(line) for line in (out / "logs" / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [1, 2, 3]
    assert all(math.isfinite(row["loss"]) and 0 <= row["assignment_accuracy"] <= 1 for row in history)


# ---------------------------------------------------------------------------------------------------------
# docs/reproduce_fashion_mnist.sh: every command parses (flags, presets, recipes), nothing runs
# ---------------------------------------------------------------------------------------------------------
def test_reproduce_fashion_mnist_commands_parse(tmp_path):
    import importlib.util
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "reproduce_fashion_mnist.sh").read_text()
    commands = re.findall(r'^\s*train (train_\w+\.py) \S+ (.+)$', text, flags=re.MULTILINE)
    fixed = ["--mixed_precision", "bf16", "--skip_evaluation", "--resume_from_checkpoint", "latest"]  # what the script's train() adds to every command
    assert 'python "examples/$script" ' + " ".join(fixed) + ' --output_dir' in text
    assert len(commands) == 7 and {script for script, _ in commands} == {"train_generation.py", "train_joint.py", "train_representation.py"}
    modules = {}
    for script, flags in commands:
        if script not in modules:
            spec = importlib.util.spec_from_file_location(f"lzn_{script[:-3]}_reproduce", root / "examples" / script)
            modules[script] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(modules[script])
        argv = shlex.split(flags.replace('"${data[@]}"', "--dataset_name DATA --seed 1").replace('"$mnist"', "MNIST").replace('"$seed"', "0"))
        parsed = modules[script].parse_args([*fixed, "--output_dir", str(tmp_path / "run"), *argv])
        assert parsed[0].config.startswith("fashion-mnist-") and parsed[0].mixed_precision == "bf16" and parsed[0].lr_scheduler == "cosine"
        assert parsed[0].skip_evaluation is True and parsed[0].resume_from_checkpoint == "latest"
    with pytest.raises(ValueError, match="--temperature"):
        modules["train_representation.py"].parse_args(["--config", "fashion-mnist-representation", "--objective", "simclr", "--temperature", "0"])
