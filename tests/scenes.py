"""Generated scenes for the tests: the one place tests get them from.

``make_scene`` / ``write_scene`` (a two-modality scene with a known answer) are the benchmarks'
generator (``diffclip_cli/testing.py``, the protocol's ``--synthetic`` scene), used as it is.

The messy scene is on mismatched grids, as a real user would bring it (for CLI tests).

The HSI is in UTM (EPSG:32615) with a few NaN pixels; the LiDAR is in Web Mercator
(EPSG:3857) at a coarser resolution and does not reach the last columns of the HSI; the labels
are GeoPackage points in EPSG:4326 carrying class names as strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.warp import Resampling, calculate_default_transform, reproject, transform
from shapely.geometry import Point

from diffclip_cli.testing import SyntheticScene, make_scene, write_scene

__all__ = ["MessyScene", "SyntheticScene", "make_scene", "write_messy_scene", "write_scene"]

#: HSI pixels set to NaN (row, col).
NAN_PIXELS = ((5, 7), (20, 30))
#: HSI columns at the east edge the LiDAR does not cover.
UNCOVERED_COLUMNS = 6


@dataclass
class MessyScene:
    """Paths of a generated scene and what is known about it."""

    scene: SyntheticScene
    hsi: Path
    lidar: Path
    labels: Path
    invalid: np.ndarray  # (H, W) bool: pixels that must be nodata in a map


def write_messy_scene(folder: Path, *, height: int = 48, width: int = 56, seed: int = 0,
                      label_step: int = 2) -> MessyScene:
    """Write the scene; every ``label_step``-th pixel (in both directions) gets a label point."""
    folder.mkdir(parents=True, exist_ok=True)
    s = make_scene(height=height, width=width, hsi_bands=12, patch_size=18, seed=seed,
                   crs="EPSG:32615", pixel_size=2.0)
    hsi = s.hsi.copy()
    for r, c in NAN_PIXELS:
        hsi[3, r, c] = np.nan
    hsi_path = folder / "hsi.tif"
    with rasterio.open(hsi_path, "w", driver="GTiff", height=height, width=width,
                       count=hsi.shape[0], dtype="float32", crs=s.crs, transform=s.transform,
                       nodata=np.nan) as dst:
        dst.write(hsi)

    # LiDAR: the DSM cut short of the east edge, reprojected to EPSG:3857 at ~3 m.
    covered = width - UNCOVERED_COLUMNS
    src_transform = s.transform
    dst_crs = CRS.from_epsg(3857)
    left, top = src_transform.c, src_transform.f
    right = left + covered * src_transform.a
    bottom = top + height * src_transform.e
    dst_transform, dw, dh = calculate_default_transform(
        s.crs, dst_crs, covered, height, left=left, bottom=bottom, right=right, top=top,
        resolution=3.0)
    out = np.full((1, dh, dw), -9999.0, dtype=np.float32)
    reproject(s.lidar[:, :, :covered], out, src_transform=src_transform, src_crs=s.crs,
              dst_transform=dst_transform, dst_crs=dst_crs, resampling=Resampling.bilinear,
              src_nodata=None, dst_nodata=-9999.0)
    lidar_path = folder / "lidar.tif"
    with rasterio.open(lidar_path, "w", driver="GTiff", height=dh, width=dw, count=1,
                       dtype="float32", crs=dst_crs, transform=dst_transform,
                       nodata=-9999.0) as dst:
        dst.write(out)
        dst.descriptions = ("DSM",)

    # Labels: points at pixel centres, class names as strings, in EPSG:4326.
    rows, cols = np.mgrid[0:height:label_step, 0:width:label_step]
    rows, cols = rows.ravel(), cols.ravel()
    xs = left + (cols + 0.5) * src_transform.a
    ys = top + (rows + 0.5) * src_transform.e
    lon, lat = transform(s.crs, "EPSG:4326", xs, ys)
    names = [s.class_names[k - 1] for k in s.labels[rows, cols]]
    gdf = gpd.GeoDataFrame({"landcover": names},
                           geometry=[Point(x, y) for x, y in zip(lon, lat, strict=True)],
                           crs="EPSG:4326")
    labels_path = folder / "labels.gpkg"
    gdf.to_file(labels_path, layer="samples", driver="GPKG")

    invalid = np.zeros((height, width), bool)
    for r, c in NAN_PIXELS:
        invalid[r, c] = True
    invalid[:, covered:] = True
    return MessyScene(s, hsi_path, lidar_path, labels_path, invalid)
