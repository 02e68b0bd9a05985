"""The training loop's plumbing: the accelerator, the data stream, and the update bookkeeping all scripts share.

A script builds its model, its loss module (one ``forward``, wrapped by DDP), its optimizer and EMA, then:

    training_module, loop = prepare_training(accelerator, args, training_module, optimizer, lr_scheduler, ema, ...)
    for batch in loop.batches():                      # epoch after epoch, from where a resumed run left off
        with accelerator.accumulate(training_module):
            loss = training_module(...)               # the case study's forward
            loop.backward_and_step(loss, loss=loss)   # skip if non-finite anywhere, backward, clip, step
        loop.end_micro_batch()                        # after an update: EMA, logs, checkpoint
    timing = loop.finish()                            # final checkpoint, wall times
    ema_model = loop.averaged_model()                 # then export, on the main process
    end_training(accelerator, args, "commit message") # trackers closed, --push_to_hub

:func:`make_accelerator`, :func:`iterate_batches`, :func:`resume_position` and :class:`RunningMeans` are the
pieces the loop is built from.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
from tqdm.auto import tqdm

from .checkpoints import push_folder_to_hub, register_checkpoint_hooks, resume_from_checkpoint, save_checkpoint
from .data import EpochShuffleSampler, step_generator
from .optimization import ModuleEMA, TrainingCounters, all_processes_finite, freeze_module, trainable_parameters
from .recipes import global_to_local_batch_size
from .reporting import TrainingHistory, tracker_config

logger = logging.getLogger(__name__)


def make_accelerator(args: argparse.Namespace, find_unused_parameters: bool = False):
    """diffusers-style ``Accelerator`` with a ``ProjectConfiguration`` (trackers log to ``output_dir/logging_dir``)
    and Python logging set up (INFO on the main process, warnings elsewhere).

    ``find_unused_parameters``: DDP must not wait for gradients of parts that stop training (a frozen decoder).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    import diffusers
    import transformers

    for library in (transformers, diffusers):
        (library.utils.logging.set_verbosity_warning if accelerator.is_main_process else library.utils.logging.set_verbosity_error)()
        library.utils.logging.disable_progress_bar()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    return accelerator


def iterate_batches(accelerator, dataloader, sampler: EpochShuffleSampler, start_epoch: int = 0, skip_batches: int = 0):
    """Batches of the prepared ``dataloader``, epoch after epoch without end (each epoch's order fixed by
    ``sampler``'s seed), starting ``skip_batches`` into ``start_epoch`` (where a resumed run left off)."""
    epoch = start_epoch
    while True:
        sampler.set_epoch(epoch)
        dataloader.set_epoch(epoch)
        loader = dataloader
        if epoch == start_epoch and skip_batches:
            loader = accelerator.skip_first_batches(dataloader, skip_batches)
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def resume_position(global_step: int, batches_per_epoch: int, gradient_accumulation_steps: int) -> Tuple[int, int]:
    """``(epoch, batches to skip in it)`` of the update after ``global_step`` (updates take ``accumulation``
    batches; the last update of an epoch may take fewer)."""
    updates_per_epoch = math.ceil(batches_per_epoch / gradient_accumulation_steps)
    return global_step // updates_per_epoch, (global_step % updates_per_epoch) * gradient_accumulation_steps


class RunningMeans:
    """Means of logged quantities between two logging steps, over micro-batches and processes."""

    def __init__(self):
        self.sums: Dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, **values: torch.Tensor) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value.detach().float()
        self.count += 1

    def reduce(self, accelerator) -> Dict[str, float]:
        """The means (averaged over processes: a collective, call it on every process), then reset."""
        if not self.count:
            return {}
        keys = sorted(self.sums)
        values = accelerator.reduce(torch.stack([self.sums[k] for k in keys]), reduction="mean") / self.count
        self.sums, self.count = {}, 0
        return {k: v.item() for k, v in zip(keys, values)}


