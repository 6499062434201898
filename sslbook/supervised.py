"""The one supervised training loop: fine-tuning, S4L, detection and segmentation all call :func:`fit`.

What differs between those tasks is the data and the loss, so :func:`fit` takes both as functions
and owns everything else::

    for epoch in range(epochs):
        for i, batch in enumerate(batches(epoch)):
            lr   = schedule(epoch * steps_per_epoch + i)   # warm-up, then cosine (optim.lr_at)
            loss = loss_fn(model, batch)
            loss.backward(); SGD step (momentum, weight decay)

The schedule is the package's one cosine (:func:`sslbook.optim.lr_at`): linear warm-up over
``warmup_epochs``, then cosine decay from ``lr`` to 0 over the planned steps. A time budget
(``max_minutes``) re-plans the run once, so the schedule still ends at its minimum:
:func:`fit_epochs_to_budget` for a run planned in epochs, :func:`fit_steps_to_budget` for one
planned in steps (``max_steps``).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from .optim import lr_at
from .utils import fork_rng

PRECISIONS = ("fp32", "bf16", "fp16")


def fit_epochs_to_budget(
    total_epochs: int, epoch: int, minutes: float, max_minutes: Optional[float]
) -> tuple[int, bool]:
    """After ``epoch`` epochs and ``minutes`` of training: (epochs to plan for, whether time is up).

    After the first epoch the plan shrinks to what fits in ``max_minutes`` (at least that one
    epoch), so a cosine schedule still ends at its minimum; ``None`` means no budget.
    """
    if max_minutes is None:
        return total_epochs, False
    if epoch == 1 and total_epochs > 1:
        total_epochs = max(1, min(total_epochs, int(max_minutes / max(minutes, 1e-9))))
    return total_epochs, minutes >= max_minutes


def fit_steps_to_budget(total_steps: int, seconds_per_step: float, max_minutes: float, at_least: int = 4) -> int:
    """The planned number of steps shrunk to what fits in ``max_minutes`` at ``seconds_per_step``
    (never below ``at_least``, the steps already timed; never above the plan)."""
    return min(total_steps, max(at_least, int(max_minutes * 60 / max(seconds_per_step, 1e-12))))


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _split_loss(out) -> tuple[torch.Tensor, dict]:
    """``loss_fn``'s result: a scalar, or a dict with ``"loss"`` and other scalars to average and log."""
    if isinstance(out, dict):
        return out["loss"], {k: v for k, v in out.items() if k != "loss"}
    return out, {}


