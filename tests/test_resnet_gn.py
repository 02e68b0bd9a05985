"""Tests for the case-study-2 ResNet-50-GN encoder and its upstream checkpoint converter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lzn_hf.convert_resnet_gn import (
    convert_resnet_checkpoint,
    convert_resnet_state_dict,
    resnet_state_dict_from_ema,
    upstream_resnet_keys,
)
from lzn_hf.resnet_gn import ResNetGNEncoder, resnet_gn_kwargs_from_summary

from lzn_test_utils import PARITY_DIR as PARITY_ROOT, parity_folder  # noqa: E402
FIXTURE_DIR = PARITY_ROOT / "imagenet_contrastive_tiny"
LAYOUT_FILE = PARITY_ROOT / "upstream_layouts" / "case_study_2.json"
PREFIX = "model.module."
ATOL = 1e-4


def _require(path: Path) -> Path:
    if not path.exists():
        parity_folder(path.parent.name)  # skips outside CI, fails in CI
    return path


# --------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny():
    """The imagenet_contrastive_tiny fixture: config, checkpoint, inputs, outputs, EMA model, raw model."""
    from safetensors.torch import load_file

    folder = _require(FIXTURE_DIR)
    config = json.loads((folder / "reference_config.json").read_text())
    checkpoint = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)
    inputs = load_file(str(folder / "inputs.safetensors"))
    outputs = load_file(str(folder / "outputs.safetensors"))
    kwargs = resnet_gn_kwargs_from_summary(config["summary"]["resnet"])
    assert kwargs["projection_dim"] == config["summary"]["latent_dim"]

    ema_model = ResNetGNEncoder(**kwargs).eval()
    ema_model.load_state_dict(resnet_state_dict_from_ema(checkpoint["encoder_ema"], ema_model), strict=True)
    raw_model = ResNetGNEncoder(**kwargs).eval()
    raw_model.load_state_dict(convert_resnet_state_dict(checkpoint["encoder"], raw_model), strict=True)
    return dict(
        config=config, checkpoint=checkpoint, inputs=inputs, outputs=outputs, kwargs=kwargs,
        ema=ema_model, raw=raw_model,
    )


@pytest.fixture(scope="module")
def layout():
    return json.loads(_require(LAYOUT_FILE).read_text())


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


# ---------------------------------------------------------------------------------------- parity
def test_parity_anchors_ema(tiny):
    with torch.no_grad():
        anchors = tiny["ema"](tiny["inputs"]["x"])
    assert anchors.dtype == torch.float32
    err = _max_err(anchors, tiny["outputs"]["anchors"])
    assert err <= ATOL, f"anchors (EMA) max abs error {err:.3e}"


def test_parity_anchors_raw(tiny):
    with torch.no_grad():
        anchors = tiny["raw"](tiny["inputs"]["x"])
    err = _max_err(anchors, tiny["outputs"]["anchors_raw"])
    assert err <= ATOL, f"anchors_raw max abs error {err:.3e}"
    # raw and EMA weights must really give different anchors (guards against loading one set twice)
    assert _max_err(tiny["outputs"]["anchors"], tiny["outputs"]["anchors_raw"]) > 100 * ATOL


def test_parity_anchors_view2(tiny):
    with torch.no_grad():
        anchors = tiny["ema"](tiny["inputs"]["x2"])
    err = _max_err(anchors, tiny["outputs"]["anchors_view2"])
    assert err <= ATOL, f"anchors_view2 max abs error {err:.3e}"


def test_parity_features_no_head(tiny):
    with torch.no_grad():
        anchors, features = tiny["ema"].forward_with_features(tiny["inputs"]["x"])
        features_only = tiny["ema"].forward_features(tiny["inputs"]["x"])
    assert features.shape == (tiny["config"]["batch_size"], 2048)
    err = _max_err(features, tiny["outputs"]["features_no_head"])
    assert err <= ATOL, f"features_no_head max abs error {err:.3e}"
    assert torch.equal(features, features_only)
    assert _max_err(anchors, tiny["outputs"]["anchors"]) <= ATOL


def test_convert_whole_checkpoint_and_prefix_handling(tiny):
    model, ckpt = tiny["ema"], tiny["checkpoint"]
    ema_sd = convert_resnet_checkpoint(ckpt, model, use_ema=True)
    raw_sd = convert_resnet_checkpoint(ckpt, model, use_ema=False)
    stripped = {k[len(PREFIX):]: v for k, v in ckpt["encoder"].items()}
    raw_sd_stripped = convert_resnet_state_dict(stripped, model)
    for key, value in model.state_dict().items():
        assert torch.equal(ema_sd[key], value), key
        assert raw_sd[key].dtype == torch.float32
        assert torch.equal(raw_sd[key], raw_sd_stripped[key]), key
    # converted tensors never alias the checkpoint (fixture raw/EMA tensors share storage)
    first = next(iter(ckpt["encoder"].values()))
    assert all(t.data_ptr() != first.data_ptr() for t in raw_sd.values())


def test_batch_of_one_matches_batch(tiny):
    model, x = tiny["ema"], tiny["inputs"]["x"]
    with torch.no_grad():
        anchors, features = model.forward_with_features(x)
        for i in range(x.shape[0]):
            a_i, f_i = model.forward_with_features(x[i : i + 1])
            assert _max_err(a_i, anchors[i : i + 1]) <= 1e-5
            assert _max_err(f_i, features[i : i + 1]) <= 1e-5


# --------------------------------------------------------------------------- real-size layout
def test_real_size_parameter_count_and_layout(layout):
    kwargs = resnet_gn_kwargs_from_summary(layout["config_summary"]["resnet"]["effective"])
    model = ResNetGNEncoder(**kwargs)
    expected_total = layout["parameter_counts"]["encoder"]["total"]
    assert expected_total == 28_231_232
    assert sum(p.numel() for p in model.parameters()) == expected_total
    assert model.feature_dim == 2048 and model.projection_dim == 256

    # the structural key walk reproduces the upstream state-dict order, names and shapes exactly
    pairs = upstream_resnet_keys(model)
    entries = layout["models"]["encoder"]["state_dict"]
    assert [PREFIX + up for up, _ in pairs] == [key for key, _, _ in entries]
    assert [PREFIX + up for up, _ in pairs] == layout["models"]["encoder_ema"]["shadow_param_keys"]
    local = model.state_dict()
    for (up, loc), (_, shape, _) in zip(pairs, entries):
        assert tuple(local[loc].shape) == tuple(shape), up

    # zero-filled upstream-layout state dict and EMA list convert with nothing missing or left over
    zero_sd = {key: torch.zeros(shape) for key, shape, _ in entries}
    zero_ema = {
        "decay": layout["models"]["encoder_ema"]["decay"],
        "num_updates": 0,
        "shadow_params": [zero_sd[key] for key in layout["models"]["encoder_ema"]["shadow_param_keys"]],
    }
    for converted in (convert_resnet_state_dict(zero_sd, model), resnet_state_dict_from_ema(zero_ema, model)):
        assert set(converted) == set(local)
        result = model.load_state_dict(converted, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        assert all(float(p.detach().abs().max()) == 0.0 for p in model.parameters())
        model.reset_parameters()


def test_converter_errors_name_the_problem(layout):
    model = ResNetGNEncoder()
    entries = layout["models"]["encoder"]["state_dict"]
    sd = {key: torch.zeros(shape, dtype=torch.float16) for key, shape, _ in entries}

    broken = dict(sd)
    del broken["model.module.net.2.blocks.0.projection.bn.0.bias"]
    broken["model.module.fc.weight"] = torch.zeros(1000, 2048)
    broken["model.module.head.layers.3.weight"] = torch.zeros(128, 2048)
    with pytest.raises(ValueError) as info:
        convert_resnet_state_dict(broken, model)
    message = str(info.value)
    assert "missing keys" in message and "net.2.blocks.0.projection.bn.0.bias" in message
    assert "unexpected keys" in message and "fc.weight" in message
    assert "shape mismatches" in message and "head.layers.3.weight" in message

    with pytest.raises(ValueError, match="shadow_params holds 164"):
        resnet_state_dict_from_ema({"shadow_params": [sd[k] for k, _, _ in entries[:-1]]}, model)
    # a head with one layer less cannot silently take a two-layer checkpoint
    with pytest.raises(ValueError, match="unexpected keys"):
        convert_resnet_state_dict(sd, ResNetGNEncoder(head_num_layers=1))


# ------------------------------------------------------------------------------- module behaviour
def test_initialisation_matches_upstream_description():
    model = ResNetGNEncoder(depths=(1, 2, 1, 1))
    for stage in model.stages:
        for block in stage.blocks:
            assert torch.all(block.norm3.weight == 0) and torch.all(block.norm3.bias == 0)
            for norm in (block.norm1, block.norm2):
                assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
            if block.shortcut is not None:
                assert torch.all(block.shortcut.norm.weight == 1)
    last_norm = model.head.norms[-1]
    assert torch.all(last_norm.bias == 0) and torch.all(last_norm.weight == 1)
    # with zero-init residual branches every non-first block starts as an identity (+ReLU of non-negative input)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        h = model.stem((x + 1) / 2)
        h = model.stages[0](h)
        block = model.stages[1].blocks[0]
        y = block(h)
        assert torch.equal(model.stages[1].blocks[1](y), y)


def test_shapes_and_input_rescale():
    model = ResNetGNEncoder(depths=(1, 1, 1, 1), projection_dim=64).eval()
    assert model.feature_dim == 2048
    x = torch.rand(3, 3, 48, 40) * 2 - 1
    with torch.no_grad():
        anchors, features = model(x, return_features=True)
        stem_out = model.stem((x + 1) / 2)
    assert anchors.shape == (3, 64) and features.shape == (3, 2048)
    assert stem_out.shape == (3, 64, 12, 10)


def test_gradient_checkpointing_same_output_and_grads():
    torch.manual_seed(0)
    model = ResNetGNEncoder(depths=(1, 2, 1, 1), projection_dim=64)
    with torch.no_grad():  # make every branch active (zero-init gammas would hide mistakes)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(2, 3, 32, 32) * 2 - 1

    def run(flag: bool):
        model.gradient_checkpointing = flag
        model.zero_grad(set_to_none=True)
        anchors, features = model.forward_with_features(x)
        (anchors.square().sum() + features.sum()).backward()
        return anchors.detach(), features.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    a0, f0, g0 = run(False)
    a1, f1, g1 = run(True)
    assert torch.allclose(a0, a1, atol=1e-6, rtol=0) and torch.allclose(f0, f1, atol=1e-6, rtol=0)
    assert g0.keys() == g1.keys()
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=1e-5, rtol=1e-5), name
    with torch.no_grad():  # checkpointing is bypassed without grad
        assert torch.allclose(model(x), a0, atol=1e-6, rtol=0)


def test_kwargs_from_summary_variants():
    kw = resnet_gn_kwargs_from_summary({"depth": 50, "head_num_layers": 2, "head_out_dim": 256, "width_multiplier": 1})
    assert kw["depths"] == (3, 4, 6, 3) and kw["projection_dim"] == 256
    with pytest.raises(ValueError, match="sk_ratio"):
        resnet_gn_kwargs_from_summary({"depth": 50, "sk_ratio": 0.0625})
    with pytest.raises(ValueError, match="backbone_channels_out"):
        resnet_gn_kwargs_from_summary({"layers": [3, 4, 6, 3], "backbone_channels_out": 1024})
