"""Model cards: written by save_pretrained (pipelines, LZNModel, LZNForImageClassification) and by
`write_model_card` (training scripts); YAML metadata; a usage snippet that runs; push_to_hub uploads them."""

import re
import types

import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData

from lzn_hf import LZNConfig, LZNForImageClassification, LZNModel, lzn_image_processor
from lzn_hf.model_cards import detect_kind, is_generated_boilerplate, model_card, prepare_upload, write_model_card
from lzn_hf.pipeline_lzn import LZNPipeline


def python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def run_usage_snippet(folder, monkeypatch):
    """Run the card's usage snippet from the folder's parent, as a user beside the folder would."""
    card = ModelCard.load(folder / "README.md")
    (snippet,) = python_blocks(card.text)
    monkeypatch.chdir(folder.parent)
    namespace = {}
    exec(compile(snippet, str(folder / "README.md"), "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def joint_model():
    torch.manual_seed(0)
    return LZNModel(LZNConfig.from_preset("tiny-joint")).eval()


def test_pipeline_save_pretrained_writes_a_card_whose_snippet_runs(tmp_path, joint_model, monkeypatch):
    pipe = LZNPipeline(image_decoder=joint_model.image_decoder, label_anchors=joint_model.label_anchors)
    monkeypatch.chdir(tmp_path)
    pipe.save_pretrained("pipe")  # the snippet names the folder as it was passed
    card = ModelCard.load(tmp_path / "pipe" / "README.md")
    assert card.data.library_name == "lzn_hf"
    assert card.data.pipeline_tag == "unconditional-image-generation"
    assert {"lzn", "latent-zoning-networks", "class-conditional-image-generation"} <= set(card.data.tags)
    assert 'LZNPipeline.from_pretrained("pipe")' in card.text and 'labels=["zero"]' in card.text
    namespace = run_usage_snippet(tmp_path / "pipe", monkeypatch)
    assert len(namespace["images"]) == 4
    assert LZNPipeline.from_pretrained(tmp_path / "pipe").label_anchors is not None  # the card does not disturb loading


def test_unconditional_pipeline_card(tmp_path):
    torch.manual_seed(0)
    model = LZNModel(LZNConfig.from_preset("tiny-generation"))
    LZNPipeline(image_decoder=model.image_decoder).save_pretrained(tmp_path / "gen")
    card = ModelCard.load(tmp_path / "gen" / "README.md")
    assert "unconditional-image-generation" in card.data.tags and "pipe(num_images=4" in card.text


def test_model_and_classifier_cards(tmp_path, joint_model, monkeypatch):
    joint_model.save_pretrained(tmp_path / "model")
    card = ModelCard.load(tmp_path / "model" / "README.md")
    assert (card.data.library_name, card.data.pipeline_tag) == ("lzn_hf", "image-feature-extraction")
    namespace = run_usage_snippet(tmp_path / "model", monkeypatch)
    assert namespace["anchors"].shape == (2, 16) and namespace["classes"].shape == (2,)

    classifier = LZNForImageClassification.from_pretrained(tmp_path / "model").eval()
    classifier.build_anchor_bank(torch.rand(12, 1, 8, 8) * 2 - 1)
    classifier.save_pretrained(tmp_path / "classifier")
    lzn_image_processor(8, 1).save_pretrained(tmp_path / "classifier")
    write_model_card(tmp_path / "classifier")  # again, now that the processor is there: the pipeline lines appear
    card = ModelCard.load(tmp_path / "classifier" / "README.md")
    assert card.data.pipeline_tag == "image-classification" and "12 reference anchors" in card.text
    namespace = run_usage_snippet(tmp_path / "classifier", monkeypatch)
    assert namespace["predictions"].shape == (2,)
    assert detect_kind(tmp_path / "classifier") == "classifier"


def test_parts_write_no_card(tmp_path, joint_model):
    joint_model.image_encoder.save_pretrained(tmp_path / "encoder")
    assert not (tmp_path / "encoder" / "README.md").exists()


def test_save_pretrained_keeps_an_existing_card(tmp_path, joint_model):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "README.md").write_text("# my own card\n")
    joint_model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "README.md").read_text() == "# my own card\n"


