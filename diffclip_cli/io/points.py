"""Points at pixel centres written as a GeoPackage layer (what ``diffclip suggest`` hands out)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffclip_cli.errors import OutputError
from diffclip_cli.io.atomic import atomic_path
from diffclip_cli.io.grid import Grid
from diffclip_cli.io.pixels import apply_transform

__all__ = ["POINT_SUFFIXES", "write_points"]

#: Output names a GeoPackage may have.
POINT_SUFFIXES = (".gpkg",)


def write_points(
    path: str | os.PathLike[str],
    grid: Grid,
    rows: np.ndarray,
    cols: np.ndarray,
    fields: Mapping[str, Sequence[Any] | np.ndarray],
    *,
    layer: str = "points",
    overwrite: bool = False,
) -> Path:
    """Write one point per pixel (its centre, in the grid's CRS) with attribute fields.

    The file appears only when complete (:func:`~diffclip_cli.io.atomic.atomic_path`; inside
    an output set, with the set). A grid without CRS gives points in pixel coordinates and a
    layer without CRS, which diffclip reads back onto the same grid.

    Args:
        path: the GeoPackage (``.gpkg``).
        grid: the grid the pixels are on.
        rows: pixel rows.
        cols: pixel columns.
        fields: column name -> one value per point, in order.
        layer: the layer's name.
        overwrite: replace an existing file.

    Returns:
        The path.

    Raises:
        OutputError: the name is not a GeoPackage's, or the file cannot be written.
    """
    import geopandas as gpd  # a dependency; imported when used

    out = Path(path)
    if out.suffix.lower() not in POINT_SUFFIXES:
        raise OutputError(f"ends in {out.suffix or 'no extension'}, but the points are written "
                          "as a GeoPackage", path=out,
                          hint=f"name it {out.with_suffix('.gpkg').name}")
    x, y = apply_transform(grid.transform, np.asarray(cols) + 0.5, np.asarray(rows) + 0.5)
    frame = gpd.GeoDataFrame({k: list(v) for k, v in fields.items()},
                             geometry=gpd.points_from_xy(x, y),
                             crs=None if grid.crs is None else grid.crs.to_wkt())
    with atomic_path(out, overwrite=overwrite) as tmp, warnings.catch_warnings():
        # a grid without CRS gives a layer without one, on purpose: not worth a warning
        warnings.filterwarnings("ignore", message=".crs. was not provided")
        tmp.unlink(missing_ok=True)  # GDAL creates the GeoPackage itself
        frame.to_file(tmp, driver="GPKG", layer=layer)
    return out