def fit(
    model: nn.Module,
    batches: Callable[[int], Iterable],
    loss_fn: Callable[[nn.Module, object], torch.Tensor],
    *,
    epochs: int,
    lr: float,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    param_groups=None,
    warmup_epochs: float = 0,
    max_minutes: Optional[float] = None,
    device="cpu",
    seed: Optional[int] = 0,
    precision: str = "fp32",
    log: Optional[Callable[[dict], None]] = None,
    progress: bool = False,
    steps_per_epoch: Optional[int] = None,
    max_steps: Optional[int] = None,
    schedule: Optional[Callable[[int, int], float]] = None,
    log_every: str = "epoch",
) -> dict:
    """Train ``model`` (in place, moved to ``device``) with SGD on ``loss_fn``; returns a summary.

    - ``batches(epoch)`` returns one epoch's batches (anything iterable: a list, a DataLoader, a
      generator); ``loss_fn(model, batch)`` returns the scalar loss, or a dict with ``"loss"`` and
      other detached scalars, which are averaged per epoch and logged with it.
    - SGD with ``momentum`` and ``weight_decay`` on ``param_groups`` (torch's format; a group may set
      its own ``lr`` and ``weight_decay``; default: every parameter that requires a gradient).
    - Learning rate per step: :func:`sslbook.optim.lr_at` (linear warm-up over ``warmup_epochs``, then
      cosine to 0), each group from its own peak; or ``schedule(step, total_steps)``, a factor of the
      peak (e.g. detectron2's step schedule). Step ``t = epoch * steps_per_epoch + i``.
    - ``steps_per_epoch`` defaults to ``len(batches(epoch))``: pass it when ``batches`` returns a
      generator. ``max_steps`` plans the run in steps instead of epochs (at most ``epochs`` passes).
    - ``max_minutes`` budgets the training time (``log`` calls not counted): a run planned in epochs
      is re-planned after its first epoch (:func:`fit_epochs_to_budget`) and stops after the epoch in
      which the budget is spent; a run planned in steps is re-planned from the time of steps 2-4
      (:func:`fit_steps_to_budget`) and stops after the step in which it is spent.
    - ``seed``: the block runs in a forked RNG seeded with it, so the caller's random stream is left
      alone and two calls train identically; ``None`` uses (and advances) the caller's stream.
    - ``precision``: "fp32", or "bf16"/"fp16" autocast (fp16 with a gradient scaler).
    - ``log(record)`` after every epoch (``log_every="epoch"``: ``epoch``, ``step``, mean ``loss``, the
      means of ``loss_fn``'s other scalars, ``lr`` of the last step, ``minutes``) or every step
      (``"step"``: the same for that step). ``progress=True`` shows a tqdm bar.

    A non-finite loss stops training with a ``FloatingPointError`` naming the step and the learning
    rate. Returns ``{"epochs": epochs run, "steps": optimiser steps, "seconds": training time,
    "losses": mean loss per epoch}``; the model is left in train mode.
    """
    _check_options(precision, log_every)
    device = torch.device(device)
    model.to(device)
    groups = param_groups if param_groups is not None else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    peaks = [group["lr"] for group in opt.param_groups]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step_budget = _StepBudget(max_minutes) if max_steps is not None and max_minutes is not None else None
    bar = _progress_bar() if progress else None

    def set_lr(t: int, total: int, warmup: int) -> float:
        for group, peak in zip(opt.param_groups, peaks):
            group["lr"] = lr_at(t, total, warmup, peak) if schedule is None else peak * schedule(t, total)
        return opt.param_groups[0]["lr"]

    losses, step, epoch, seconds = [], 0, 0, 0.0
    total_epochs, total_steps = epochs, max_steps if max_steps is not None else math.inf
    with fork_rng(device) if seed is not None else contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        while epoch < total_epochs and step < total_steps:
            tick = time.perf_counter()
            epoch_batches = batches(epoch)
            per_epoch = _epoch_length(epoch_batches, steps_per_epoch)
            total_steps = min(total_steps, total_epochs * per_epoch)
            model.train()
            sums, count = {}, 0
            for i, batch in enumerate(epoch_batches):
                if step >= total_steps:
                    break
                current_lr = set_lr(epoch * per_epoch + i, total_steps, round(warmup_epochs * per_epoch))
                with _autocast(precision, device):
                    loss, extras = _split_loss(loss_fn(model, batch))
                _check_finite(loss, step + 1, epoch + 1, current_lr)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                step, count = step + 1, count + 1
                values = {
                    "loss": loss.detach().float(),
                    **{k: torch.as_tensor(v).detach().float() for k, v in extras.items()},
                }
                sums = {k: sums[k] + v if k in sums else v for k, v in values.items()}
                if bar is not None:
                    bar.total = total_steps if total_steps < math.inf else None
                    bar.update(1)
                if step_budget is not None:
                    total_steps = step_budget.replan(step, total_steps, seconds + time.perf_counter() - tick)
                if log is not None and log_every == "step":
                    seconds += time.perf_counter() - tick
                    log(_record(epoch + 1, step, {k: v.item() for k, v in values.items()}, current_lr, seconds))
                    tick = time.perf_counter()
            epoch += 1
            seconds += time.perf_counter() - tick
            if count == 0:
                break
            means = {k: (v / count).item() for k, v in sums.items()}
            losses.append(means["loss"])
            if log is not None and log_every == "epoch":
                log(_record(epoch, step, means, opt.param_groups[0]["lr"], seconds))
            if max_steps is None:
                total_epochs, out_of_time = fit_epochs_to_budget(total_epochs, epoch, seconds / 60, max_minutes)
                if out_of_time:
                    break
    if bar is not None:
        bar.close()
    return {"epochs": epoch, "steps": step, "seconds": seconds, "losses": losses}


def _check_options(precision: str, log_every: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if log_every not in ("epoch", "step"):
        raise ValueError(f"log_every must be 'epoch' or 'step', got {log_every!r}")


def _check_finite(loss: torch.Tensor, step: int, epoch: int, lr: float) -> None:
    if not torch.isfinite(loss.detach()).all():
        raise FloatingPointError(
            f"the loss is {loss.item()} at step {step} (epoch {epoch}, lr {lr:.3g}); lower the learning rate"
        )


def _record(epoch: int, step: int, means: dict, lr: float, seconds: float) -> dict:
    """One log record: where training is, the mean loss (and other scalars), the lr and the time so far."""
    return {"epoch": epoch, "step": step, **means, "lr": lr, "minutes": seconds / 60}


def _epoch_length(epoch_batches, steps_per_epoch: Optional[int]) -> int:
    if steps_per_epoch is not None:
        return steps_per_epoch
    if not hasattr(epoch_batches, "__len__"):
        raise TypeError("batches(epoch) returned an iterable without len(); pass steps_per_epoch=")
    return len(epoch_batches)


class _StepBudget:
    """The time budget of a run planned in steps: after step 4 the plan shrinks to what fits at the
    pace of steps 2-4 (the first one pays one-off costs); once the budget is spent the run ends."""

    def __init__(self, max_minutes: float):
        self.max_minutes, self.after_first = max_minutes, None

    def replan(self, step: int, total_steps: int, seconds: float) -> int:
        if step == 1:
            self.after_first = seconds
        elif step == 4 < total_steps:
            total_steps = fit_steps_to_budget(total_steps, (seconds - self.after_first) / 3, self.max_minutes)
        return step if seconds / 60 >= self.max_minutes else total_steps


def _progress_bar():
    from tqdm.auto import tqdm

    return tqdm(desc="fit", dynamic_ncols=True)
