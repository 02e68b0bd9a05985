"""transformers contracts of the LZN models (issue 14 §3): outputs, hidden states, determinism, initialisation,
label names, loading, export and compilation."""

import numpy as np
import pytest
import torch
from lzn_test_utils import tiny_images
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModel, pipeline

from lzn_hf import LZNConfig, LZNForImageClassification, LZNModel
from lzn_hf.image_processing_lzn import lzn_image_processor
from lzn_hf.modeling_lzn import LZNImageEncoderOutput
from lzn_hf.ncsnpp import variance_scaling_bound

@pytest.fixture(scope="module")
def tiny_joint():
    torch.manual_seed(0)
    return LZNModel(LZNConfig.from_preset("tiny-joint")).eval()


@pytest.fixture(scope="module")
def classifier_dir(tiny_joint, tmp_path_factory):
    """A classifier with an anchor bank, saved from the joint model, with its image processor."""
    classifier = LZNForImageClassification(tiny_joint.config)
    classifier.load_state_dict(tiny_joint.state_dict(), strict=False)
    classifier.build_anchor_bank(tiny_images(10, seed=5))
    folder = tmp_path_factory.mktemp("classifier")
    classifier.save_pretrained(folder)
    lzn_image_processor(8, 1).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------------------
def test_get_image_features_is_a_model_output_honoring_return_dict(tiny_joint):
    images = tiny_images()
    with torch.no_grad():
        output = tiny_joint.get_image_features(images)
        assert isinstance(output, LZNImageEncoderOutput) and output.pooler_output.shape == (4, 16)
        as_tuple = tiny_joint.get_image_features(images, return_dict=False)
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], output.pooler_output)
        tiny_joint.config.return_dict = False
        try:
            assert isinstance(tiny_joint.get_image_features(images), tuple)  # the config's default, as transformers
        finally:
            tiny_joint.config.return_dict = True


@pytest.mark.parametrize("preset", ["tiny-joint", "tiny-representation"])
def test_output_hidden_states_returns_the_encoder_feature_maps(preset):
    torch.manual_seed(0)
    model = LZNModel(LZNConfig.from_preset(preset)).eval()
    encoder = model.config.image_encoder_config
    images = tiny_images(2, encoder.num_channels, encoder.image_size)
    with torch.no_grad():
        plain = model(images)
        output = model(images, output_hidden_states=True)
        features = model.get_image_features(images, output_hidden_states=True)
    assert plain.hidden_states is None
    assert isinstance(output.hidden_states, tuple) and all(h.ndim == 4 and h.shape[0] == 2 for h in output.hidden_states)
    torch.testing.assert_close(output.anchors, plain.anchors)  # the same computation, only more of it returned
    assert len(features.hidden_states) == len(output.hidden_states)
    if encoder.encoder_type == "resnet_gn":  # stem + one map per stage; the last one pooled is the representation
        assert len(output.hidden_states) == 1 + len(encoder.depths)
        torch.testing.assert_close(output.hidden_states[-1].mean(dim=(2, 3)), output.pooler_output)
    else:  # every map a latent head may read
        assert [h.shape[1] for h in output.hidden_states] == list(model.image_encoder.network.feature_channels)


def test_classifier_output_hidden_states(classifier_dir):
    classifier = LZNForImageClassification.from_pretrained(classifier_dir).eval()
    with torch.no_grad():
        output = classifier(tiny_images(), output_hidden_states=True)
    assert output.logits.shape == (4, 3) and len(output.hidden_states) == 5


