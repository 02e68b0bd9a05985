"""Conversion of the upstream case-study-2 ResNet-50-GN encoder (lzn_hf.conversion.resnet_gn): parity with
upstream's outputs, the released checkpoint's layout, the float16 fixture, error reports, config from upstream's."""

from __future__ import annotations

import pytest
import torch
from conversion_test_utils import layout_checkpoint, load_layout, parity_fixture, to_upstream, upstream_keys

from lzn_hf import LZNImageEncoder, LZNImageEncoderConfig
from lzn_hf.conversion import UPSTREAM_PREFIX
from lzn_hf.conversion.checkpoint import network_key_mapping
from lzn_hf.conversion.mapping import convert_state_dict, state_dict_from_ema
from lzn_hf.conversion.resnet_gn import encoder_config_from_upstream

FIXTURE = "imagenet_contrastive_tiny"
ATOL = 1e-4


def _encoder(ema: bool):
    return parity_fixture(FIXTURE).model(ema).image_encoder.network


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


def _real_size_encoder(layout):
    config = encoder_config_from_upstream(layout["config_summary"]["resnet"]["effective"], image_size=224, num_channels=3)
    with torch.device("meta"):
        return LZNImageEncoder(LZNImageEncoderConfig(**config)).network


# ---------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("ema", [True, False], ids=["ema", "raw"])
def test_parity_anchors(ema):
    fx = parity_fixture(FIXTURE)
    with torch.no_grad():
        anchors = _encoder(ema)(fx.inputs["x"])
    assert anchors.dtype == torch.float32
    err = _max_err(anchors, fx.outputs["anchors" if ema else "anchors_raw"])
    assert err <= ATOL, f"anchors (ema={ema}) max abs error {err:.3e}"
    # raw and EMA weights really give different anchors (guards against loading one set twice)
    assert _max_err(fx.outputs["anchors"], fx.outputs["anchors_raw"]) > 100 * ATOL


def test_parity_anchors_view2_and_features_no_head():
    fx = parity_fixture(FIXTURE)
    encoder = _encoder(ema=True)
    with torch.no_grad():
        view2 = encoder(fx.inputs["x2"])
        anchors, features = encoder.forward_with_features(fx.inputs["x"])
    assert _max_err(view2, fx.outputs["anchors_view2"]) <= ATOL
    assert features.shape == (fx.reference["batch_size"], 2048)
    assert _max_err(features, fx.outputs["features_no_head"]) <= ATOL
    assert _max_err(anchors, fx.outputs["anchors"]) <= ATOL


def test_float16_checkpoint_converts_to_float32_copies_with_or_without_prefix():
    fx = parity_fixture(FIXTURE)
    encoder = _encoder(ema=False)
    mappings, _ = network_key_mapping(encoder)
    raw = fx.checkpoint["encoder"]
    assert next(iter(raw.values())).dtype == torch.float16
    converted = convert_state_dict("encoder", raw, encoder, mappings)
    stripped = convert_state_dict("encoder", {key[len(UPSTREAM_PREFIX):]: value for key, value in raw.items()}, encoder, mappings)
    for key, value in encoder.state_dict().items():
        assert converted[key].dtype == torch.float32 and torch.equal(converted[key], value), key
        assert torch.equal(stripped[key], value), key
    # the fixture's raw and EMA tensors share storage: converted tensors never alias the checkpoint
    pointers = {tensor.untyped_storage().data_ptr() for tensor in raw.values()}
    assert not pointers & {tensor.untyped_storage().data_ptr() for tensor in converted.values()}
    # and the EMA conversion of the same checkpoint holds the EMA weights
    ema = state_dict_from_ema("encoder", fx.checkpoint["encoder_ema"], raw, encoder, mappings)
    for key, value in _encoder(ema=True).state_dict().items():
        assert torch.equal(ema[key], value), key


def test_batch_of_one_matches_batch():
    encoder, x = _encoder(ema=True), parity_fixture(FIXTURE).inputs["x"]
    with torch.no_grad():
        anchors, features = encoder.forward_with_features(x)
        for i in range(x.shape[0]):
            a_i, f_i = encoder.forward_with_features(x[i : i + 1])
            assert _max_err(a_i, anchors[i : i + 1]) <= 1e-5
            assert _max_err(f_i, features[i : i + 1]) <= 1e-5


