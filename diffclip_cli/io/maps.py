"""Map products: tiled GeoTIFF / Cloud-Optimized GeoTIFF writers and the map reader.

:class:`RasterWriter` writes any raster tile by tile to a temporary file and only gives it its
final name once the ``with`` block succeeds (see :mod:`diffclip_cli.io.atomic`).
:class:`MapWriter` is the class-map flavour: class ids, nodata 0, a colour table, the class names in
the file's tags and in a sidecar JSON, GDAL category names and a raster attribute table (a PAM
``.aux.xml``) and a QGIS style (``.qml``). :func:`read_map` recovers the class table.
The products are described in ``docs/maps.md``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import rasterio
import rasterio.drivers
import rasterio.errors
import rasterio.shutil
from rasterio._err import CPLE_BaseError  # GDAL errors rasterio does not wrap
from rasterio.io import MemoryFile
from rasterio.windows import Window

from diffclip_cli.errors import InputError, LabelError, OutputError
from diffclip_cli.io.atomic import TEMP_PREFIX, atomic_path, check_output, write_error
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.io.grid import Grid
from diffclip_cli.io.raster import RasterSource, open_raster, raster_source

__all__ = [
    "BAND_DESCRIPTION",
    "CLASSES_TAG",
    "MAP_FORMAT",
    "MapInfo",
    "MapWriter",
    "RasterWriter",
    "aux_xml_path",
    "check_creation_options",
    "check_geotiff_name",
    "class_aux_xml",
    "class_colormap",
    "map_dtype",
    "map_files",
    "qgis_style",
    "qml_path",
    "read_map",
    "sidecar_path",
]

log = logging.getLogger("diffclip")

#: Tag holding the class table as JSON records (id, name, description, color).
CLASSES_TAG = "DIFFCLIP_CLASSES"
#: Band description of class maps.
BAND_DESCRIPTION = "land cover class"
#: The ``format`` field of the sidecar JSON.
MAP_FORMAT = "diffclip-map/1"

_GTIFF_DEFAULTS = {
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
_RESAMPLING = {"nearest", "mode", "average", "bilinear", "cubic", "gauss", "min", "max",
               "med", "q1", "q3", "rms"}


def _options(creation_options: Sequence[str] | Mapping[str, Any] | None) -> dict[str, str]:
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


@contextlib.contextmanager
def _gdal_log(level: int, names: Sequence[str] = ("rasterio._env",)) -> Iterator[list[str]]:
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


def _gdal_complaints(action: Any) -> list[str]:
    """Run ``action`` and return GDAL's warnings about creation options meanwhile.

    GDAL logs them (``CPLE_NotSupported``, ``CPLE_IllegalArg``) and then ignores the option.
    """
    with _gdal_log(logging.WARNING) as records:
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
    options = _options(creation_options)
    if not options:
        return options
    full = {**_GTIFF_DEFAULTS, **options}
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
                    source.name, copy.name, driver="COG", **_cog_options(full, "nearest")))
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


def map_dtype(classes: ClassTable) -> str:
    """``"uint8"`` when every class id fits in a byte, else ``"uint16"``."""
    return "uint8" if max(classes.ids) <= 255 else "uint16"


def class_colormap(classes: ClassTable) -> dict[int, tuple[int, int, int, int]]:
    """The colour table of a class map: 0 (nodata) transparent black, each class its colour."""
    cmap: dict[int, tuple[int, int, int, int]] = {0: (0, 0, 0, 0)}
    for c in classes:
        cmap[c.id] = (*c.rgb, 255)
    return cmap


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar JSON of a map: the map's file name plus ``.json`` (``map.tif.json``)."""
    return Path(os.fspath(path) + ".json")


def aux_xml_path(path: str | os.PathLike[str]) -> Path:
    """GDAL's PAM side file of a raster: its file name plus ``.aux.xml`` (``map.tif.aux.xml``)."""
    return Path(os.fspath(path) + ".aux.xml")


def qml_path(path: str | os.PathLike[str]) -> Path:
    """The QGIS style QGIS loads with a raster: its name with ``.qml`` (``map.qml``)."""
    return Path(path).with_suffix(".qml")


