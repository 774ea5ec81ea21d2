"""GeoTIFF creation options: the defaults, their COG counterparts, and checks by GDAL itself.

GDAL only warns about an unknown creation option (then ignores it) and refuses some only when
a raster is written, so :func:`check_creation_options` has GDAL create and write a small
raster in memory with them, before any work; :func:`check_geotiff_name` refuses an output
named like another format. The writers (:mod:`diffclip_cli.io.maps`) use the defaults and the
COG mapping.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.drivers
import rasterio.errors
import rasterio.shutil
from rasterio._err import CPLE_BaseError  # GDAL errors rasterio does not wrap
from rasterio.io import MemoryFile

from diffclip_cli.errors import OutputError
from diffclip_cli.io.gdal import gdal_log

__all__ = [
    "COMMON_GTIFF_OPTIONS",
    "GEOTIFF_SUFFIXES",
    "GTIFF_DEFAULTS",
    "OVERVIEW_RESAMPLING",
    "check_creation_options",
    "check_geotiff_name",
    "cog_options",
    "parse_options",
]


GTIFF_DEFAULTS = {
    "TILED": "YES",
    "BLOCKXSIZE": "256",
    "BLOCKYSIZE": "256",
    "COMPRESS": "DEFLATE",
    "BIGTIFF": "IF_SAFER",
}
# GTiff creation options that have a COG counterpart (GTiff name -> COG name).
_COG_OPTIONS = {
    "COMPRESS": "COMPRESS",
    "PREDICTOR": "PREDICTOR",
    "ZLEVEL": "LEVEL",
    "ZSTD_LEVEL": "LEVEL",
    "JPEG_QUALITY": "QUALITY",
    "BLOCKXSIZE": "BLOCKSIZE",
    "BIGTIFF": "BIGTIFF",
    "NUM_THREADS": "NUM_THREADS",
    "LEVEL": "LEVEL",
    "QUALITY": "QUALITY",
    "BLOCKSIZE": "BLOCKSIZE",
}
#: Overview resampling methods the COG driver takes.
OVERVIEW_RESAMPLING = {"nearest", "mode", "average", "bilinear", "cubic", "gauss", "min", "max",
               "med", "q1", "q3", "rms"}


def parse_options(creation_options: Sequence[str] | Mapping[str, Any] | None) -> dict[str, str]:
    """Creation options from ``["KEY=VALUE", ...]`` or a mapping; keys upper-cased."""
    if creation_options is None:
        return {}
    if isinstance(creation_options, Mapping):
        items = [(str(k), v) for k, v in creation_options.items()]
    else:
        items = []
        for text in creation_options:
            key, sep, value = str(text).partition("=")
            if not sep or not key.strip():
                raise ValueError(f"creation options are KEY=VALUE, got {text!r}")
            items.append((key, value))
    return {k.strip().upper(): str(v).strip() for k, v in items}


#: GTiff creation options people set most; named when an option is refused (GDAL's own
#: list: https://gdal.org/drivers/raster/gtiff.html#creation-options).
COMMON_GTIFF_OPTIONS = ("COMPRESS", "PREDICTOR", "ZLEVEL", "ZSTD_LEVEL", "JPEG_QUALITY",
                        "MAX_Z_ERROR", "NUM_THREADS", "TILED", "BLOCKXSIZE", "BLOCKYSIZE",
                        "BIGTIFF", "INTERLEAVE", "SPARSE_OK")
#: File name suffixes of GeoTIFF outputs (GTiff and COG drivers).
GEOTIFF_SUFFIXES = (".tif", ".tiff")


def _gdal_complaints(action: Any) -> list[str]:
    """Run ``action`` and return GDAL's warnings about creation options meanwhile.

    GDAL logs them (``CPLE_NotSupported``, ``CPLE_IllegalArg``) and then ignores the option.
    """
    with gdal_log(logging.WARNING) as records:
        action()
    out = []
    for text in records:
        option_class = text.startswith(("CPLE_NotSupported in ", "CPLE_IllegalArg in "))
        text = re.sub(r"^CPLE_\w+ in ", "", text).strip().rstrip(".")
        if option_class or "creation option" in text or "value not recognised" in text:
            out.append(text)
    return out


def check_creation_options(creation_options: Sequence[str] | Mapping[str, Any] | None, *,
                           cog: bool = False, dtype: str = "uint8") -> dict[str, str]:
    """Validate GTiff creation options with GDAL itself, before any work.

    GDAL only warns about an unknown option or value and then ignores it (``--co BOGUS=1``
    would pass silently; a malformed ``BLOCKSIZE`` even crashes the COG driver), and refuses
    others only when the raster is created or written (a block size that is not a multiple
    of 16, an unsupported predictor). Here a small GeoTIFF is created and written in memory
    (``/vsimem/``) with the options, and with ``cog`` the COG driver copies it with their
    COG equivalents; every GDAL complaint or failure becomes an error.

    Args:
        creation_options: ``["KEY=VALUE", ...]`` or a mapping.
        cog: also check the options the COG driver gets.
        dtype: the data type of the raster (some options depend on it).

    Returns:
        The options, keys upper-cased.

    Raises:
        ValueError: GDAL's reason and the common valid options.
    """
    options = parse_options(creation_options)
    if not options:
        return options
    full = {**GTIFF_DEFAULTS, **options}
    size = 64
    # Memory files: unique names, removed on close even when GDAL left a broken file there.
    with MemoryFile(ext=".tif") as source, MemoryFile(ext=".tif") as copy:

        def create() -> None:
            with rasterio.open(source.name, "w", driver="GTiff", width=size, height=size,
                               count=1, dtype=dtype,
                               **{k.lower(): v for k, v in full.items()}) as ds:
                ds.write(np.zeros((1, size, size), dtype))  # some refusals come on write

        complaints: list[str] = []
        ignored = True  # GDAL would have gone on without the option (a warning)
        try:
            complaints = _gdal_complaints(create)
            if cog and not complaints:
                complaints = _gdal_complaints(lambda: rasterio.shutil.copy(
                    source.name, copy.name, driver="COG", **cog_options(full, "nearest")))
        except (rasterio.errors.RasterioError, CPLE_BaseError, ValueError, TypeError,
                OSError) as exc:
            if not complaints:
                lines = str(exc).strip().splitlines()
                text = lines[0] if lines else type(exc).__name__
                for temp in (source.name, copy.name):  # GDAL names the file: not the user's
                    text = text.replace(f"{Path(temp).name}: ", "")
                complaints, ignored = [text.rstrip(".")], False
    if complaints:
        why = " (GDAL ignores such options, so they are refused here)" if ignored else ""
        raise ValueError(
            "; ".join(dict.fromkeys(complaints)) + f"{why}. Common GTiff options: "
            f"{', '.join(COMMON_GTIFF_OPTIONS)}; all of them: "
            "https://gdal.org/drivers/raster/gtiff.html#creation-options")
    return options


def check_geotiff_name(path: str | os.PathLike[str]) -> None:
    """Refuse an output name whose extension belongs to another GDAL format.

    diffclip writes GeoTIFFs: ``map.img`` would be a GeoTIFF named like an Erdas Imagine file,
    which other software then fails to read. Names without a known raster extension are
    accepted.

    Raises:
        OutputError: the extension is another format's (e.g. ``.img``, ``.jp2``, ``.vrt``).
    """
    suffix = Path(path).suffix.lower()
    if not suffix or suffix in GEOTIFF_SUFFIXES:
        return
    driver = rasterio.drivers.raster_driver_extensions().get(suffix[1:])
    if driver is not None and driver not in ("GTiff", "COG"):
        raise OutputError(
            f"ends in {suffix}, the extension of GDAL's {driver} format, but diffclip writes "
            "GeoTIFF", path=path,
            hint=f"name it {Path(path).with_suffix('.tif').name} (valid: "
                 f"{', '.join(GEOTIFF_SUFFIXES)}; use --cog for a Cloud-Optimized GeoTIFF and "
                 "gdal_translate to convert to other formats)")


def cog_options(options: Mapping[str, str], overview_resampling: str) -> dict[str, str]:
    """The COG driver's options for GTiff ``options`` (see ``_COG_OPTIONS``)."""
    out = {"BLOCKSIZE": options.get("BLOCKXSIZE", "256"),
           "OVERVIEW_RESAMPLING": overview_resampling.upper()}
    for key, value in options.items():
        if key in _COG_OPTIONS:
            out[_COG_OPTIONS[key]] = value
    return out
