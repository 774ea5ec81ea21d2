"""What GDAL says: its log collected where a caller needs it, its libraries kept quiet.

:func:`gdal_log` collects the messages GDAL reports through rasterio's loggers (an ignored
creation option, a failed write at close) without showing them.

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
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["gdal_log", "quiet_libtiff"]


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


@contextlib.contextmanager
def gdal_log(level: int, names: Sequence[str] = ("rasterio._env",)) -> Iterator[list[str]]:
    """Collect, without showing them, the messages GDAL logs through rasterio meanwhile.

    GDAL reports some failures only through its error handler, which rasterio turns into log
    records of the loggers ``names`` (an ignored creation option, a failed write at close);
    the block gets the list of their texts, filled as they come.
    """
    records: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = _Collect(level)
    loggers = [logging.getLogger(n) for n in names]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(level)
        lg.propagate = False
    try:
        yield records
    finally:
        for lg, (old, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(old)
            lg.propagate = propagate
