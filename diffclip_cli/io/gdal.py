"""What GDAL's libraries print on their own: kept off the terminal of a command.

GDAL reports errors through its error handler, which rasterio turns into exceptions and log
records. libtiff, under GDAL's GeoTIFF driver, reports some I/O failures through its *own*
global handler instead, whose default prints straight to the process's stderr: on a full disk
a command printed ``_tiffWriteProc: No space left on device.`` beside its own one-sentence
error, even under ``-q``. GDAL notices the failure itself (the write or the close fails, and
diffclip reports it), so that line only repeats it, raw.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path

__all__ = ["quiet_libtiff"]


def _loaded_libtiff() -> list[str]:
    """Paths of the libtiff shared libraries this process has loaded (Linux; else none)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return []
    found: list[str] = []
    with contextlib.suppress(OSError):
        for line in maps.read_text().splitlines():
            parts = line.split()
            path = parts[-1] if len(parts) >= 6 else ""
            name = os.path.basename(path)
            if name.startswith("libtiff") and ".so" in name and path not in found:
                found.append(path)
    return found


def quiet_libtiff() -> int:
    """Stop libtiff's global error and warning handlers from printing to stderr.

    Imports rasterio (which loads GDAL and its libtiff) and sets libtiff's process-wide
    handlers to none in every libtiff this process has loaded; GDAL's own reporting, which
    uses per-file handlers, is unchanged. Best effort: nothing happens where the libraries
    cannot be found (other platforms) or lack the functions.

    Returns:
        How many libtiff libraries were quietened.
    """
    import rasterio  # noqa: F401  (loads GDAL and libtiff)

    done = 0
    for path in _loaded_libtiff():
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0))
            for name in ("TIFFSetErrorHandler", "TIFFSetWarningHandler"):
                func = getattr(lib, name)
                func.restype = ctypes.c_void_p
                func.argtypes = [ctypes.c_void_p]
                func(None)
            done += 1
        except (OSError, AttributeError):
            continue
    return done
