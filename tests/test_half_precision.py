"""Half precision (issue 14 §1): every model part runs in float16 and bfloat16 on CPU, the latent flows
compute in float32 and hand back the caller's dtype, and results stay close to float32."""

import copy

import pytest
import torch

from lzn_hf import LZNConfig, LZNForImageClassification, LZNImageDecoder, LZNModel
from lzn_hf.configuration_lzn import LZN_PRESETS

HALF_DTYPES = [torch.float16, torch.bfloat16]
# relative error (Frobenius norm) against float32: ~1e-3 measured for float16, ~1e-2 for bfloat16 (8-bit mantissa)
TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 6e-2}


def rel_err(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def nontrivial_config():
    """tiny-joint with init_scale 1 everywhere: the decoder's output is not numerically zero at init."""
    preset = copy.deepcopy(LZN_PRESETS["tiny-joint"])
    preset["image_encoder_config"]["init_scale"] = 1.0
    preset["image_decoder_config"]["init_scale"] = 1.0
    return LZNConfig(**preset)


@pytest.fixture(scope="module")
def model32():
    torch.manual_seed(0)
    return LZNModel(nontrivial_config()).eval()


def as_dtype(model, dtype):
    copy_ = type(model)(model.config)
    copy_.load_state_dict(model.state_dict())
    return copy_.to(dtype).eval()


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    return {
        "images": torch.rand(4, 1, 8, 8, generator=generator) * 2 - 1,
        "latents": torch.randn(4, 16, generator=generator),
        "labels": torch.tensor([0, 1, 2, 0]),
    }


def check(actual, expected, dtype):
    assert actual.dtype == dtype
    assert torch.isfinite(actual).all()
    assert rel_err(actual, expected) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_encoder_and_model_forward(model32, inputs, dtype):
    model = as_dtype(model32, dtype)
    with torch.no_grad():
        expected = model32(inputs["images"], output_latents=True, noise=inputs["latents"])
        for images in (inputs["images"].to(dtype), inputs["images"]):  # float32 input is cast to the network's dtype
            output = model(images, output_latents=True, noise=inputs["latents"].to(dtype))
            check(output.anchors, expected.anchors, dtype)
            check(output.latents, expected.latents, dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("timestep", [999.0, 500.0, 1.0])
def test_decoder(model32, inputs, dtype, timestep):
    decoder = as_dtype(model32, dtype).image_decoder
    args = (inputs["images"], timestep, inputs["latents"], inputs["labels"])
    with torch.no_grad():
        expected = model32.image_decoder(*args).sample
        actual = decoder(inputs["images"].to(dtype), timestep, inputs["latents"].to(dtype), inputs["labels"]).sample
    assert expected.abs().mean() > 1e-2  # a non-trivial network
    check(actual, expected, dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_decoder_fourier_embedding_and_scale_by_sigma(dtype, tmp_path):
    """from_pretrained(dtype=...) keeps the Fourier frequencies float32 (float16 would shift the features by radians)."""
    torch.manual_seed(0)
    preset = copy.deepcopy(LZN_PRESETS["tiny-generation"])
    preset["image_decoder_config"]["init_scale"] = 1.0
    decoder32 = LZNModel(LZNConfig(**preset)).image_decoder.eval()
    decoder32.save_pretrained(tmp_path)
    decoder = LZNImageDecoder.from_pretrained(tmp_path, dtype=dtype).eval()
    assert decoder.dtype == dtype and decoder.network.time_proj.W.dtype == torch.float32
    images, latents = torch.rand(2, 1, 8, 8) * 2 - 1, torch.randn(2, 16)
    with torch.no_grad():
        expected = decoder32(images, 990.0, latents).sample
        actual = decoder(images.to(dtype), 990.0, latents.to(dtype)).sample
    check(actual, expected, dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_label_encoder_and_decoder(model32, inputs, dtype):
    """The label flows' logit bias overflows float16: they run in float32 and return the caller's dtype."""
    model = as_dtype(model32, dtype)
    noise = inputs["latents"][:3]
    with torch.no_grad():
        expected_latents = model32.get_label_latents([0, 1, 2], noise=noise)
        latents = model.get_label_latents([0, 1, 2], noise=noise.to(dtype))
        check(latents, expected_latents, dtype)
        expected = model32.classify_latents(inputs["latents"], class_weights=torch.tensor([0.5, 0.25, 0.25]))
        result = model.classify_latents(inputs["latents"].to(dtype), class_weights=torch.tensor([0.5, 0.25, 0.25]))
    assert torch.equal(result.predictions, expected.predictions)
    for name in ("logits", "posteriors", "points"):
        check(getattr(result, name), getattr(expected, name), dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_classifier(model32, inputs, dtype):
    torch.manual_seed(0)
    classifier32 = LZNForImageClassification(model32.config)
    classifier32.load_state_dict(model32.state_dict(), strict=False)
    classifier32.build_anchor_bank(torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    classifier = as_dtype(classifier32.eval(), dtype)
    assert classifier.anchor_bank.dtype == dtype
    with torch.no_grad():
        for kwargs in ({}, {"use_anchor_bank": False}):
            expected = classifier32(inputs["images"], **kwargs).logits
            logits = classifier(inputs["images"].to(dtype), **kwargs).logits
            check(logits, expected, dtype)
            assert torch.equal(logits.argmax(-1), expected.argmax(-1))


def _dtype_keywords():
    """`dtype=` (diffusers >= 0.40, transformers 5) and the older `torch_dtype=` (diffusers 0.37-0.39; deprecated since)."""
    import diffusers
    from packaging.version import Version

    return ["dtype", "torch_dtype"] if Version(diffusers.__version__) >= Version("0.40") else ["torch_dtype"]


@pytest.mark.parametrize("keyword", _dtype_keywords())
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_pipeline_from_pretrained_torch_dtype(model32, dtype, keyword, tmp_path):
    """`LZNPipeline.from_pretrained(folder, dtype=...)` (or `torch_dtype=`) generates finite images close to float32's."""
    from lzn_hf.pipeline_lzn import LZNPipeline

    LZNPipeline(image_decoder=model32.image_decoder, label_anchors=model32.label_anchors).save_pretrained(tmp_path)
    call = dict(labels=[0, 2], num_inference_steps=3, output_type="pt")
    expected = LZNPipeline.from_pretrained(tmp_path)(generator=torch.manual_seed(0), **call).images
    pipe = LZNPipeline.from_pretrained(tmp_path, **{keyword: dtype})
    assert pipe.image_decoder.dtype == pipe.label_anchors.dtype == dtype
    images = pipe(generator=torch.manual_seed(0), **call).images
    assert images.shape == expected.shape and torch.isfinite(images).all()
    assert rel_err(images, expected) < TOLERANCE[dtype]
