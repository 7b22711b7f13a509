"""The one exception the NanoDRR Slicer logic raises for bad input."""

from __future__ import annotations


class NanoDRRError(ValueError):
    """Invalid input (node, parameter or geometry); the message names it and says what is wrong.

    Raised before any node is created or modified, so a failed call leaves the scene as it was.
    """
