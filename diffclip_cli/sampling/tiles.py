"""Tiles with a halo, for whole-scene processing whose memory depends on the tile, not the scene."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from diffclip_cli.io.grid import Grid
from diffclip_cli.io.raster import Scene
from diffclip_cli.modalities import Modalities
from diffclip_cli.sampling.context import context_halo, model_inputs
from diffclip_cli.sampling.normalise import SceneStats

__all__ = ["Tile", "TileData", "iter_tiles", "read_tile"]


@dataclass(frozen=True)
class Tile:
    """One tile of a grid: its core (the pixels it is responsible for) and its halo.

    Attributes:
        row: first row of the core.
        col: first column of the core.
        height: core rows.
        width: core columns.
        halo: pixels of context on every side of the core.
    """

    row: int
    col: int
    height: int
    width: int
    halo: int

    @property
    def window(self) -> Window:
        """The core as a window of the grid."""
        return Window(self.col, self.row, self.width, self.height)

    @property
    def slices(self) -> tuple[slice, slice]:
        """The core as ``(row slice, col slice)`` of a grid-sized array."""
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the core."""
        return (self.height, self.width)


@dataclass(frozen=True, eq=False)
class TileData:
    """Normalised arrays of a tile plus halo, and the validity of its core.

    A thin wrapper of :class:`~diffclip_cli.modalities.Modalities` rather than one of them,
    because its arrays and its mask cover different pixels: the arrays hold the core plus
    ``tile.halo`` pixels of context on every side (reflect-padded where the tile meets the
    scene border), the mask only the core, the pixels the tile answers for; the tile says
    where that core lies in the scene.

    Attributes:
        tile: the tile.
        arrays: ``hsi`` ``(C, h + 2 halo, w + 2 halo)`` and ``lidar``
            ``(L, h + 2 halo, w + 2 halo)`` float32 (or ``None``), normalised.
        valid: ``(h, w)`` bool validity of the core.
    """

    tile: Tile
    arrays: Modalities[np.ndarray]
    valid: np.ndarray


def iter_tiles(grid: Grid, *, tile_size: int = 256, halo: int = 5) -> Iterator[Tile]:
    """Tiles covering every pixel of ``grid`` exactly once, in raster order.

    Args:
        grid: the grid.
        tile_size: core edge (the last row/column of tiles may be smaller).
        halo: context pixels on every side (``window // 2`` for windows of that size).
    """
    if tile_size < 1 or halo < 0:
        raise ValueError("tile_size must be positive and halo non-negative")
    for r0 in range(0, grid.height, tile_size):
        for c0 in range(0, grid.width, tile_size):
            yield Tile(r0, c0, min(tile_size, grid.height - r0), min(tile_size, grid.width - c0),
                       halo)


def read_tile(scene: Scene, tile: Tile, *, stats: SceneStats) -> TileData:
    """Read a tile plus halo, normalised; reflect-padded only where it meets the scene border.

    Only the tile and its halo (plus the context's reach, with context) are read, so memory
    depends on the tile size, not the scene. The arrays equal the whole scene's model inputs
    (:func:`~diffclip_cli.sampling.context.model_inputs`) reflect-padded by ``halo``, cut at
    the tile.
    """
    k = tile.halo + (context_halo(stats.context.scales) if stats.context is not None else 0)
    block, pad = scene.read_around((tile.row, tile.row + tile.height),
                                   (tile.col, tile.col + tile.width), k)
    r0, c0 = tile.row - (k - pad[0][0]), tile.col - (k - pad[1][0])
    # The block is ours: normalised in place, copied into a padded array only at the scene
    # border (a tile of 144 bands is 40 MB; each copy counts in the peak).
    arrays = model_inputs(block.hsi, block.lidar, block.valid, stats=stats, pad=pad,
                          inplace=True)
    core = block.valid[tile.row - r0:tile.row - r0 + tile.height,
                       tile.col - c0:tile.col - c0 + tile.width]
    return TileData(tile, arrays, core.copy())
