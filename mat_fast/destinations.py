"""Checks on where results go, made before any work: an output never replaces an input
(same path, a path through '..' or a symlink, or a hard link to it), and every destination
folder is writable, named in the error as the user gave it."""

from __future__ import annotations

import os
import tempfile
from typing import Iterable, Optional, Tuple

from .errors import InputError

__all__ = ["check_destination", "same_file"]


def same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one file: by inode and device where both exist
    (hard links, symlinks), else by their resolved paths."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _writable_folder(folder: str) -> Optional[str]:
    """None if a file can be created in ``folder``, else why not. Tried for real: as root,
    os.access says yes even on read-only mounts and /proc."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".mat_fast-write-check-", dir=folder)
    except OSError as err:
        return err.strerror or str(err)
    os.close(fd)
    os.remove(probe)
    return None


def check_destination(path: str, what: str, protected: Iterable[Tuple[str, str]] = ()) -> None:
    """Refuse ``path`` (described as ``what``, e.g. '-o') when it is one of the
    ``protected`` (path, description) files, is a folder, or cannot be written."""
    for other, label in protected:
        if other and same_file(path, other):
            raise InputError(
                f"{what} {path} is {label} ({other}); writing it would destroy that file: "
                f"choose another output name"
            )
    if os.path.isdir(path):
        raise InputError(f"{what} {path} is a folder; name an image file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"output folder does not exist: {folder} (for {what}); create it first")
    reason = _writable_folder(folder)
    if reason is not None:
        raise InputError(
            f"cannot write {what} {path}: folder {folder} is not writable ({reason}); "
            f"choose another output folder"
        )
