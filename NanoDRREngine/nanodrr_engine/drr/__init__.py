"""Rendering: ``render`` (functional) and ``DRR`` (module)."""

from .backends import available_backends
from .module import DRR
from .render import render

__all__ = ["DRR", "available_backends", "render"]
