"""LZN PreTrainedModels: upstream parity through the converter and the public API, tiny-model behaviour."""

import json

import pytest
import torch
import torch.nn.functional as F
from lzn_test_utils import PARITY_DIR, parity_folder, tiny_images
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from lzn_hf import (
    LZNConfig,
    LZNForImageClassification,
    LZNImageDecoder,
    LZNImageDecoderConfig,
    LZNImageEncoder,
    LZNImageEncoderConfig,
    LZNLabelAnchorsConfig,
    LZNModel,
)
from lzn_hf.conversion import convert_original_checkpoint
from lzn_hf.latent_flow import latents_to_anchors
from lzn_hf.training import assignment_loss, class_weights_from_labels, label_alignment_loss

GENERATION_FIXTURES = ["cifar_conditional_tiny", "hires_unconditional_tiny"]


def rel_err(x, y):
    return ((x.double() - y.double()).norm() / y.double().norm()).item()


def close(actual, expected, atol=1e-4):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Every fixture converted (EMA and raw) and reloaded with from_pretrained, with its inputs and outputs."""
    cache = {}

    def get(name, use_ema=True):
        if (name, use_ema) not in cache:
            folder = parity_folder(name)
            output_dir = tmp_path_factory.mktemp(f"{name}-{'ema' if use_ema else 'raw'}")
            convert_original_checkpoint(folder / "checkpoint.pt", folder / "reference_config.json", use_ema=use_ema).save_pretrained(output_dir)
            model = LZNModel.from_pretrained(output_dir).eval()
            cache[name, use_ema] = model, load_file(folder / "inputs.safetensors"), load_file(folder / "outputs.safetensors")
        return cache[name, use_ema]

    return get


def upstream_velocity(model, x_t, t, latents, labels):
    """The upstream decoder's prediction (data - noise at upstream time t) through the diffusers-facing API."""
    return -model.image_decoder(x_t, (1 - t.double()) * 1000, latents, labels).sample


# ---------------------------------------------------------------------------------------------------------
# parity: converter + from_pretrained + public API, each stage fed the stored upstream tensors
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GENERATION_FIXTURES)
@pytest.mark.parametrize("use_ema", [True, False])
def test_parity_generation(converted, name, use_ema):
    model, inputs, outputs = converted(name, use_ema)
    suffix = "" if use_ema else "_raw"
    labels = inputs.get("labels")
    with torch.no_grad():
        close(model.get_image_anchors(inputs["x"]), outputs[f"anchors{suffix}"])
        latents = model.get_image_latents(anchors=outputs[f"anchors{suffix}"], noise=inputs["eps"])
        assert rel_err(latents, outputs[f"latent_dpm{suffix}"]) < 2e-3
        velocity = upstream_velocity(model, outputs["x_t"], inputs["t"], outputs[f"latent_dpm{suffix}"], labels)
        close(velocity, outputs[f"velocity{suffix}"])
    if not use_ema:
        return
    torch.testing.assert_close(F.mse_loss(velocity, inputs["x"] - inputs["x0"]), outputs["loss_rf"], rtol=1e-5, atol=0)
    # upstream's Euler sampler: 10 steps from t = 1e-3, t a Python float
    sample, t, h = inputs["x0"].clone(), 1e-3, 0.999 / 10
    with torch.no_grad():
        for _ in range(10):
            sample = sample + h * upstream_velocity(model, sample, torch.full((len(sample),), t), outputs["latent_dpm"], labels)
            t += h
    close(sample, outputs["sample_euler10"])
    with torch.no_grad():  # float64 flow through the model API
        latents_f64 = model.double().get_image_latents(anchors=outputs["anchors"].double(), noise=inputs["eps"].double())
    model.float()
    torch.testing.assert_close(latents_f64, outputs["latent_dpm_f64"], atol=1e-9, rtol=0)