def map_files(path: str | os.PathLike[str], *, sidecar: bool = True,
              styles: bool = True) -> list[Path]:
    """Every file :class:`MapWriter` writes for the map ``path``, the map first.

    The sidecar JSON (:func:`sidecar_path`) with ``sidecar``, the PAM ``.aux.xml``
    (:func:`aux_xml_path`) and the QGIS ``.qml`` (:func:`qml_path`) with ``styles``: what a
    command declares as the map's files in its :func:`~diffclip_cli.io.atomic.output_set`,
    so they are checked against the inputs and the other outputs before any work, and renamed
    with the map.
    """
    files = [Path(path)]
    if sidecar:
        files.append(sidecar_path(path))
    if styles:
        files += [aux_xml_path(path), qml_path(path)]
    return files


# GDAL raster attribute table codes (gdal.h): field types and usages.
_GFT_INTEGER, _GFT_STRING = 0, 2
_GFU_GENERIC, _GFU_NAME, _GFU_MINMAX, _GFU_RED, _GFU_GREEN, _GFU_BLUE, _GFU_ALPHA = (
    0, 2, 5, 6, 7, 8, 9)


def class_aux_xml(classes: ClassTable) -> str:
    """A GDAL PAM document giving band 1 the class names and a raster attribute table.

    GDAL reads it with the map (``gdalinfo`` prints the ``Categories`` and the RAT; QGIS and
    ArcGIS show the names): category names indexed by pixel value (0, nodata, and values that
    are no class are empty), and a thematic RAT with one row per class and the columns
    ``Value``, ``Class``, ``Description``, ``Red``, ``Green``, ``Blue``, ``Alpha``.

    Args:
        classes: the map's class table.

    Returns:
        The XML text of ``<map>.aux.xml``.
    """
    names = {c.id: c.name for c in classes}
    categories = "".join(
        f"      <Category>{escape(names.get(v, ''))}</Category>\n"
        for v in range(max(classes.ids) + 1))
    fields = [("Value", _GFT_INTEGER, _GFU_MINMAX), ("Class", _GFT_STRING, _GFU_NAME),
              ("Description", _GFT_STRING, _GFU_GENERIC), ("Red", _GFT_INTEGER, _GFU_RED),
              ("Green", _GFT_INTEGER, _GFU_GREEN), ("Blue", _GFT_INTEGER, _GFU_BLUE),
              ("Alpha", _GFT_INTEGER, _GFU_ALPHA)]
    defs = "".join(
        f'      <FieldDefn index="{i}">\n        <Name>{name}</Name>\n'
        f"        <Type>{kind}</Type>\n        <Usage>{usage}</Usage>\n      </FieldDefn>\n"
        for i, (name, kind, usage) in enumerate(fields))
    rows = "".join(
        f'      <Row index="{k}">\n'
        + "".join(f"        <F>{escape(str(v))}</F>\n"
                  for v in (c.id, c.name, c.description, *c.rgb, 255))
        + "      </Row>\n"
        for k, c in enumerate(classes))
    return ('<PAMDataset>\n  <PAMRasterBand band="1">\n    <CategoryNames>\n'
            f"{categories}    </CategoryNames>\n"
            '    <GDALRasterAttributeTable tableType="thematic">\n'
            f"{defs}{rows}    </GDALRasterAttributeTable>\n"
            "  </PAMRasterBand>\n</PAMDataset>\n")


def qgis_style(classes: ClassTable) -> str:
    """A QGIS layer style (``.qml``): a paletted renderer with each class's colour and name.

    QGIS applies ``map.qml`` when it opens ``map.tif``, so the legend shows the class names
    (not the ids) in the map's colours; nodata (0) stays transparent.

    Args:
        classes: the map's class table.

    Returns:
        The XML text of the style.
    """
    entries = "".join(
        f"        <paletteEntry value=\"{c.id}\" color=\"{c.hex}\" alpha=\"255\" "
        f"label={quoteattr(c.name)}/>\n" for c in classes)
    return ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
            '<qgis version="3.28" styleCategories="Symbology">\n'
            "  <pipe>\n"
            '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" '
            'nodataColor="">\n'
            "      <rasterTransparency/>\n"
            "      <colorPalette>\n"
            f"{entries}"
            "      </colorPalette>\n"
            "    </rasterrenderer>\n"
            '    <rasterresampler maxOversampling="2"/>\n'
            "  </pipe>\n"
            "  <blendMode>0</blendMode>\n"
            "</qgis>\n")