# --------------------------------------------------------------------------- real-size layout
def test_real_size_parameter_count_and_layout():
    layout = load_layout("case_study_2")
    encoder = _real_size_encoder(layout)
    assert sum(p.numel() for p in encoder.parameters()) == layout["parameter_counts"]["encoder"]["total"] == 28_231_232
    assert encoder.feature_dim == 2048 and encoder.projection_dim == 256
    # the structural key walk reproduces the upstream state-dict order, names and shapes exactly
    entries = layout["models"]["encoder"]["state_dict"]
    assert upstream_keys(encoder, UPSTREAM_PREFIX) == [key for key, _, _ in entries]
    assert upstream_keys(encoder, UPSTREAM_PREFIX, ema=True) == layout["models"]["encoder_ema"]["shadow_param_keys"]
    # every tensor lands where its name (raw) or its place in the EMA list says
    checkpoint = layout_checkpoint(layout)
    mappings, _ = network_key_mapping(encoder)
    raw = convert_state_dict("encoder", checkpoint["encoder"], encoder, mappings)
    ema = state_dict_from_ema("encoder", checkpoint["encoder_ema"], checkpoint["encoder"], encoder, mappings)
    shapes = {key: tuple(value.shape) for key, value in encoder.state_dict().items()}
    for m, (key, shape, _), shadow in zip(mappings, entries, checkpoint["encoder_ema"]["shadow_params"]):
        assert tuple(raw[m.local_key].shape) == shapes[m.local_key] == tuple(shape), key
        assert raw[m.local_key].flatten()[0] == checkpoint["encoder"][key].flatten()[0], key
        assert ema[m.local_key].flatten()[0] == shadow.flatten()[0], key


def test_converter_errors_name_the_problem():
    encoder = _encoder(ema=True)
    mappings, _ = network_key_mapping(encoder)
    upstream = dict(to_upstream(encoder))
    broken = dict(upstream)
    del broken[UPSTREAM_PREFIX + "net.2.blocks.0.projection.bn.0.bias"]
    broken[UPSTREAM_PREFIX + "fc.weight"] = torch.zeros(1000, 2048)
    broken[UPSTREAM_PREFIX + "head.layers.3.weight"] = torch.zeros(128, 2048)
    with pytest.raises(ValueError) as info:
        convert_state_dict("encoder", broken, encoder, mappings)
    message = str(info.value)
    assert "missing keys 1: [net.2.blocks.0.projection.bn.0.bias]" in message
    assert "unexpected keys 1: [fc.weight]" in message
    assert "shape mismatches 1: [head.layers.3.weight: checkpoint (128, 2048) vs model (256, 2048)]" in message
    with pytest.raises(ValueError, match=f"shadow_params holds {len(mappings) - 1} tensors"):
        state_dict_from_ema("encoder", {"shadow_params": list(upstream.values())[:-1]}, upstream, encoder, mappings)
    with pytest.raises(ValueError, match="not tensors at keys 1: \\[model.module.net.0.0.weight\\]"):
        convert_state_dict("encoder", {**upstream, UPSTREAM_PREFIX + "net.0.0.weight": [0.0]}, encoder, mappings)
    # a head with one layer less cannot silently take a two-layer checkpoint
    config = LZNImageEncoderConfig(**{**encoder_config_from_upstream(parity_fixture(FIXTURE).summary["resnet"], image_size=32, num_channels=3), "head_num_layers": 1})
    one_layer = LZNImageEncoder(config).network
    with pytest.raises(ValueError, match=r"unexpected keys 3: \[head.layers.3.weight"):
        convert_state_dict("encoder", upstream, one_layer, network_key_mapping(one_layer)[0])


def test_config_from_upstream_variants():
    params = {"depth": 50, "head_num_layers": 2, "head_out_dim": 256, "width_multiplier": 1}  # upstream's encoder.params
    config = encoder_config_from_upstream(params, image_size=224, num_channels=3)
    assert config["depths"] == [3, 4, 6, 3] and config["latent_dim"] == 256 and config["num_groups"] == 32
    assert encoder_config_from_upstream({"depth": 101}, image_size=224, num_channels=3)["depths"] == [3, 4, 23, 3]
    for bad, match in (
        ({"depth": 50, "sk_ratio": 0.0625}, "sk_ratio"),
        ({"layers": [3, 4, 6, 3], "backbone_channels_out": 1024}, "1024 backbone channels"),
        ({"depth": 50, "layers": [3, 4, 23, 3]}, "disagrees"),
        ({"depth": 51}, "depth 51"),
        ({"input_rescale": "x"}, "rescales its input"),
        ({"head_groupnorm_groups": [32, 16]}, "mixes GroupNorm group counts"),
    ):
        with pytest.raises(ValueError, match=match):
            encoder_config_from_upstream(bad, image_size=224, num_channels=3)
