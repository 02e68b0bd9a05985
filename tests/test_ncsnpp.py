"""Tests for the NCSN++ encoder/decoder (lzn_hf.ncsnpp) and the upstream converter (lzn_hf.convert_ncsnpp).

Parity fixtures live in ``<repo>/../shared/parity`` (made by running the upstream LZN code on tiny
models). A test is skipped only when the fixture files are absent; when they exist, any disagreement
fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lzn_hf.convert_ncsnpp import (
    UPSTREAM_PREFIX,
    convert_decoder_state_dict,
    convert_encoder_state_dict,
    decoder_kwargs_from_upstream,
    decoder_state_dict_from_ema,
    decoder_state_dict_to_upstream,
    encoder_kwargs_from_upstream,
    encoder_state_dict_from_ema,
    encoder_state_dict_to_upstream,
    upstream_decoder_ema_keys,
    upstream_decoder_keys,
    upstream_encoder_ema_keys,
    upstream_encoder_keys,
    upstream_sigmas,
)
from lzn_hf.ncsnpp import NCSNppDecoder, NCSNppEncoder, downsample_2d, upfirdn2d, upsample_2d

from lzn_test_utils import PARITY_DIR, parity_folder  # noqa: E402  (skips outside CI only)
LAYOUT_DIR = PARITY_DIR / "upstream_layouts"
GENERATION_FIXTURES = ["cifar_conditional_tiny", "hires_unconditional_tiny"]
NCSNPP_LAYOUTS = [
    "case_study_1_cifar10",
    "case_study_1_afhqcat",
    "case_study_1_celebahq",
    "case_study_1_lsunbedroom",
    "case_study_3",
]
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


# --------------------------------------------------------------------------------------------------
# Fixture loading
# --------------------------------------------------------------------------------------------------


class Fixture:
    def __init__(self, name: str):
        from safetensors.torch import load_file

        root = PARITY_DIR / name
        self.name = name
        self.reference = json.loads((root / "reference_config.json").read_text())
        self.summary = self.reference["summary"]
        self.checkpoint = torch.load(root / "checkpoint.pt", map_location="cpu", weights_only=True)
        self.inputs = load_file(str(root / "inputs.safetensors"))
        self.outputs = load_file(str(root / "outputs.safetensors"))

    def encoder_kwargs(self):
        s = self.summary
        return encoder_kwargs_from_upstream(
            s["ncsnpp_model_shared_by_encoder_and_decoder"],
            image_size=s["image_size"],
            num_channels=s["image_channels"],
            latent_dim=s["latent_dim"],
            **s["encoder_heads"],
        )

    def decoder_kwargs(self):
        s = self.summary
        return decoder_kwargs_from_upstream(
            s["ncsnpp_model_shared_by_encoder_and_decoder"],
            image_size=s["image_size"],
            num_channels=s["image_channels"],
            latent_dim=s["latent_dim"],
            num_classes=s["num_classes"],
        )

    def encoder(self, ema: bool) -> NCSNppEncoder:
        module = NCSNppEncoder(**self.encoder_kwargs()).eval()
        if ema:
            state = encoder_state_dict_from_ema(self.checkpoint["encoder_ema"], self.checkpoint["encoder"], module)
        else:
            state = convert_encoder_state_dict(self.checkpoint["encoder"], module)
        module.load_state_dict(state, strict=True)
        return module

    def decoder(self, ema: bool) -> NCSNppDecoder:
        module = NCSNppDecoder(**self.decoder_kwargs()).eval()
        if ema:
            state = decoder_state_dict_from_ema(self.checkpoint["decoder_ema"], self.checkpoint["decoder"], module)
        else:
            state = convert_decoder_state_dict(self.checkpoint["decoder"], module)
        module.load_state_dict(state, strict=True)
        return module

    def class_labels(self):
        if self.summary["num_classes"] == 0:
            return None
        return F.one_hot(self.inputs["labels"], self.summary["num_classes"]).float()


_FIXTURE_CACHE = {}


def _fixture(name: str) -> Fixture:
    root = PARITY_DIR / name
    if not root.is_dir():
        parity_folder(name)
    # the folder exists: from here on a missing file or a wrong value is a failure, never a skip
    if name not in _FIXTURE_CACHE:
        _FIXTURE_CACHE[name] = Fixture(name)
    return _FIXTURE_CACHE[name]


def _assert_close(actual, expected, atol, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    err = (actual - expected).abs().max().item()
    assert err <= atol, f"{what}: max abs error {err:.3e} > {atol:.0e}"


# --------------------------------------------------------------------------------------------------
# Parity with upstream outputs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GENERATION_FIXTURES)
def test_fixture_parameter_counts_and_key_order(name):
    fx = _fixture(name)
    encoder = NCSNppEncoder(**fx.encoder_kwargs())
    decoder = NCSNppDecoder(**fx.decoder_kwargs())
    assert _num_params(encoder) == fx.reference["parameter_counts"]["encoder"]
    assert _num_params(decoder) == fx.reference["parameter_counts"]["decoder"]
    # the structural walk reproduces upstream's state-dict order exactly (which the EMA list relies on)
    assert list(fx.checkpoint["encoder"]) == upstream_encoder_keys(encoder, UPSTREAM_PREFIX)
    assert list(fx.checkpoint["decoder"]) == upstream_decoder_keys(decoder, UPSTREAM_PREFIX, include_sigmas=True)
    assert len(fx.checkpoint["encoder_ema"]["shadow_params"]) == len(upstream_encoder_ema_keys(encoder))
    assert len(fx.checkpoint["decoder_ema"]["shadow_params"]) == len(upstream_decoder_ema_keys(decoder))


@pytest.mark.parametrize("name", GENERATION_FIXTURES)
@pytest.mark.parametrize("ema", [True, False], ids=["ema", "raw"])
def test_encoder_anchor_parity(name, ema):
    fx = _fixture(name)
    encoder = fx.encoder(ema)
    with torch.no_grad():
        anchors = encoder(fx.inputs["x"])
    _assert_close(anchors, fx.outputs["anchors" if ema else "anchors_raw"], 1e-4, f"{name} anchors (ema={ema})")


@pytest.mark.parametrize("name", GENERATION_FIXTURES)
@pytest.mark.parametrize("ema", [True, False], ids=["ema", "raw"])
def test_decoder_velocity_parity(name, ema):
    fx = _fixture(name)
    decoder = fx.decoder(ema)
    latents = fx.outputs["latent_dpm" if ema else "latent_dpm_raw"]
    with torch.no_grad():
        velocity = decoder(fx.outputs["x_t"], fx.inputs["t"], latents, fx.class_labels())
    _assert_close(velocity, fx.outputs["velocity" if ema else "velocity_raw"], 1e-4, f"{name} velocity (ema={ema})")


@pytest.mark.parametrize("name", GENERATION_FIXTURES)
def test_decoder_euler10_sample_parity(name):
    fx = _fixture(name)
    decoder = fx.decoder(ema=True)
    latents = fx.outputs["latent_dpm"]
    labels = fx.class_labels()
    x = fx.inputs["x0"].clone()
    batch = x.shape[0]
    num_steps, eps = 10, 1e-3
    t, h = eps, (1.0 - eps) / num_steps
    with torch.no_grad():
        for _ in range(num_steps):
            x = x + h * decoder(x, torch.full((batch,), t, dtype=torch.float32), latents, labels)
            t += h
    _assert_close(x, fx.outputs["sample_euler10"], 1e-4, f"{name} sample_euler10")


@pytest.mark.parametrize("name", GENERATION_FIXTURES)
def test_rf_loss_parity(name):
    fx = _fixture(name)
    decoder = fx.decoder(ema=True)
    x, x0 = fx.inputs["x"], fx.inputs["x0"]
    with torch.no_grad():
        velocity = decoder(fx.outputs["x_t"], fx.inputs["t"], fx.outputs["latent_dpm"], fx.class_labels())
    loss = (((x - x0) - velocity) ** 2).mean(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(loss, fx.outputs["loss_rf"], rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("name", GENERATION_FIXTURES)
def test_upstream_round_trip(name):
    fx = _fixture(name)
    encoder, decoder = fx.encoder(ema=False), fx.decoder(ema=False)
    enc_up = encoder_state_dict_to_upstream(encoder)
    assert list(enc_up) == list(fx.checkpoint["encoder"])
    for key, value in fx.checkpoint["encoder"].items():
        assert torch.equal(enc_up[key], value), key
    dec_up = decoder_state_dict_to_upstream(decoder, sigmas=fx.checkpoint["decoder"]["model.module.sigmas"])
    assert list(dec_up) == list(fx.checkpoint["decoder"])
    for key, value in fx.checkpoint["decoder"].items():
        assert torch.equal(dec_up[key], value), key
    # the sigmas helper reproduces the buffer (it has no effect on outputs)
    m = fx.summary["ncsnpp_model_shared_by_encoder_and_decoder"]
    sigmas = upstream_sigmas(m["sigma_min"], m["sigma_max"], m["num_scales"])
    torch.testing.assert_close(sigmas, fx.checkpoint["decoder"]["model.module.sigmas"], rtol=1e-12, atol=0)


# --------------------------------------------------------------------------------------------------
# Real-size layouts of the released checkpoints
# --------------------------------------------------------------------------------------------------


def _layout(name: str):
    path = LAYOUT_DIR / f"{name}.json"
    if not path.exists():
        parity_folder("upstream_layouts")
    return json.loads(path.read_text())


def _real_size_modules(layout):
    cs = layout["config_summary"]
    ncsnpp = cs["ncsnpp_config_shared_by_encoder_and_decoder"]
    heads = {k: v for k, v in cs["encoder_heads"].items() if k != "encoder_all_resolutions"}
    common = dict(
        image_size=ncsnpp["data"]["image_size"],
        num_channels=ncsnpp["data"]["num_channels"],
        latent_dim=cs["latent_dim"],
    )
    with torch.device("meta"):
        encoder = NCSNppEncoder(**encoder_kwargs_from_upstream(ncsnpp["model"], **common, **heads))
        decoder = NCSNppDecoder(
            **decoder_kwargs_from_upstream(ncsnpp["model"], **common, num_classes=cs["num_classes"])
        )
    return encoder, decoder


def _zero_state_dict(entries):
    """Zero-filled tensors of the listed shapes without allocating them (expanded 0-d zeros)."""
    dtypes = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}
    return {key: torch.zeros((), dtype=dtypes[dtype]).expand(shape) for key, shape, dtype in entries}


@pytest.mark.parametrize("name", NCSNPP_LAYOUTS)
def test_real_size_parameter_counts(name):
    layout = _layout(name)
    encoder, decoder = _real_size_modules(layout)
    expected_encoder, expected_decoder = EXPECTED_PARAMETER_COUNTS[name]
    assert _num_params(encoder) == expected_encoder == layout["parameter_counts"]["encoder"]["total"]
    assert _num_params(decoder) == expected_decoder == layout["parameter_counts"]["decoder"]["total"]
    frozen = sum(p.numel() for p in decoder.parameters() if not p.requires_grad)
    assert frozen == layout["parameter_counts"]["decoder"]["frozen"]


@pytest.mark.parametrize("name", NCSNPP_LAYOUTS)
def test_real_size_layout_converts(name):
    layout = _layout(name)
    encoder, decoder = _real_size_modules(layout)
    models = layout["models"]
    for what, module, keys_fn, ema_keys_fn, convert, from_ema in [
        ("encoder", encoder, upstream_encoder_keys, upstream_encoder_ema_keys,
         convert_encoder_state_dict, encoder_state_dict_from_ema),
        ("decoder", decoder, upstream_decoder_keys, upstream_decoder_ema_keys,
         convert_decoder_state_dict, decoder_state_dict_from_ema),
    ]:
        entries = models[what]["state_dict"]
        upstream_keys = [key for key, _, _ in entries if key not in ("model.module.sigmas",)]
        # same keys, same order as the released checkpoint
        assert keys_fn(module, UPSTREAM_PREFIX) == upstream_keys
        assert ema_keys_fn(module, UPSTREAM_PREFIX) == models[f"{what}_ema"]["shadow_param_keys"]

        raw = _zero_state_dict(entries)
        local_shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        converted = convert(raw, module)
        assert set(converted) == set(local_shapes)
        assert {k: tuple(v.shape) for k, v in converted.items()} == local_shapes

        shapes = {key: (shape, dtype) for key, shape, dtype in entries}
        shadow = _zero_state_dict(
            [(k, *shapes[k]) for k in models[f"{what}_ema"]["shadow_param_keys"]]
        )
        ema_entry = {"decay": models[f"{what}_ema"]["decay"], "num_updates": 0, "shadow_params": list(shadow.values())}
        converted_ema = from_ema(ema_entry, raw, module)
        assert {k: tuple(v.shape) for k, v in converted_ema.items()} == local_shapes


# --------------------------------------------------------------------------------------------------
# Converter error reporting
# --------------------------------------------------------------------------------------------------


def _tiny_encoder(**overrides):
    kwargs = dict(
        image_size=16, in_channels=3, nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
        head_channels=4, head_hidden_dim=32, head_num_layers=2, latent_dim=8,
    )
    kwargs.update(overrides)
    return NCSNppEncoder(**kwargs)


def _tiny_decoder(**overrides):
    kwargs = dict(
        image_size=16, in_channels=3, nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
        latent_dim=8, num_classes=10,
    )
    kwargs.update(overrides)
    return NCSNppDecoder(**kwargs)


def test_converter_reports_missing_unexpected_and_shapes():
    encoder = _tiny_encoder()
    upstream = dict(encoder_state_dict_to_upstream(encoder))
    del upstream["model.module.all_modules.0.bias"]
    upstream["model.module.all_modules.99.weight"] = torch.zeros(3)
    upstream["model.module.all_modules.4.NIN_0.W"] = torch.zeros(32, 31)
    with pytest.raises(ValueError) as info:
        convert_encoder_state_dict(upstream, encoder)
    message = str(info.value)
    assert "all_modules.0.bias" in message and "missing" in message
    assert "all_modules.99.weight" in message and "unexpected" in message
    assert "all_modules.4.NIN_0.W" in message and "shape" in message


def test_converter_rejects_wrong_ema_length_and_mixed_prefixes():
    decoder = _tiny_decoder(embedding_type="fourier")
    upstream = decoder_state_dict_to_upstream(decoder)
    shadow = [v for k, v in upstream.items() if not k.endswith("all_modules.0.W")]
    ema = {"decay": 0.9999, "num_updates": 1, "shadow_params": shadow[:-1]}
    with pytest.raises(ValueError, match="shadow params"):
        decoder_state_dict_from_ema(ema, upstream, decoder)
    with pytest.raises(ValueError, match="frozen"):
        decoder_state_dict_from_ema({**ema, "shadow_params": shadow}, None, decoder)
    mixed = dict(upstream)
    mixed["all_modules.1.weight"] = mixed.pop("model.module.all_modules.1.weight")
    with pytest.raises(ValueError, match="prefix"):
        convert_decoder_state_dict(mixed, decoder)
    # unprefixed keys are accepted
    stripped = {k[len(UPSTREAM_PREFIX):]: v for k, v in upstream.items()}
    decoder.load_state_dict(convert_decoder_state_dict(stripped, decoder))


def test_fourier_weight_is_frozen_parameter():
    decoder = _tiny_decoder(embedding_type="fourier", num_classes=0)
    assert "time_proj.W" in decoder.state_dict()
    assert not decoder.time_proj.W.requires_grad
    assert upstream_decoder_keys(decoder)[0] == "all_modules.0.W"
    assert "all_modules.0.W" not in upstream_decoder_ema_keys(decoder)


# --------------------------------------------------------------------------------------------------
# Module behaviour
# --------------------------------------------------------------------------------------------------


def _randomize(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return module.eval()


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(fir=True, progressive_input="input_skip", head_resolutions=(8, 4)),
        dict(fir=True, progressive_input="input_skip", progressive_combine="cat"),
    ],
    ids=["plain", "fir_input_skip", "input_skip_cat"],
)
def test_encoder_batch_vs_single(overrides):
    torch.manual_seed(0)
    encoder = _randomize(_tiny_encoder(**overrides))
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        batched = encoder(x)
        single = torch.cat([encoder(x[i : i + 1]) for i in range(4)])
    assert batched.shape == (4, 8)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(
            fir=True, progressive="output_skip", progressive_input="input_skip", embedding_type="fourier",
            scale_by_sigma=True, num_classes=0,
        ),
    ],
    ids=["positional_conditional", "fourier_output_skip"],
)
def test_decoder_batch_vs_single(overrides):
    torch.manual_seed(0)
    decoder = _randomize(_tiny_decoder(**overrides))
    x = torch.randn(4, 3, 16, 16)
    t = torch.tensor([1e-3, 0.3, 0.7, 1.0])
    z = torch.randn(4, 8)
    labels = F.one_hot(torch.tensor([0, 3, 3, 9]), 10).float() if decoder.num_classes else None
    with torch.no_grad():
        batched = decoder(x, t, z, labels)
        single = torch.cat(
            [decoder(x[i : i + 1], t[i : i + 1], z[i : i + 1], None if labels is None else labels[i : i + 1])
             for i in range(4)]
        )
    assert batched.shape == x.shape
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_gradients_flow_and_fourier_weight_stays_frozen():
    encoder = _randomize(_tiny_encoder(fir=True, progressive_input="input_skip")).train()
    decoder = _randomize(
        _tiny_decoder(fir=True, progressive="output_skip", progressive_input="input_skip", embedding_type="fourier",
                      scale_by_sigma=True)
    ).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    anchors = encoder(x)
    velocity = decoder(torch.randn_like(x), torch.tensor([0.1, 0.8]), anchors, torch.tensor([2, 5]))
    velocity.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in encoder.parameters())
    trainable = [p for p in decoder.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert decoder.time_proj.W.grad is None


def test_decoder_label_handling():
    decoder = _randomize(_tiny_decoder())
    x, t, z = torch.randn(2, 3, 16, 16), torch.tensor([0.2, 0.9]), torch.randn(2, 8)
    labels = torch.tensor([1, 7])
    with torch.no_grad():
        from_indices = decoder(x, t, z, labels)
        from_one_hot = decoder(x, t, z, F.one_hot(labels, 10).float())
        scalar_t = decoder(x, 0.5, z, labels)
        vector_t = decoder(x, torch.full((2,), 0.5), z, labels)
    torch.testing.assert_close(from_indices, from_one_hot)
    torch.testing.assert_close(scalar_t, vector_t)
    with pytest.raises(ValueError, match="class_labels"):
        decoder(x, t, z)
    with pytest.raises(ValueError, match="unconditional"):
        _tiny_decoder(num_classes=0)(x, t, z, labels)


def test_encoder_head_layout():
    encoder = _tiny_encoder()
    # stem + 1 res @16, down + 1 res @8, down + 1 res + mid @4
    assert encoder.feature_resolutions == (16, 16, 8, 8, 4, 4, 4)
    assert encoder.head_feature_indices == tuple(range(7))
    partial = _tiny_encoder(head_resolutions=(8, 4))
    assert partial.head_feature_indices == (2, 3, 4, 5, 6)
    with pytest.raises(ValueError, match="selects no feature map"):
        _tiny_encoder(head_resolutions=(2,))


def test_fir_resampling_shapes_and_dc_gain():
    x = torch.ones(2, 3, 8, 8)
    up, down = upsample_2d(x, (1, 3, 3, 1)), downsample_2d(x, (1, 3, 3, 1))
    assert up.shape == (2, 3, 16, 16) and down.shape == (2, 3, 4, 4)
    # a constant image stays constant away from the zero-padded border
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.ones_like(up[..., 2:-2, 2:-2]))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.ones_like(down[..., 1:-1, 1:-1]))
    # upfirdn2d with a delta kernel is the identity
    torch.testing.assert_close(upfirdn2d(x * 2, torch.ones(1, 1)), x * 2)