def test_parity_labels(converted):
    model, inputs, outputs = converted("cifar_conditional_tiny")
    labels, latents = inputs["labels"], outputs["latent_dpm"]
    class_weights = class_weights_from_labels(labels, 10)
    with torch.no_grad():
        for suffix, weights in (("", None), ("_weighted", class_weights)):
            result = model.classify_latents(latents, class_weights=weights)
            assert torch.equal(result.predictions, outputs[f"label_pred{suffix}"])
            close(result.posteriors, outputs[f"label_pdfs{suffix}"])
            close(result.points, outputs[f"label_final{suffix}"])
            assert torch.equal(result.logits.argmax(-1), result.posteriors[-1].argmax(-1))
        label_latents = model.get_label_latents(labels, noise=inputs["eps"])
        assert rel_err(label_latents, outputs["label_latent"]) < 2e-3
        loss = label_alignment_loss(model.classify_latents(latents, class_weights).posteriors, labels, model.config.label_loss_cutoff)
    torch.testing.assert_close(loss, outputs["loss_label"], rtol=1e-5, atol=0)
    torch.testing.assert_close(loss + outputs["loss_rf"], outputs["loss_total"], rtol=1e-5, atol=0)


def test_parity_classification_model_loads_lzn_checkpoint(converted, tmp_path):
    model, inputs, outputs = converted("cifar_conditional_tiny")
    model.save_pretrained(tmp_path)
    classifier = LZNForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        logits = classifier(inputs["x"], noise=inputs["eps"]).logits
        reference = model.classify_latents(model.get_image_latents(inputs["x"], noise=inputs["eps"])).logits
    torch.testing.assert_close(logits, reference)


