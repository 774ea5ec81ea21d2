"""Group scattered pixel positions by tile, so rasters are read region by region, not per pixel."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from affine import Affine

__all__ = ["PixelGroup", "apply_transform", "as_pixel_arrays", "group_by_tile"]


def apply_transform(
    transform: Affine, x: npt.ArrayLike, y: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Apply an affine transform to coordinates (arrays or scalars), elementwise.

    Written out so it works the same with every version of ``affine`` (whose ``*`` operator
    on points is being deprecated in favour of ``@``).
    """
    a, b, c, d, e, f = tuple(transform)[:6]
    xa = np.asarray(x, np.float64)
    ya = np.asarray(y, np.float64)
    return a * xa + b * ya + c, d * xa + e * ya + f


@dataclass(frozen=True, eq=False)
class PixelGroup:
    """The pixels of one tile and the rows/columns they span.

    Attributes:
        index: positions of these pixels in the caller's arrays.
        row_start: first row spanned (inclusive).
        row_stop: last row spanned plus one.
        col_start: first column spanned (inclusive).
        col_stop: last column spanned plus one.
    """

    index: np.ndarray
    row_start: int
    row_stop: int
    col_start: int
    col_stop: int


def as_pixel_arrays(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert pixel positions to two equally long 1-D int64 arrays.

    Raises:
        ValueError: when the arrays differ in length or are not integers.
    """
    r = np.asarray(rows)
    c = np.asarray(cols)
    if r.ndim != 1 or c.ndim != 1 or r.shape != c.shape:
        raise ValueError(f"rows and cols must be 1-D arrays of one length, got {r.shape} {c.shape}")
    if r.size and not (np.issubdtype(r.dtype, np.integer) and np.issubdtype(c.dtype, np.integer)):
        raise ValueError("rows and cols must be integer arrays")
    return r.astype(np.int64, copy=False), c.astype(np.int64, copy=False)


def group_by_tile(
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    tile_size: int = 256,
) -> Iterator[PixelGroup]:
    """Group pixels by the ``tile_size`` x ``tile_size`` tile that contains them.

    Groups come in raster order of their tiles; inside a group the pixels keep the order they
    had in the input. The loop is per tile, not per pixel.

    Args:
        rows: pixel rows (non-negative integers).
        cols: pixel columns.
        tile_size: tile edge in pixels.

    Yields:
        One :class:`PixelGroup` per tile that holds at least one pixel.
    """
    r, c = as_pixel_arrays(rows, cols)
    if r.size == 0:
        return
    if tile_size < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    tr = r // tile_size
    tc = c // tile_size
    key = tr * (int(tc.max()) + 1) + tc
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    bounds = np.flatnonzero(np.diff(sorted_key)) + 1
    for idx in np.split(order, bounds):
        gr = r[idx]
        gc = c[idx]
        yield PixelGroup(idx, int(gr.min()), int(gr.max()) + 1, int(gc.min()), int(gc.max()) + 1)
