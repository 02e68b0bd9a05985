"""Config fields are type- and range-checked with the field named; the decoder and the latent API check their
inputs (issue 12 §2)."""

import ast
import inspect
import json
from pathlib import Path

import pytest
import torch

import lzn_hf
from lzn_hf import LZNConfig, LZNImageDecoderConfig, LZNImageEncoderConfig, LZNLabelAnchorsConfig, LZNModel
from lzn_hf.configuration_lzn import DECODER_FIELDS, ENCODER_FIELDS, FLOW_FIELDS, LABEL_FIELDS, LZN_PRESETS, SHAPE_FIELDS
from lzn_hf.ncsnpp import NCSNppDecoder, NCSNppEncoder
from lzn_hf.resnet_gn import ResNetGNEncoder


@pytest.mark.parametrize("name", sorted(LZN_PRESETS))
def test_presets_validate_and_round_trip(name):
    config = LZNConfig.from_preset(name)
    assert LZNConfig.from_dict(json.loads(config.to_json_string())).to_dict() == config.to_dict()


# one bad value per class: wrong type (string, bool for a number, number for a bool), out of range, NaN, unbounded steps
BAD_FIELDS = [
    (LZNImageDecoderConfig, "scale_by_sigma", "false"),
    (LZNImageDecoderConfig, "scale_by_sigma", 0),
    (LZNImageDecoderConfig, "fir", "true"),
    (LZNImageDecoderConfig, "nf", "128"),
    (LZNImageDecoderConfig, "nf", 128.0),
    (LZNImageDecoderConfig, "nf", True),
    (LZNImageDecoderConfig, "num_res_blocks", 0),
    (LZNImageDecoderConfig, "dropout", "0.1"),
    (LZNImageDecoderConfig, "dropout", float("nan")),
    (LZNImageDecoderConfig, "dropout", 1.0),
    (LZNImageDecoderConfig, "fourier_scale", 0.0),
    (LZNImageDecoderConfig, "fourier_scale", float("inf")),
    (LZNImageDecoderConfig, "init_scale", -1.0),
    (LZNImageDecoderConfig, "ch_mult", "1,2"),
    (LZNImageDecoderConfig, "ch_mult", []),
    (LZNImageDecoderConfig, "ch_mult", [1, "2"]),
    (LZNImageDecoderConfig, "attn_resolutions", 16),
    (LZNImageDecoderConfig, "fir_kernel", [1, 3, 3, -1]),
    (LZNImageDecoderConfig, "embedding_type", "learned"),
    (LZNImageDecoderConfig, "num_classes", -1),
    (LZNImageDecoderConfig, "num_classes", "10"),
    (LZNImageDecoderConfig, "image_size", "32"),
    (LZNImageDecoderConfig, "image_size", 10**9),
    (LZNImageDecoderConfig, "latent_dim", 0),
    (LZNImageEncoderConfig, "head_resolutions", [0]),
    (LZNImageEncoderConfig, "head_resolutions", []),
    (LZNImageEncoderConfig, "head_channels", 2.5),
    (LZNImageEncoderConfig, "resamp_with_conv", "yes"),
    (LZNImageEncoderConfig, "progressive_combine", "mean"),
    (LZNImageEncoderConfig, "encoder_type", "vit"),
    (LZNLabelAnchorsConfig, "num_classes", 0),
    (LZNLabelAnchorsConfig, "flow_num_steps", 10**6),
    (LZNLabelAnchorsConfig, "flow_num_steps", "100"),
    (LZNConfig, "image_flow_num_steps", 10**6),
    (LZNConfig, "image_flow_num_steps", 20.0),
    (LZNConfig, "image_flow_solver", "rk4"),
    (LZNConfig, "image_flow_eps", 0.0),
    (LZNConfig, "image_flow_eps", "1e-3"),
    (LZNConfig, "prior_noise_scale", "1"),
    (LZNConfig, "prior_noise_scale", -0.5),
    (LZNConfig, "label_loss_cutoff", 1.0),
    (LZNConfig, "anchor_bank_size", -1),
]


@pytest.mark.parametrize("config_class, name, value", BAD_FIELDS)
def test_bad_field_is_rejected_naming_the_field(config_class, name, value):
    with pytest.raises(ValueError, match=f"`{name}` must be"):
        config_class(**{name: value})


def test_resnet_fields_are_checked():
    for name, value in (("depths", [3, "4"]), ("width_multiplier", 0), ("norm_eps", 0.0), ("num_groups", "32")):
        with pytest.raises(ValueError, match=f"`{name}` must be"):
            LZNImageEncoderConfig(encoder_type="resnet_gn", **{name: value})