@pytest.mark.parametrize("use_ema", [True, False])
def test_parity_contrastive(converted, use_ema):
    model, inputs, outputs = converted("imagenet_contrastive_tiny", use_ema)
    with torch.no_grad():
        if not use_ema:
            close(model.get_image_anchors(inputs["x"]), outputs["anchors_raw"])
            return
        close(model.get_image_anchors(inputs["x"]), outputs["anchors"])
        close(model.get_image_anchors(inputs["x2"]), outputs["anchors_view2"])
        close(model.get_image_features(inputs["x"]).pooler_output, outputs["features_no_head"])
        latents = model.get_image_latents(anchors=outputs["anchors"], noise=inputs["eps"])  # prior noise x 0.45
        assert rel_err(latents, outputs["latent_view1"]) < 2e-3
        _, log_posteriors = latents_to_anchors(outputs["latent_view1"], outputs["anchors_view2"], 20, log_posteriors=True)
    targets = torch.arange(8)
    close(log_posteriors.exp(), outputs["assign_pdfs"])
    for key, weights in (("loss_cross_entropy", (1.0, 0.0)), ("loss_prob", (0.0, 1.0)), ("loss_contrastive", (1.0, 0.0))):
        loss = assignment_loss(log_posteriors, targets, model.config.label_loss_cutoff, *weights)
        torch.testing.assert_close(loss, outputs[key], rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------------------------
# the six released checkpoints' layouts (no weights): zero-filled files convert with nothing left over
# ---------------------------------------------------------------------------------------------------------
LAYOUTS = {
    "case_study_1_cifar10": "cifar10-generation",
    "case_study_1_afhqcat": "afhq-cat-generation",
    "case_study_1_celebahq": "celebahq-generation",
    "case_study_1_lsunbedroom": "lsun-bedroom-generation",
    "case_study_2": "imagenet-representation",
    "case_study_3": "cifar10-joint",
}
PARTS = {"encoder": "image_encoder", "decoder": "image_decoder", "label_anchor": "label_anchors"}


def zero_checkpoint(layout):
    """An upstream-format checkpoint dict with the layout's keys and shapes; zeros as stride-0 views (no memory)."""
    checkpoint, zero = {}, torch.zeros(())
    for part, entry in layout["models"].items():
        if part.endswith("_ema"):
            continue
        state = {key: zero.to(getattr(torch, dtype)).expand(shape) for key, shape, dtype in entry["state_dict"]}
        checkpoint[part] = state
        ema = layout["models"][f"{part}_ema"]
        checkpoint[f"{part}_ema"] = {"decay": ema["decay"], "num_updates": 0, "shadow_params": [state[key] for key in ema["shadow_param_keys"]]}
    return checkpoint


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
def test_released_checkpoint_layouts_convert(layout_name):
    path = PARITY_DIR / "upstream_layouts" / f"{layout_name}.json"
    parity_folder("upstream_layouts")
    layout = json.loads(path.read_text())
    for use_ema in (True, False):
        model = convert_original_checkpoint(zero_checkpoint(layout), LAYOUTS[layout_name], use_ema=use_ema)
        for part, counts in layout["parameter_counts"].items():
            assert getattr(model, PARTS[part]).num_parameters() == counts["total"], part
        assert all((p == 0).all() for p in model.parameters())  # every parameter came from the checkpoint
    del model


# ---------------------------------------------------------------------------------------------------------
# tiny models built in code
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_joint():
    torch.manual_seed(0)
    return LZNModel(LZNConfig.from_preset("tiny-joint")).eval()


def test_tiny_shapes_and_tuples(tiny_joint):
    images = tiny_images()
    with torch.no_grad():
        output = tiny_joint(images, output_latents=True)
        assert output.latents.shape == output.anchors.shape == output.pooler_output.shape == (4, 16)
        anchors, features, latents = tiny_joint(images, output_latents=True, noise=torch.zeros(4, 16), return_dict=False)
        torch.testing.assert_close(anchors, output.anchors)
        assert tiny_joint(images, return_dict=False)[0].shape == (4, 16)
        classified = tiny_joint.classify_latents(latents)
        assert classified.logits.shape == (4, 3) and classified.posteriors.shape == (100, 4, 3)
        assert classified.predictions.dtype == torch.long and classified.predictions.shape == (4,)
        velocity = tiny_joint.image_decoder(images, torch.tensor([500.0]), latents, torch.tensor([0, 1, 2, 0]))
        assert velocity.sample.shape == images.shape
        assert tiny_joint.image_decoder(images, 500.0, latents, torch.tensor([0, 1, 2, 0]), return_dict=False)[0].shape == images.shape
        assert tiny_joint.get_label_latents([0, 2]).shape == (2, 16)


def test_decoder_orientation_is_the_only_conversion(tiny_joint):
    """diffusers' (sigma, noise - data) equals upstream's (t = 1 - sigma, data - noise) negated."""
    images, latents = tiny_images(), torch.randn(4, 16)
    labels = torch.tensor([0, 1, 2, 0])
    sigma = torch.tensor([0.9, 0.5, 0.1, 0.001])
    with torch.no_grad():
        diffusers_velocity = tiny_joint.image_decoder(images, sigma * 1000, latents, labels).sample
        upstream = tiny_joint.image_decoder.upstream_velocity(images, 1 - sigma, latents, labels)
    torch.testing.assert_close(diffusers_velocity, -upstream, rtol=1e-5, atol=1e-5)


def test_batch_vs_single_consistency(tiny_joint):
    images, latents, labels = tiny_images(), torch.randn(4, 16), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        anchors = tiny_joint.get_image_anchors(images)
        velocity = tiny_joint.image_decoder(images, 300.0, latents, labels).sample
        for i in range(4):
            torch.testing.assert_close(tiny_joint.get_image_anchors(images[i : i + 1]), anchors[i : i + 1], rtol=1e-5, atol=1e-5)
            single = tiny_joint.image_decoder(images[i : i + 1], 300.0, latents[i : i + 1], labels[i : i + 1]).sample
            torch.testing.assert_close(single, velocity[i : i + 1], rtol=1e-5, atol=1e-5)


def test_save_load_round_trip_and_no_reinitialisation(tiny_joint, tmp_path):
    tiny_joint.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    for loader in (LZNModel.from_pretrained, AutoModel.from_pretrained):
        loaded = loader(tmp_path)
        assert type(loaded) is LZNModel
        for (name, expected), (_, actual) in zip(tiny_joint.state_dict().items(), loaded.state_dict().items()):
            assert torch.equal(expected, actual), name
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, LZNConfig) and config.label_anchors_config.id2label[2] == "two"
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path)) is LZNForImageClassification