class RasterWriter:
    """Write a raster on a :class:`Grid` tile by tile; the file appears only when complete.

    Use as a context manager::

        with RasterWriter("conf.tif", grid, count=1, dtype="float32", nodata=-1) as w:
            for window, block in tiles:
                w.write(window, block)

    Inside the block the data go to a hidden temporary file beside the output. On success the
    file is finalised (tags, colour table; converted to a Cloud-Optimized GeoTIFF with
    overviews when ``cog`` is set) and renamed to ``path``; on any exception every temporary
    file is removed and an existing ``path`` is left untouched.

    Args:
        path: the output GeoTIFF.
        grid: the pixel grid; its size, transform and CRS are written exactly.
        count: number of bands.
        dtype: numpy/rasterio data type name, e.g. ``"uint8"`` or ``"float32"``.
        nodata: the nodata value, or ``None``.
        band_descriptions: one description per band.
        tags: dataset tags (``key -> str``).
        overwrite: replace an existing output.
        cog: write a Cloud-Optimized GeoTIFF (tiled, with internal overviews).
        creation_options: GTiff creation options that override the defaults (tiled 256 x 256,
            DEFLATE, BIGTIFF=IF_SAFER), as ``["COMPRESS=ZSTD"]`` or ``{"COMPRESS": "ZSTD"}``;
            with ``cog`` the equivalent COG options are used.
        overview_resampling: resampling of the COG overviews (``"nearest"``, ``"mode"``...).
        colormap: a colour table for band 1 (``value -> (r, g, b[, a])``), single-band
            ``uint8``/``uint16`` only.

    Raises:
        OutputError: when the output exists (without ``overwrite``) or cannot be written.
        ValueError: for an impossible option combination.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        grid: Grid,
        *,
        count: int,
        dtype: str | np.dtype[Any] | type,
        nodata: float | None,
        band_descriptions: Sequence[str] | None = None,
        tags: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        cog: bool = False,
        creation_options: Sequence[str] | Mapping[str, Any] | None = None,
        overview_resampling: str = "nearest",
        colormap: Mapping[int, Sequence[int]] | None = None,
    ) -> None:
        check_geotiff_name(path)
        self.path = check_output(path, overwrite=overwrite)
        self.grid = grid
        self.count = int(count)
        self.dtype = np.dtype(dtype)
        self.nodata = nodata
        self.band_descriptions = list(band_descriptions) if band_descriptions else None
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.overwrite = overwrite
        self.cog = cog
        self.options = {**_GTIFF_DEFAULTS,
                        **check_creation_options(creation_options, cog=cog,
                                                 dtype=np.dtype(dtype).name)}
        self.overview_resampling = overview_resampling.lower()
        self.colormap = dict(colormap) if colormap else None
        if self.count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        if self.band_descriptions is not None and len(self.band_descriptions) != self.count:
            raise ValueError(f"{self.count} band descriptions expected, got "
                             f"{len(self.band_descriptions)}")
        if self.overview_resampling not in _RESAMPLING:
            raise ValueError(f"unknown overview resampling {overview_resampling!r}; use one of "
                             f"{sorted(_RESAMPLING)}")
        if self.colormap and (self.count != 1 or self.dtype not in (np.uint8, np.uint16)):
            raise ValueError("a colour table needs a single uint8 or uint16 band")
        if grid.width < 1 or grid.height < 1:
            raise ValueError(f"the grid is empty: {grid.width} x {grid.height}")
        self._stack: contextlib.ExitStack | None = None
        self._dataset: Any = None
        self._final_tmp: Path | None = None
        self._work: Path | None = None

    # ----------------------------------------------------------------------------- protocol
    def __enter__(self) -> RasterWriter:
        stack = contextlib.ExitStack()
        try:
            self._final_tmp = stack.enter_context(
                atomic_path(self.path, overwrite=self.overwrite))
            self._enter_extra(stack)
            if self.cog:
                self._work = stack.enter_context(_scratch_file(self.path.parent))
            else:
                self._work = self._final_tmp
            profile = {
                "driver": "GTiff",
                "width": self.grid.width,
                "height": self.grid.height,
                "count": self.count,
                "dtype": self.dtype.name,
                "transform": self.grid.transform,
                "nodata": self.nodata,
                **{k.lower(): v for k, v in self.options.items()},
            }
            if self.grid.crs is not None:
                profile["crs"] = self.grid.crs
            self._dataset = rasterio.open(self._work, "w", **profile)
            stack.callback(self._close_dataset)
            self._describe(self._dataset)
        except BaseException:
            stack.__exit__(*sys.exc_info())
            raise
        self._stack = stack
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            raise RuntimeError("RasterWriter used outside its with-block")
        if exc_type is not None:
            stack.__exit__(exc_type, exc, tb)
            return
        try:
            self._finish()
        except BaseException:
            if not stack.__exit__(*sys.exc_info()):
                raise
            return
        stack.__exit__(None, None, None)

    def write(self, window: Window, array: np.ndarray) -> None:
        """Write one block.

        Args:
            window: where the block goes on the grid (inside it).
            array: ``(count, h, w)``, or ``(h, w)`` for a single band, with ``(h, w)`` the
                window's size; cast to the writer's dtype (integer values must fit in it).

        Raises:
            ValueError: if the window leaves the grid, the shape does not match, or integer
                values do not fit the data type.
        """
        if self._dataset is None:
            raise RuntimeError("RasterWriter.write called outside its with-block")
        window = Window(*(round(v) for v in (window.col_off, window.row_off,
                                              window.width, window.height)))
        if (window.col_off < 0 or window.row_off < 0
                or window.col_off + window.width > self.grid.width
                or window.row_off + window.height > self.grid.height):
            raise ValueError(f"window {window} is not inside the {self.grid.width} x "
                             f"{self.grid.height} grid")
        data = np.asarray(array)
        if data.ndim == 2:
            data = data[None]
        expected = (self.count, int(window.height), int(window.width))
        if data.shape != expected:
            raise ValueError(f"block of shape {np.asarray(array).shape} does not fit window "
                             f"{window} with {self.count} band(s): expected {expected}")
        if np.issubdtype(self.dtype, np.integer) and data.dtype != self.dtype and data.size:
            info = np.iinfo(self.dtype)
            lo, hi = np.nanmin(data), np.nanmax(data)
            if lo < info.min or hi > info.max:
                raise ValueError(f"values {lo}..{hi} do not fit in {self.dtype.name}")
        self._check_block(data)
        try:
            self._dataset.write(data.astype(self.dtype, copy=False), window=window)
        except OSError as exc:  # named here: several outputs may be open at once
            raise write_error(exc, self.path) from None

    # ----------------------------------------------------------------------------- hooks
    def _enter_extra(self, stack: contextlib.ExitStack) -> None:
        """Subclasses open further atomic outputs here (renamed before the main one)."""

    def _check_block(self, data: np.ndarray) -> None:
        """Subclasses validate a block's values here."""

    def _finish_extra(self) -> None:
        """Subclasses write their further outputs here, after the raster is complete."""

    # ----------------------------------------------------------------------------- internals
    def _close_dataset(self) -> None:
        if self._dataset is not None:
            with contextlib.suppress(Exception):
                self._dataset.close()
            self._dataset = None

    def _describe(self, ds: Any) -> None:
        """Descriptions, tags and colour table; set before any pixel (TIFF needs it so)."""
        if self.band_descriptions:
            for band, text in enumerate(self.band_descriptions, start=1):
                ds.set_band_description(band, text)
        if self.tags:
            ds.update_tags(**self.tags)
        if self.colormap:
            ds.write_colormap(1, {int(k): tuple(int(x) for x in v)
                                  for k, v in self.colormap.items()})

    def _finish(self) -> None:
        dataset, self._dataset = self._dataset, None
        _close_checked(dataset)
        if self.cog:
            assert self._work is not None and self._final_tmp is not None
            rasterio.shutil.copy(str(self._work), str(self._final_tmp), driver="COG",
                                 **self._cog_options())
            _verify_cog(self._final_tmp, int(self._cog_options()["BLOCKSIZE"]))
        self._finish_extra()

    def _cog_options(self) -> dict[str, str]:
        return _cog_options(self.options, self.overview_resampling)


