"""Map products: tiled GeoTIFF / Cloud-Optimized GeoTIFF writers and the map reader.

:class:`RasterWriter` writes any raster tile by tile to a temporary file and only gives it its
final name once the ``with`` block succeeds (see :mod:`diffclip_cli.io.atomic`).
:class:`MapWriter` is the class-map flavour: class ids, nodata 0, a colour table, the class names in
the file's tags and in a sidecar JSON, GDAL category names and a raster attribute table (a PAM
``.aux.xml``) and a QGIS style (``.qml``). :func:`read_map` recovers the class table.
The products are described in ``docs/maps.md``; the side files' text is
:mod:`diffclip_cli.io.sidecars`, the creation options' checks :mod:`diffclip_cli.io.creation`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import rasterio
import rasterio.drivers
import rasterio.errors
import rasterio.shutil
from rasterio.windows import Window

from diffclip_cli.errors import InputError, LabelError
from diffclip_cli.io.atomic import TEMP_PREFIX, atomic_path, check_output, write_error
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.io.creation import (
    GTIFF_DEFAULTS,
    OVERVIEW_RESAMPLING,
    check_creation_options,
    check_geotiff_name,
    cog_options,
)
from diffclip_cli.io.gdal import gdal_log
from diffclip_cli.io.grid import Grid
from diffclip_cli.io.raster import RasterSource, open_raster, raster_source
from diffclip_cli.io.sidecars import (
    aux_xml_path,
    class_aux_xml,
    class_colormap,
    map_files,
    qgis_style,
    qml_path,
    sidecar_path,
)

__all__ = [
    "BAND_DESCRIPTION",
    "CLASSES_TAG",
    "MAP_FORMAT",
    "MapInfo",
    "MapWriter",
    "RasterWriter",
    "map_dtype",
    "read_map",
]

log = logging.getLogger("diffclip")

#: Tag holding the class table as JSON records (id, name, description, color).
CLASSES_TAG = "DIFFCLIP_CLASSES"
#: Band description of class maps.
BAND_DESCRIPTION = "land cover class"
#: The ``format`` field of the sidecar JSON.
MAP_FORMAT = "diffclip-map/1"

def map_dtype(classes: ClassTable) -> str:
    """``"uint8"`` when every class id fits in a byte, else ``"uint16"``."""
    return "uint8" if max(classes.ids) <= 255 else "uint16"


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
        self.options = {**GTIFF_DEFAULTS,
                        **check_creation_options(creation_options, cog=cog,
                                                 dtype=np.dtype(dtype).name)}
        self.overview_resampling = overview_resampling.lower()
        self.colormap = dict(colormap) if colormap else None
        if self.count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        if self.band_descriptions is not None and len(self.band_descriptions) != self.count:
            raise ValueError(f"{self.count} band descriptions expected, got "
                             f"{len(self.band_descriptions)}")
        if self.overview_resampling not in OVERVIEW_RESAMPLING:
            raise ValueError(f"unknown overview resampling {overview_resampling!r}; use one of "
                             f"{sorted(OVERVIEW_RESAMPLING)}")
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
        return cog_options(self.options, self.overview_resampling)


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
    with gdal_log(logging.DEBUG, names) as records, rasterio.Env():
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