# ---------------------------------------------------------------------------------------------------------
# eval-mode determinism
# ---------------------------------------------------------------------------------------------------------
def test_classifier_labels_give_the_cross_entropy_loss(tiny_joint):
    classifier = LZNForImageClassification(tiny_joint.config)
    classifier.load_state_dict(tiny_joint.state_dict(), strict=False)
    images, labels = tiny_images(4), torch.tensor([0, 2, 1, 2])
    output = classifier(images, labels=labels)
    log_probabilities = output.logits.log_softmax(-1)  # the logits are log posteriors: already normalised
    expected = -log_probabilities[torch.arange(4), labels].mean()
    torch.testing.assert_close(output.loss, expected)
    assert output.loss.dtype == torch.float32 and output.loss.requires_grad
    loss, logits = classifier(images, labels=labels, return_dict=False)[:2]  # transformers' tuple order: loss first
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits, output.logits)
    assert classifier(images).loss is None
    with pytest.raises(ValueError, match="`labels` must have one class index per image"):
        classifier(images, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"`labels` must be in \[0, 3\)"):
        classifier(images, labels=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(TypeError, match="`labels` must be integers"):
        classifier(images, labels=torch.tensor([0.0, 1.0, 2.0, 1.0]))


def test_classifier_without_bank_is_deterministic_by_default(tiny_joint):
    classifier = LZNForImageClassification(tiny_joint.config)
    classifier.load_state_dict(tiny_joint.state_dict(), strict=False)
    classifier.eval()
    images = tiny_images(8)
    with torch.no_grad():
        first, second = classifier(images).logits, classifier(images).logits
        assert torch.equal(first, second)
        zero = classifier(images, noise=torch.zeros(8, 16)).logits
        torch.testing.assert_close(first, zero)  # the default is the zone centre
        # upstream's batch mode with random prior noise stays reachable, reproducible with a generator
        draw = classifier(images, random_noise=True, generator=torch.Generator().manual_seed(1)).logits
        again = classifier(images, random_noise=True, generator=torch.Generator().manual_seed(1)).logits
        other = classifier(images, random_noise=True, generator=torch.Generator().manual_seed(2)).logits
    assert torch.equal(draw, again) and not torch.equal(draw, other) and not torch.equal(draw, first)
    with pytest.raises(ValueError, match="random_noise"):
        classifier(images, noise=torch.zeros(8, 16), random_noise=True)


# ---------------------------------------------------------------------------------------------------------
# initialisation, label names, loading
# ---------------------------------------------------------------------------------------------------------
def test_init_weights_initialises_the_anchor_bank(classifier_dir, tmp_path):
    """A checkpoint without the bank, loaded leniently: transformers' meta-device init must not leave garbage."""
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_bytes((classifier_dir / name).read_bytes())
    state = load_file(classifier_dir / "model.safetensors")
    del state["anchor_bank"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    classifier, info = LZNForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == {"anchor_bank"}
    assert classifier.anchor_bank.shape == (10, 16) and torch.equal(classifier.anchor_bank, torch.zeros(10, 16))


@pytest.mark.parametrize(
    "preset, missing",
    [
        # NCSN++: a variance-scaled conv (bias only, and both), a GroupNorm, the Fourier frequencies, a latent head
        ("tiny-generation", ["image_decoder.network.conv_in.bias", "image_encoder.network.conv_in.weight",
                             "image_encoder.network.conv_in.bias", "image_decoder.network.mid_block.resnet_1.norm1.weight",
                             "image_decoder.network.time_proj.W", "image_encoder.network.heads.0.layers.0.weight"]),
        # ResNet-GN: a zero-initialised last GroupNorm of a bottleneck, a conv, a head GroupNorm
        ("tiny-representation", ["image_encoder.network.stages.0.blocks.0.norm3.weight",
                                 "image_encoder.network.stages.0.blocks.0.conv1.weight", "image_encoder.network.head.norms.1.bias"]),
    ],
)
def test_missing_weights_get_the_architecture_init_and_loaded_ones_stay(preset, missing, tmp_path):
    """`_init_weights` delegates to the architecture's per-module init (the one construction uses): weights missing
    from a checkpoint get that scheme, weights present keep their values, even within the same layer."""
    torch.manual_seed(0)
    model = LZNModel(LZNConfig.from_preset(preset))
    with torch.no_grad():  # saved values that no initialisation produces
        for parameter in model.parameters():
            parameter.add_(0.5)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in saved.items() if k not in missing}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded_model = LZNModel.from_pretrained(tmp_path, strict=False)
    loaded = loaded_model.state_dict()
    for key in set(saved) - set(missing):
        assert torch.equal(loaded[key], saved[key]), key
    fresh = LZNModel(LZNConfig.from_preset(preset)).state_dict()  # the scheme's values (seed aside)
    for key in missing:
        if key.endswith(".W"):  # Fourier frequencies ~ N(0, fourier_scale^2), fourier_scale = 16
            assert 8.0 < loaded[key].std() < 32.0
        elif fresh[key].unique().numel() == 1:  # constant inits: zero bias, GroupNorm ones / zeros
            assert torch.equal(loaded[key], fresh[key]), key
        else:  # uniform inits: NCSN++ variance scaling, else PyTorch's default U(+-1/sqrt(fan_in))
            layer = loaded_model.get_submodule(key.rsplit(".", 1)[0])
            fan_in = layer.weight[0].numel()
            bound = variance_scaling_bound(layer.weight, layer.init_scale) if hasattr(layer, "init_scale") else fan_in**-0.5
            assert 0.5 * bound < loaded[key].abs().max() <= bound, key


def test_num_labels_and_id2label_match_the_label_anchors(classifier_dir):
    with pytest.raises(ValueError, match="num_labels"):
        LZNForImageClassification.from_pretrained(classifier_dir, num_labels=5)
    with pytest.raises(ValueError, match="num_labels"):
        LZNConfig.from_preset("tiny-joint", num_labels=5)
    config = LZNConfig.from_preset("tiny-joint")
    with pytest.raises(ValueError, match="num_labels"):
        config.num_labels = 5
    assert config.num_labels == 3
    config.num_labels = 3  # the same number is fine
    with pytest.raises(ValueError, match="id2label"):
        LZNConfig.from_preset("tiny-joint", id2label={0: "zero", 1: "one"})
    renamed = LZNForImageClassification.from_pretrained(classifier_dir, id2label={0: "a", 1: "b", 2: "c"})
    assert renamed.config.id2label[2] == "c" and renamed.config.num_labels == 3


def test_output_loading_info_returns_the_info_and_strict_stays_default(tiny_joint, tmp_path):
    tiny_joint.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["label_anchors.anchors"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing keys"):
        LZNModel.from_pretrained(tmp_path)
    model, info = LZNModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == {"label_anchors.anchors"} and isinstance(model, LZNModel)
    with pytest.raises(ValueError, match="missing keys"):
        LZNModel.from_pretrained(tmp_path, output_loading_info=True, strict=True)


def test_model_and_feature_extraction_load_from_a_classifier_folder(tiny_joint, classifier_dir):
    classifier = LZNForImageClassification.from_pretrained(classifier_dir)
    assert classifier.config.image_decoder_config is None  # it holds no decoder, and its config says so
    assert tiny_joint.config.image_decoder_config is not None  # the config it was built from is untouched
    for loader in (LZNModel.from_pretrained, AutoModel.from_pretrained):
        model = loader(classifier_dir)
        assert type(model) is LZNModel and model.image_decoder is None
        torch.testing.assert_close(model.label_anchors.anchors, tiny_joint.label_anchors.anchors)
    extract = pipeline("image-feature-extraction", model=str(classifier_dir))
    anchors = extract(Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)))
    assert np.asarray(anchors).shape == (1, 16)


