"""w x w windows around pixels, from an in-memory array or read from a scene tile by tile."""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from diffclip_cli.io.pixels import as_pixel_arrays, group_by_tile
from diffclip_cli.io.raster import Scene
from diffclip_cli.modalities import Modalities
from diffclip_cli.sampling.context import context_halo, model_inputs
from diffclip_cli.sampling.normalise import SceneStats

__all__ = ["PadMode", "extract_windows", "read_windows"]

#: The :func:`numpy.pad` modes that need no extra arguments.
PadMode = Literal["reflect", "symmetric", "edge", "wrap", "constant", "linear_ramp", "maximum",
                  "mean", "median", "minimum"]


def _check_size(size: int) -> int:
    if int(size) != size or size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be a positive odd integer, got {size}")
    return int(size)


def _take(padded: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """Windows whose top-left corners are ``(rows, cols)`` of an already padded array."""
    view = sliding_window_view(padded, (size, size), axis=(1, 2))  # (C, H', W', s, s), no copy
    return np.ascontiguousarray(np.moveaxis(view[:, rows, cols], 0, 1))


def extract_windows(
    array: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    size: int,
    *,
    pad_mode: PadMode = "reflect",
) -> np.ndarray:
    """Windows of ``size`` x ``size`` pixels centred on ``(rows, cols)``, vectorised.

    The array is padded by ``size // 2`` on every side (numpy ``pad_mode``, reflect by
    default: ``d c b | a b c d | c b a``), so border pixels get full windows.

    Args:
        array: ``(C, H, W)``.
        rows: pixel rows.
        cols: pixel columns.
        size: the window edge, odd.
        pad_mode: any :func:`numpy.pad` mode without extra arguments ("reflect", "symmetric",
            "edge", "constant", "wrap").

    Returns:
        ``(N, C, size, size)`` in the array's dtype.

    Raises:
        ValueError: even size, a pixel outside the array, or an array that is not 3-D.
    """
    size = _check_size(size)
    if array.ndim != 3:
        raise ValueError(f"array must be (C, H, W), got shape {array.shape}")
    r, c = as_pixel_arrays(rows, cols)
    _, h, w = array.shape
    if r.size and (r.min() < 0 or c.min() < 0 or r.max() >= h or c.max() >= w):
        raise ValueError("pixel positions outside the array")
    half = size // 2
    padded = np.pad(array, ((0, 0), (half, half), (half, half)), mode=pad_mode)
    return _take(padded, r, c, size)


def read_windows(
    scene: Scene,
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    size: int,
    stats: SceneStats,
    tile_size: int = 256,
) -> Modalities[np.ndarray]:
    """Normalised windows read from the scene, one region per tile of pixels.

    Pixels are grouped by ``tile_size`` tiles; for each group only the pixels' bounding box
    plus ``size // 2`` around it (and the context's reach, with context) is read, normalised
    (NaN -> 0), reflect-padded where it meets the scene border and given its context
    (:func:`~diffclip_cli.sampling.context.model_inputs`). The result equals
    :func:`extract_windows` on the whole scene's model inputs.

    Args:
        scene: the scene.
        rows: pixel rows.
        cols: pixel columns.
        size: window edge, odd.
        stats: normalisation statistics (band counts must match the scene).
        tile_size: grouping tile edge.

    Returns:
        The windows, in the order of ``rows``/``cols``: ``hsi`` ``(N, C, size, size)`` and
        ``lidar`` ``(N, L, size, size)`` float32 (``None`` without LiDAR); with context, its
        channels follow each modality's bands.
    """
    size = _check_size(size)
    r, c = as_pixel_arrays(rows, cols)
    h, w = scene.grid.shape
    if r.size and (r.min() < 0 or c.min() < 0 or r.max() >= h or c.max() >= w):
        raise ValueError("pixel positions outside the scene")
    if stats.hsi.bands != scene.hsi_bands or (
            scene.has_lidar and (stats.lidar is None or stats.lidar.bands != scene.lidar_bands)):
        raise ValueError("the normalisation statistics do not match the scene's band counts")
    half = size // 2
    extra = context_halo(stats.context.scales) if stats.context is not None else 0
    reach = half + extra
    hsi_ctx, lidar_ctx = stats.context_bands()
    hsi = np.empty((r.size, scene.hsi_bands + hsi_ctx, size, size), np.float32)
    lidar = (np.empty((r.size, scene.lidar_bands + lidar_ctx, size, size), np.float32)
             if scene.has_lidar else None)
    for g in group_by_tile(r, c, tile_size=tile_size):
        block, pad = scene.read_around((g.row_start, g.row_stop), (g.col_start, g.col_stop),
                                       reach)
        arrays = model_inputs(block.hsi, block.lidar, block.valid, stats=stats, pad=pad,
                              inplace=True)
        lr = r[g.index] - g.row_start
        lc = c[g.index] - g.col_start
        hsi[g.index] = _take(arrays.hsi, lr, lc, size)
        if lidar is not None and arrays.lidar is not None:
            lidar[g.index] = _take(arrays.lidar, lr, lc, size)
    return Modalities(hsi, lidar)