def test_training_scripts_metadata(tmp_path, joint_model):
    """What the training scripts pass: datasets, metrics, a base model, extra text."""
    joint_model.save_pretrained(tmp_path / "model")
    path = write_model_card(
        tmp_path / "model",
        datasets=["sklearn-digits"],
        metrics={"accuracy": 0.9312, "accuracy/batch_mode": 0.9, "fid": 12.5},
        base_model="someone/lzn-base",
        extra_text="## Training\n\n`accelerate launch examples/train_joint.py`",
        repo_id="someone/lzn-digits",
        license="mit",
        tags=["digits"],
    )
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["library_name"] == "lzn_hf" and data["datasets"] == ["sklearn-digits"]
    assert data["metrics"] == ["accuracy", "fid"] and data["base_model"] == "someone/lzn-base" and "digits" in data["tags"]
    results = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert results == {"accuracy": 0.9312, "accuracy/batch_mode": 0.9, "fid": 12.5}
    assert "| accuracy | 0.9312 |" in card.text and "## Training" in card.text
    assert 'LZNModel.from_pretrained("someone/lzn-digits")' in card.text


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "diffusion"}, "unknown model card kind"),
    ({"metrics": {"accuracy": float("nan")}}, "finite number"),
    ({"metrics": {"accuracy": "high"}}, "finite number"),
    ({"datasets": "cifar10"}, "list of dataset names"),
])  # fmt: skip
def test_bad_inputs_raise(tmp_path, joint_model, kwargs, message):
    joint_model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        model_card(tmp_path, **kwargs)


def test_unknown_folder_raises(tmp_path):
    with pytest.raises(ValueError, match="neither model_index.json"):
        write_model_card(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# push_to_hub, without the network: the Hub calls are replaced, the uploaded README is inspected
# ---------------------------------------------------------------------------------------------------------
def placeholder_card(library):
    return ModelCard.from_template(ModelCardData(library_name=library), model_description="This model card has been automatically generated.")


@pytest.mark.parametrize("hub_card, expect_lzn_card", [(placeholder_card("diffusers"), True), (ModelCard("---\nlicense: mit\n---\n# Hand-written\n"), False)])
def test_pipeline_push_to_hub_uploads_the_lzn_card(monkeypatch, joint_model, hub_card, expect_lzn_card):
    from diffusers import DiffusionPipeline
    from diffusers.utils import hub_utils

    uploaded = {}
    monkeypatch.setattr(hub_utils, "create_repo", lambda repo_id, **kwargs: types.SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(hub_utils, "load_or_create_model_card", lambda repo_id, **kwargs: hub_card)
    monkeypatch.setattr(DiffusionPipeline, "_upload_folder", lambda self, folder, repo_id, **kwargs: uploaded.update(card=open(f"{folder}/README.md").read()))
    pipe = LZNPipeline(image_decoder=joint_model.image_decoder, label_anchors=joint_model.label_anchors)
    pipe.push_to_hub("someone/lzn-tiny")
    card = ModelCard(uploaded["card"])
    if expect_lzn_card:
        assert card.data.library_name == "lzn_hf" and 'LZNPipeline.from_pretrained("someone/lzn-tiny")' in card.text
    else:
        assert "# Hand-written" in card.text  # a card already on the Hub is kept, as diffusers does


def test_model_push_to_hub_uploads_the_lzn_card(monkeypatch, joint_model):
    from transformers import PreTrainedModel
    from transformers.utils import hub

    uploaded = {}
    monkeypatch.setattr(hub, "hf_api", lambda: types.SimpleNamespace(create_repo=lambda repo_id, **kwargs: types.SimpleNamespace(repo_id=repo_id)))
    monkeypatch.setattr(hub, "create_and_tag_model_card", lambda repo_id, tags=None, token=None: placeholder_card("transformers"))
    monkeypatch.setattr(PreTrainedModel, "_upload_modified_files", lambda self, folder, repo_id, *args, **kwargs: uploaded.update(card=open(f"{folder}/README.md").read()))
    joint_model.push_to_hub("someone/lzn-model")
    card = ModelCard(uploaded["card"])
    assert card.data.library_name == "lzn_hf" and 'LZNModel.from_pretrained("someone/lzn-model")' in card.text


def test_prepare_upload_policy(tmp_path, joint_model):
    joint_model.save_pretrained(tmp_path)
    placeholder_card("transformers").save(tmp_path / "README.md")
    assert is_generated_boilerplate(ModelCard.load(tmp_path / "README.md"))
    assert prepare_upload(tmp_path, "someone/x") and not is_generated_boilerplate(ModelCard.load(tmp_path / "README.md"))
    assert not prepare_upload(tmp_path, "someone/y")  # now an lzn_hf card: kept
