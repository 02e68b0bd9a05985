"""LZNPipeline (diffusers) and the transformers feature-extraction / image-classification pipelines."""

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from lzn_test_utils import parity_folder
from PIL import Image
from safetensors.torch import load_file
from transformers import pipeline

from lzn_hf import LZNConfig, LZNForImageClassification, LZNModel
from lzn_hf.conversion import convert_original_checkpoint
from lzn_hf.image_processing_lzn import lzn_image_processor
from lzn_hf.pipeline_lzn import LZNPipeline, upstream_euler_sigmas


def get_dummy_components(preset="tiny-joint"):
    torch.manual_seed(0)
    model = LZNModel(LZNConfig.from_preset(preset)).eval()
    return {"image_decoder": model.image_decoder, "label_anchors": model.label_anchors, "scheduler": FlowMatchEulerDiscreteScheduler()}


def get_dummy_inputs(seed=0, **overrides):
    return {"labels": [0, 2], "num_images_per_label": 2, "num_inference_steps": 3, "generator": torch.manual_seed(seed), "output_type": "np", **overrides}


@pytest.fixture(scope="module")
def pipe():
    pipe = LZNPipeline(**get_dummy_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------------------
# LZNPipeline
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("output_type, check", [
    ("np", lambda images: isinstance(images, np.ndarray) and images.shape == (4, 8, 8, 1)),
    ("pt", lambda images: isinstance(images, torch.Tensor) and images.shape == (4, 1, 8, 8)),
    ("pil", lambda images: len(images) == 4 and isinstance(images[0], Image.Image) and images[0].size == (8, 8)),
])  # fmt: skip
def test_output_types(pipe, output_type, check):
    images = pipe(**get_dummy_inputs(output_type=output_type)).images
    assert check(images)
    if output_type != "pil":
        assert images.min() >= 0 and images.max() <= 1


def test_deterministic_with_generator_and_expected_slice(pipe):
    first = pipe(**get_dummy_inputs()).images
    second = pipe(**get_dummy_inputs()).images
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, pipe(**get_dummy_inputs(seed=1)).images)
    expected_slice = np.array([0.0673, 0.8907, 0.0366, 0.6746, 0.0393, 0.4719, 1.0, 0.9617, 1.0])  # recorded, seed 0
    np.testing.assert_allclose(first[0, -3:, -3:, 0].flatten(), expected_slice, atol=1e-3)


def test_class_names_and_return_tuple(pipe):
    by_name = pipe(**get_dummy_inputs(labels=["zero", "two"]))[0]
    np.testing.assert_array_equal(by_name, pipe(**get_dummy_inputs()).images)
    assert pipe.get_label_ids(["two", 1]) == [2, 1]


