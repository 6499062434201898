"""Optimisers and the learning-rate schedule.

- SGD with momentum (MoCo, SimSiam, the CIFAR recipes), AdamW, and LARS (SimCLR, BYOL, SwAV at
  large batch sizes; You et al. 2017).
- Biases and normalisation parameters get no weight decay and no LARS adaptation, as the papers do.
- The schedule is a pure function of the step: linear warm-up then cosine decay, so a checkpoint
  needs only the step counter to resume it exactly.
- A method may put some parameters in groups of their own (``Method.param_groups``): a fixed
  learning rate (SimSiam's predictor), a scaled one, or another weight decay.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step for each layer is scaled by a trust ratio (You et al. 2017).

        trust = eta * ||w|| / (||g|| + weight_decay * ||w||)
        g    <- (g + weight_decay * w) * trust
        v    <- momentum * v + g ;   w <- w - lr * v

    Large batches need large learning rates, and one global rate is too much for some layers and
    too little for others; the trust ratio makes each layer's update a fixed fraction of its weight
    norm. Parameter groups with ``lars_exclude=True`` (biases, norms) skip the adaptation.

    ``clip=True`` is LARC's clipping (apex ``LARC(clip=True)``; solo-learn's ``clip_lr``, which its
    SwAV recipes use): the trust ratio itself becomes the layer's rate, capped at the global one,

        trust <- min(trust / lr, 1)        (the layer's step: min(eta * ||w|| / ||g||, lr) * g)

    so a layer whose gradient is tiny next to its weights never steps faster than ``lr``. Without the
    cap such a layer (SwAV's prototypes when the codes are nearly uniform, say) takes a step of size
    ``lr * eta * ||w||`` in whatever direction that tiny gradient points.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        clip: bool = False,
    ):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip=clip, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"] != 0:
                    grad = grad.add(p, alpha=group["weight_decay"])
                if not group["lars_exclude"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, torch.ones_like(w_norm)
                    )
                    if group.get("clip", False) and group["lr"] > 0:  # .get: checkpoints from before the option
                        trust = (trust / group["lr"]).clamp(max=1.0)
                    grad = grad.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(grad).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def trust_ratio(weight: torch.Tensor, grad: torch.Tensor, weight_decay: float = 0.0, eta: float = 0.001) -> float:
    """The LARS trust ratio of one layer (for the chapter that shows it on real layers)."""
    g = grad + weight_decay * weight
    return float(eta * weight.norm() / g.norm())


def parameter_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool = True) -> list[dict]:
    """Two groups: weights (decayed, LARS-adapted) and biases/norm parameters (neither).

    A parameter is "bias or norm" when it is one-dimensional: biases, BatchNorm/LayerNorm scales
    and shifts. (ViT position embeddings and class tokens are excluded as well, as in DINO.)
    """
    return _split(model.named_parameters(), weight_decay, exclude_bias_and_norm)


def _split(named_parameters, weight_decay: float, exclude_bias_and_norm: bool) -> list[dict]:
    decay, no_decay = [], []
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        if exclude_bias_and_norm and (p.ndim <= 1 or name.endswith(("pos_embed", "cls_token"))):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    return groups


GROUP_SETTINGS = ("fixed_lr", "lr_scale", "weight_decay")  # what a method's param_groups() may set


def method_parameter_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool = True) -> list[dict]:
    """:func:`parameter_groups` for the parameters a method leaves to the config, then the same split of
    each group the method asks for (``model.param_groups()``, see :class:`sslbook.methods.base.Method`),
    with that group's settings: ``fixed_lr`` (the lr stays at the peak: no warm-up, no decay), ``lr_scale``
    (a factor on the lr) and ``weight_decay``.
    """
    special = model.param_groups() if hasattr(model, "param_groups") else []
    names = {id(p): name for name, p in model.named_parameters()}
    claimed = {id(p) for group in special for p in group["params"]}
    groups = _split(
        [(n, p) for n, p in model.named_parameters() if id(p) not in claimed], weight_decay, exclude_bias_and_norm
    )
    for group in special:
        settings = {k: v for k, v in group.items() if k != "params"}
        unknown = set(settings) - set(GROUP_SETTINGS)
        if unknown:
            raise ValueError(f"unknown parameter-group settings {sorted(unknown)}; valid: {', '.join(GROUP_SETTINGS)}")
        decay = settings.pop("weight_decay", weight_decay)
        own = _split([(names[id(p)], p) for p in group["params"]], decay, exclude_bias_and_norm)
        groups += [{**g, **settings} for g in own]
    return [g for g in groups if g["params"]]


def set_lr(optimizer: torch.optim.Optimizer, lr: float, peak: float) -> None:
    """Give every parameter group the scheduled ``lr``, except ``fixed_lr`` groups (``peak``), each times its
    ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = (peak if group.get("fixed_lr") else lr) * group.get("lr_scale", 1.0)


def peak_lr(cfg: OptimConfig, batch_size: int) -> float:
    """The learning rate after warm-up: ``cfg.lr`` scaled to the global batch size."""
    ratio = batch_size / cfg.lr_batch
    return cfg.lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[cfg.lr_scaling]


def build_optimizer(model: nn.Module, cfg: OptimConfig, batch_size: int) -> torch.optim.Optimizer:
    groups = method_parameter_groups(model, cfg.weight_decay, cfg.exclude_bias_and_norm)
    lr = peak_lr(cfg, batch_size)
    for g in groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    if cfg.name == "sgd":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.name == "adamw":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas))
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, eta=cfg.lars_eta, clip=cfg.lars_clip)
    raise ValueError(f"unknown optimiser {cfg.name!r}; use sgd, adamw or lars")


def lr_at(
    step: int, total_steps: int, warmup_steps: int, peak: float, schedule: str = "cosine", min_lr: float = 0.0
) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to ``min_lr * peak``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule == "constant":
        return peak
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    floor = min_lr * peak
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def layer_trust_ratios(
    model: nn.Module, loss: torch.Tensor, weight_decay: float = 1e-6, eta: float = 0.001
) -> list[dict]:
    """LARS's view of a model: per weight tensor, ||w||, ||g + wd w|| and the trust ratio.

    Back-propagates ``loss`` once (the gradients are cleared again afterwards, so nothing is left
    for an optimiser to apply) and returns one row per parameter that LARS adapts (matrices and
    convolution kernels; biases and norm parameters are excluded, as in :func:`parameter_groups`):
    ``{"name", "weight_norm", "grad_norm", "ratio", "update_ratio"}``, where ``ratio`` is
    :func:`trust_ratio` (eta ||w|| / ||g + wd w||, You et al. 2017, Eq. 6 with the weight decay) and
    ``update_ratio`` = ||g + wd w|| / ||w||, the relative size of a plain SGD step at learning rate 1.
    The spread of ``update_ratio`` across layers is why one global learning rate fits large-batch
    training badly, and what LARS's per-layer ratio undoes.
    """
    for p in model.parameters():
        p.grad = None
    loss.backward()
    rows = []
    try:
        for name, p in model.named_parameters():
            if p.grad is None or p.ndim <= 1:
                continue
            g = p.grad + weight_decay * p.detach()
            rows.append(
                {
                    "name": name,
                    "weight_norm": float(p.detach().norm()),
                    "grad_norm": float(g.norm()),
                    "ratio": trust_ratio(p.detach(), p.grad, weight_decay, eta),
                    "update_ratio": float(g.norm() / p.detach().norm().clamp(min=1e-12)),
                }
            )
    finally:
        for p in model.parameters():
            p.grad = None
    return rows
