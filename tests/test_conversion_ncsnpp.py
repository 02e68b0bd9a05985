"""Conversion of upstream NCSN++ encoders and decoders (lzn_hf.conversion.ncsnpp): parity with upstream's outputs,
key order of the released checkpoints, round trips and error reports.

Parity fixtures live in ``<repo>/../shared/parity`` (made by running the upstream LZN code on tiny models). A test is
skipped only when the fixture files are absent; when they exist, any disagreement fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import PreTrainedConfig
from conversion_test_utils import layout_checkpoint, load_layout, ncsnpp_noise_scales, parity_fixture, to_upstream, upstream_keys

from lzn_hf import LZNConfig, LZNImageDecoder, LZNImageDecoderConfig, LZNImageEncoder, LZNImageEncoderConfig, LZNModel
from lzn_hf.conversion import UPSTREAM_PREFIX, lzn_config_from_reference
from lzn_hf.conversion.checkpoint import network_key_mapping
from lzn_hf.conversion.mapping import convert_state_dict, state_dict_from_ema
from lzn_hf.conversion.ncsnpp import UPSTREAM_HEAD_NAMES, decoder_config_from_upstream, encoder_config_from_upstream

GENERATION_FIXTURES = ["cifar_conditional_tiny", "hires_unconditional_tiny"]
NCSNPP_LAYOUTS = ["case_study_1_cifar10", "case_study_1_afhqcat", "case_study_1_celebahq", "case_study_1_lsunbedroom", "case_study_3"]
# Upstream's parameter counts (README of upstream_layouts), independent of the json files.
EXPECTED_PARAMETER_COUNTS = {
    "case_study_1_cifar10": (49_790_260, 61_906_819),
    "case_study_1_afhqcat": (87_768_896, 65_676_949),
    "case_study_1_celebahq": (87_768_896, 65_676_949),
    "case_study_1_lsunbedroom": (87_768_896, 65_676_949),
    "case_study_3": (49_790_260, 61_911_939),
}


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _networks(name: str, ema: bool):
    model = parity_fixture(name).model(ema)
    return model.image_encoder.network, model.image_decoder.network


def _class_labels(fx):
    classes = fx.summary["num_classes"]
    return F.one_hot(fx.inputs["labels"], classes).float() if classes else None


def _assert_close(actual, expected, atol, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    err = (actual - expected).abs().max().item()
    assert err <= atol, f"{what}: max abs error {err:.3e} > {atol:.0e}"


# --------------------------------------------------------------------------------------------------
# Parity with upstream outputs (networks converted from the fixture checkpoints)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GENERATION_FIXTURES)
def test_fixture_parameter_counts_and_key_order(name):
    fx = parity_fixture(name)
    encoder, decoder = _networks(name, ema=True)
    assert _num_params(encoder) == fx.reference["parameter_counts"]["encoder"]
    assert _num_params(decoder) == fx.reference["parameter_counts"]["decoder"]
    # the structural walk reproduces upstream's state-dict order exactly (which the EMA list relies on)
    assert upstream_keys(encoder, UPSTREAM_PREFIX) == list(fx.checkpoint["encoder"])
    assert [UPSTREAM_PREFIX + "sigmas", *upstream_keys(decoder, UPSTREAM_PREFIX)] == list(fx.checkpoint["decoder"])
    assert len(fx.checkpoint["encoder_ema"]["shadow_params"]) == len(upstream_keys(encoder, ema=True))
    assert len(fx.checkpoint["decoder_ema"]["shadow_params"]) == len(upstream_keys(decoder, ema=True))


@pytest.mark.parametrize("name", GENERATION_FIXTURES)
@pytest.mark.parametrize("ema", [True, False], ids=["ema", "raw"])
def test_encoder_anchor_parity(name, ema):
    fx = parity_fixture(name)
    encoder, _ = _networks(name, ema)
    with torch.no_grad():
        anchors = encoder(fx.inputs["x"])
    _assert_close(anchors, fx.outputs["anchors" if ema else "anchors_raw"], 1e-4, f"{name} anchors (ema={ema})")


@pytest.mark.parametrize("name", GENERATION_FIXTURES)
@pytest.mark.parametrize("ema", [True, False], ids=["ema", "raw"])
def test_decoder_velocity_parity(name, ema):
    fx = parity_fixture(name)
    _, decoder = _networks(name, ema)
    latents = fx.outputs["latent_dpm" if ema else "latent_dpm_raw"]
    with torch.no_grad():
        velocity = decoder(fx.outputs["x_t"], fx.inputs["t"], latents, _class_labels(fx))
    _assert_close(velocity, fx.outputs["velocity" if ema else "velocity_raw"], 1e-4, f"{name} velocity (ema={ema})")


@pytest.mark.parametrize("name", GENERATION_FIXTURES)
def test_decoder_euler10_sample_parity(name):
    fx = parity_fixture(name)
    _, decoder = _networks(name, ema=True)
    latents, labels = fx.outputs["latent_dpm"], _class_labels(fx)
    x = fx.inputs["x0"].clone()
    num_steps, eps = 10, 1e-3
    t, h = eps, (1.0 - eps) / num_steps
    with torch.no_grad():
        for _ in range(num_steps):
            x = x + h * decoder(x, torch.full((x.shape[0],), t, dtype=torch.float32), latents, labels)
            t += h
    _assert_close(x, fx.outputs["sample_euler10"], 1e-4, f"{name} sample_euler10")


@pytest.mark.parametrize("name", GENERATION_FIXTURES)
def test_rf_loss_parity(name):
    fx = parity_fixture(name)
    _, decoder = _networks(name, ema=True)
    x, x0 = fx.inputs["x"], fx.inputs["x0"]
    with torch.no_grad():
        velocity = decoder(fx.outputs["x_t"], fx.inputs["t"], fx.outputs["latent_dpm"], _class_labels(fx))
    loss = (((x - x0) - velocity) ** 2).mean(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(loss, fx.outputs["loss_rf"], rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("name", GENERATION_FIXTURES)
def test_upstream_round_trip(name):
    """Converting back gives upstream's raw state dicts bit for bit, in upstream's order."""
    fx = parity_fixture(name)
    encoder, decoder = _networks(name, ema=False)
    sigmas = fx.checkpoint["decoder"][UPSTREAM_PREFIX + "sigmas"]
    for network, part, extra in ((encoder, "encoder", {}), (decoder, "decoder", {"sigmas": sigmas})):
        upstream = to_upstream(network, **extra)
        assert list(upstream) == list(fx.checkpoint[part])
        for key, value in fx.checkpoint[part].items():
            assert torch.equal(upstream[key], value), key
    # the test helper reproduces the decoder buffer (which has no effect on outputs)
    m = fx.summary["ncsnpp_model_shared_by_encoder_and_decoder"]
    torch.testing.assert_close(ncsnpp_noise_scales(m["sigma_min"], m["sigma_max"], m["num_scales"]), sigmas, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------------------------------
# Real-size layouts of the released checkpoints (networks on the meta device: no memory)
# --------------------------------------------------------------------------------------------------


def _real_size_networks(layout):
    cs = layout["config_summary"]
    ncsnpp = cs["ncsnpp_config_shared_by_encoder_and_decoder"]
    sizes = {"image_size": ncsnpp["data"]["image_size"], "num_channels": ncsnpp["data"]["num_channels"], "latent_dim": cs["latent_dim"]}
    encoder_config = LZNImageEncoderConfig(**encoder_config_from_upstream(ncsnpp["model"], cs["encoder_heads"], **sizes))
    decoder_config = LZNImageDecoderConfig(**decoder_config_from_upstream(ncsnpp["model"], num_classes=cs["num_classes"], **sizes))
    with torch.device("meta"):
        return LZNImageEncoder(encoder_config).network, LZNImageDecoder(decoder_config).network


@pytest.mark.parametrize("name", NCSNPP_LAYOUTS)
def test_real_size_parameter_counts(name):
    layout = load_layout(name)
    encoder, decoder = _real_size_networks(layout)
    expected_encoder, expected_decoder = EXPECTED_PARAMETER_COUNTS[name]
    assert _num_params(encoder) == expected_encoder == layout["parameter_counts"]["encoder"]["total"]
    assert _num_params(decoder) == expected_decoder == layout["parameter_counts"]["decoder"]["total"]
    frozen = sum(p.numel() for p in decoder.parameters() if not p.requires_grad)
    assert frozen == layout["parameter_counts"]["decoder"]["frozen"]


@pytest.mark.parametrize("name", NCSNPP_LAYOUTS)
def test_real_size_layout_converts(name):
    """Same keys in the same order as the released checkpoint; every tensor lands where its name (raw) or its place
    in the EMA list (EMA) says."""
    layout = load_layout(name)
    checkpoint = layout_checkpoint(layout)
    for part, network in zip(("encoder", "decoder"), _real_size_networks(layout)):
        entries = layout["models"][part]["state_dict"]
        ema_keys = layout["models"][f"{part}_ema"]["shadow_param_keys"]
        assert upstream_keys(network, UPSTREAM_PREFIX) == [key for key, _, _ in entries if key != UPSTREAM_PREFIX + "sigmas"]
        assert upstream_keys(network, UPSTREAM_PREFIX, ema=True) == ema_keys
        mappings, dropped = network_key_mapping(network)
        raw = convert_state_dict(part, checkpoint[part], network, mappings, ignored=dropped)
        ema = state_dict_from_ema(part, checkpoint[f"{part}_ema"], checkpoint[part], network, mappings)
        shadow = dict(zip(ema_keys, checkpoint[f"{part}_ema"]["shadow_params"]))
        shapes = {key: tuple(value.shape) for key, value in network.state_dict().items()}
        for m in mappings:
            source = checkpoint[part][UPSTREAM_PREFIX + m.upstream_key]
            ema_source = source if m.frozen else shadow[UPSTREAM_PREFIX + m.upstream_key]
            assert tuple(raw[m.local_key].shape) == tuple(ema[m.local_key].shape) == shapes[m.local_key], m
            assert raw[m.local_key].flatten()[0] == source.flatten()[0], m
            assert ema[m.local_key].flatten()[0] == ema_source.flatten()[0], m


# --------------------------------------------------------------------------------------------------
# Error reports
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_generation():
    torch.manual_seed(0)
    return LZNModel(LZNConfig.from_preset("tiny-generation"))  # decoder: Fourier W, FIR, skips


def test_converter_reports_missing_unexpected_and_shapes(tiny_generation):
    encoder = tiny_generation.image_encoder.network
    mappings, _ = network_key_mapping(encoder)
    upstream = dict(to_upstream(encoder))
    first = next(iter(upstream))
    nin = next(key for key in upstream if key.endswith("NIN_0.W"))
    del upstream[first]
    upstream["model.module.all_modules.99.weight"] = torch.zeros(3)
    upstream[nin] = torch.zeros(upstream[nin].shape[0], upstream[nin].shape[1] - 1)
    with pytest.raises(ValueError) as info:
        convert_state_dict("encoder", upstream, encoder, mappings)
    message = str(info.value)
    assert f"missing keys 1: [{first[len(UPSTREAM_PREFIX):]}]" in message
    assert "unexpected keys 1: [all_modules.99.weight]" in message
    assert "shape mismatches 1:" in message and nin[len(UPSTREAM_PREFIX):] in message


def test_converter_rejects_wrong_ema_length_missing_frozen_and_mixed_prefixes(tiny_generation):
    decoder = tiny_generation.image_decoder.network
    mappings, dropped = network_key_mapping(decoder)
    upstream = to_upstream(decoder)
    shadow = [value for key, value in upstream.items() if key != UPSTREAM_PREFIX + "all_modules.0.W"]
    ema = {"decay": 0.9999, "num_updates": 1, "shadow_params": shadow[:-1]}
    with pytest.raises(ValueError, match=f"shadow_params holds {len(shadow) - 1} tensors but the model has {len(shadow)} trainable"):
        state_dict_from_ema("decoder", ema, upstream, decoder, mappings)
    without_w = {key: value for key, value in upstream.items() if not key.endswith("all_modules.0.W")}
    with pytest.raises(ValueError, match=r"frozen decoder parameters \['all_modules.0.W'\]"):
        state_dict_from_ema("decoder", {**ema, "shadow_params": shadow}, without_w, decoder, mappings)
    mixed = dict(upstream)
    mixed["all_modules.1.weight"] = mixed.pop(UPSTREAM_PREFIX + "all_modules.1.weight")
    with pytest.raises(ValueError, match="mixed key prefixes"):
        convert_state_dict("decoder", mixed, decoder, mappings, ignored=dropped)
    # keys without the prefix, or with a bare DDP's "module.", are accepted
    for prefix in ("", "module."):
        stripped = {prefix + key[len(UPSTREAM_PREFIX):]: value for key, value in upstream.items()}
        decoder.load_state_dict(convert_state_dict("decoder", stripped, decoder, mappings, ignored=dropped), strict=True)


def test_fourier_weight_is_frozen_and_not_in_the_ema_list(tiny_generation):
    decoder = tiny_generation.image_decoder.network
    assert not decoder.time_proj.W.requires_grad
    assert upstream_keys(decoder)[0] == "all_modules.0.W"
    assert "all_modules.0.W" not in upstream_keys(decoder, ema=True)


# --------------------------------------------------------------------------------------------------
# Config from upstream's
# --------------------------------------------------------------------------------------------------


def test_unsupported_or_missing_upstream_settings_are_named():
    fx_summary = parity_fixture("cifar_conditional_tiny").summary
    block = fx_summary["ncsnpp_model_shared_by_encoder_and_decoder"]
    sizes = {"image_size": 16, "num_channels": 3, "latent_dim": 16}
    for name, value in (("nonlinearity", "elu"), ("normalization", "BatchNorm"), ("attention_type", "legacy"), ("conditional", False)):
        with pytest.raises(ValueError, match=f"{name}="):
            decoder_config_from_upstream({**block, name: value}, **sizes)
    lacking = {key: value for key, value in block.items() if key != "fir"}
    with pytest.raises(ValueError, match=r"lacks the settings \['fir'\]"):
        encoder_config_from_upstream(lacking, fx_summary["encoder_heads"], **sizes)
    with pytest.raises(ValueError, match="lacks the setting 'encoder_heads'"):
        lzn_config_from_reference({k: v for k, v in fx_summary.items() if k != "encoder_heads"})


def test_conversion_code_lists_no_ncsnpp_field():
    """NCSN++ fields are read from the config classes; only the heads, which upstream names differently, are renamed
    (fields the ResNet-GN config shares, such as ``head_num_layers``, are the ResNet converter's to name)."""
    shared = set(PreTrainedConfig().to_dict()) | set(LZNImageEncoderConfig(encoder_type="resnet_gn").to_dict()) | {"num_classes"}
    fields = (set(LZNImageEncoderConfig(encoder_type="ncsnpp").to_dict()) | set(LZNImageDecoderConfig().to_dict())) - shared
    package = Path(__file__).resolve().parents[1] / "src" / "lzn_hf" / "conversion"
    named = {
        node.value
        for path in package.glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in fields
    }
    assert named == set(UPSTREAM_HEAD_NAMES.values()) - shared
