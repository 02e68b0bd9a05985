"""LZNPipeline behaves like a diffusers pipeline where users poke it (issue 14 §2), and rejects the inputs it
used to turn into garbage (issue 12 §2): every error names the argument."""

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from transformers import PreTrainedModel

import lzn_hf
from lzn_hf import LZNConfig, LZNImageDecoder, LZNLabelAnchors, LZNLabelAnchorsConfig, LZNModel, LZNPipeline

SRC = Path(__file__).resolve().parents[1] / "src" / "lzn_hf"


def tiny_parts(preset):
    torch.manual_seed(0)
    model = LZNModel(LZNConfig.from_preset(preset)).eval()
    return model.image_decoder, model.label_anchors


@pytest.fixture(scope="module")
def conditional():
    decoder, anchors = tiny_parts("tiny-joint")
    pipe = LZNPipeline(image_decoder=decoder, label_anchors=anchors)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def unconditional():
    decoder, _ = tiny_parts("tiny-generation")
    pipe = LZNPipeline(image_decoder=decoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(pipe, seed=0, **kwargs):
    return pipe(num_inference_steps=2, generator=torch.manual_seed(seed), output_type="pt", **kwargs).images


# ---------------------------------------------------------------------------------------------------------
# save_pretrained keeps the parents' signatures: variants and shards reach the components
# ---------------------------------------------------------------------------------------------------------
def test_save_pretrained_signatures_are_the_parents():
    assert inspect.signature(LZNImageDecoder.save_pretrained) == inspect.signature(PreTrainedModel.save_pretrained)
    parent = inspect.signature(DiffusionPipeline.save_pretrained).parameters
    ours = inspect.signature(LZNPipeline.save_pretrained).parameters
    assert list(ours)[: len(parent) - 2] == list(parent)[: len(parent) - 2]  # save_directory .. push_to_hub, same order
    assert {"variant", "max_shard_size", "safe_serialization", "kwargs"} <= set(ours)


def test_model_save_pretrained_binds_positional_is_main_process(tmp_path):
    model = LZNModel(LZNConfig.from_preset("tiny-joint"))
    model.save_pretrained(tmp_path / "other_rank", False)  # is_main_process=False, positionally: no files, no card
    model.save_pretrained(tmp_path / "main")
    assert not (tmp_path / "other_rank" / "README.md").exists() and (tmp_path / "main" / "README.md").is_file()


@pytest.mark.parametrize("save_kwargs, pattern", [
    ({"variant": "fp16"}, "model.fp16.safetensors"),
    ({"max_shard_size": "20KB"}, "model-00001-of-*.safetensors"),
    ({"variant": "fp16", "max_shard_size": "20KB"}, "model.fp16-00001-of-*.safetensors"),
])  # fmt: skip
def test_variant_and_shards_round_trip(tmp_path, conditional, save_kwargs, pattern):
    conditional.save_pretrained(tmp_path, **save_kwargs)
    if "variant" in save_kwargs:  # every component's weights carry the variant
        for component in ("image_decoder", "label_anchors"):
            names = [path.name for path in (tmp_path / component).glob("*.safetensors")]
            assert names and all(".fp16" in name for name in names), names
    assert list((tmp_path / "image_decoder").glob(pattern)), sorted(p.name for p in (tmp_path / "image_decoder").iterdir())
    loaded = LZNPipeline.from_pretrained(tmp_path, variant=save_kwargs.get("variant"))
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(images(loaded, labels=[1, 2]), images(conditional, labels=[1, 2]), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# the scheduler is always there: default built in __init__, registered, saved, loaded
# ---------------------------------------------------------------------------------------------------------
def test_default_scheduler_is_registered_saved_and_loaded(tmp_path, unconditional):
    assert isinstance(unconditional.scheduler, FlowMatchEulerDiscreteScheduler)
    assert unconditional.config.scheduler == ("diffusers", "FlowMatchEulerDiscreteScheduler")
    explicit_none = LZNPipeline(image_decoder=unconditional.image_decoder, scheduler=None)
    assert isinstance(explicit_none.scheduler, FlowMatchEulerDiscreteScheduler)
    unconditional.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler" / "scheduler_config.json").is_file()
    assert isinstance(LZNPipeline.from_pretrained(tmp_path).scheduler, FlowMatchEulerDiscreteScheduler)
    assert isinstance(LZNPipeline.from_pretrained(tmp_path, scheduler=None).scheduler, FlowMatchEulerDiscreteScheduler)
    heun = LZNPipeline.from_pretrained(tmp_path, scheduler=FlowMatchHeunDiscreteScheduler())
    heun.save_pretrained(tmp_path / "heun")
    assert isinstance(LZNPipeline.from_pretrained(tmp_path / "heun").scheduler, FlowMatchHeunDiscreteScheduler)


def test_scheduler_set_to_none_is_refused_when_used(tmp_path):
    decoder, _ = tiny_parts("tiny-generation")
    pipe = LZNPipeline(image_decoder=decoder)
    pipe.scheduler = None
    with pytest.raises(ValueError, match="`scheduler` is None"):
        pipe(num_images=1)
    with pytest.raises(ValueError, match="`scheduler` is None"):
        pipe.save_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# components are checked at construction
# ---------------------------------------------------------------------------------------------------------
def test_components_are_checked_at_construction():
    decoder, anchors = tiny_parts("tiny-joint")
    unconditional_decoder, _ = tiny_parts("tiny-generation")
    with pytest.raises(ValueError, match=r"`label_anchors` is missing: `image_decoder` is label-conditional \(3 classes\)"):
        LZNPipeline(image_decoder=decoder)
    with pytest.raises(ValueError, match="`label_anchors` given, but `image_decoder` is unconditional"):
        LZNPipeline(image_decoder=unconditional_decoder, label_anchors=anchors)
    other = LZNLabelAnchors(LZNLabelAnchorsConfig(num_classes=5, latent_dim=16))
    with pytest.raises(ValueError, match=r"`label_anchors` \(5 classes, latent_dim 16\) do not match `image_decoder` \(3 classes"):
        LZNPipeline(image_decoder=decoder, label_anchors=other)
    with pytest.raises(TypeError, match="`image_decoder` must be an LZNImageDecoder"):
        LZNPipeline(image_decoder=torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="`label_anchors` must be an LZNLabelAnchors"):
        LZNPipeline(image_decoder=decoder, label_anchors=decoder)


def test_conditional_folder_without_label_anchors_fails_at_load(tmp_path, conditional):
    conditional.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="`label_anchors` is missing"):
        LZNPipeline.from_pretrained(tmp_path, label_anchors=None)


# ---------------------------------------------------------------------------------------------------------
# batch_size (DDPMPipeline's name) and generator lists
# ---------------------------------------------------------------------------------------------------------
def test_batch_size_as_in_ddpm_pipeline(unconditional):
    assert "batch_size" in inspect.signature(DDPMPipeline.__call__).parameters
    by_batch_size = images(unconditional, batch_size=3)
    assert by_batch_size.shape == (3, 1, 8, 8)
    torch.testing.assert_close(by_batch_size, images(unconditional, num_images=3), rtol=0, atol=0)
    assert images(unconditional).shape[0] == 1  # default: one image
    with pytest.raises(ValueError, match="`num_images` or its diffusers name `batch_size`, not both"):
        unconditional(num_images=2, batch_size=2)


def test_generator_list_one_per_image(unconditional, conditional):
    def generators(*seeds):
        return [torch.Generator().manual_seed(seed) for seed in seeds]

    batch = unconditional(batch_size=3, num_inference_steps=2, generator=generators(5, 6, 7), output_type="pt").images
    for i, seed in enumerate((5, 6, 7)):
        single = unconditional(batch_size=1, num_inference_steps=2, generator=generators(seed), output_type="pt").images
        torch.testing.assert_close(batch[i : i + 1], single, rtol=1e-5, atol=1e-5)
    labelled = conditional(labels=[0, 2], num_inference_steps=2, generator=generators(1, 2), output_type="pt").images
    alone = conditional(labels=[2], num_inference_steps=2, generator=generators(2), output_type="pt").images
    torch.testing.assert_close(labelled[1:], alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"`generator` is a list of 2 generators, but the batch has 3 images"):
        unconditional(batch_size=3, generator=generators(1, 2))
    with pytest.raises(ValueError, match=r"`generator` is a list of 1 generators, but the batch has 4 images"):
        conditional(labels=[0, 1], num_images_per_label=2, generator=generators(1))


# ---------------------------------------------------------------------------------------------------------
# step-end callbacks and interrupt, as diffusers' pipelines take them
# ---------------------------------------------------------------------------------------------------------
def test_callback_on_step_end_sees_every_step_and_can_replace_tensors(conditional):
    seen = []

    def record(pipe, step_index, timestep, tensors):
        seen.append((step_index, float(timestep), sorted(tensors), tuple(tensors["latents"].shape)))
        return tensors

    plain = images(conditional, labels=[0, 2])
    assert torch.equal(images(conditional, labels=[0, 2], callback_on_step_end=record), plain)  # observing changes nothing
    timesteps = conditional.scheduler.timesteps.tolist()
    assert [(i, t) for i, t, _, _ in seen] == list(enumerate(timesteps)) and conditional.num_timesteps == 2
    assert all(names == ["latents"] and shape == (2, 1, 8, 8) for _, _, names, shape in seen)

    def flatten_last(pipe, step_index, timestep, tensors):  # replacing the sample after the last step is the output
        return {"latents": torch.zeros_like(tensors["latents"])} if step_index == pipe.num_timesteps - 1 else {}

    assert torch.equal(images(conditional, labels=[0, 2], callback_on_step_end=flatten_last), torch.full_like(plain, 0.5))

    codes = []
    images(conditional, labels=[1], callback_on_step_end=lambda p, i, t, k: codes.append(k["lzn_latents"]) or k,
           callback_on_step_end_tensor_inputs=["lzn_latents"])
    assert len(codes) == 2 and codes[0].shape == (1, 16)


def test_diffusers_pipeline_callbacks_and_interrupt(conditional):
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    class StopAfterFirstStep(PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            pipeline._interrupt = True  # diffusers' way to skip the remaining steps
            return callback_kwargs

    calls = []
    decoder_forward = conditional.image_decoder.forward
    conditional.image_decoder.forward = lambda *a, **k: calls.append(1) or decoder_forward(*a, **k)
    try:
        stopped = conditional(labels=[1], num_inference_steps=4, generator=torch.manual_seed(0), output_type="pt",
                              callback_on_step_end=MultiPipelineCallbacks([StopAfterFirstStep()])).images
    finally:
        del conditional.image_decoder.forward
    assert len(calls) == 1 and stopped.shape == (1, 1, 8, 8) and torch.isfinite(stopped).all()
    calls.clear()
    conditional.image_decoder.forward = lambda *a, **k: calls.append(1) or decoder_forward(*a, **k)
    try:
        images(conditional, labels=[1])  # the next call starts afresh: every step runs
    finally:
        del conditional.image_decoder.forward
    assert len(calls) == 2 and conditional.interrupt is False


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(callback_on_step_end="print"), TypeError, "`callback_on_step_end` must be callable"),
        (dict(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise"]), ValueError, "`callback_on_step_end_tensor_inputs` must be a list of names from"),
        (dict(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs="latents"), ValueError, "`callback_on_step_end_tensor_inputs`"),
        (dict(callback_on_step_end=lambda *a: {}, sampler="rk45"), ValueError, "needs sampler='scheduler'"),
    ],
)
def test_bad_callbacks_name_the_argument(conditional, kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace("[", r"\[")):
        images(conditional, labels=[1], **kwargs)


# ---------------------------------------------------------------------------------------------------------
# `from lzn_hf import LZNPipeline`, lazily
# ---------------------------------------------------------------------------------------------------------
def test_lazy_top_level_export():
    from lzn_hf.pipeline_lzn import LZNPipeline as direct

    assert lzn_hf.LZNPipeline is direct and "LZNPipeline" in dir(lzn_hf) and "LZNPipeline" in lzn_hf.__all__
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        lzn_hf.NoSuchThing  # noqa: B018
    script = (
        "import sys; import lzn_hf; assert 'diffusers' not in sys.modules, 'import lzn_hf imported diffusers'; "
        "from lzn_hf import LZNPipeline; assert 'diffusers' in sys.modules and LZNPipeline.__module__ == 'lzn_hf.pipeline_lzn'; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_only_pipeline_module_imports_diffusers_at_import_time():
    importers = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:  # module level only: imports inside functions are lazy
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name.split(".")[0] == "diffusers" for name in names):
                importers.append(str(path.relative_to(SRC)))
    assert sorted(set(importers)) == ["pipeline_lzn.py"]


# ---------------------------------------------------------------------------------------------------------
# bad inputs: a clear error naming the argument (docs/reliability.md, "Pipeline")
# ---------------------------------------------------------------------------------------------------------
CONDITIONAL_BAD_INPUTS = [
    ({"sigmas": [0.9, float("nan"), 0.1]}, ValueError, "`sigmas` contains NaN"),
    ({"sigmas": []}, ValueError, "`sigmas` must be a non-empty"),
    ({"sigmas": [0.1, 0.5, 0.9]}, ValueError, "`sigmas` must be strictly decreasing"),
    ({"sigmas": [0.5, 0.5]}, ValueError, "`sigmas` must be strictly decreasing"),
    ({"sigmas": [1.5, 0.5]}, ValueError, r"`sigmas` must be in \(0, 1\]"),
    ({"sigmas": [0.5, -0.1]}, ValueError, r"`sigmas` must be in \(0, 1\]"),
    ({"sigmas": [0.5, 0.0]}, ValueError, r"`sigmas` must be in \(0, 1\]"),
    ({"sigmas": [[0.9, 0.5]]}, ValueError, "`sigmas` must be a non-empty 1-D"),
    ({"sigmas": "0.9"}, TypeError, "`sigmas` must be a sequence of floats"),
    ({"sigmas": [0.9, "a"]}, TypeError, "`sigmas` must be a sequence of floats"),
    ({"sigmas": [0.9, 0.5], "sampler": "rk45"}, ValueError, "`sigmas` is not used by sampler='rk45'"),
    ({"num_inference_steps": 0}, ValueError, "`num_inference_steps` must be a positive integer"),
    ({"num_inference_steps": -3}, ValueError, "`num_inference_steps` must be a positive integer"),
    ({"num_inference_steps": 2.5}, ValueError, "`num_inference_steps` must be a positive integer"),
    ({"num_inference_steps": True}, ValueError, "`num_inference_steps` must be a positive integer"),
    ({"num_inference_steps": 10**9}, ValueError, "`num_inference_steps` must be at most 10,000"),
    ({"num_images_per_label": 0}, ValueError, "`num_images_per_label` must be a positive integer"),
    ({"num_images_per_label": 1.5}, ValueError, "`num_images_per_label` must be a positive integer"),
    ({"num_images": 2}, ValueError, "`num_images`: a label-conditional pipeline"),
    ({"batch_size": 2}, ValueError, "`batch_size`: a label-conditional pipeline"),
    ({"labels": None}, ValueError, "label-conditional: pass `labels`"),
    ({"labels": {0: "zero"}}, TypeError, r"`labels` must be .* got dict \(unordered"),
    ({"labels": {0, 1}}, TypeError, r"`labels` must be .* got set \(unordered"),
    ({"labels": 1.0}, TypeError, "`labels` must be a class index"),
    ({"labels": torch.tensor([0.0, 1.0])}, ValueError, "`labels` as a tensor or array must hold integer"),
    ({"labels": torch.tensor([[0, 1]])}, ValueError, "`labels` as a tensor or array must hold integer class indices in 1-D"),
    ({"labels": torch.tensor([0, 7])}, ValueError, "unknown label 7 in `labels`"),
    ({"labels": [[0]]}, ValueError, r"unknown label \[0\] in `labels`"),
    ({"labels": []}, ValueError, "`labels` is empty"),
    ({"latents": torch.full((2, 1, 8, 8), float("nan"))}, ValueError, "`latents` contains NaN or Inf"),
    ({"latents": torch.zeros(3, 1, 8, 8)}, ValueError, r"`latents` must have shape \[2, 1, 8, 8\]"),
    ({"latents": torch.zeros(2, 1, 8, 8, dtype=torch.long)}, TypeError, "`latents` must hold floats"),
    ({"latents": np.zeros((2, 1, 8, 8))}, TypeError, "`latents` must be a torch.Tensor"),
    ({"lzn_latents": torch.full((2, 16), float("inf"))}, ValueError, "`lzn_latents` contains NaN or Inf"),
    ({"lzn_latents": torch.zeros(2, 5)}, ValueError, r"`lzn_latents` must have shape \[2, 16\]"),
    ({"generator": [torch.Generator()]}, ValueError, "`generator` is a list of 1 generators, but the batch has 2"),
    ({"generator": 0}, TypeError, "`generator` must be a torch.Generator"),
    ({"generator": [torch.Generator(), 1]}, TypeError, "`generator` must be a torch.Generator"),
    ({"output_type": "latent"}, ValueError, "`output_type` must be"),
    ({"output_type": None}, ValueError, "`output_type` must be"),
    ({"sampler": "euler"}, ValueError, "`sampler` must be"),
]


@pytest.mark.parametrize("kwargs, error, message", CONDITIONAL_BAD_INPUTS, ids=[str(i) for i in range(len(CONDITIONAL_BAD_INPUTS))])
def test_bad_conditional_inputs_name_the_argument(conditional, kwargs, error, message):
    with pytest.raises(error, match=message):
        conditional(**{"labels": [0, 2], "num_inference_steps": 2, **kwargs})


UNCONDITIONAL_BAD_INPUTS = [
    ({"num_images": 0}, ValueError, "`num_images` must be a positive integer, got 0"),
    ({"batch_size": 0}, ValueError, "`batch_size` must be a positive integer, got 0"),
    ({"batch_size": -1}, ValueError, "`batch_size` must be a positive integer"),
    ({"labels": [0]}, ValueError, "unconditional: pass `num_images`"),
    ({"num_images": 2, "latents": torch.zeros(3, 1, 8, 8)}, ValueError, r"`latents` must have shape \[2, 1, 8, 8\]"),
    ({"lzn_latents": torch.zeros(2, 3, 16)}, ValueError, r"`lzn_latents` must have shape \[2, 16\]"),
    ({"lzn_latents": torch.tensor([[float("nan")] * 16])}, ValueError, "`lzn_latents` contains NaN"),
]


@pytest.mark.parametrize("kwargs, error, message", UNCONDITIONAL_BAD_INPUTS, ids=[str(i) for i in range(len(UNCONDITIONAL_BAD_INPUTS))])
def test_bad_unconditional_inputs_name_the_argument(unconditional, kwargs, error, message):
    with pytest.raises(error, match=message):
        unconditional(**{"num_inference_steps": 2, **kwargs})


def test_labels_as_integer_tensor_array_or_tuple(conditional):
    expected = images(conditional, labels=[0, 2])
    for labels in (torch.tensor([0, 2]), np.array([0, 2]), (0, 2), ["zero", "two"], [np.int64(0), 2]):
        torch.testing.assert_close(images(conditional, labels=labels), expected, rtol=0, atol=0)
    assert images(conditional, labels=torch.tensor(2)).shape[0] == 1  # a 0-d tensor: one label


def test_sigmas_with_a_scheduler_that_takes_none(unconditional):
    heun = LZNPipeline(image_decoder=unconditional.image_decoder, scheduler=FlowMatchHeunDiscreteScheduler())
    with pytest.raises(ValueError, match="`sigmas`: FlowMatchHeunDiscreteScheduler does not accept a custom sigma schedule"):
        heun(num_images=1, sigmas=[0.9, 0.5])


def test_custom_sigmas_accepted_as_tensor(conditional):
    from_list = images(conditional, labels=[1], sigmas=[1.0, 0.6, 0.3])
    torch.testing.assert_close(images(conditional, labels=[1], sigmas=torch.tensor([1.0, 0.6, 0.3])), from_list, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# dtypes: noise and latents in the decoder's dtype
# ---------------------------------------------------------------------------------------------------------
def test_decoder_inputs_follow_the_decoder_dtype():
    decoder, anchors = tiny_parts("tiny-joint")
    pipe = LZNPipeline(image_decoder=decoder.to(torch.float64), label_anchors=anchors)  # label anchors stay float32
    pipe.set_progress_bar_config(disable=True)
    seen = []
    hook = decoder.register_forward_pre_hook(lambda module, args: seen.append((args[0].dtype, args[2].dtype)))
    try:
        output = pipe(labels=[0, 1], num_inference_steps=2, generator=torch.manual_seed(0), output_type="pt").images
        pipe(labels=[0], lzn_latents=torch.zeros(1, 16), latents=torch.zeros(1, 1, 8, 8), num_inference_steps=1, output_type="pt")
    finally:
        hook.remove()
    assert seen and set(seen) == {(torch.float64, torch.float64)}, seen
    assert output.dtype == torch.float64 and torch.isfinite(output).all()


# ---------------------------------------------------------------------------------------------------------
# save_pretrained(push_to_hub=True) uploads the finished folder (code and card included); no network
# ---------------------------------------------------------------------------------------------------------
def test_save_pretrained_push_to_hub_uploads_code_and_card(tmp_path, monkeypatch, conditional):
    import types

    from lzn_hf import pipeline_lzn

    uploaded = {}
    monkeypatch.setattr(pipeline_lzn, "create_repo", lambda repo_id, **kwargs: types.SimpleNamespace(repo_id=repo_id))

    def upload_folder(self, folder, repo_id, **kwargs):
        files = {str(path.relative_to(folder)) for path in Path(folder).rglob("*") if path.is_file()}
        uploaded.update(repo_id=repo_id, files=files, kwargs=kwargs, card=(Path(folder) / "README.md").read_text(),
                        index=(Path(folder) / "model_index.json").read_text())

    monkeypatch.setattr(DiffusionPipeline, "_upload_folder", upload_folder)
    conditional.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="someone/lzn-code", include_code=True, commit_message="hi")
    assert uploaded["repo_id"] == "someone/lzn-code" and uploaded["kwargs"].get("commit_message") == "hi"
    assert {"pipeline_lzn.py", "image_decoder/modeling_lzn.py", "label_anchors/latent_flow.py", "README.md"} <= uploaded["files"]
    assert '"pipeline_lzn"' in uploaded["index"] and "DiffusionPipeline.from_pretrained" in uploaded["card"]
