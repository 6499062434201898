"""The methods of the book, one small module each. ``METHODS`` maps config names to classes.

The survey's four architectures (Jaiswal et al. 2020, Fig. 11) and the negative-free family:

- end-to-end: SimCLR
- memory bank: InstDisc, PIRL
- momentum encoder: MoCo (v1 and v2)
- clustering: SwAV
- no negatives: SimSiam, BYOL
"""

from __future__ import annotations

import inspect

from ..config import ConfigError
from .base import Method
from .byol import BYOL
from .memory_bank import PIRL, InstDisc
from .moco import MoCo
from .simclr import SimCLR
from .simsiam import SimSiam
from .swav import SwAV

METHODS = {
    "simclr": SimCLR,
    "instdisc": InstDisc,
    "pirl": PIRL,
    "moco": MoCo,
    "swav": SwAV,
    "simsiam": SimSiam,
    "byol": BYOL,
}


def check_method_args(name: str, kwargs: dict) -> None:
    """Raise a one-line ConfigError for an unknown method or an argument its constructor does not take."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    valid = [p for p in inspect.signature(METHODS[name].__init__).parameters if p not in ("self", "backbone")]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        raise ConfigError(f"unknown method_args {unknown} for {name}; valid keys: {', '.join(valid)}")


def build_method(name: str, backbone, **kwargs) -> Method:
    """``METHODS[name](backbone, **kwargs)``, checked by :func:`check_method_args` first."""
    check_method_args(name, kwargs)
    return METHODS[name](backbone, **kwargs)
