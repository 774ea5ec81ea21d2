"""Lazy imports of the optional ``bench`` dependencies (scipy, h5py) and of scikit-learn."""

from __future__ import annotations

import importlib
from types import ModuleType

from diffclip_cli.errors import DiffclipError

__all__ = ["require"]


def require(module: str, *, purpose: str) -> ModuleType:
    """Import an optional dependency of the benchmark tools.

    Args:
        module: the module to import, e.g. ``"scipy.io"`` or ``"sklearn.svm"``.
        purpose: what it is needed for, for the error message.

    Returns:
        The imported module.

    Raises:
        DiffclipError: when the module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise DiffclipError(
            f"{purpose} needs the Python package '{package}', which is not installed",
            hint="install the benchmark extras with pip install 'diffclip[bench]'",
        ) from None
