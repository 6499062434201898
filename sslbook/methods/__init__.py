"""The methods of the book, one small module each. ``METHODS`` maps config names to classes.

A new method is one module with a :class:`Method` subclass, one line here (or a call to
:func:`register` from your own code) and one config: see the book's "How to add a method" page.

The survey's four architectures (Jaiswal et al. 2020, Fig. 11) and the negative-free family:

- end-to-end: SimCLR
- memory bank: InstDisc, PIRL
- momentum encoder: MoCo (v1 and v2)
- clustering: SwAV
- no negatives: SimSiam, BYOL

and the pretext tasks of the survey's Sec. 2 (each predicts a label the data make for themselves):

- context: RotNet (rotation), Jigsaw, RelativePatch
- colour and views: Colorization, CMC (L and ab as two views)
- time and prediction: TemporalContrast (frames of one clip), CPC (predicting patches below)
"""

from __future__ import annotations

import inspect

from ..config import ConfigError
from .base import Method
from .byol import BYOL
from .cmc import CMC
from .colorization import Colorization
from .cpc import CPC
from .jigsaw import Jigsaw
from .memory_bank import PIRL, InstDisc
from .moco import MoCo
from .relative_patch import RelativePatch
from .rotation import RotNet
from .simclr import SimCLR
from .simclr_annealed import TEMPERATURE_SCHEDULES, AnnealedSimCLR
from .simsiam import SimSiam
from .supervised import Supervised
from .swav import SwAV
from .temporal import TemporalContrast

METHODS = {
    "simclr": SimCLR,
    "simclr_annealed": AnnealedSimCLR,  # SimCLR with tau_t = tau0 / (1 + ln t): not in the paper
    "instdisc": InstDisc,
    "pirl": PIRL,
    "moco": MoCo,
    "swav": SwAV,
    "simsiam": SimSiam,
    "byol": BYOL,
    "rotation": RotNet,
    "jigsaw": Jigsaw,
    "relative_patch": RelativePatch,
    "colorization": Colorization,
    "cmc": CMC,
    "temporal": TemporalContrast,
    "cpc": CPC,
    "supervised": Supervised,  # the labelled reference (same encoder, cross-entropy), not a pretext task
}


def register(name: str, cls: type) -> type:
    """Make ``cls``, a :class:`Method` subclass, available to configs as ``method: <name>``; returns ``cls``.

    A name already registered for another class is an error (methods are never replaced silently);
    registering the same class again is allowed, so re-running a notebook cell is harmless.
    """
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register({name!r}, ...) needs a subclass of sslbook.methods.Method, got {cls!r}")
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"a method name must be a non-empty string without surrounding spaces, got {name!r}")
    if METHODS.get(name, cls) is not cls:
        raise ValueError(f"method {name!r} is already registered as {METHODS[name].__name__}; choose another name")
    METHODS[name] = cls
    return cls


def _resolve(name: str, kwargs: dict) -> tuple[type, dict]:
    """The class a config's ``method`` and ``method_args`` build, and the arguments it takes.

    ``METHODS[name]``, with one older spelling kept working: ``method: simclr`` with
    ``temperature_schedule: log`` (configs and runs written before the annealed variant had its own
    name) is ``simclr_annealed``; ``temperature_schedule: constant`` is the paper's SimCLR.
    """
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    if name == "simclr" and "temperature_schedule" in kwargs:
        kwargs = dict(kwargs)
        schedule = kwargs.pop("temperature_schedule")
        if schedule not in TEMPERATURE_SCHEDULES:
            raise ConfigError(
                f"temperature_schedule must be one of {', '.join(TEMPERATURE_SCHEDULES)}, got {schedule!r}"
            )
        if schedule == "log":
            return METHODS["simclr_annealed"], kwargs
    return METHODS[name], kwargs


def check_method_args(name: str, kwargs: dict) -> None:
    """Raise a one-line ConfigError for an unknown method or an argument its constructor does not take."""
    cls, kwargs = _resolve(name, kwargs)
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "backbone")]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        raise ConfigError(f"unknown method_args {unknown} for {name}; valid keys: {', '.join(valid)}")


def build_method(name: str, backbone, **kwargs) -> Method:
    """The config's method, ``METHODS[name](backbone, **kwargs)``, checked by :func:`check_method_args` first."""
    check_method_args(name, kwargs)
    cls, kwargs = _resolve(name, kwargs)
    return cls(backbone, **kwargs)
