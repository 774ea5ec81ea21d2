"""Labels: vector points/polygons or a label raster -> labelled pixels on the HSI grid.

:func:`read_labels` reads either; label rasters are read here, vector files in
:mod:`diffclip_cli.io.label_vectors`; the set itself is :mod:`diffclip_cli.io.labelset`.

Nothing is dropped silently: every feature or pixel that does not end up as a label is counted
in the :class:`LabelReport` (outside the raster, no class value, conflicting classes, ...).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from diffclip_cli.errors import GridError, InputError, LabelError, first_line
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.io.grid import Grid
from diffclip_cli.io.label_vectors import detect_class_fields, read_vector_labels
from diffclip_cli.io.labelset import LabelReport, LabelSet, labels_from_pixels, merge_labels
from diffclip_cli.io.pixels import apply_transform
from diffclip_cli.io.raster import is_gdal_name, open_raster

__all__ = [
    "RASTER_SUFFIXES",
    "LabelReport",
    "LabelSet",
    "detect_class_fields",
    "merge_labels",
    "read_labels",
]

log = logging.getLogger("diffclip")

PathLike = str | os.PathLike[str]

#: File suffixes read as label rasters; anything else is read as a vector file.
RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".vrt", ".img", ".jp2", ".nc"})
_READ_TILE = 1024


def read_labels(
    path: PathLike,
    grid: Grid,
    *,
    class_field: str | None = None,
    layer: str | None = None,
    classes: ClassTable | PathLike | None = None,
) -> LabelSet:
    """Read labels onto ``grid`` from a vector file or a label raster.

    Args:
        path: GeoPackage, GeoJSON, Shapefile (any OGR vector) with points and/or polygons, or a
            label GeoTIFF (0 = unlabelled, nodata honoured).
        grid: the HSI grid.
        class_field: the vector field holding class names or integer ids; auto-detected when
            omitted (see :func:`detect_class_fields`).
        layer: the vector layer (needed when the file has several).
        classes: a class table, or the path of a CSV ``id,name[,description][,color]``.

    Returns:
        The labelled pixels, sorted by row then column.

    Raises:
        InputError: missing/unreadable file, several layers without ``layer``.
        GridError: vector with a CRS but the grid without, or raster on an incompatible grid.
        LabelError: empty file, unknown field, classes not in the table, no label inside the
            raster.
    """
    table = None
    if is_gdal_name(path):  # /vsizip/..., NETCDF:...: GDAL's business, no file checks
        text = os.fspath(path)
        if classes is not None:
            table = classes if isinstance(classes, ClassTable) else ClassTable.from_csv(classes)
        raster = (Path(text).suffix.lower() in RASTER_SUFFIXES
                  or not (text.startswith("/vsi") or "://" in text))
        labels = (_read_raster(text, grid, table) if raster else
                  read_vector_labels(text, grid, class_field=class_field, layer=layer, table=table))
        for sentence in labels.report.problems():
            log.warning("%s: %s", text, sentence)
        return labels
    p = Path(path)
    if not p.exists():
        raise InputError("label file not found", path=p, hint="check the path")
    if p.is_dir() and p.suffix.lower() != ".gdb":
        raise InputError("is a directory, not a label file", path=p,
                         hint="give the vector or raster file inside it")
    if p.is_file() and p.stat().st_size == 0:
        raise LabelError("the label file is empty (0 bytes)", path=p,
                         hint="give the file holding your labelled points or polygons")
    if classes is not None:
        table = classes if isinstance(classes, ClassTable) else ClassTable.from_csv(classes)
    if p.suffix.lower() in RASTER_SUFFIXES:
        labels = _read_raster(p, grid, table)
    else:
        labels = read_vector_labels(p, grid, class_field=class_field, layer=layer, table=table)
    for sentence in labels.report.problems():
        log.warning("%s: %s", p, sentence)
    return labels




def _read_raster(path: Path | str, grid: Grid, table: ClassTable | None) -> LabelSet:
    ds = open_raster(path, what="label")
    try:
        report = LabelReport(source=str(path), kind="raster")
        if not (np.issubdtype(np.dtype(ds.dtypes[0]), np.integer)
                or np.issubdtype(np.dtype(ds.dtypes[0]), np.floating)):
            raise LabelError(f"has data type {ds.dtypes[0]}, not class ids", path=path)
        if ds.count > 1:
            log.warning("%s has %d bands; using band 1 as labels", path, ds.count)
        src_crs = ds.crs
        if src_crs is None and grid.crs is not None:
            report.crs_assumed = True
            src_crs = grid.crs
        elif src_crs is not None and grid.crs is None:
            raise GridError(f"has a CRS ({src_crs.to_string()}) but the HSI has none", path=path,
                            hint="give every input a CRS or none of them")
        same = (ds.height, ds.width) == grid.shape and (
            grid.crs is None
            or (CRS.from_user_input(src_crs) == grid.crs
                and ds.transform.almost_equals(grid.transform, precision=1e-9 * max(grid.res))))
        if grid.crs is None and not same:
            raise GridError(f"is a {ds.width} x {ds.height} pixel grid without CRS but the HSI "
                            f"is {grid.width} x {grid.height}", path=path,
                            hint="rasters without CRS must have the same size")
        nodata = ds.nodata
        if same:
            reader = ds
        else:
            reader = WarpedVRT(ds, src_crs=src_crs, crs=grid.crs, transform=grid.transform,
                               width=grid.width, height=grid.height,
                               resampling=Resampling.nearest, nodata=0, src_nodata=nodata)
            report.pixels_outside, report.features_read = _raster_outside(ds, src_crs, grid,
                                                                          nodata, path)
        rows, cols, cls = [], [], []
        try:
            for r0 in range(0, grid.height, _READ_TILE):
                for c0 in range(0, grid.width, _READ_TILE):
                    win = Window(c0, r0, min(_READ_TILE, grid.width - c0),
                                 min(_READ_TILE, grid.height - r0))
                    data = reader.read(1, window=win)
                    lab = _labelled(data, nodata if same else None, path)
                    rr, cc = np.nonzero(lab)
                    rows.append(rr.astype(np.int64) + r0)
                    cols.append(cc.astype(np.int64) + c0)
                    cls.append(data[rr, cc].astype(np.int64))
        except (RasterioError, OSError) as exc:
            raise InputError(f"reading the label raster failed ({first_line(exc)})", path=path,
                             hint="the file may be truncated or corrupt") from None
        finally:
            if reader is not ds:
                reader.close()
    finally:
        ds.close()
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    k = np.concatenate(cls)
    if same:
        report.features_read = int(r.size)
    present = sorted(set(np.unique(k).tolist()))
    if table is not None:
        unknown = [i for i in present if i not in table.ids]
        if unknown:
            raise LabelError(f"label values {unknown[:20]} are not in the classes table "
                             f"(ids {table.ids})", path=path,
                             hint="add them to the classes table or fix the raster")
    elif present:
        table = ClassTable({"id": i, "name": f"class {i}"} for i in present)
    else:
        raise LabelError(f"no label falls inside the raster ({grid.describe()})", path=path,
                         hint="label values must be 1..65535; 0 and nodata mean unlabelled")
    return labels_from_pixels(r, c, k, table, grid, report, path)


def _labelled(data: np.ndarray, nodata: float | None, path: str | Path) -> np.ndarray:
    """Mask of labelled pixels; checks values are integral ids in 1..65535."""
    lab = data != 0
    if nodata is not None:
        lab &= ~(np.isnan(data) if math.isnan(nodata) else data == nodata)
    if np.issubdtype(data.dtype, np.floating):
        lab &= ~np.isnan(data)
        vals = data[lab]
        if vals.size and np.any(np.mod(vals, 1) != 0):
            raise LabelError("has non-integer values, not class ids", path=path,
                             hint="store class ids as integers (0 = unlabelled)")
    vals = data[lab]
    if vals.size and (vals.min() < 0 or vals.max() > 65535):
        raise LabelError("has label values outside 0..65535", path=path,
                         hint="class ids must be 1..65535 (0 = unlabelled)")
    return lab


def _raster_outside(
    ds: Any, src_crs: CRS, grid: Grid, nodata: float | None, path: str | Path
) -> tuple[int, int]:
    """Count labelled source pixels and those whose centre lies outside the grid."""
    outside = 0
    total = 0
    inv = ~grid.transform
    for r0 in range(0, ds.height, _READ_TILE):
        for c0 in range(0, ds.width, _READ_TILE):
            win = Window(c0, r0, min(_READ_TILE, ds.width - c0), min(_READ_TILE, ds.height - r0))
            data = ds.read(1, window=win)
            rr, cc = np.nonzero(_labelled(data, nodata, path))
            if not rr.size:
                continue
            total += rr.size
            xs, ys = apply_transform(ds.transform, cc + c0 + 0.5, rr + r0 + 0.5)
            if grid.crs is not None and src_crs != grid.crs:
                xs, ys = warp_transform(src_crs, grid.crs, xs, ys)
            gc, gr = apply_transform(inv, xs, ys)
            gc = np.floor(gc)
            gr = np.floor(gr)
            outside += int(((gc < 0) | (gr < 0) | (gc >= grid.width) | (gr >= grid.height)).sum())
    return outside, total


