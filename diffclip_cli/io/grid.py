"""The pixel grid every product of a scene lives on (the HSI grid)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from affine import Affine
from rasterio.coords import BoundingBox
from rasterio.crs import CRS
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform

__all__ = ["Grid"]


@dataclass(frozen=True)
class Grid:
    """A georeferenced pixel grid: size, affine transform and CRS (``None`` for pixel grids).

    Attributes:
        width: number of columns.
        height: number of rows.
        transform: affine transform from pixel (col, row) to map coordinates.
        crs: coordinate reference system, or ``None`` for rasters without one.
    """

    width: int
    height: int
    transform: Affine
    crs: CRS | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``, the numpy order."""
        return (self.height, self.width)

    @property
    def bounds(self) -> BoundingBox:
        """The grid's extent in map coordinates."""
        return BoundingBox(*window_bounds(Window(0, 0, self.width, self.height), self.transform))

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size ``(x, y)`` in map units, both positive."""
        return (abs(self.transform.a), abs(self.transform.e))

    def window_transform(self, window: Window) -> Affine:
        """The transform of a window of this grid."""
        return window_transform(window, self.transform)

    def full_window(self) -> Window:
        """The window that covers the whole grid."""
        return Window(0, 0, self.width, self.height)

    def describe(self) -> str:
        """A short human-readable description, used in messages."""
        crs = self.crs.to_string() if self.crs else "no CRS"
        b = self.bounds
        return (
            f"{self.width} x {self.height} px, {crs}, "
            f"extent ({b.left:g}, {b.bottom:g}, {b.right:g}, {b.top:g})"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dictionary (see :meth:`from_dict`)."""
        return {
            "width": self.width,
            "height": self.height,
            "transform": list(self.transform)[:6],
            "crs": self.crs.to_wkt() if self.crs else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grid:
        """Rebuild a grid written by :meth:`to_dict`."""
        crs = CRS.from_wkt(data["crs"]) if data.get("crs") else None
        return cls(int(data["width"]), int(data["height"]), Affine(*data["transform"]), crs)
