"""Optimisation: per-module Adam groups, upstream's warm-up, per-module EMA, the decoder freeze.

* :func:`module_param_groups` / :func:`adam_with_warmup`: one Adam group per part (fused kernel where the device
  has it), ``LinearLR`` warm-up then a constant rate (upstream's), or diffusers' cosine decay to zero
  (:func:`learning_rate_schedule`);
* :class:`ExponentialMovingAverage` / :class:`ModuleEMA`: upstream's EMA (warm-up ``min(decay, (1 + n) / (10 + n))``),
  one per part of the model, so that a frozen part's average stops;
* :func:`freeze_module`, :func:`trainable_parameters` (the gradient-clip set).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn


def module_param_groups(modules: Mapping[str, Tuple[Optional[nn.Module], float]]) -> List[Dict[str, Any]]:
    """One Adam parameter group per module, as upstream: ``{"name", "params", "lr"}``; absent modules are skipped."""
    groups = []
    for name, (module, lr) in modules.items():
        if module is None:
            continue
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            groups.append({"name": name, "params": params, "lr": lr})
    if not groups:
        raise ValueError("no trainable parameters")
    return groups


def linear_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Upstream's schedule: ``LinearLR`` from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps``, then constant."""
    if warmup_steps <= 0:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0, total_iters=warmup_steps)


#: ``--lr_scheduler`` values: ``"constant"`` (upstream's: :func:`linear_warmup`, then constant) and ``"cosine"``
#: (diffusers' ``get_cosine_schedule_with_warmup``: linear from 0 over the warm-up, then half a cosine to 0 at the last update).
LR_SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, schedule: str = "constant",
                           total_steps: Optional[int] = None) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule of a run, stepped once per update.

    Args:
        schedule: ``"constant"``: :func:`linear_warmup` (lr / warmup_steps up to lr, then constant; upstream's);
            ``"cosine"``: diffusers' cosine schedule (0 up to lr over ``warmup_steps``, then
            ``lr * (1 + cos(pi * progress)) / 2`` down to 0 at ``total_steps``): a decaying step size for runs
            that become unstable at a constant rate.
        total_steps: the run's number of updates (``--max_train_steps``), needed by ``"cosine"``.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"`schedule` (--lr_scheduler) must be one of {LR_SCHEDULES}, got {schedule!r}")
    if schedule == "constant":
        return linear_warmup(optimizer, warmup_steps)
    if total_steps is None or total_steps < 1 or warmup_steps >= total_steps:
        raise ValueError(f"the cosine schedule needs total_steps (--max_train_steps) > the warm-up updates ({warmup_steps}), got {total_steps}")
    from diffusers.optimization import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def fused_adam_supported(parameters: Sequence[torch.Tensor]) -> bool:
    """Whether ``torch.optim.Adam(fused=True)`` takes these parameters: floating point, on a device with the fused
    kernel (CPU, CUDA, ... as this torch build lists them)."""
    for device, dtype in {(p.device, p.dtype) for p in parameters}:
        try:  # Adam checks device and dtype when it is built: ask it with an empty tensor of each kind
            torch.optim.Adam([torch.empty(0, device=device, dtype=dtype, requires_grad=dtype.is_floating_point)], fused=True)
        except (RuntimeError, ValueError):
            return False
    return True


def adam_with_warmup(modules: Mapping[str, Tuple[Optional[nn.Module], float]], warmup_steps: int, betas: Tuple[float, float] = (0.9, 0.999),
                     eps: float = 1e-8, weight_decay: float = 0.0, fused: Optional[bool] = None, schedule: str = "constant",
                     total_steps: Optional[int] = None):
    """The optimizer and schedule of every script: Adam over :func:`module_param_groups` and
    :func:`learning_rate_schedule` with ``warmup_steps`` (``--lr_warmup_steps``; ``betas``, ``eps``,
    ``weight_decay``: ``--adam_*``; ``schedule``, ``total_steps``: ``--lr_scheduler``, ``--max_train_steps``).

    Args:
        modules: ``{name: (module or None, learning rate)}``, one parameter group each.
        fused: the fused Adam kernel (one kernel for every parameter: the same update as the for-each one up to
            float rounding). None: fused where the device has it (:func:`fused_adam_supported`), the for-each
            implementation elsewhere; True: fused or an error; False: never.
    Returns:
        ``(optimizer, lr_scheduler)``. The scheduler is stepped once per update, whatever the number of processes,
        so it is not handed to ``accelerator.prepare`` (registered for checkpointing instead).
    """
    groups = module_param_groups(modules)
    if fused is None:
        fused = fused_adam_supported([p for group in groups for p in group["params"]])
    kernel = {"fused": True} if fused else {"foreach": True}
    optimizer = torch.optim.Adam(groups, betas=betas, eps=eps, weight_decay=weight_decay, **kernel)
    return optimizer, learning_rate_schedule(optimizer, warmup_steps, schedule, total_steps)