def prepare_training(accelerator, args: argparse.Namespace, training_module: torch.nn.Module, optimizer, lr_scheduler,
                     ema: ModuleEMA, train_dataset, tracker_project: str, progress_postfix: Optional[Mapping[str, str]] = None,
                     extra_logs: Optional[Callable[[], Mapping[str, float]]] = None):
    """The set-up every script does once its model, loss module, optimizer and EMA exist.

    * the per-process batch B (``--train_batch_size``, else the recipe's global batch / processes); sets
      ``args.global_batch_size`` to N = B x processes, the anchors that define the zones;
    * a ``DataLoader`` of ``train_dataset`` (``{"pixel_values": [B, C, H, W], "labels": [B]}`` batches, last partial
      batch dropped) ordered by an :class:`EpochShuffleSampler` seeded by ``--seed``;
    * checkpoint hooks writing ``save_pretrained`` folders (the LZN model is ``training_module.lzn``), the
      skipped-update counter and ``lr_scheduler`` registered for checkpointing;
    * ``accelerator.prepare`` of the loss module, the optimizer and the loader; the EMA moved to the device;
    * trackers (main process) named ``tracker_project``, configured with the flags;
    * ``--resume_from_checkpoint``: weights, EMA, optimizer, scheduler, RNG states and counters; the data position
      follows from the step.

    Args:
        progress_postfix: progress-bar fields, ``{label: format of the logs}``, e.g. ``{"loss": "{loss:.3f}"}``.
        extra_logs: values logged with the running means at every logging step (called after the update).
    Returns:
        ``(prepared training_module, TrainingLoop)``.
    """
    num_processes = accelerator.num_processes
    batch_size = global_to_local_batch_size(args, num_processes)
    args.global_batch_size = batch_size * num_processes  # N: the anchors that define the zones
    if len(train_dataset) < batch_size * num_processes:
        raise ValueError(f"{len(train_dataset)} training images are fewer than one global batch ({batch_size} x {num_processes})")
    sampler = EpochShuffleSampler(len(train_dataset), seed=args.seed)
    train_dataloader = torch.utils.data.DataLoader(
        train_dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=args.dataloader_num_workers
    )
    counters = TrainingCounters(skipped_steps=0)
    register_checkpoint_hooks(accelerator, ema, type(training_module.lzn))
    accelerator.register_for_checkpointing(counters, lr_scheduler)
    training_module, optimizer, train_dataloader = accelerator.prepare(training_module, optimizer, train_dataloader)
    ema.to(accelerator.device)
    if accelerator.is_main_process and args.report_to:
        accelerator.init_trackers(tracker_project, config=tracker_config(args))

    global_step = resume_from_checkpoint(accelerator, args.resume_from_checkpoint, Path(args.output_dir))
    logger.info(f"***** training: updates {global_step} -> {args.max_train_steps}, global batch {batch_size} x "
                f"{num_processes} processes, {len(train_dataset)} images *****")
    loop = TrainingLoop(accelerator, args, training_module, optimizer, lr_scheduler, ema, sampler, train_dataloader, counters,
                        global_step, progress_postfix or {"loss": "{loss:.3f}"}, extra_logs)
    return training_module, loop


