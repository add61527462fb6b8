"""Optional dependencies of the metrics (the ``eval`` extra), imported when first needed."""

from __future__ import annotations

import importlib

INSTALL_HINT = 'pip install "mat_fast[eval]"'

# import name -> the PyPI name people install
_PYPI_NAMES = {"scipy": "scipy", "sklearn": "scikit-learn"}


class MissingExtraError(ImportError):
    """An optional metrics dependency is not installed; the message says how to install it."""


def require(module: str, what: str):
    """Import ``module`` or raise a one-line error naming the metric and the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pypi = _PYPI_NAMES.get(module.split(".")[0], module)
        raise MissingExtraError(
            f"{what} needs {pypi}, which is not installed: {INSTALL_HINT} (or pip install {pypi})"
        ) from None
