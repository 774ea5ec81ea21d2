"""One scene: an HSI GeoTIFF plus optional LiDAR rasters, read lazily on the HSI grid.

The HSI grid is the reference. A LiDAR raster already on that grid is read directly; one on
another CRS, resolution or extent is resampled onto it window by window through a
:class:`rasterio.vrt.WarpedVRT` (never as a whole-scene reprojection in memory). Values come
back as float32 after ``value * scale + offset``, with NaN wherever a band is nodata.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import shapely
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_geom
from rasterio.windows import Window

from diffclip_cli.errors import GridError, InputError
from diffclip_cli.io.grid import Grid
from diffclip_cli.io.names import RasterSource, display_name, is_gdal_name, raster_source
from diffclip_cli.io.pixels import apply_transform, as_pixel_arrays, group_by_tile
from diffclip_cli.io.rasterfile import band_wavelengths, gdal_reason, open_raster
from diffclip_cli.modalities import MaskedModalities

__all__ = [
    "RESAMPLING",
    "RasterSource",
    "Scene",
    "as_window",
    "band_wavelengths",
    "display_name",
    "is_gdal_name",
    "kernel_scale",
    "open_raster",
    "raster_source",
]

log = logging.getLogger("diffclip")

#: Resampling methods a LiDAR raster on another grid may be brought onto the HSI grid with.
RESAMPLING: dict[str, Resampling] = {
    "bilinear": Resampling.bilinear,
    "nearest": Resampling.nearest,
    "cubic": Resampling.cubic,
}

PathLike = str | os.PathLike[str]
WindowLike: TypeAlias = Window | tuple[tuple[int, int], tuple[int, int]]


def as_window(window: WindowLike, grid: Grid) -> Window:
    """Convert ``window`` to an integer :class:`Window` and check it lies inside ``grid``.

    Args:
        window: a rasterio window or ``((row_start, row_stop), (col_start, col_stop))``.
        grid: the grid it must fit in.

    Raises:
        ValueError: when the window is not inside the grid or is empty.
    """
    if not isinstance(window, Window):
        (r0, r1), (c0, c1) = window
        window = Window(c0, r0, c1 - c0, r1 - r0)
    w = Window(round(window.col_off), round(window.row_off),
               round(window.width), round(window.height))
    if (w.width < 1 or w.height < 1 or w.col_off < 0 or w.row_off < 0
            or w.col_off + w.width > grid.width or w.row_off + w.height > grid.height):
        raise ValueError(f"window {w} is empty or not inside the {grid.width} x {grid.height} grid")
    return w


def _footprint(ds: Any) -> shapely.Polygon:
    """The raster's outline as a polygon in its own CRS (rotated transforms included)."""
    xs, ys = apply_transform(ds.transform, [0, ds.width, ds.width, 0], [0, 0, ds.height, ds.height])
    return shapely.Polygon(np.stack([xs, ys], axis=1))


def _extent_text(ds: Any) -> str:
    b = ds.bounds
    crs = ds.crs.to_string() if ds.crs else "no CRS"
    return f"({b.left:g}, {b.bottom:g}, {b.right:g}, {b.top:g}) in {crs}"


#: Data types whose every value float32 represents exactly.
_EXACT_IN_FLOAT32 = frozenset(np.dtype(t) for t in ("uint8", "int8", "uint16", "int16",
                                                     "float32"))


def kernel_scale(transform: Any, shape: tuple[int, int], res: tuple[float, float], crs: Any,
                 grid: Grid) -> dict[str, str]:
    """A fixed resampling-kernel scale (GDAL's ``XSCALE``/``YSCALE`` warp options).

    GDAL otherwise estimates the source/destination pixel ratio per processed chunk, which
    makes values depend (slightly) on the window asked for. The ratio is measured at the
    source's centre, in the grid's units.

    Args:
        transform: the source's affine transform.
        shape: the source's ``(height, width)``.
        res: the source's pixel size.
        crs: the source's CRS.
        grid: the grid it is resampled onto.
    """
    g = grid
    try:
        cx, cy = (float(v) for v in apply_transform(transform, shape[1] / 2, shape[0] / 2))
        rx, ry = res
        pts = transform_geom(crs, g.crs, {
            "type": "MultiPoint",
            "coordinates": [(cx, cy), (cx + rx, cy), (cx, cy - ry)]})["coordinates"]
        (x0, y0), (x1, y1), (x2, y2) = [p[:2] for p in pts]
        sx = math.hypot(x1 - x0, y1 - y0) / g.res[0]
        sy = math.hypot(x2 - x0, y2 - y0) / g.res[1]
    except (RasterioError, ValueError, TypeError):
        return {}
    if not (math.isfinite(sx) and math.isfinite(sy) and sx > 0 and sy > 0):
        return {}
    return {"XSCALE": f"{sx:.12g}", "YSCALE": f"{sy:.12g}"}


