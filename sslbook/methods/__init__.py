"""The methods of the book, one small module each. ``METHODS`` maps config names to classes."""

from __future__ import annotations

import inspect

from .base import Method
from .simclr import SimCLR

METHODS = {
    "simclr": SimCLR,
}


def build_method(name: str, backbone, **kwargs) -> Method:
    """``METHODS[name](backbone, **kwargs)``, with a clear error for an unknown name or argument."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    cls = METHODS[name]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "backbone")]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        raise ValueError(f"unknown method_args {unknown} for {name}; valid keys: {', '.join(valid)}")
    return cls(backbone, **kwargs)