class TrainingLoop:
    """The state of a run between updates and the bookkeeping of each update (built by :func:`prepare_training`).

    ``global_step`` counts updates (skipped ones included); an update is ``--gradient_accumulation_steps``
    micro-batches. ``frozen`` names the parts of the model whose EMA no longer steps (:meth:`freeze`).
    """

    def __init__(self, accelerator, args, training_module, optimizer, lr_scheduler, ema: ModuleEMA, sampler, train_dataloader,
                 counters: TrainingCounters, global_step: int, progress_postfix: Mapping[str, str],
                 extra_logs: Optional[Callable[[], Mapping[str, float]]]):
        self.accelerator, self.args = accelerator, args
        self.output_dir = Path(args.output_dir)
        self.model = accelerator.unwrap_model(training_module).lzn  # the LZN model the loss module trains
        self.optimizer, self.lr_scheduler, self.ema, self.counters = optimizer, lr_scheduler, ema, counters
        self.sampler, self.train_dataloader = sampler, train_dataloader
        self.progress_postfix, self.extra_logs = progress_postfix, extra_logs
        self.start_position = resume_position(global_step, len(train_dataloader), args.gradient_accumulation_steps)
        self.history = TrainingHistory(self.output_dir / args.logging_dir / "history.jsonl")
        self.progress_bar = tqdm(range(args.max_train_steps), initial=global_step, desc="steps",
                                 disable=not accelerator.is_local_main_process)
        self.frozen = set()
        self.running, self.micro_step, self.bad_update, self.grad_norm = RunningMeans(), 0, False, None
        self.global_step = self.steps_at_start = global_step
        self.train_start = time.time()

    def batches(self):
        """Training batches until ``--max_train_steps`` updates are done, from where a resumed run left off."""
        first_epoch, batches_to_skip = self.start_position
        for batch in iterate_batches(self.accelerator, self.train_dataloader, self.sampler, first_epoch, batches_to_skip):
            if self.global_step >= self.args.max_train_steps:
                break
            yield batch

    def noise_generator(self) -> torch.Generator:
        """This micro-batch's generator, seeded by ``(--seed, micro-batch index)``: the same on every process and
        after a resume (draw this process's rows of global tensors from it: :func:`~lzn_hf.training.data.rank_randn`)."""
        step = self.global_step * self.args.gradient_accumulation_steps + self.micro_step
        return step_generator(self.args.seed, step, self.accelerator.device)

    def backward_and_step(self, loss: torch.Tensor, /, **logged: torch.Tensor) -> None:
        """Inside ``accelerator.accumulate``: the backward of the scalar ``loss`` and, at the last micro-batch of an
        update, the gradient-norm clip (``--max_grad_norm``, parameters that still train), optimizer and scheduler
        steps, and zeroed gradients.

        A loss that is non-finite on any process drops the whole update on every process (no backward, no step);
        so does a non-finite gradient norm. ``logged``: scalar tensors averaged into the next logs.
        """
        accelerator = self.accelerator
        if all_processes_finite(accelerator, loss):
            accelerator.backward(loss)
            self.running.add(**logged)
        else:
            self.bad_update = True  # every process drops the whole update
        self.grad_norm = None
        if accelerator.sync_gradients:
            if not self.bad_update:
                self.grad_norm = accelerator.clip_grad_norm_(trainable_parameters(self.model), self.args.max_grad_norm)
                self.bad_update = not torch.isfinite(self.grad_norm).item()
            if not self.bad_update:
                self.optimizer.step()
                self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)

    def end_micro_batch(self) -> bool:
        """After ``accelerator.accumulate``: count the micro-batch and, when it ended an update, the update's
        bookkeeping: the skipped-update counter or the EMA step, the progress bar, logs every ``--logging_steps``
        (trackers, ``logs/history.jsonl``, progress bar) and a ``checkpoint-N`` every ``--checkpointing_steps``.
        Returns True when an update ended (``global_step`` is then its number)."""
        self.micro_step += 1
        if not self.accelerator.sync_gradients:
            return False
        if self.bad_update:
            self.counters["skipped_steps"] += 1
            if self.accelerator.is_main_process:
                logger.warning(f"update {self.global_step + 1}: non-finite loss or gradient norm on some process, skipped")
        else:
            self.ema.step(self.model, skip=self.frozen)
        self.global_step += 1
        self.micro_step, self.bad_update = 0, False
        self.progress_bar.update(1)
        args = self.args
        if self.global_step % args.logging_steps == 0 or self.global_step == args.max_train_steps:
            self.log()
        if args.checkpointing_steps and self.global_step % args.checkpointing_steps == 0:
            save_checkpoint(self.accelerator, self.output_dir, self.global_step, args.checkpoints_total_limit)
        return True

    def log(self) -> Dict[str, float]:
        """Means since the last logs (over micro-batches and processes: call on every process), the last gradient
        norm, the learning rate of each parameter group, the skipped updates and ``extra_logs``; written to the
        trackers and the history, shown on the progress bar."""
        logs = self.running.reduce(self.accelerator)
        if self.grad_norm is not None:
            logs["grad_norm"] = self.grad_norm.item()
        learning_rates = zip(self.optimizer.param_groups, self.lr_scheduler.get_last_lr())
        logs.update({f"lr/{group['name']}": lr for group, lr in learning_rates})
        logs["skipped_steps"] = self.counters["skipped_steps"]
        if self.extra_logs is not None:
            logs.update(self.extra_logs())
        self.accelerator.log(logs, step=self.global_step)
        if self.accelerator.is_main_process:
            self.history.append(self.global_step, logs)
        if "loss" in logs:
            self.progress_bar.set_postfix({label: fmt.format_map(logs) for label, fmt in self.progress_postfix.items()})
        return logs

    def freeze(self, part: str) -> None:
        """Stop training ``model.<part>`` (:func:`freeze_module`) and its EMA (the decoder freeze of case study 3)."""
        freeze_module(getattr(self.model, part))
        self.frozen.add(part)

    def finish(self) -> Dict[str, Any]:
        """After the last update: close the progress bar, save a last ``checkpoint-N`` if the periodic ones missed
        the end (a resumable end state), wait for every process. Returns the timing metrics: ``train_updates``,
        ``train_wall_time_s``, ``seconds_per_update``, ``skipped_steps``, ``num_processes``."""
        self.progress_bar.close()
        train_time = time.time() - self.train_start
        args, updates = self.args, self.global_step - self.steps_at_start
        if args.checkpointing_steps and self.global_step % args.checkpointing_steps and updates > 0:
            save_checkpoint(self.accelerator, self.output_dir, self.global_step, args.checkpoints_total_limit)
        self.accelerator.wait_for_everyone()
        return {"train_updates": updates, "train_wall_time_s": train_time, "seconds_per_update": train_time / max(1, updates),
                "skipped_steps": self.counters["skipped_steps"], "num_processes": self.accelerator.num_processes}

    def averaged_model(self):
        """A CPU copy of the LZN model holding the EMA weights, in eval mode."""
        return self.ema.averaged_model(self.model).cpu()


def end_training(accelerator, args: argparse.Namespace, commit_message: str) -> None:
    """Close the trackers, then ``--push_to_hub`` (main process): the output folder without checkpoints or logs.

    A failed upload logs what to do (everything is saved locally) and exits with status 1.
    """
    accelerator.end_training()
    if args.push_to_hub and accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        try:
            repo_id = push_folder_to_hub(output_dir, args.hub_model_id, args.hub_token, args.hub_private_repo,
                                         commit_message=commit_message)
            logger.info(f"pushed {output_dir} to https://huggingface.co/{repo_id}")
        except RuntimeError as error:
            logger.error(str(error))
            sys.exit(1)
