"""SimCLR with an annealed temperature: an experiment of the losses chapter, not part of the paper.

The SimCLR paper keeps tau fixed. The book's SimCLR notes suggest a temperature that starts high
and cools as training goes on, like simulated annealing:

    tau_t = tau0 / (1 + ln t),   t = 1, 2, ... (optimiser steps)    -> annealed_temperature

:class:`AnnealedSimCLR` is the paper's :class:`~sslbook.methods.simclr.SimCLR` with only that
changed: it overrides ``current_temperature``, counts its steps in a buffer (so a resumed run
continues the schedule) and logs the temperature it used. Configs select it with
``method: simclr_annealed``, or (as configs written before it had its own name do) with
``method: simclr`` and ``method_args: {temperature_schedule: log}``.
"""

from __future__ import annotations

import math

import torch

from .simclr import SimCLR

TEMPERATURE_SCHEDULES = ("constant", "log")


def annealed_temperature(tau0: float, t: int) -> float:
    """tau_t = tau0 / (1 + ln t), t = 1, 2, ... (optimiser steps).

    tau_1 = tau0, tau_e = tau0 / 2, tau_{e^2} = tau0 / 3.
    """
    if t < 1:
        raise ValueError(f"the annealing step t starts at 1, got {t}")
    return tau0 / (1.0 + math.log(t))


class AnnealedSimCLR(SimCLR):
    temperature_schedule = "log"

    def __init__(
        self,
        backbone,
        hidden_dim: int | None = None,
        out_dim: int = 128,
        temperature: float = 0.5,
        temperature_schedule: str = "log",
    ):
        if temperature_schedule != "log":
            raise ValueError(
                f"temperature_schedule must be one of {', '.join(TEMPERATURE_SCHEDULES)}, "
                f"got {temperature_schedule!r}"
                + (" (constant is the paper's SimCLR: method simclr)" if temperature_schedule == "constant" else "")
            )
        super().__init__(backbone, hidden_dim, out_dim, temperature)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))  # travels in checkpoints

    def current_temperature(self) -> float:
        return annealed_temperature(self.temperature, int(self.steps_done) + 1)

    def forward(self, views, index=None):
        out = super().forward(views, index)
        out["temperature"] = torch.tensor(self.current_temperature())
        return out

    def after_optimizer_step(self, progress: float) -> None:
        self.steps_done += 1
