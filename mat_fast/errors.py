"""The exceptions users catch, in a leaf module (no imports of the package): every layer
raises them without importing the layers above it. Each message says what is wrong and how
to fix it; all are importable from :mod:`mat_fast` too."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "DeviceError",
    "InputError",
    "MemoryBudgetError",
    "NativeBuildError",
]


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here; the message says why."""


class NativeBuildError(RuntimeError):
    """The native extension could not be built or loaded; ``reason`` is one paragraph for
    users, ``log`` the path of the full compiler output (or None)."""

    def __init__(self, reason: str, log_path: Optional[Path] = None):
        super().__init__(reason)
        self.reason = reason
        self.log = log_path


class CheckpointError(ValueError):
    """A checkpoint could not be read, is not a MAT generator, or does not match one."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist (also catchable as ``FileNotFoundError``)."""


class InputError(ValueError):
    """Bad user input (file, image, mask); the message says what is wrong and how to fix it."""


class DeviceError(InputError):
    """The requested device does not exist here or is not one mat_fast runs on."""


class MemoryBudgetError(InputError):
    """A call would need more memory than is available; the message says how much."""
