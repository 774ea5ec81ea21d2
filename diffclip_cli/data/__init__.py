"""Data shipped with diffclip: the embedded Salinas-A sample scene (see salinas_a/README.md)."""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

__all__ = ["salinas_a_dir"]


def salinas_a_dir() -> Path:
    """Return the folder holding the embedded Salinas-A scene (hsi.tif, labels.gpkg, ...).

    Returns:
        A filesystem path; the package is installed unzipped, so it is the real location.
    """
    with as_file(files(__name__) / "salinas_a") as path:
        return Path(path)