class ExponentialMovingAverage:
    """EMA of a module's parameters with upstream's warm-up (score_sde's formula).

    At the n-th update (n = 1, 2, ...): ``decay_n = min(decay, (1 + n) / (10 + n))`` and
    ``shadow <- decay_n * shadow + (1 - decay_n) * param`` (one ``torch._foreach_lerp_`` over every tensor; the
    shadow stays in its own dtype, float32 for float32 master weights). With decay >= 0.9999 the warm-up term binds for
    most of training (the EMA averages roughly the last n / 9 steps).

    Not diffusers' ``EMAModel``: that one counts updates from 0 (``(1 + n) / (10 + n)`` one step earlier), copies
    frozen parameters into the average (upstream's EMA of a frozen module stops instead), and saves through
    diffusers' ``from_config``, which transformers models do not have.
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow_params = [p.detach().clone() for p in parameters]

    def effective_decay(self, num_updates: Optional[int] = None) -> float:
        n = self.num_updates if num_updates is None else num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def step(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        self.num_updates += 1
        one_minus_decay = 1.0 - self.effective_decay()
        parameters = list(parameters)
        if len(parameters) != len(self.shadow_params):
            raise ValueError(f"EMA holds {len(self.shadow_params)} tensors, got {len(parameters)} parameters")
        # shadow <- shadow + (1 - decay_n) (param - shadow), as one multi-tensor op over every tensor
        torch._foreach_lerp_(self.shadow_params, [p.detach().to(s.dtype) for s, p in zip(self.shadow_params, parameters)], one_minus_decay)

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        for shadow, param in zip(self.shadow_params, parameters):
            param.copy_(shadow.to(param.dtype))

    def to(self, device=None) -> "ExponentialMovingAverage":
        self.shadow_params = [p.to(device=device) for p in self.shadow_params]
        return self

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow_params": self.shadow_params}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["shadow_params"]) != len(self.shadow_params):
            raise ValueError(f"EMA state has {len(state['shadow_params'])} tensors, expected {len(self.shadow_params)}")
        self.decay, self.num_updates = float(state["decay"]), int(state["num_updates"])
        self.shadow_params = [s.detach().clone().to(p.device) for s, p in zip(state["shadow_params"], self.shadow_params)]


class ModuleEMA:
    """One :class:`ExponentialMovingAverage` per top-level part of an LZN model (encoder, decoder, label anchors).

    Each part has its own update counter, so a frozen part's average stops while the others go on (upstream's
    case study 3 freezes the decoder). Saved as a ``save_pretrained`` folder of the model with the averaged
    weights plus ``ema_state.json`` (decays and counters).
    """

    STATE_FILE = "ema_state.json"

    def __init__(self, model: nn.Module, decay: float, parts: Sequence[str] = ("image_encoder", "image_decoder", "label_anchors")):
        self.parts = [name for name in parts if getattr(model, name, None) is not None]
        self.averages = {name: ExponentialMovingAverage(getattr(model, name).parameters(), decay) for name in self.parts}

    def step(self, model: nn.Module, skip: Iterable[str] = ()) -> None:
        """Update the averages of every part except those in ``skip`` (frozen parts)."""
        skip = set(skip)
        for name, average in self.averages.items():
            if name not in skip:
                average.step(getattr(model, name).parameters())

    def copy_to(self, model: nn.Module) -> nn.Module:
        """Write the averaged weights into ``model`` (an LZN model of the same config); returns it."""
        for name, average in self.averages.items():
            average.copy_to(getattr(model, name).parameters())
        return model

    def averaged_model(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` holding the averaged weights (``model`` is left as it is), in eval mode."""
        return self.copy_to(copy.deepcopy(model)).eval()

    def to(self, device=None) -> "ModuleEMA":
        for average in self.averages.values():
            average.to(device)
        return self

    @property
    def num_updates(self) -> Dict[str, int]:
        return {name: average.num_updates for name, average in self.averages.items()}

    def state_dict(self) -> Dict[str, Any]:
        return {name: average.state_dict() for name, average in self.averages.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, average in self.averages.items():
            average.load_state_dict(state[name])

    def save_pretrained(self, save_directory, model: nn.Module) -> None:
        """``save_pretrained`` of ``model`` with the averaged weights, plus ``ema_state.json``."""
        self.averaged_model(model).save_pretrained(save_directory)
        state = {name: {"decay": a.decay, "num_updates": a.num_updates} for name, a in self.averages.items()}
        Path(save_directory, self.STATE_FILE).write_text(json.dumps(state, indent=2))

    def load_pretrained(self, load_directory, model_class) -> None:
        """Inverse of :meth:`save_pretrained` (``model_class``: the saved model's class, e.g. ``LZNModel``)."""
        averaged = model_class.from_pretrained(load_directory)
        state = json.loads(Path(load_directory, self.STATE_FILE).read_text())
        for name, average in self.averages.items():
            average.load_state_dict({**state[name], "shadow_params": list(getattr(averaged, name).parameters())})


def freeze_module(module: Optional[nn.Module]) -> None:
    """The decoder-freeze step: stop training ``module`` (``requires_grad=False``; gradients still pass
    *through* it to its inputs, e.g. from the RF loss to the encoder). Stop its EMA as well."""
    if module is not None:
        module.requires_grad_(False)


def trainable_parameters(module: nn.Module) -> List[torch.nn.Parameter]:
    """Parameters that still train (the gradient-clip set shrinks when a part is frozen, as upstream's)."""
    return [p for p in module.parameters() if p.requires_grad]
