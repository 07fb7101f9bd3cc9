"""Deprecated alias of :mod:`lipsim_metric.images` (renamed after 0.1.0, issue 15: ``io`` shadowed the stdlib name).

Import from :mod:`lipsim_metric.images`. Every name, public or private, resolves to the new module's object;
importing this module emits a :class:`DeprecationWarning`.
"""

from __future__ import annotations

import warnings
from typing import Any

from . import images as _moved
from .images import *  # noqa: F403

__all__ = list(getattr(_moved, "__all__", [name for name in vars(_moved) if not name.startswith("_")]))

warnings.warn(
    "lipsim_metric.io was renamed lipsim_metric.images; import from the new path (the old one is a deprecated "
    "alias).",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    """Forward every other attribute (private helpers included) to the new module."""
    return getattr(_moved, name)