# ---------------------------------------------------------------------------------------------------------
# torch.export and torch.compile
# ---------------------------------------------------------------------------------------------------------
def test_export_lzn_model(tiny_joint):
    images = tiny_images(2)
    program = torch.export.export(tiny_joint, (images,))
    exported = program.module()(tiny_images(2, seed=1))
    with torch.no_grad():
        expected = tiny_joint(tiny_images(2, seed=1))
    torch.testing.assert_close(exported.anchors, expected.anchors)
    with pytest.raises(ValueError, match="NaN"):  # eager calls keep their value checks
        tiny_joint(torch.full((2, 1, 8, 8), float("nan")))


def decoder_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tiny_images(2, seed=seed), torch.tensor([900.0, 20.0]), torch.randn(2, 16, generator=generator), torch.tensor([0, 2])


def test_export_image_decoder(tiny_joint):
    program = torch.export.export(tiny_joint.image_decoder, decoder_inputs())
    with torch.no_grad():
        expected = tiny_joint.image_decoder(*decoder_inputs(1)).sample
    torch.testing.assert_close(program.module()(*decoder_inputs(1)).sample, expected)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):  # eager label checks are kept
        tiny_joint.image_decoder(*decoder_inputs()[:3], torch.tensor([0, 3]))


def test_compiled_decoder_step_matches_eager(tiny_joint):
    """One Euler step of the flow-matching ODE with a fullgraph-compiled decoder (no graph break)."""
    torch._dynamo.reset()
    compiled = torch.compile(tiny_joint.image_decoder, fullgraph=True, backend="eager")
    sample, timestep, latents, labels = decoder_inputs()
    with torch.no_grad():
        step = sample - 0.1 * compiled(sample, timestep, latents, labels).sample
        expected = sample - 0.1 * tiny_joint.image_decoder(sample, timestep, latents, labels).sample
    torch.testing.assert_close(step, expected)


def test_export_paths_through_the_flows(tiny_joint):
    class ImageLatents(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixel_values, noise):
            return self.model(pixel_values, output_latents=True, noise=noise).latents

    images, noise = tiny_images(2), torch.zeros(2, 16)
    program = torch.export.export(ImageLatents(tiny_joint), (images, noise))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(images, noise), tiny_joint(images, output_latents=True, noise=noise).latents)
    classifier = LZNForImageClassification(tiny_joint.config)
    classifier.load_state_dict(tiny_joint.state_dict(), strict=False)
    classifier.eval()
    program = torch.export.export(classifier, (images,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(images).logits, classifier(images).logits)