class _Source:
    """One raster file of a scene, with what is needed to turn its pixels into float32 values."""

    def __init__(self, path: RasterSource, ds: Any, reader: Any, *, warped: bool) -> None:
        self.path = path
        self.ds = ds
        self.reader = reader
        self.warped = warped
        self.count = ds.count
        self.scales = [1.0 if s is None else float(s) for s in ds.scales]
        self.offsets = [0.0 if o is None else float(o) for o in ds.offsets]
        self.nodata = list(ds.nodatavals)
        self.masked = [
            nd is None and (MaskFlags.per_dataset in flags or MaskFlags.alpha in flags)
            for nd, flags in zip(self.nodata, ds.mask_flag_enums, strict=True)
        ]
        self.descriptions = list(ds.descriptions)

    def read(self, window: Window) -> np.ndarray:
        """Float32 ``(count, h, w)`` values, NaN where nodata or not covered."""
        # Types float32 holds exactly are read straight into float32 (nodata compares the
        # same there): no second copy of the window (40 MB for 256 x 256 x 144 px).
        exact = all(np.dtype(d) in _EXACT_IN_FLOAT32 for d in self.reader.dtypes)
        try:
            raw = self.reader.read(window=window, out_dtype=np.float32 if exact else None)
            masks = [self.reader.read_masks(i + 1, window=window)
                     if m and not self.warped else None for i, m in enumerate(self.masked)]
        except (RasterioError, OSError) as exc:
            raise InputError(f"reading failed ({gdal_reason(exc, self.path)})", path=self.path,
                             hint="the file may be truncated or corrupt; export or copy it again"
                             ) from None
        data = raw if exact else raw.astype(np.float32, copy=True)
        for i in range(self.count):
            nd = self.nodata[i]
            if not self.warped and nd is not None and not math.isnan(nd):
                data[i][raw[i] == (np.float32(nd) if exact else nd)] = np.nan
            if masks[i] is not None:
                data[i][masks[i] == 0] = np.nan
            if self.scales[i] != 1.0:
                data[i] *= np.float32(self.scales[i])
            if self.offsets[i] != 0.0:
                data[i] += np.float32(self.offsets[i])
        return data

    def close(self) -> None:
        if self.reader is not self.ds:
            self.reader.close()
        self.ds.close()


