"""The training loop's state and bookkeeping: the accelerator, the data stream, and each step of an update.

A script builds its model, its loss module (one ``forward``, wrapped by DDP), its optimizer and EMA, then:

    training_module, loop = prepare_training(accelerator, arguments, training_module, optimizer, lr_scheduler, ema, ...)
    for batch in loop.batches():                      # epoch after epoch, from where a resumed run left off
        with accelerator.accumulate(training_module):
            loss = training_module(...)               # the case study's forward
            if loop.all_processes_finite(loss):       # else the whole update is dropped, on every process
                accelerator.backward(loss)
                loop.record(loss=loss)                # averaged into the next logs
            loop.clip_and_step()                      # at the update's last micro-batch: clip, step, zero grads
        loop.end_micro_batch()                        # after an update: EMA step, logs, checkpoint
    timing = loop.finish()                            # final checkpoint, wall times
    ema_model = loop.averaged_model()                 # then export, on the main process
    end_training(accelerator, arguments, "commit message") # trackers closed, --push_to_hub

:func:`make_accelerator`, :func:`iterate_batches`, :func:`resume_position`, :class:`RunningMeans` and
:class:`TrainingCounters` are the pieces the loop is built from.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from .arguments import local_batch_size
from .checkpoints import register_checkpoint_hooks, resume_from_checkpoint, save_checkpoint
from .collective import all_processes_finite
from .data import EpochShuffleSampler
from .export import push_folder_to_hub
from .noise import step_generator
from .optimization import ModuleEMA, freeze_module, trainable_parameters
from .reporting import TrainingHistory, tracker_config

if TYPE_CHECKING:
    from .arguments import TrainingArguments

logger = logging.getLogger(__name__)


#: Set by ``accelerate launch`` (every launcher) in its processes' environment: how a process knows it was launched.
LAUNCHER_MARKER = "ACCELERATE_DYNAMO_BACKEND"


def _launcher_setting(parent_pid: int) -> Optional[Tuple[Mapping[str, str], Sequence[str]]]:
    """``(environment, argv)`` the launcher process (``parent_pid``) was started with, from ``/proc``; None where
    unreadable (not Linux, or another user's process)."""
    try:
        environ = Path(f"/proc/{parent_pid}/environ").read_bytes().split(b"\0")
        argv = Path(f"/proc/{parent_pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    pairs = (item.decode(errors="replace").partition("=") for item in environ if b"=" in item)
    return {key: value for key, _, value in pairs}, [item.decode(errors="replace") for item in argv if item]


def cpu_threads_per_process(environ: Mapping[str, str], num_local_processes: int, num_cores: int,
                            launcher: Optional[Tuple[Mapping[str, str], Sequence[str]]] = None) -> Optional[int]:
    """The torch thread count a CPU process should use: its share of the cores (``num_cores // num_local_processes``,
    at least 1), or None when the user chose the count.

    The user chose it when ``OMP_NUM_THREADS`` is set outside ``accelerate launch``, or, under ``accelerate launch``
    (``environ`` holds :data:`LAUNCHER_MARKER`), when the launcher itself was started with ``OMP_NUM_THREADS`` in its
    environment or with ``--num_cpu_threads_per_process``. Otherwise the launcher's ``OMP_NUM_THREADS=1`` is its
    implicit default, which this overrides. ``launcher``: the launcher's ``(environment, argv)``
    (:func:`_launcher_setting`); when it cannot be read, only a launcher value other than 1 counts as chosen.
    """
    if num_local_processes < 1 or num_cores < 1:
        raise ValueError(f"num_local_processes and num_cores must be >= 1, got {num_local_processes} and {num_cores}")
    share = max(1, num_cores // num_local_processes)
    if "OMP_NUM_THREADS" not in environ:
        return share
    if LAUNCHER_MARKER not in environ:
        return None  # set by the user (or a launcher that is not accelerate's)
    if launcher is None:
        return share if environ["OMP_NUM_THREADS"] == "1" else None
    launcher_environ, launcher_argv = launcher
    chosen = "OMP_NUM_THREADS" in launcher_environ or any(arg.startswith("--num_cpu_threads_per_process") for arg in launcher_argv)
    return None if chosen else share


def use_cpu_cores(num_local_processes: int) -> Optional[int]:
    """Set torch's thread count to this process's share of the cores unless the user chose it
    (:func:`cpu_threads_per_process`); returns the count set, or None."""
    num_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    launcher = _launcher_setting(os.getppid()) if LAUNCHER_MARKER in os.environ else None
    threads = cpu_threads_per_process(os.environ, num_local_processes, num_cores, launcher)
    if threads is not None:
        torch.set_num_threads(threads)
    return threads


def make_accelerator(arguments: "TrainingArguments", find_unused_parameters: bool = False):
    """diffusers-style ``Accelerator`` with a ``ProjectConfiguration`` (trackers log to ``output_dir/logging_dir``)
    and Python logging set up (INFO on the main process, warnings elsewhere).

    ``find_unused_parameters``: DDP must not wait for gradients of parts that stop training (a frozen decoder).
    ``--mixed_precision bf16`` (or fp16 on a GPU): the networks' forwards run under autocast, the master weights,
    optimizer state and EMA stay float32, and the latent flows leave autocast (:func:`~.collective.float32_flows`).
    On CPU every process uses its share of the cores (:func:`use_cpu_cores`) unless the thread count was chosen.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    output_dir = Path(arguments.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=arguments.gradient_accumulation_steps,
        mixed_precision=arguments.mixed_precision,
        log_with=arguments.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / arguments.logging_dir)),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    import diffusers
    import transformers

    for library in (transformers, diffusers):
        (library.utils.logging.set_verbosity_warning if accelerator.is_main_process else library.utils.logging.set_verbosity_error)()
        library.utils.logging.disable_progress_bar()
    if accelerator.device.type == "cpu":
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        threads = use_cpu_cores(local_processes)
        logger.info(f"CPU threads per process: {torch.get_num_threads()}" + (" (the user's choice)" if threads is None else ""))
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


class TrainingCounters:
    """Run counters kept in checkpoints (``training_state.json``), e.g. skipped steps, the training time so far."""

    def __init__(self, **values: float):
        self.values = dict(values)

    def __getitem__(self, key: str) -> float:
        return self.values[key]

    def __setitem__(self, key: str, value: float) -> None:
        self.values[key] = value

    def state_dict(self) -> Dict[str, float]:
        return dict(self.values)

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        bad = {k: v for k, v in state.items() if isinstance(v, bool) or not isinstance(v, (int, float))}
        if bad:
            raise ValueError(f"checkpoint counters must be numbers, got {bad}")
        self.values.update(state)


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


def prepare_training(accelerator, arguments: "TrainingArguments", training_module: torch.nn.Module, optimizer, lr_scheduler,
                     ema: ModuleEMA, train_dataset, tracker_project: str, progress_postfix: Optional[Mapping[str, str]] = None,
                     extra_logs: Optional[Callable[[], Mapping[str, float]]] = None):
    """The set-up every script does once its model, loss module, optimizer and EMA exist.

    * the per-process batch B (``--train_batch_size``, else the recipe's global batch / processes) and the global
      batch N = B x processes, the anchors that define the zones (``loop.global_batch_size``);
    * a ``DataLoader`` of ``train_dataset`` (``{"pixel_values": [B, C, H, W], "labels": [B]}`` batches, last partial
      batch dropped) ordered by an :class:`EpochShuffleSampler` seeded by ``--seed``;
    * checkpoint hooks writing ``save_pretrained`` folders (the LZN model is ``training_module.lzn``); the
      counters (skipped updates, training time) and ``lr_scheduler`` go to each checkpoint's ``training_state.json``;
    * ``accelerator.prepare`` of the loss module, the optimizer and the loader; the EMA moved to the device;
    * trackers (main process) named ``tracker_project``, configured with the flags;
    * ``--resume_from_checkpoint``: weights, EMA, optimizer, scheduler, RNG states and counters (the folder is
      verified first: nothing in it is unpickled beyond tensors and plain containers); the data position follows
      from the step; ``logs/history.jsonl`` is cut back to the resumed step. A checkpoint beyond
      ``--max_train_steps`` is refused; one at it trains nothing and the script exports its weights again.

    Args:
        progress_postfix: progress-bar fields, ``{label: format of the logs}``, e.g. ``{"loss": "{loss:.3f}"}``.
        extra_logs: values logged with the running means at every logging step (called after the update).
    Returns:
        ``(prepared training_module, TrainingLoop)``.
    """
    num_processes = accelerator.num_processes
    batch_size = local_batch_size(arguments.train_batch_size, arguments.global_batch_size, num_processes)
    if len(train_dataset) < batch_size * num_processes:
        raise ValueError(f"{len(train_dataset)} training images are fewer than one global batch ({batch_size} x {num_processes})")
    sampler = EpochShuffleSampler(len(train_dataset), seed=arguments.seed)
    train_dataloader = torch.utils.data.DataLoader(
        train_dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=arguments.dataloader_num_workers
    )
    counters = TrainingCounters(skipped_steps=0, train_wall_time_s=0.0)
    stateful = {"counters": counters, "lr_scheduler": lr_scheduler}  # JSON in training_state.json, never a pickle
    register_checkpoint_hooks(accelerator, ema, type(training_module.lzn))
    training_module, optimizer, train_dataloader = accelerator.prepare(training_module, optimizer, train_dataloader)
    ema.to(accelerator.device)
    if accelerator.is_main_process and arguments.report_to:
        accelerator.init_trackers(tracker_project, config=tracker_config(arguments.to_record()))

    global_step = resume_from_checkpoint(accelerator, arguments.resume_from_checkpoint, Path(arguments.output_dir), stateful)
    if global_step > arguments.max_train_steps:
        raise ValueError(f"--resume_from_checkpoint {arguments.resume_from_checkpoint!r} is at update {global_step}, beyond "
                         f"--max_train_steps {arguments.max_train_steps}: raise --max_train_steps to train further, or resume "
                         f"from a checkpoint at or before update {arguments.max_train_steps}")
    if global_step == arguments.max_train_steps and arguments.resume_from_checkpoint:
        accelerator.print(f"the checkpoint is at --max_train_steps ({global_step}): no update to do; the final folders are "
                          "written again from its weights (the same content as the run that saved it); raise "
                          "--max_train_steps to train further")
    logger.info(f"***** training: updates {global_step} -> {arguments.max_train_steps}, global batch {batch_size} x "
                f"{num_processes} processes, {len(train_dataset)} images *****")
    loop = TrainingLoop(accelerator, arguments, training_module, optimizer, lr_scheduler, ema, sampler, train_dataloader, counters,
                        global_step, progress_postfix or {"loss": "{loss:.3f}"}, extra_logs)
    loop.global_batch_size = batch_size * num_processes
    return training_module, loop


class TrainingLoop:
    """The state of a run between updates and the bookkeeping of each update (built by :func:`prepare_training`).

    ``global_step`` counts updates (skipped ones included); an update is ``--gradient_accumulation_steps``
    micro-batches. ``global_batch_size`` is N, the anchors of one micro-batch over all processes. ``frozen``
    names the parts of the model whose EMA no longer steps (:meth:`freeze`).
    """

    def __init__(self, accelerator, arguments, training_module, optimizer, lr_scheduler, ema: ModuleEMA, sampler, train_dataloader,
                 counters: TrainingCounters, global_step: int, progress_postfix: Mapping[str, str],
                 extra_logs: Optional[Callable[[], Mapping[str, float]]]):
        self.accelerator, self.arguments = accelerator, arguments
        self.output_dir = Path(arguments.output_dir)
        self.model = accelerator.unwrap_model(training_module).lzn  # the LZN model the loss module trains
        self.optimizer, self.lr_scheduler, self.ema, self.counters = optimizer, lr_scheduler, ema, counters
        self.sampler, self.train_dataloader = sampler, train_dataloader
        self.progress_postfix, self.extra_logs = progress_postfix, extra_logs
        self.start_position = resume_position(global_step, len(train_dataloader), arguments.gradient_accumulation_steps)
        self.history = TrainingHistory(self.output_dir / arguments.logging_dir / "history.jsonl")
        if accelerator.is_main_process:
            self.history.truncate(global_step)  # a resumed run logs these steps again; a new run starts a new history
        self.stateful = {"counters": counters, "lr_scheduler": lr_scheduler}
        self.progress_bar = tqdm(range(arguments.max_train_steps), initial=global_step, desc="steps",
                                 disable=not accelerator.is_local_main_process)
        self.frozen = set()
        self.running, self.micro_step, self.bad_update, self.grad_norm = RunningMeans(), 0, False, None
        self.global_step = self.steps_at_start = global_step
        self.train_start, self.previous_train_time = time.time(), float(counters.values.get("train_wall_time_s", 0.0))

    def batches(self):
        """Training batches until ``--max_train_steps`` updates are done, from where a resumed run left off."""
        first_epoch, batches_to_skip = self.start_position
        for batch in iterate_batches(self.accelerator, self.train_dataloader, self.sampler, first_epoch, batches_to_skip):
            if self.global_step >= self.arguments.max_train_steps:
                break
            yield batch

    def noise_generator(self) -> torch.Generator:
        """This micro-batch's generator, seeded by ``(--seed, micro-batch index)``: the same on every process and
        after a resume (draw this process's rows of global tensors from it: :func:`~lzn_hf.training.data.rank_randn`)."""
        step = self.global_step * self.arguments.gradient_accumulation_steps + self.micro_step
        return step_generator(self.arguments.seed, step, self.accelerator.device)

    def all_processes_finite(self, loss: torch.Tensor) -> bool:
        """The finite check of a micro-batch's loss, on every process alike
        (:func:`~lzn_hf.training.collective.all_processes_finite`): False drops the whole update on every process."""
        if all_processes_finite(self.accelerator, loss):
            return True
        self.bad_update = True
        return False

    def record(self, **logged: torch.Tensor) -> None:
        """Scalar tensors of a kept micro-batch, averaged into the next logs."""
        self.running.add(**logged)

    def clip_and_step(self) -> None:
        """Inside ``accelerator.accumulate``, after the backward: at the last micro-batch of an update, the
        gradient-norm clip (``--max_grad_norm``, parameters that still train), the optimizer and scheduler steps
        (not for a dropped update, nor when the gradient norm is not finite), and zeroed gradients."""
        self.grad_norm = None
        if not self.accelerator.sync_gradients:
            return
        if not self.bad_update:
            self.grad_norm = self.accelerator.clip_grad_norm_(trainable_parameters(self.model), self.arguments.max_grad_norm)
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
        arguments = self.arguments
        if self.global_step % arguments.logging_steps == 0 or self.global_step == arguments.max_train_steps:
            self.log()
        if arguments.checkpointing_steps and self.global_step % arguments.checkpointing_steps == 0:
            self.save_checkpoint()
        return True

    def save_checkpoint(self, train_time: Optional[float] = None) -> str:
        """``checkpoint-{global_step}`` with the counters (the training time so far included) and the schedule."""
        self.counters["train_wall_time_s"] = self.previous_train_time + time.time() - self.train_start if train_time is None else train_time
        return save_checkpoint(self.accelerator, self.output_dir, self.global_step, self.arguments.checkpoints_total_limit, self.stateful)

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
        the end (a resumable end state), wait for every process. Returns the timing metrics of the whole training,
        resumed runs included (a run resumed at ``--max_train_steps`` reports the run that trained, not zeros):
        ``train_updates`` (the model's updates), ``train_wall_time_s`` (the time of every run, up to the checkpoint each
        resumed from), ``seconds_per_update``, ``updates_this_run``, ``skipped_steps``, ``num_processes``."""
        self.progress_bar.close()
        arguments, updates = self.arguments, self.global_step - self.steps_at_start
        train_time = self.previous_train_time + time.time() - self.train_start if updates > 0 else self.previous_train_time
        if arguments.checkpointing_steps and self.global_step % arguments.checkpointing_steps and updates > 0:
            self.save_checkpoint(train_time)
        self.accelerator.wait_for_everyone()
        return {"train_updates": self.global_step, "train_wall_time_s": train_time, "seconds_per_update": train_time / max(1, self.global_step),
                "updates_this_run": updates, "skipped_steps": self.counters["skipped_steps"], "num_processes": self.accelerator.num_processes}

    def averaged_model(self):
        """A CPU copy of the LZN model holding the EMA weights, in eval mode."""
        return self.ema.averaged_model(self.model).cpu()


def end_training(accelerator, output_dir, commit_message: str, push_to_hub: bool = False, hub_model_id: Optional[str] = None,
                 hub_token: Optional[str] = None, hub_private_repo: bool = False) -> None:
    """Close the trackers, then with ``push_to_hub`` (main process) upload ``output_dir`` without checkpoints or logs.

    A failed upload logs what to do (everything is saved locally) and exits with status 1.
    """
    accelerator.end_training()
    if push_to_hub and accelerator.is_main_process:
        output_dir = Path(output_dir)
        try:
            repo_id = push_folder_to_hub(output_dir, hub_model_id, hub_token, hub_private_repo, commit_message=commit_message)
            logger.info(f"pushed {output_dir} to https://huggingface.co/{repo_id}")
        except RuntimeError as error:
            logger.error(str(error))
            sys.exit(1)