def _cog_options(options: Mapping[str, str], overview_resampling: str) -> dict[str, str]:
    """The COG driver's options for GTiff ``options`` (see ``_COG_OPTIONS``)."""
    out = {"BLOCKSIZE": options.get("BLOCKXSIZE", "256"),
           "OVERVIEW_RESAMPLING": overview_resampling.upper()}
    for key, value in options.items():
        if key in _COG_OPTIONS:
            out[_COG_OPTIONS[key]] = value
    return out


def _close_checked(dataset: Any) -> None:
    """Close a dataset opened for writing and fail if GDAL could not write it.

    GDAL writes cached blocks and the TIFF directory at close and only signals a failure
    there (a full disk, an I/O error) through its error handler: rasterio's ``close()`` does
    not raise. The errors are collected from rasterio's logging, and the file is reopened to
    check that it is a readable raster of the expected shape.

    Raises:
        OSError: naming GDAL's first message (the disk-full check looks at the free space).
    """
    name, shape = dataset.name, (dataset.count, dataset.height, dataset.width)
    names = ("rasterio._env", "rasterio._err", "rasterio._io")
    with _gdal_log(logging.DEBUG, names) as records, rasterio.Env():
        dataset.close()
    errors = [text.split("msg=", 1)[-1].strip("'\" ") for text in records
              if "signalled an error" in text and "error" in text.split("msg=", 1)[-1].lower()]
    if errors:
        raise OSError(errno.EIO, f"GDAL could not write it: {errors[0]}")
    try:
        with rasterio.open(name) as ds:
            ok = (ds.count, ds.height, ds.width) == shape
    except rasterio.errors.RasterioIOError as exc:
        raise OSError(errno.EIO, f"it cannot be read back ({exc})") from None
    if not ok:
        raise OSError(errno.EIO, "it cannot be read back whole")