def test_every_field_has_a_checked_type():
    """Every declared field rejects a value of the wrong type, naming the field (the table is the one source)."""
    tables = [SHAPE_FIELDS, DECODER_FIELDS, LABEL_FIELDS, FLOW_FIELDS, *ENCODER_FIELDS.values()]
    for fields in tables:
        for name, spec in fields.items():
            wrong = 1 if spec.kind in ("bool", "str") else "1"
            with pytest.raises(ValueError, match=f"`{name}` must be"):
                spec.check(name, wrong)
            spec.check(name, spec.default)  # the default is valid


def second_definitions(source: str, field_names) -> list:
    """Where `source` defines a config field again with a value: a parameter with a default, a class attribute
    (dataclass / typed record field) or a dict-literal key named like a field."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            positional = node.args.posonlyargs + node.args.args
            defaulted = positional[len(positional) - len(node.args.defaults):]
            defaulted += [arg for arg, default in zip(node.args.kwonlyargs, node.args.kw_defaults) if default is not None]
            found += [f"{getattr(node, 'name', 'lambda')}({arg.arg}=...)" for arg in defaulted if arg.arg in field_names]
        elif isinstance(node, ast.ClassDef):
            for statement in node.body:
                targets = [statement.target] if isinstance(statement, ast.AnnAssign) and statement.value is not None else []
                targets += statement.targets if isinstance(statement, ast.Assign) else []
                found += [f"{node.name}.{t.id}" for t in targets if isinstance(t, ast.Name) and t.id in field_names]
        elif isinstance(node, ast.Dict):
            found += [f"{{{key.value!r}: ...}}" for key in node.keys if isinstance(key, ast.Constant) and key.value in field_names]
    return found


NCSNPP_FIELDS = {*SHAPE_FIELDS, *ENCODER_FIELDS["ncsnpp"], *LZNImageDecoderConfig.lzn_fields()}
RESNET_FIELDS = {*SHAPE_FIELDS, *ENCODER_FIELDS["resnet_gn"]}


def test_second_definition_finder_finds_the_old_signatures():
    old = "class E:\n    nf: int = 128\n    def __init__(self, image_size, in_channels=3, ch_mult=(1, 2), *, fir=False): ...\n_D = {'dropout': 0.0}\n"
    assert second_definitions(old, NCSNPP_FIELDS) == ["E.nf", "__init__(ch_mult=...)", "__init__(fir=...)", "{'dropout': ...}"]


@pytest.mark.parametrize(
    "module, field_names, networks",
    [("ncsnpp.py", NCSNPP_FIELDS, [NCSNppEncoder, NCSNppDecoder]), ("resnet_gn.py", RESNET_FIELDS, [ResNetGNEncoder])],
)
def test_architecture_fields_are_defined_once_in_the_configs(module, field_names, networks):
    """Issue 13 item 3: the config tables declare, default and validate every architecture field; the torch
    modules are built from the config and give none of its fields a second default."""
    source = (Path(lzn_hf.__file__).parent / module).read_text()
    assert second_definitions(source, field_names) == []
    for network in networks:
        assert list(inspect.signature(network).parameters)[0] == "config"
        assert all(name not in field_names for name in inspect.signature(network).parameters)


def test_nested_config_errors_name_the_part():
    with pytest.raises(ValueError, match=r"in `image_decoder_config`: `scale_by_sigma` must be a boolean"):
        LZNConfig(image_decoder_config={"scale_by_sigma": "false"})


def test_string_false_in_a_saved_config_is_rejected_at_load(tmp_path):
    torch.manual_seed(0)
    LZNModel(LZNConfig.from_preset("tiny-generation")).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["image_decoder_config"]["scale_by_sigma"] = "false"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="scale_by_sigma"):
        LZNModel.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# decoder and latent API inputs
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_joint():
    torch.manual_seed(0)
    return LZNModel(LZNConfig.from_preset("tiny-joint")).eval()


SAMPLE, LATENTS, LABELS = torch.zeros(2, 1, 8, 8), torch.zeros(2, 16), torch.tensor([0, 1])
NAN = float("nan")


@pytest.mark.parametrize(
    "sample, timestep, latents, class_labels, error, message",
    [
        (SAMPLE, NAN, LATENTS, LABELS, ValueError, r"`timestep` must be sigma \* 1000 in \[0, 1000\]"),
        (SAMPLE, torch.tensor([500.0, NAN]), LATENTS, LABELS, ValueError, "`timestep` must be"),
        (SAMPLE, 1500.0, LATENTS, LABELS, ValueError, "`timestep` must be"),
        (SAMPLE, -1.0, LATENTS, LABELS, ValueError, "`timestep` must be"),
        (SAMPLE, "500", LATENTS, LABELS, TypeError, "`timestep` must be a number"),
        (SAMPLE, torch.tensor([1.0, 2.0, 3.0]), LATENTS, LABELS, ValueError, r"`timestep` must be a scalar or have shape \[2\]"),
        (SAMPLE * NAN, 500.0, LATENTS, LABELS, ValueError, "`sample` contains NaN"),
        (SAMPLE, 500.0, LATENTS * NAN, LABELS, ValueError, "`latents` contains NaN"),
        (SAMPLE.long(), 500.0, LATENTS, LABELS, TypeError, "`sample` must be a floating-point"),
        (SAMPLE[:, :, :4], 500.0, LATENTS, LABELS, ValueError, r"`sample` must have shape \[B, 1, 8, 8\]"),
        (SAMPLE, 500.0, LATENTS[:1], LABELS, ValueError, r"`latents` must have shape \[2, 16\]"),
        (SAMPLE, 500.0, LATENTS, torch.tensor([0, 1, 2]), ValueError, r"`class_labels` must be \[2\] class indices"),
        (SAMPLE, 500.0, LATENTS, torch.zeros(2, 4), ValueError, r"`class_labels` must have shape \[2, 3\]"),
        (SAMPLE, 500.0, LATENTS, torch.full((2, 3), NAN), ValueError, "`class_labels` contains NaN"),
        (SAMPLE, 500.0, LATENTS, torch.tensor([0, 3]), ValueError, r"`class_labels` must be in \[0, 3\)"),
        (SAMPLE, 500.0, LATENTS, torch.tensor([0.0, 1.0]), TypeError, "`class_labels` must be integers"),
        (SAMPLE, 500.0, LATENTS, None, ValueError, "label-conditional"),
        (SAMPLE, 500.0, LATENTS, [0, 1], TypeError, "`class_labels` must be a torch.Tensor"),
    ],
)
def test_decoder_rejects_bad_inputs(tiny_joint, sample, timestep, latents, class_labels, error, message):
    with pytest.raises(error, match=message):
        tiny_joint.image_decoder(sample, timestep, latents, class_labels)


def test_decoder_accepts_the_edges_and_one_hot_labels(tiny_joint):
    with torch.no_grad():
        for timestep in (0.0, 1000.0, torch.tensor([0.0, 1000.0])):
            assert torch.isfinite(tiny_joint.image_decoder(SAMPLE, timestep, LATENTS, LABELS).sample).all()
        one_hot = torch.nn.functional.one_hot(LABELS, 3).float()
        torch.testing.assert_close(
            tiny_joint.image_decoder(SAMPLE, 500.0, LATENTS, one_hot).sample, tiny_joint.image_decoder(SAMPLE, 500.0, LATENTS, LABELS).sample
        )


def test_unconditional_decoder_rejects_labels():
    torch.manual_seed(0)
    model = LZNModel(LZNConfig.from_preset("tiny-generation")).eval()
    with pytest.raises(ValueError, match="unconditional"):
        model.image_decoder(SAMPLE, 500.0, LATENTS, LABELS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"anchors": torch.zeros(2, 7)}, r"`anchors` must have shape \[B, 16\], got \(2, 7\)"),
        ({"anchors": torch.zeros(16)}, r"`anchors` must have shape \[B, 16\]"),
        ({"anchors": torch.zeros(2, 16, dtype=torch.long)}, "`anchors` must be a floating-point"),
        ({"anchors": torch.full((2, 16), NAN)}, "`anchors` contains NaN"),
        ({"anchors": torch.zeros(2, 16), "reference_anchors": torch.zeros(5, 3)}, r"`reference_anchors` must have shape \[N, 16\]"),
        ({}, "pass `pixel_values` or `anchors`"),
    ],
)
def test_get_image_latents_checks_anchors_against_the_config(tiny_joint, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        tiny_joint.get_image_latents(**kwargs)


def test_a_channel_plan_groupnorm_cannot_split_is_a_clear_error():
    from lzn_hf import LZNImageDecoder, LZNImageDecoderConfig

    config = LZNImageDecoderConfig(image_size=28, num_channels=1, latent_dim=8, nf=48, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[])
    with pytest.raises(ValueError, match=r"144 channels, which GroupNorm cannot split into min\(144 // 4, 32\) = 32 groups"):
        LZNImageDecoder(config)
    LZNImageDecoder(LZNImageDecoderConfig(**{**config.to_dict(), "nf": 32}))  # 32, 64, 64 and their sums split evenly
