"""The methods of the book, one small module each. ``METHODS`` maps config names to classes.

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
from .simsiam import SimSiam
from .swav import SwAV
from .temporal import TemporalContrast

METHODS = {
    "simclr": SimCLR,
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