def test_parts_save_and_load_on_their_own(tiny_joint, tmp_path):
    tiny_joint.image_decoder.save_pretrained(tmp_path / "decoder")
    decoder = AutoModel.from_pretrained(tmp_path / "decoder")
    assert type(decoder) is LZNImageDecoder
    assert torch.equal(decoder.network.conv_in.weight, tiny_joint.image_decoder.network.conv_in.weight)


@pytest.mark.parametrize("preset", ["tiny-generation", "tiny-representation"])
def test_other_tiny_presets_run(preset):
    model = LZNModel(LZNConfig.from_preset(preset)).eval()
    encoder = model.config.image_encoder_config
    images = tiny_images(2, encoder.num_channels, encoder.image_size)
    with torch.no_grad():
        latents = model.get_image_latents(images)
        assert latents.shape == (2, encoder.latent_dim)
        if model.image_decoder is not None:
            assert model.image_decoder(images, 999.0, latents).sample.shape == images.shape
        else:
            assert model.get_image_features(images).pooler_output.shape == (2, 2048)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: LZNImageEncoderConfig(encoder_type="vit"), "encoder_type"),
        (lambda: LZNImageEncoderConfig(nf=0), "nf"),
        (lambda: LZNImageEncoderConfig(image_size=30), "image_size"),
        (lambda: LZNImageDecoderConfig(embedding_type="learned"), "embedding_type"),
        (lambda: LZNImageDecoderConfig(dropout=1.5), "dropout"),
        (lambda: LZNLabelAnchorsConfig(num_classes=0), "num_classes"),
        (lambda: LZNConfig(image_flow_solver="rk4"), "image_flow_solver"),
        (lambda: LZNConfig(image_flow_num_steps=0), "image_flow_num_steps"),
        (lambda: LZNConfig(image_decoder_config={"latent_dim": 7}), "latent_dim"),
        (lambda: LZNConfig(image_decoder_config={"num_classes": 10}), "label_anchors_config"),
        (lambda: LZNConfig.from_preset("cifar100"), "unknown preset"),
    ],
)
def test_invalid_configs_raise(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    "images, error, message",
    [
        (torch.zeros(4, 8, 8), ValueError, "shape"),
        (torch.zeros(4, 3, 8, 8), ValueError, "shape"),
        (torch.zeros(4, 1, 16, 16), ValueError, "8x8"),
        (torch.zeros(4, 1, 8, 8, dtype=torch.uint8), TypeError, "uint8"),
        (torch.full((4, 1, 8, 8), float("nan")), ValueError, "NaN"),
        (torch.full((4, 1, 8, 8), 255.0), ValueError, r"\[-1, 1\]"),
        (torch.zeros(0, 1, 8, 8), ValueError, "B >= 1"),
    ],
)
def test_bad_images_raise(tiny_joint, images, error, message):
    with pytest.raises(error, match=message):
        tiny_joint.get_image_anchors(images)


def test_bad_labels_raise(tiny_joint):
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        tiny_joint.get_label_latents([0, 3])
    with pytest.raises(TypeError, match="integers"):
        tiny_joint.get_label_latents(torch.tensor([0.0, 1.0]))


def test_encoder_part_alone():
    encoder = LZNImageEncoder(LZNImageEncoderConfig(**{**LZNConfig.from_preset("tiny-joint").image_encoder_config.to_dict()}))
    assert encoder(tiny_images()).anchors.shape == (4, 16)
