"""The pieces of lzn_hf.training that every update goes through (in-process, fast): the RF draws of one
micro-batch, and `prepare_training` / `TrainingLoop` on a toy model with gradient accumulation, written as the
scripts write their update step.

The scripts themselves (resume, 2 processes, SIGKILL) are run end to end in test_training.py.
"""

import json

import pytest
import torch
from torch import nn

from lzn_hf import training as tu


def test_rectified_flow_inputs_are_rows_of_a_global_draw():
    """Two processes with 4 images each draw what one process with the 8 draws (flips, noises, sigmas)."""
    images = torch.rand(8, 1, 4, 4) * 2 - 1
    whole = tu.rectified_flow_inputs(images, tu.step_generator(3, 5), 6, True, 0, 1)
    halves = [tu.rectified_flow_inputs(images[4 * r : 4 * (r + 1)], tu.step_generator(3, 5), 6, True, r, 2) for r in (0, 1)]
    for a, b, c in zip(whole, *halves):
        torch.testing.assert_close(a, torch.cat([b, c]), rtol=0, atol=0)
    flipped, latent_noise, image_noise, sigmas = whole
    assert latent_noise.shape == (8, 6) and image_noise.shape == images.shape and sigmas.shape == (8,)
    assert ((sigmas >= 0) & (sigmas < 1 - tu.RF_T_MIN + 1e-6)).all()
    mirrored = torch.tensor([torch.equal(f, i.flip(-1)) and not torch.equal(f, i) for f, i in zip(flipped, images)])
    assert 0 < mirrored.sum() < 8 and all(torch.equal(f, i) for f, i, m in zip(flipped, images, mirrored) if not m)
    unflipped = tu.rectified_flow_inputs(images, tu.step_generator(3, 5), 6, False, 0, 1)
    assert torch.equal(unflipped[0], images) and not torch.equal(unflipped[1], latent_noise)  # one draw fewer first


class ToyLZN(nn.Module):
    def __init__(self):
        super().__init__()
        self.image_encoder = nn.Linear(4, 1)


class ToyTrainingModule(nn.Module):
    def __init__(self, lzn):
        super().__init__()
        self.lzn = lzn

    def forward(self, pixel_values):
        return self.lzn.image_encoder(pixel_values.flatten(1)).pow(2).mean()


@pytest.fixture
def accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    yield Accelerator(cpu=True, gradient_accumulation_steps=2)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_training_loop_accumulates_skips_logs_and_times(accelerator, tmp_path):
    args = tu.resolve_recipe(tu.TrainingArguments(
        config="tiny-representation", output_dir=str(tmp_path), train_batch_size=2, gradient_accumulation_steps=2, max_train_steps=3,
        logging_steps=1, checkpointing_steps=0, report_to="none", lr_warmup_steps=0, learning_rate_encoder=0.1))
    torch.manual_seed(0)
    model = ToyLZN()
    ema = tu.ModuleEMA(model, 0.9, parts=("image_encoder",))
    optimizer, lr_scheduler = tu.adam_with_warmup({"image_encoder": (model.image_encoder, args.learning_rate_encoder)}, args.lr_warmup_steps,
                                                  **args.adam_options())
    dataset = tu.TensorImageDataset(torch.rand(10, 1, 2, 2))
    training_module, loop = tu.prepare_training(accelerator, args, ToyTrainingModule(model), optimizer, lr_scheduler, ema,
                                                dataset, "toy", extra_logs=lambda: {"extra": 7.0})
    assert loop.global_batch_size == 2 and loop.model is model and loop.global_step == 0

    weights, ends = [], []
    for micro_batch, batch in enumerate(loop.batches()):
        with accelerator.accumulate(training_module):
            loss = training_module(batch["pixel_values"])
            if micro_batch == 2:  # the first micro-batch of update 2: the whole update is dropped
                loss = loss * float("nan")
            if loop.all_processes_finite(loss):
                accelerator.backward(loss)
                loop.record(loss=loss)
            loop.clip_and_step()
        ends.append(loop.end_micro_batch())
        if ends[-1]:
            weights.append(model.image_encoder.weight.detach().clone())
    # 2 micro-batches per update; the 5th (last) batch of the epoch ends update 3 alone (Accelerate syncs at the end of
    # the data loader, as resume_position assumes); then the loop stops
    assert ends == [False, True, False, True, True] and loop.global_step == 3
    assert loop.counters["skipped_steps"] == 1 and ema.num_updates == {"image_encoder": 2}
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    history = [json.loads(line) for line in (tmp_path / "logs" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3] and "grad_norm" not in history[1]  # update 2: no clip, no step
    assert {"loss", "grad_norm", "lr/image_encoder", "skipped_steps", "extra"} <= set(history[2])
    assert history[2]["skipped_steps"] == 1 and history[2]["extra"] == 7.0
    timing = loop.finish()
    assert timing["train_updates"] == 3 and timing["skipped_steps"] == 1 and timing["num_processes"] == 1
    averaged = loop.averaged_model()
    assert not averaged.training and not torch.equal(averaged.image_encoder.weight, model.image_encoder.weight)