class Scene:
    """An HSI raster and optional LiDAR rasters on one pixel grid (the HSI's), read lazily.

    Open with :meth:`Scene.open`; use as a context manager or call :meth:`close`. Reads are
    serialised by a lock, so one scene may be shared by threads. A scene pickles as its paths
    and options and re-opens its files when unpickled (for dask.distributed workers).

    Attributes:
        grid: the HSI grid.
        hsi_path: the HSI file.
        lidar_paths: the LiDAR files, stacked as channels in this order.
        resampling: how LiDAR on another grid is resampled ("bilinear", "nearest", "cubic").
        lidar_coverage: fraction of the HSI extent the LiDAR covers (1.0 without LiDAR).
    """

    def __init__(
        self,
        hsi: PathLike,
        lidar: PathLike | Sequence[PathLike] = (),
        *,
        resampling: str = "bilinear",
        _quiet: bool = False,
    ) -> None:
        if resampling not in RESAMPLING:
            raise ValueError(f"resampling must be one of {sorted(RESAMPLING)}, got {resampling!r}")
        if isinstance(lidar, str | os.PathLike):
            lidar = (lidar,)
        self.hsi_path: RasterSource = raster_source(hsi)
        self.lidar_paths: tuple[RasterSource, ...] = tuple(raster_source(p) for p in lidar)
        self.resampling = resampling
        self._lock = threading.RLock()
        self._valid_count: int | None = None
        self._sources: list[_Source] = []
        try:
            self._open(quiet=_quiet)
        except BaseException:
            self.close()
            raise

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        hsi: PathLike,
        lidar: PathLike | Sequence[PathLike] = (),
        *,
        resampling: str = "bilinear",
    ) -> Scene:
        """Open a scene.

        Args:
            hsi: the HSI GeoTIFF (any number of bands, any dtype), or any raster GDAL opens:
                a GDAL dataset name (``/vsizip/x.zip/hsi.tif``, ``NETCDF:x.nc:var``, ...) is
                passed to GDAL as it is, an ENVI header ``.hdr`` stands for its data file.
            lidar: no LiDAR, one LiDAR raster (any number of bands) or several, stacked as
                channels in the given order (the same names as ``hsi``).
            resampling: how LiDAR on another grid is brought onto the HSI grid.

        Returns:
            The open scene.

        Raises:
            InputError: a file is missing, a directory, not a raster, truncated or corrupt.
            GridError: CRS missing on some inputs, pixel grids of different shapes, or a LiDAR
                raster that does not overlap the HSI.
        """
        return cls(hsi, lidar, resampling=resampling)

    def _open(self, *, quiet: bool) -> None:
        ds = open_raster(self.hsi_path, what="HSI")
        self._hsi = _Source(self.hsi_path, ds, ds, warped=False)
        self._sources.append(self._hsi)
        self.grid = Grid(ds.width, ds.height, ds.transform, ds.crs)
        self._lidar: list[_Source] = []
        coverages = []
        for path in self.lidar_paths:
            src, coverage = self._open_lidar(path)
            self._lidar.append(src)
            self._sources.append(src)
            coverages.append(coverage)
        self.lidar_coverage = min(coverages) if coverages else 1.0
        if not quiet:
            for path, coverage in zip(self.lidar_paths, coverages, strict=True):
                if coverage < 0.9999:
                    log.warning("%s covers only about %.1f %% of the HSI extent; HSI pixels "
                                "outside it are invalid", path, 100 * coverage)

    def _open_lidar(self, path: RasterSource) -> tuple[_Source, float]:
        ds = open_raster(path, what="LiDAR")
        g = self.grid
        try:
            if g.crs is None or ds.crs is None:
                if g.crs is not None or ds.crs is not None:
                    has, lacks = ((self.hsi_path, path) if g.crs is not None
                                  else (path, self.hsi_path))
                    crs = g.crs if g.crs is not None else ds.crs
                    raise GridError(
                        f"has no CRS while {display_name(has)} is in {crs.to_string()}",
                        path=lacks,
                        hint="give every input a CRS (e.g. gdal_edit.py -a_srs EPSG:xxxx) or "
                             "none of them")
                if (ds.height, ds.width) != g.shape:
                    raise GridError(
                        f"is a {ds.width} x {ds.height} pixel grid without CRS but the HSI is "
                        f"{g.width} x {g.height}", path=path,
                        hint="rasters without CRS must all have the same size; georeference "
                             "them to let diffclip co-register them")
                return _Source(path, ds, ds, warped=False), 1.0
            if (CRS.from_user_input(ds.crs) == g.crs and (ds.height, ds.width) == g.shape
                    and ds.transform.almost_equals(g.transform, precision=1e-9 * max(g.res))):
                return _Source(path, ds, ds, warped=False), 1.0
            coverage = self._coverage(ds, path)
            vrt = WarpedVRT(
                ds, crs=g.crs, transform=g.transform, width=g.width, height=g.height,
                resampling=RESAMPLING[self.resampling], dtype="float32", nodata=np.nan,
                **self._kernel_scale(ds),
            )
            return _Source(path, ds, vrt, warped=True), coverage
        except BaseException:
            ds.close()
            raise

    def _coverage(self, ds: Any, path: RasterSource) -> float:
        """Fraction of the HSI extent covered by the LiDAR; GridError when nothing overlaps."""
        hsi_poly = _footprint(self._hsi.ds)
        lid = _footprint(ds)
        lid = shapely.segmentize(lid, max(lid.length / 400, 1e-12))
        try:
            moved = shapely.geometry.shape(transform_geom(ds.crs, self.grid.crs, lid))
            moved = shapely.make_valid(moved)
            finite = np.isfinite(shapely.get_coordinates(moved)).all()
        except (RasterioError, ValueError, shapely.errors.GEOSException):
            finite = False
        if not finite:
            return 1.0  # cannot tell geometrically; the per-pixel validity still holds
        inter = hsi_poly.intersection(moved).area
        if inter <= 0:
            raise GridError(
                f"does not overlap the HSI: the LiDAR extent is {_extent_text(ds)}, the HSI "
                f"extent is {_extent_text(self._hsi.ds)}", path=path,
                hint="check that both rasters cover the same ground and carry the right CRS")
        return float(min(1.0, inter / hsi_poly.area))

    def _kernel_scale(self, ds: Any) -> dict[str, str]:
        """A fixed resampling-kernel scale, so every window is resampled the same way."""
        return kernel_scale(ds.transform, (ds.height, ds.width), ds.res, ds.crs, self.grid)

    # -- properties ----------------------------------------------------------------------

    @property
    def hsi_bands(self) -> int:
        """Number of HSI bands."""
        return self._hsi.count

    @property
    def lidar_bands(self) -> int:
        """Number of LiDAR channels (0 without LiDAR)."""
        return sum(s.count for s in self._lidar)

    @property
    def has_lidar(self) -> bool:
        """Whether the scene has LiDAR."""
        return bool(self._lidar)

    @property
    def band_names(self) -> dict[str, list[str]]:
        """Band names: descriptions where the files have them, else ``band_<i>`` (1-based)."""
        hsi = [d or f"band_{i + 1}" for i, d in enumerate(self._hsi.descriptions)]
        lidar_desc = [d for s in self._lidar for d in s.descriptions]
        lidar = [d or f"band_{i + 1}" for i, d in enumerate(lidar_desc)]
        return {"hsi": hsi, "lidar": lidar}

    @property
    def wavelengths(self) -> list[float] | None:
        """Centre wavelengths of the HSI bands in nanometres, or ``None``.

        See :func:`band_wavelengths`; ``None`` when the file does not give one for every band.
        """
        return band_wavelengths(self._hsi.ds)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return not self._sources

    # -- reading -------------------------------------------------------------------------

    def read(self, window: WindowLike) -> MaskedModalities:
        """Read one window of every modality on the HSI grid.

        Args:
            window: a :class:`~rasterio.windows.Window` or ``((r0, r1), (c0, c1))`` inside the
                grid.

        Returns:
            The window's values: ``hsi`` ``(C, h, w)`` float32 after scale/offset, NaN where
            nodata; ``lidar`` ``(L, h, w)`` float32 resampled onto the HSI grid, or ``None``
            without LiDAR; ``valid`` ``(h, w)`` bool, true where every band of every modality
            has a value (and the LiDAR covers the pixel).

        Raises:
            InputError: a read failed (truncated or corrupt file).
            ValueError: the window is not inside the grid, or the scene is closed.
        """
        w = as_window(window, self.grid)
        with self._lock:
            if self.closed:
                raise ValueError("the scene is closed")
            hsi = self._hsi.read(w)
            lidar = (np.concatenate([s.read(w) for s in self._lidar]) if self._lidar
                     else None)
        valid = np.isfinite(hsi).all(axis=0)
        if lidar is not None:
            valid &= np.isfinite(lidar).all(axis=0)
        return MaskedModalities(hsi, lidar, valid=valid)

    def read_around(self, rows: tuple[int, int], cols: tuple[int, int], reach: int
                    ) -> tuple[MaskedModalities, tuple[tuple[int, int], tuple[int, int]]]:
        """A block and ``reach`` pixels around it, cut at the grid, and what the cut left out.

        Args:
            rows: the block's rows ``(start, stop)``.
            cols: its columns ``(start, stop)``.
            reach: pixels wanted on every side.

        Returns:
            What :meth:`read` gives for the block plus its reach inside the grid, and the rows
            (top, bottom) and columns (left, right) of the reach that fell outside it: the
            padding (by mirroring) that completes the block.
        """
        h, w = self.grid.shape
        r0, r1 = max(0, rows[0] - reach), min(h, rows[1] + reach)
        c0, c1 = max(0, cols[0] - reach), min(w, cols[1] + reach)
        pad = ((reach - (rows[0] - r0), reach - (r1 - rows[1])),
               (reach - (cols[0] - c0), reach - (c1 - cols[1])))
        return self.read(((r0, r1), (c0, c1))), pad

    def read_bands(self, window: WindowLike, modality: str) -> np.ndarray:
        """Read one window of one modality on the HSI grid.

        What :meth:`read` returns for that modality (float32 after scale/offset, NaN where
        nodata or not covered), without reading the other one.

        Args:
            window: as for :meth:`read`.
            modality: ``"hsi"`` or ``"lidar"``.

        Raises:
            InputError: a read failed (truncated or corrupt file).
            ValueError: the window is not inside the grid, an unknown modality or one the
                scene lacks, or the scene is closed.
        """
        if modality not in ("hsi", "lidar"):
            raise ValueError(f"modality must be 'hsi' or 'lidar', got {modality!r}")
        w = as_window(window, self.grid)
        with self._lock:
            if self.closed:
                raise ValueError("the scene is closed")
            if modality == "hsi":
                return self._hsi.read(w)
            if not self._lidar:
                raise ValueError("the scene has no LiDAR")
            parts = [s.read(w) for s in self._lidar]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def read_pixels(
        self, rows: np.ndarray, cols: np.ndarray, *, tile_size: int = 256
    ) -> MaskedModalities:
        """Values of scattered pixels, read tile by tile (one read per tile that has pixels).

        Args:
            rows: pixel rows on the HSI grid.
            cols: pixel columns.
            tile_size: pixels are grouped by tiles of this size.

        Returns:
            ``hsi`` ``(N, C)`` and ``lidar`` ``(N, L)`` float32 (or ``None``), ``valid``
            ``(N,)`` bool: what :meth:`read` gives at those pixels.

        Raises:
            ValueError: a pixel is outside the grid.
        """
        r, c = as_pixel_arrays(rows, cols)
        n = r.size
        if n and (r.min() < 0 or c.min() < 0 or r.max() >= self.grid.height
                  or c.max() >= self.grid.width):
            raise ValueError("pixel positions outside the grid")
        hsi = np.empty((n, self.hsi_bands), np.float32)
        lidar = np.empty((n, self.lidar_bands), np.float32) if self.has_lidar else None
        valid = np.empty(n, bool)
        for g in group_by_tile(r, c, tile_size=tile_size):
            block = self.read(((g.row_start, g.row_stop), (g.col_start, g.col_stop)))
            lr = r[g.index] - g.row_start
            lc = c[g.index] - g.col_start
            hsi[g.index] = block.hsi[:, lr, lc].T
            if lidar is not None and block.lidar is not None:
                lidar[g.index] = block.lidar[:, lr, lc].T
            valid[g.index] = block.valid[lr, lc]
        return MaskedModalities(hsi, lidar, valid=valid)

    def valid_at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Whether each pixel is valid (pixels outside the grid are not).

        Reads tile by tile, not per pixel.
        """
        r, c = as_pixel_arrays(rows, cols)
        out = np.zeros(r.size, bool)
        inside = (r >= 0) & (c >= 0) & (r < self.grid.height) & (c < self.grid.width)
        if inside.any():
            out[inside] = self.read_pixels(r[inside], c[inside]).valid
        return out

    def valid_fraction(self, *, tile_size: int = 512) -> float:
        """The fraction of HSI pixels that are valid (a full pass over the scene, cached)."""
        if self._valid_count is None:
            total = 0
            for r0 in range(0, self.grid.height, tile_size):
                for c0 in range(0, self.grid.width, tile_size):
                    w = Window(c0, r0, min(tile_size, self.grid.width - c0),
                               min(tile_size, self.grid.height - r0))
                    total += int(self.read(w).valid.sum())
            self._valid_count = total
        return self._valid_count / (self.grid.width * self.grid.height)

    # -- life cycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Close every file (idempotent)."""
        with self._lock:
            for s in self._sources:
                s.close()
            self._sources = []

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"hsi": str(self.hsi_path), "lidar": [str(p) for p in self.lidar_paths],
                "resampling": self.resampling}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["hsi"], tuple(state["lidar"]),  # type: ignore[misc]
                      resampling=state["resampling"], _quiet=True)

    def __repr__(self) -> str:
        lidar = ", ".join(display_name(p) for p in self.lidar_paths) or "no LiDAR"
        return (f"Scene({display_name(self.hsi_path)}: {self.hsi_bands} HSI bands, {lidar} "
                f"[{self.lidar_bands} channels], {self.grid.describe()})")
