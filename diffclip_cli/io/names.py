"""Names of raster inputs: plain paths, or GDAL dataset names that must reach GDAL verbatim.

Kept free of heavy imports (no rasterio): the command line uses it before opening anything.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from diffclip_cli.errors import InputError

__all__ = ["RasterSource", "display_name", "is_gdal_name", "raster_source"]

log = logging.getLogger("diffclip")

PathLike = str | os.PathLike[str]
#: A raster input: a plain file path, or a GDAL dataset name kept as its exact text.
RasterSource = Path | str

# A GDAL dataset name that is not a plain path: a virtual file system (/vsizip/, /vsis3/, ...),
# a driver prefix (NETCDF:, HDF5:, GPKG:, ...; two letters at least, so C: stays a drive) or
# a URL.
_GDAL_NAME = re.compile(r"^(/vsi[a-z0-9_]+/|[A-Za-z][A-Za-z0-9_]+:|[a-z][a-z0-9+.-]*://)")
# ENVI data files beside a header ``x.hdr``: ``x`` or ``x`` with one of these suffixes.
_ENVI_DATA_SUFFIXES = ("", ".img", ".dat", ".bsq", ".bil", ".bip", ".raw", ".bin", ".envi")


def is_gdal_name(name: PathLike) -> bool:
    """Whether ``name`` is a GDAL dataset name rather than a plain file path.

    ``/vsizip/scene.zip/hsi.tif``, ``NETCDF:hsi.nc:reflectance``, ``HDF5:"f.h5"://cube`` and
    URLs are; an existing file is always a plain path, whatever its name.
    """
    text = os.fspath(name)
    return bool(_GDAL_NAME.match(text)) and not os.path.exists(text)


def raster_source(name: PathLike) -> RasterSource:
    """A raster input as diffclip keeps it: a :class:`Path`, or a GDAL dataset name verbatim.

    GDAL names are not turned into paths (that would fold ``/vsizip//abs/x.zip`` into another
    name). An ENVI header ``x.hdr`` becomes its data file (``x``, ``x.img``, ``x.dat``, ...),
    which is what GDAL opens.

    Raises:
        InputError: an ENVI header whose data file is not beside it.
    """
    text = os.fspath(name)
    if is_gdal_name(text):
        return text
    path = Path(text)
    if path.suffix.lower() == ".hdr" and path.is_file():
        stem = path.with_suffix("")
        for suffix in _ENVI_DATA_SUFFIXES:
            for candidate in (stem.with_name(stem.name + suffix),
                              stem.with_name(stem.name + suffix.upper())):
                if candidate.is_file():
                    log.debug("%s: reading the ENVI data file %s", path, candidate)
                    return candidate
        raise InputError(
            "is an ENVI header, and its data file was not found beside it (looked for "
            + ", ".join(stem.name + s for s in _ENVI_DATA_SUFFIXES if s) + f", {stem.name})",
            path=path, hint="give the data file, or put it beside its header")
    return path


def display_name(source: PathLike) -> str:
    """A short name of an input for messages: the file name, or a GDAL name's last part."""
    text = os.fspath(source)
    return text.rstrip("/").rsplit("/", 1)[-1] or text
