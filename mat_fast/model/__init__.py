"""MAT's networks, written to read like the paper; they call :mod:`mat_fast.ops` only."""

from .discriminator import Discriminator
from .generator import Generator

__all__ = ["Generator", "Discriminator"]
