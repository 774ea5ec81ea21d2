"""Unlabelled pixels for pretraining, spread over the whole valid area of a scene."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from rasterio.windows import Window

from diffclip_cli.io.pixels import as_pixel_arrays
from diffclip_cli.io.raster import Scene

__all__ = ["sample_unlabelled", "valid_mask"]

log = logging.getLogger("diffclip")


def valid_mask(
    scene: Scene,
    *,
    tile_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The scene's validity as a packed bit mask, built tile by tile.

    Args:
        scene: the scene.
        tile_size: rows and columns read at a time.
        progress: called with ``(tiles done, tiles in all)``.

    Returns:
        ``(H, ceil(W / 8))`` uint8, :func:`numpy.packbits` of the ``(H, W)`` validity along
        the rows (one bit per pixel, so an 8th of the memory of a bool mask).
    """
    h, w = scene.grid.shape
    packed = np.zeros((h, (w + 7) // 8), np.uint8)
    # Tiles span whole bytes of columns, so each tile packs into its own byte columns.
    step = max(8, tile_size - tile_size % 8)
    tiles = [(r0, c0) for r0 in range(0, h, step) for c0 in range(0, w, step)]
    for k, (r0, c0) in enumerate(tiles):
        win = Window(c0, r0, min(step, w - c0), min(step, h - r0))
        valid = scene.read(win).valid
        packed[r0:r0 + valid.shape[0], c0 // 8:(c0 + valid.shape[1] + 7) // 8] = np.packbits(
            valid, axis=1)
        if progress is not None:
            progress(k + 1, len(tiles))
    return packed


def sample_unlabelled(
    scene: Scene,
    n: int,
    *,
    seed: int | np.random.Generator,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    cell_size: int = 16,
    tile_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
    warn: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` distinct valid pixels spread over the whole valid area.

    The grid is cut into ``cell_size`` x ``cell_size`` cells. Cells receive samples in
    proportion to their valid (and not excluded) pixels by systematic sampling over the cells
    in raster order, so every part of the scene is represented; inside a cell the pixels are
    drawn at random. Validity is read tile by tile and kept as a bit mask (H*W/8 bytes).

    Args:
        scene: the scene.
        n: the number of pixels wanted.
        seed: the random seed (or a generator).
        exclude: ``(rows, cols)`` of pixels never to return (e.g. the test labels).
        cell_size: edge of the stratification cells, in pixels.
        tile_size: rows and columns read at a time.
        progress: called with ``(tiles done, tiles in all)`` while validity is read.
        warn: log a warning when the scene has fewer valid pixels than ``n``.

    Returns:
        ``(rows, cols)`` int64 arrays in raster order; fewer than ``n`` (with a warning) when
        the scene has fewer usable pixels.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rng = np.random.default_rng(seed)
    h, w = scene.grid.shape
    packed = valid_mask(scene, tile_size=tile_size, progress=progress)
    if exclude is not None:
        er, ec = as_pixel_arrays(*exclude)
        ok = (er >= 0) & (ec >= 0) & (er < h) & (ec < w)
        er, ec = er[ok], ec[ok]
        bits = np.right_shift(np.uint8(0x80), (ec % 8).astype(np.uint8))
        np.bitwise_and.at(packed, (er, ec // 8), ~bits)  # .at: several pixels share a byte
    # Valid pixels per cell, one band of cell rows at a time.
    ncr, ncc = -(-h // cell_size), -(-w // cell_size)
    counts = np.zeros((ncr, ncc), np.int64)
    for i in range(ncr):
        band = np.unpackbits(packed[i * cell_size:(i + 1) * cell_size], axis=1, count=w)
        counts[i] = np.bincount(np.nonzero(band)[1] // cell_size, minlength=ncc)
    total = int(counts.sum())
    if total <= n:
        if total < n and warn:
            log.warning("the scene has only %d usable pixels, fewer than the %d asked for; "
                        "using all of them", total, n)
        quota = counts
    else:
        # Systematic probability-proportional-to-size allocation of n draws over the cells.
        cum = np.cumsum(counts.ravel())
        marks = (rng.random() + np.arange(n)) * (total / n)
        quota = np.bincount(np.searchsorted(cum, marks, side="right"), minlength=cum.size)
        quota = np.minimum(quota[:cum.size], counts.ravel()).reshape(ncr, ncc)
    out_r: list[np.ndarray] = []
    out_c: list[np.ndarray] = []
    for i in np.flatnonzero(quota.sum(axis=1)).tolist():
        r0 = i * cell_size
        band = np.unpackbits(packed[r0:r0 + cell_size], axis=1, count=w)
        rr, cc = np.nonzero(band)
        cell = cc // cell_size
        order = np.lexsort((rng.random(rr.size), cell))  # random order inside each cell
        cell = cell[order]
        start = np.searchsorted(cell, np.arange(ncc))
        rank = np.arange(cell.size) - start[cell]
        pick = order[rank < quota[i][cell]]
        out_r.append(rr[pick] + r0)
        out_c.append(cc[pick])
    if not out_r:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    rows = np.concatenate(out_r).astype(np.int64)
    cols = np.concatenate(out_c).astype(np.int64)
    order = np.lexsort((cols, rows))
    return rows[order], cols[order]