def test_batch_and_single_generation_identical(pipe):
    generator = torch.Generator().manual_seed(3)
    latents, lzn_latents = torch.randn(3, 1, 8, 8, generator=generator), torch.randn(3, 16, generator=generator)
    batch = pipe(labels=[0, 1, 2], latents=latents, lzn_latents=lzn_latents, num_inference_steps=3, output_type="pt").images
    for i in range(3):
        single = pipe(labels=[i], latents=latents[i : i + 1], lzn_latents=lzn_latents[i : i + 1], num_inference_steps=3, output_type="pt").images
        torch.testing.assert_close(single, batch[i : i + 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [[3], ["seven"], [-1], [], [True]])
def test_bad_labels_list_valid_ones(pipe, bad):
    with pytest.raises(ValueError, match=r"0 \(zero\), 1 \(one\), 2 \(two\)"):
        pipe(labels=bad)


@pytest.mark.parametrize("kwargs, message", [
    ({"labels": None}, "label-conditional"),
    ({"num_images": 2}, "num_images"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"output_type": "latent"}, "output_type"),
    ({"lzn_latents": torch.zeros(4, 5)}, "lzn_latents"),
    ({"latents": torch.zeros(4, 3, 8, 8)}, "latents"),
])  # fmt: skip
def test_bad_arguments_raise(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(**{**get_dummy_inputs(), **kwargs})


@pytest.mark.parametrize("scheduler", [
    FlowMatchEulerDiscreteScheduler(),
    FlowMatchHeunDiscreteScheduler(),
    DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction"),
])  # fmt: skip
def test_flow_matching_schedulers_plug_in(scheduler):
    pipe = LZNPipeline(**{**get_dummy_components(), "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    images = pipe(**get_dummy_inputs(num_inference_steps=4)).images
    assert images.shape == (4, 8, 8, 1) and np.isfinite(images).all()


def test_rk45_matches_fine_euler(pipe):
    generator = torch.Generator().manual_seed(5)
    inputs = {"labels": [1], "latents": torch.randn(1, 1, 8, 8, generator=generator), "lzn_latents": torch.randn(1, 16, generator=generator), "output_type": "pt"}
    rk45 = pipe(sampler="rk45", **inputs).images
    euler = pipe(num_inference_steps=400, **inputs).images
    torch.testing.assert_close(rk45, euler, atol=5e-3, rtol=0)
    assert pipe.rk45_nfe > 0


def test_custom_sigmas(pipe):
    images = pipe(**get_dummy_inputs(num_inference_steps=3, sigmas=[0.999, 0.5, 0.2])).images
    assert images.shape == (4, 8, 8, 1)
    assert upstream_euler_sigmas(10)[0] == pytest.approx(0.999) and upstream_euler_sigmas(10)[-1] == pytest.approx(0.0999)


def test_unconditional_pipeline():
    components = get_dummy_components("tiny-generation")
    pipe = LZNPipeline(image_decoder=components["image_decoder"], scheduler=components["scheduler"])
    pipe.set_progress_bar_config(disable=True)
    images = pipe(num_images=3, num_inference_steps=2, generator=torch.manual_seed(0), output_type="pt").images
    assert images.shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="unconditional"):
        pipe(labels=[0])


@pytest.mark.parametrize("preset", ["tiny-joint", "tiny-generation"])
def test_save_load_round_trip(tmp_path, preset):
    components = get_dummy_components(preset)
    if components["image_decoder"].config.num_classes == 0:
        components["label_anchors"] = None
    pipe = LZNPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    loaded = LZNPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    kwargs = {"labels": [0, 1]} if preset == "tiny-joint" else {"num_images": 2}
    expected = pipe(**kwargs, num_inference_steps=2, generator=torch.manual_seed(0), output_type="np").images
    actual = loaded(**kwargs, num_inference_steps=2, generator=torch.manual_seed(0), output_type="np").images
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("name", ["cifar_conditional_tiny", "hires_unconditional_tiny"])
def test_parity_upstream_euler10_samples(name):
    folder = parity_folder(name)
    inputs, outputs = load_file(folder / "inputs.safetensors"), load_file(folder / "outputs.safetensors")
    model = convert_original_checkpoint(folder / "checkpoint.pt", folder / "reference_config.json").eval()
    pipe = LZNPipeline(image_decoder=model.image_decoder, label_anchors=model.label_anchors)
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"labels": inputs["labels"].tolist()} if "labels" in inputs else {"num_images": len(inputs["x0"])}
    images = pipe(**kwargs, latents=inputs["x0"], lzn_latents=outputs["latent_dpm"], num_inference_steps=10, output_type="pt").images
    expected = (outputs["sample_euler10"] / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(images, expected, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# transformers pipelines: image embedding and classification, batch-independent
# ---------------------------------------------------------------------------------------------------------
def digit_like_images(count, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8), mode="L") for _ in range(count)]


@pytest.mark.parametrize("preset, feature_dim", [("tiny-joint", 16), ("tiny-representation", 2048)])
def test_feature_extraction_pipeline(tmp_path, preset, feature_dim):
    torch.manual_seed(0)
    model = LZNModel(LZNConfig.from_preset(preset)).eval()
    encoder = model.config.image_encoder_config
    model.save_pretrained(tmp_path)
    lzn_image_processor(encoder.image_size, encoder.num_channels).save_pretrained(tmp_path)
    extractor = pipeline("image-feature-extraction", model=str(tmp_path))
    mode = "L" if encoder.num_channels == 1 else "RGB"
    images = [image.convert(mode).resize((encoder.image_size,) * 2) for image in digit_like_images(3)]
    anchors = extractor(images)
    assert np.array(anchors[0]).shape == (1, encoder.latent_dim)
    pooled = extractor(images, pool=True)
    assert np.array(pooled[0]).shape == (1, feature_dim)
    alone = extractor(images[1:2])
    np.testing.assert_allclose(np.array(alone[0]), np.array(anchors[1]), rtol=1e-5, atol=1e-5)
    batched = extractor(images, batch_size=3)
    np.testing.assert_allclose(np.array(batched[2]), np.array(anchors[2]), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    torch.manual_seed(0)
    classifier = LZNForImageClassification(LZNConfig.from_preset("tiny-joint")).eval()
    bank_images = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    bank = classifier.build_anchor_bank(bank_images, batch_size=16)
    assert bank.shape == (40, 16)
    folder = tmp_path_factory.mktemp("classifier")
    classifier.save_pretrained(folder)
    lzn_image_processor(8, 1).save_pretrained(folder)
    return folder


def test_anchor_bank_mode_is_batch_independent_and_saved(classifier_dir):
    classifier = LZNForImageClassification.from_pretrained(classifier_dir).eval()
    assert classifier.anchor_bank.shape == (40, 16) and classifier.anchor_bank.abs().sum() > 0
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        batch = classifier(images).logits
        for i in range(6):
            torch.testing.assert_close(classifier(images[i : i + 1]).logits, batch[i : i + 1], rtol=1e-4, atol=1e-4)
        shuffled = classifier(images.flip(0)).logits.flip(0)
        torch.testing.assert_close(shuffled, batch, rtol=1e-4, atol=1e-4)
        upstream_mode = classifier(images, use_anchor_bank=False, generator=torch.manual_seed(0)).logits
    assert upstream_mode.shape == batch.shape


def test_image_classification_pipeline(classifier_dir):
    classify = pipeline("image-classification", model=str(classifier_dir))
    images = digit_like_images(2)
    results = classify(images, top_k=3)
    assert [entry["label"] for entry in results[0]] and {entry["label"] for entry in results[0]} <= {"zero", "one", "two"}
    assert sum(entry["score"] for entry in results[0]) == pytest.approx(1.0, abs=1e-4)
    alone = classify(images[1], top_k=3)
    assert alone == results[1]


def test_converter_script_writes_model_and_pipeline_folders(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    folder = parity_folder("cifar_conditional_tiny")
    script = Path(__file__).resolve().parents[1] / "scripts" / "convert_original_checkpoint.py"
    common = [sys.executable, str(script), "--checkpoint_path", str(folder / "checkpoint.pt"), "--config", str(folder / "reference_config.json")]
    subprocess.run([*common, "--output_dir", str(tmp_path / "model")], check=True, capture_output=True)
    subprocess.run([*common, "--output_dir", str(tmp_path / "pipe"), "--pipeline"], check=True, capture_output=True)
    model = LZNModel.from_pretrained(tmp_path / "model")
    assert model.label_anchors is not None and (tmp_path / "model" / "preprocessor_config.json").is_file()
    pipe = LZNPipeline.from_pretrained(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    assert pipe(labels=["3"], num_inference_steps=2, output_type="pt").images.shape == (1, 3, 16, 16)


def test_push_to_hub_uploads_the_saved_pipeline(monkeypatch, pipe):
    """No network: the Hub calls are replaced, the uploaded folder is inspected."""
    import types

    from diffusers.utils import hub_utils
    from huggingface_hub import ModelCard

    uploaded = {}
    monkeypatch.setattr(hub_utils, "create_repo", lambda repo_id, **kwargs: types.SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(hub_utils, "load_or_create_model_card", lambda repo_id, **kwargs: ModelCard("---\nlibrary_name: lzn_hf\n---\n"))

    def upload_folder(self, folder, repo_id, **kwargs):
        from pathlib import Path

        uploaded.update(repo_id=repo_id, files=sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file()))

    monkeypatch.setattr(LZNPipeline, "_upload_folder", upload_folder)
    pipe.push_to_hub("someone/lzn-tiny")
    assert uploaded["repo_id"] == "someone/lzn-tiny"
    assert {"model_index.json", "image_decoder/model.safetensors", "label_anchors/model.safetensors", "scheduler/scheduler_config.json", "README.md"} <= set(uploaded["files"])
