"""The one container for per-modality arrays: an HSI array and, optionally, a LiDAR array.

Every layer passes the two modalities of the same pixels together in a :class:`Modalities`:
numpy arrays in io/sampling (a window read from the scene, scattered pixel values, normalised
window batches, a tile with its halo) and torch tensors in train (the training windows). The
layout follows the use and is the same for both arrays: band-first ``(C, h, w)`` for raster
windows and tiles, ``(N, C)`` for pixel values, ``(N, C, w, w)`` for window batches.

What a use adds lives beside the container, not in a copy of it: values read from the files
carry their validity mask (:class:`MaskedModalities`, a :class:`Modalities` with ``valid``);
:class:`~diffclip_cli.sampling.tiles.TileData` keeps the tile a halo'd pair of arrays belongs
to, and :class:`~diffclip_cli.train.data.WindowData` the labels of the training windows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

__all__ = ["MODALITY_NAMES", "MaskedModalities", "Modalities"]

#: The modalities, in the order every layer stacks them (HSI first).
MODALITY_NAMES = ("hsi", "lidar")

ArrayT = TypeVar("ArrayT")
OtherT = TypeVar("OtherT")


@dataclass(frozen=True, eq=False)
class Modalities(Generic[ArrayT]):
    """The arrays of the same pixels, one per modality.

    Attributes:
        hsi: the HSI array.
        lidar: the LiDAR array, in the HSI array's layout with its own band count, or
            ``None`` without LiDAR.
    """

    hsi: ArrayT
    lidar: ArrayT | None = None

    @property
    def has_lidar(self) -> bool:
        """Whether the LiDAR array is present."""
        return self.lidar is not None

    def items(self) -> Iterator[tuple[str, ArrayT]]:
        """``(name, array)`` of each present modality, HSI first (:data:`MODALITY_NAMES`)."""
        yield "hsi", self.hsi
        if self.lidar is not None:
            yield "lidar", self.lidar

    def map(self, fn: Callable[[ArrayT], OtherT]) -> Modalities[OtherT]:
        """``fn`` applied to each array (a conversion, an index, a device move).

        The result is a plain :class:`Modalities`: a mask is not carried over, as ``fn``
        may change the pixels.
        """
        return Modalities(fn(self.hsi), None if self.lidar is None else fn(self.lidar))


@dataclass(frozen=True, eq=False)
class MaskedModalities(Modalities[np.ndarray]):
    """Values read from the files, and where they hold a value.

    What :meth:`~diffclip_cli.io.raster.Scene.read` (a window) and
    :meth:`~diffclip_cli.io.raster.Scene.read_pixels` (scattered pixels) return: float32
    values after scale/offset, NaN where a band is nodata.

    Attributes:
        valid: bool, over the pixels (the arrays' shape without the band axis): true where
            every band of every modality has a value (and the LiDAR covers the pixel).
            Keyword-only: ``MaskedModalities(hsi, lidar, valid=valid)``.
    """

    valid: np.ndarray = field(kw_only=True)
