"""Tiny GeoTIFFs for the data-layer tests (written into tmp_path by the tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.transform import from_origin

from diffclip_cli.io.pixels import apply_transform

HSI_CRS = "EPSG:32615"
SALINAS = Path(__file__).resolve().parents[1] / "diffclip_cli" / "data" / "salinas_a"


ORIGIN = (500000.0, 4200000.0)
RES = 2.0


def write_tif(
    path: Path,
    data: np.ndarray,
    *,
    transform: Affine | None = None,
    crs: str | None = HSI_CRS,
    nodata: float | None = None,
    scales: list[float] | None = None,
    offsets: list[float] | None = None,
    descriptions: list[str | None] | None = None,
    block: int | None = None,
    compress: str | None = None,
) -> Path:
    """Write a (C, H, W) or (H, W) array as a GeoTIFF."""
    data = data[None] if data.ndim == 2 else data
    c, h, w = data.shape
    profile = {"driver": "GTiff", "width": w, "height": h, "count": c, "dtype": data.dtype,
               "crs": CRS.from_user_input(crs) if crs else None,
               "transform": transform or from_origin(*ORIGIN, RES, RES), "nodata": nodata}
    if block:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    if compress:
        profile["compress"] = compress
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if scales is not None:
            dst.scales = scales
        if offsets is not None:
            dst.offsets = offsets
        if descriptions is not None:
            for i, d in enumerate(descriptions, start=1):
                if d:
                    dst.set_band_description(i, d)
    return path


def hsi_grid(height: int = 30, width: int = 40) -> tuple[Affine, int, int]:
    return from_origin(*ORIGIN, RES, RES), height, width


def pixel_centres(transform: Affine, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Map coordinates (x, y) of every pixel centre, each (H, W)."""
    cc, rr = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return apply_transform(transform, cc, rr)


def plane(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth known surface of HSI map coordinates (metres)."""
    return 100.0 + 0.3 * (x - ORIGIN[0]) - 0.2 * (y - ORIGIN[1])


def write_lidar_plane(
    path: Path,
    crs: str,
    bounds_hsi: tuple[float, float, float, float],
    res: float,
    *,
    dtype: str = "float32",
    nodata: float | None = None,
) -> Path:
    """A LiDAR raster in ``crs`` covering ``bounds_hsi`` (HSI CRS), values = plane(HSI x, y).

    ``res`` is the LiDAR pixel size in its own CRS units.
    """
    to_l = Transformer.from_crs(HSI_CRS, crs, always_xy=True)
    to_h = Transformer.from_crs(crs, HSI_CRS, always_xy=True)
    left, bottom, right, top = bounds_hsi
    xs, ys = to_l.transform([left, right, left, right], [bottom, bottom, top, top])
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    w = int(np.ceil((x1 - x0) / res))
    h = int(np.ceil((y1 - y0) / res))
    t = from_origin(x0, y1, res, res)
    lx, ly = pixel_centres(t, h, w)
    hx, hy = to_h.transform(lx, ly)
    z = plane(np.asarray(hx), np.asarray(hy)).astype(dtype)
    return write_tif(path, z, transform=t, crs=crs, nodata=nodata)