@contextlib.contextmanager
def _scratch_file(folder: Path) -> Any:
    """A hidden temporary GeoTIFF beside the output, removed (with GDAL side files) on exit."""
    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tif",
                                dir=folder if str(folder) else ".")
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        for aux in path.parent.glob(path.name + ".*"):
            with contextlib.suppress(OSError):
                aux.unlink()


def _verify_cog(path: Path, block: int) -> None:
    """Check that a COG came out tiled, and with overviews when larger than one block."""
    with rasterio.open(path) as ds:
        tiled = ds.block_shapes[0] == (block, block)
        layout = ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")
        needs_overviews = max(ds.width, ds.height) > block
        if not tiled or layout != "COG" or (needs_overviews and not ds.overviews(1)):
            raise RuntimeError(f"the COG driver did not write a tiled COG with overviews: "
                               f"{path} (blocks {ds.block_shapes[0]}, layout {layout}, "
                               f"overviews {ds.overviews(1)})")


class MapWriter(RasterWriter):
    """Write a land-cover class map (class ids, nodata 0) tile by tile.

    The map is ``uint8`` (``uint16`` when a class id exceeds 255), single band, nodata 0, with
    a colour table from the class colours (0 transparent), the band description
    ``"land cover class"``, the class table as JSON in the tag ``DIFFCLIP_CLASSES``, one tag
    ``CLASS_<id>=<name>`` per class, a sidecar JSON ``<map>.json`` (see
    :func:`sidecar_path`) with the classes, the grid, the software version, the creation time
    and the caller's ``metadata``, GDAL category names and a raster attribute table in
    ``<map>.aux.xml`` (:func:`class_aux_xml`) and a QGIS style ``<map stem>.qml``
    (:func:`qgis_style`). Every file appears only when the block succeeds.

    Args:
        path: the output GeoTIFF.
        grid: the pixel grid.
        classes: the class table (ids, names, colours).
        metadata: JSON-serialisable provenance for the sidecar (source files, model, ...).
        sidecar: also write the sidecar JSON.
        styles: also write the ``.aux.xml`` (categories, RAT) and the QGIS ``.qml``.
        tags: further dataset tags.
        overwrite: replace an existing map (and sidecar).
        cog: write a Cloud-Optimized GeoTIFF.
        creation_options: see :class:`RasterWriter`.
        overview_resampling: ``"mode"`` (default) or ``"nearest"``; class maps must not be
            averaged.

    Raises:
        OutputError: when the map or one of its side files exists (without ``overwrite``).
        ValueError: for an averaging overview resampling.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        grid: Grid,
        classes: ClassTable,
        *,
        metadata: Mapping[str, Any] | None = None,
        sidecar: bool = True,
        styles: bool = True,
        tags: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        cog: bool = False,
        creation_options: Sequence[str] | Mapping[str, Any] | None = None,
        overview_resampling: str = "mode",
    ) -> None:
        if overview_resampling.lower() not in ("mode", "nearest"):
            raise ValueError("class maps need overview_resampling 'mode' or 'nearest', got "
                             f"{overview_resampling!r}")
        from diffclip_cli import __version__

        self.classes = classes
        self.metadata = dict(metadata or {})
        self.sidecar = sidecar_path(path) if sidecar else None
        self._side_texts: dict[Path, str] = {}
        if styles:
            self._side_texts = {aux_xml_path(path): class_aux_xml(classes),
                                qml_path(path): qgis_style(classes)}
        for side in map_files(path, sidecar=sidecar, styles=styles)[1:]:
            check_output(side, overwrite=overwrite)
        all_tags = {
            CLASSES_TAG: json.dumps(classes.to_records(), ensure_ascii=False),
            **{f"CLASS_{c.id}": c.name for c in classes},
            "DIFFCLIP_VERSION": __version__,
            **(tags or {}),
        }
        super().__init__(
            path, grid, count=1, dtype=map_dtype(classes), nodata=0,
            band_descriptions=[BAND_DESCRIPTION], tags=all_tags, overwrite=overwrite, cog=cog,
            creation_options=creation_options, overview_resampling=overview_resampling,
            colormap=class_colormap(classes),
        )
        self._ids = np.asarray([0, *classes.ids])
        self._sidecar_tmp: Path | None = None
        self._side_tmps: dict[Path, Path] = {}

    def _enter_extra(self, stack: contextlib.ExitStack) -> None:
        if self.sidecar is not None:
            self._sidecar_tmp = stack.enter_context(
                atomic_path(self.sidecar, overwrite=self.overwrite))
        for side in self._side_texts:
            self._side_tmps[side] = stack.enter_context(
                atomic_path(side, overwrite=self.overwrite))

    def _check_block(self, data: np.ndarray) -> None:
        bad = ~np.isin(data, self._ids)
        if bad.any():
            raise ValueError(f"the block holds values that are no class id: "
                             f"{np.unique(data[bad])[:10].tolist()}")

    def _finish_extra(self) -> None:
        for side, tmp in self._side_tmps.items():
            tmp.write_text(self._side_texts[side], encoding="utf-8")
        if self._sidecar_tmp is None:
            return
        from diffclip_cli import __version__

        info = {
            "format": MAP_FORMAT,
            "map": self.path.name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "software": {"name": "diffclip", "version": __version__},
            "dtype": self.dtype.name,
            "nodata": 0,
            "cog": self.cog,
            "grid": self.grid.to_dict(),
            "classes": self.classes.to_records(),
            "metadata": self.metadata,
        }
        text = json.dumps(info, indent=2, ensure_ascii=False, default=str) + "\n"
        self._sidecar_tmp.write_text(text, encoding="utf-8")


@dataclass
class MapInfo:
    """What :func:`read_map` learns about a map GeoTIFF.

    Attributes:
        path: the map file (or the GDAL dataset name it was read from).
        grid: its pixel grid.
        classes: the class table from the tags or the sidecar; ``None`` when the map has none
            (classes are then matched by id).
        nodata: the nodata value (``None`` if unset).
        dtype: the data type name.
        count: number of bands.
        colormap: band 1's colour table (nodata and the class ids when the classes are
            known, else the entries that are not all zero), or ``None``.
        tags: the dataset tags.
        sidecar: the sidecar JSON's content, or ``None``.
        overviews: band 1's overview decimation factors.
        source_of_classes: ``"tags"``, ``"sidecar"`` or ``None``.
    """

    path: RasterSource
    grid: Grid
    classes: ClassTable | None
    nodata: float | None
    dtype: str
    count: int
    colormap: dict[int, tuple[int, int, int, int]] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    sidecar: dict[str, Any] | None = None
    overviews: list[int] = field(default_factory=list)
    source_of_classes: str | None = None


def read_map(path: str | os.PathLike[str]) -> MapInfo:
    """Open a class map and recover its grid and class table.

    The class table comes from the ``DIFFCLIP_CLASSES`` tag, else from the sidecar JSON
    (``<map>.json``); a map with neither (e.g. made by another tool) gets ``classes=None``.

    Args:
        path: the map GeoTIFF.

    Returns:
        The map's description (the pixels are not read).

    Raises:
        InputError: when the file is missing, not a raster, or its class table is malformed.
    """
    path = raster_source(path)  # a GDAL dataset name stays as it is (no sidecar then)
    with open_raster(path, what="map") as ds:  # clear errors: missing, empty, not a raster
        crs = ds.crs if ds.crs else None
        grid = Grid(ds.width, ds.height, ds.transform, crs)
        tags = dict(ds.tags())
        dtype = ds.dtypes[0]
        nodata = ds.nodata
        count = ds.count
        overviews = list(ds.overviews(1))
        try:
            full_cmap = ds.colormap(1)
        except ValueError:
            full_cmap = None

    classes: ClassTable | None = None
    source: str | None = None
    if CLASSES_TAG in tags:
        classes = _classes_from(tags[CLASSES_TAG], path, f"the {CLASSES_TAG} tag")
        source = "tags"
    sidecar = None
    side = sidecar_path(path)
    if isinstance(path, Path) and side.exists():
        try:
            sidecar = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("%s: ignoring an unreadable sidecar (%s)", side, exc)
        if classes is None and isinstance(sidecar, dict) and sidecar.get("classes"):
            classes = _classes_from(sidecar["classes"], side, "its 'classes' entry")
            source = "sidecar"

    cmap = None
    if full_cmap is not None:
        used = [0, *classes.ids] if classes is not None else [
            v for v, rgba in full_cmap.items() if v == 0 or any(rgba)]
        cmap = {int(v): (int(full_cmap[v][0]), int(full_cmap[v][1]), int(full_cmap[v][2]),
                         int(full_cmap[v][3]) if len(full_cmap[v]) > 3 else 255)
                for v in used if v in full_cmap}
    return MapInfo(path=path, grid=grid, classes=classes, nodata=nodata, dtype=dtype,
                   count=count, colormap=cmap, tags=tags, sidecar=sidecar,
                   overviews=overviews, source_of_classes=source)


def _classes_from(value: Any, path: RasterSource, what: str) -> ClassTable:
    try:
        records = json.loads(value) if isinstance(value, str) else value
        return ClassTable.from_records(records)
    except (json.JSONDecodeError, TypeError, KeyError, ValueError, LabelError) as exc:
        raise InputError(f"{what} does not hold a valid class table ({exc})", path=path,
                         hint="rewrite the map with diffclip classify, or remove the tag") from None
