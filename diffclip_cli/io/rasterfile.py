"""One raster file opened for reading, and its bands' wavelengths.

Opening gives a clear error for every way it can fail (missing, empty, not a raster,
truncated, a container of subdatasets).

:func:`open_raster` is how every reader of diffclip opens a file (the scene's HSI and LiDAR
in :mod:`diffclip_cli.io.raster`, label rasters, maps to evaluate).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from diffclip_cli.errors import InputError, first_line
from diffclip_cli.io.names import RasterSource, display_name, raster_source

__all__ = ["band_wavelengths", "gdal_reason", "open_raster"]

PathLike = str | os.PathLike[str]

_NM_UNITS = {"nm": 1.0, "nanometer": 1.0, "nanometers": 1.0, "nanometre": 1.0,
             "nanometres": 1.0, "um": 1000.0, "µm": 1000.0, "μm": 1000.0, "micrometer": 1000.0,
             "micrometers": 1000.0, "micrometre": 1000.0, "micrometres": 1000.0,
             "micron": 1000.0, "microns": 1000.0, "mm": 1e6, "millimeters": 1e6}
_NUMBER = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"
_WAVELENGTH_TEXT = re.compile(
    _NUMBER + r"\s*(" + "|".join(sorted((re.escape(u) for u in _NM_UNITS), key=len,
                                        reverse=True)) + r")\b", re.IGNORECASE)


def _to_nm(value: float, units: str | None) -> float:
    """A wavelength in nanometres; without known units, values below 30 are micrometres."""
    if units:
        factor = _NM_UNITS.get(units.strip().casefold())
        if factor is not None:
            return value * factor
    return value * 1000.0 if value < 30 else value


def _float(text: Any) -> float | None:
    try:
        value = float(str(text).strip())
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def band_wavelengths(ds: Any) -> list[float] | None:
    """The centre wavelength of every band in nanometres, where GDAL exposes them.

    Looked for, in order: the band's ``IMAGERY`` metadata (``CENTRAL_WAVELENGTH_UM``, GDAL
    3.10's standard item), the band's ``wavelength`` item with ``wavelength_units`` (ENVI and
    other drivers), the dataset's ENVI ``wavelength = {...}`` list, and band descriptions
    carrying a number with a unit (``"450 nm"``, ``"Band 1 (0.45 Micrometers)"``).

    Args:
        ds: an open rasterio dataset.

    Returns:
        One wavelength per band, or ``None`` unless every band has one.
    """
    count = ds.count
    dataset_units = ds.tags().get("wavelength_units")
    found: list[float | None] = []
    for band in range(1, count + 1):
        value = _float(ds.tags(band, ns="IMAGERY").get("CENTRAL_WAVELENGTH_UM"))
        if value is not None:
            found.append(value * 1000.0)
            continue
        tags = {k.lower(): v for k, v in ds.tags(band).items()}
        value = _float(tags.get("wavelength"))
        found.append(None if value is None
                     else _to_nm(value, tags.get("wavelength_units") or dataset_units))
    if all(v is not None for v in found):
        return [round(float(v), 6) for v in found if v is not None]
    envi = {k.lower(): v for k, v in ds.tags(ns="ENVI").items()}
    if "wavelength" in envi:
        values = [_float(v) for v in envi["wavelength"].strip("{} ").split(",")]
        if len(values) == count and all(v is not None for v in values):
            units = envi.get("wavelength_units") or dataset_units
            return [round(_to_nm(v, units), 6) for v in values if v is not None]
    parsed = []
    for text in ds.descriptions:
        match = _WAVELENGTH_TEXT.search(text or "")
        if match is None:
            return None
        parsed.append(round(_to_nm(float(match.group(1)), match.group(2)), 6))
    return parsed


def _article(what: str) -> str:
    """``"an HSI"``, ``"a LiDAR"``: the indefinite article for a kind of file."""
    return ("an " if what == "HSI" or what[:1].lower() in "aeiou" else "a ") + what


def open_raster(path: PathLike, *, what: str = "raster") -> rasterio.DatasetReader:
    """Open a raster file for reading, with a clear error for every way that can fail.

    The last pixel of every band is read once, so a truncated file fails here rather than in
    the middle of a long run.

    Args:
        path: the file, or a GDAL dataset name (see :func:`raster_source`); only plain paths
            are checked for existence before GDAL sees them.
        what: what the file is meant to be, for messages ("HSI", "LiDAR", "label").

    Raises:
        InputError: the file is missing, a directory, empty, not a raster, truncated/corrupt,
            or a container of subdatasets (a NetCDF with several variables: they are listed).
    """
    p = raster_source(path)
    if isinstance(p, Path):
        if not p.exists():
            raise InputError(f"{what} file not found", path=p, hint="check the path")
        if p.is_dir():
            raise InputError(f"is a directory, not {_article(what)} file", path=p,
                             hint="give the path of a GeoTIFF inside it")
        try:
            empty = p.stat().st_size == 0
        except OSError:
            empty = False
        if empty:
            raise InputError(f"is an empty file (0 bytes), not {_article(what)} raster",
                             path=p, hint="copy or export the GeoTIFF again")
    try:
        ds = rasterio.open(p)
    except (RasterioError, OSError) as exc:
        hint = ("give a GeoTIFF (or another raster format GDAL reads)" if isinstance(p, Path)
                else "check the dataset name: e.g. /vsizip/scene.zip/hsi.tif, "
                     "NETCDF:file.nc:variable, HDF5:\"file.h5\"://dataset")
        raise InputError(f"is not a readable {what} raster ({gdal_reason(exc, p)})", path=p,
                         hint=hint) from None
    try:
        if ds.count < 1:
            subdatasets = list(ds.subdatasets)
            if subdatasets:
                shown = ", ".join(subdatasets[:12]) + (", ..." if len(subdatasets) > 12 else "")
                raise InputError(
                    f"holds {len(subdatasets)} subdatasets (variables) and no bands of its own: "
                    f"{shown}", path=p, hint=f"give one of them, e.g. {subdatasets[0]}")
            raise InputError(f"the {what} raster has no bands", path=p)
        ds.read(window=Window(ds.width - 1, ds.height - 1, 1, 1))
    except InputError:  # first: an InputError is an OSError too
        ds.close()
        raise
    except (RasterioError, OSError) as exc:
        ds.close()
        raise InputError(f"reading the {what} raster failed ({gdal_reason(exc, p)})", path=p,
                         hint="the file may be truncated or corrupt; export or copy it again"
                         ) from None
    return ds


def _short(exc: BaseException) -> str:
    """The first line of an exception's message, or of its cause when it points there."""
    text = str(exc).strip()
    cause = exc.__cause__ or exc.__context__
    if (cause is not None and (not text or "previous exception" in text)
            and str(cause).strip()):
        return first_line(cause)
    return first_line(exc)


def gdal_reason(exc: BaseException, path: RasterSource) -> str:
    """GDAL's reason for a failure in plain words, without repeating the file's path."""
    text = _short(exc)
    if "not recognized as being in a supported file format" in text:
        return "GDAL does not recognise its format"
    name = display_name(path)
    for form in (f"'{path}'", str(path), f"{name}, ", f"{name}: ", name):
        text = text.replace(form, "").strip(" ,:")
    return text or type(exc).__name__
