"""Generated two-modality scenes with a known answer, for tests, examples and benchmarks.

Classes are the product of ``n_spectra`` spectral signatures and ``n_heights`` height levels:
two classes with the same spectrum differ only in LiDAR height, two with the same height only in
spectrum. HSI alone therefore cannot separate all classes, nor can LiDAR alone; both together can.
The ground is a mosaic of Voronoi patches, each one class, so windows are mostly homogeneous but
class boundaries exist.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

__all__ = ["SyntheticScene", "make_scene", "write_scene"]


@dataclass
class SyntheticScene:
    """A generated scene held in memory.

    Attributes:
        hsi: ``(C, H, W)`` float32 reflectance-like values in about [0, 1].
        lidar: ``(L, H, W)`` float32 heights in metres (channel 0) and, if ``L > 1``, an
            intensity-like channel; ``None`` for an HSI-only scene.
        labels: ``(H, W)`` int32 class ids, 1..K (every pixel labelled).
        class_names: names of classes 1..K.
        spectrum_of: the spectral signature index of each class (0-based class index).
        height_of: the height level index of each class.
        transform: the affine transform of the grid.
        crs: the CRS of the grid (``None`` for a pixel grid).
    """

    hsi: np.ndarray
    lidar: np.ndarray | None
    labels: np.ndarray
    class_names: list[str]
    spectrum_of: list[int]
    height_of: list[int]
    transform: Affine
    crs: CRS | None = field(default=None)

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the grid."""
        return self.labels.shape


def _signatures(n: int, bands: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth, clearly distinct spectra: sums of Gaussian bumps over a sloped baseline."""
    x = np.linspace(0.0, 1.0, bands)
    sigs = np.empty((n, bands), dtype=np.float64)
    for i in range(n):
        base = 0.2 + 0.3 * rng.random() + (rng.random() - 0.5) * 0.3 * x
        bumps = sum(
            (0.2 + 0.3 * rng.random()) * np.exp(-((x - rng.random()) ** 2) / (2 * 0.08**2))
            for _ in range(3)
        )
        sigs[i] = base + bumps
    return sigs


def make_scene(
    *,
    height: int = 64,
    width: int = 64,
    hsi_bands: int = 16,
    lidar_bands: int = 1,
    n_spectra: int = 2,
    n_heights: int = 2,
    patch_size: float = 8.0,
    noise: float = 0.02,
    height_step: float = 8.0,
    seed: int = 0,
    crs: str | None = "EPSG:32615",
    origin: tuple[float, float] = (500000.0, 4200000.0),
    pixel_size: float = 1.0,
) -> SyntheticScene:
    """Generate a scene whose classes differ in spectrum, in height, or both.

    Args:
        height: rows.
        width: columns.
        hsi_bands: number of HSI bands.
        lidar_bands: LiDAR channels (0 for an HSI-only scene; then only ``n_spectra`` classes).
        n_spectra: number of distinct spectral signatures.
        n_heights: number of distinct height levels (ignored without LiDAR).
        patch_size: typical Voronoi patch diameter in pixels.
        noise: standard deviation of per-pixel, per-band Gaussian noise on the HSI.
        height_step: metres between height levels.
        seed: the random seed; the same seed gives the same scene.
        crs: the CRS of the grid, or ``None`` for a pixel grid.
        origin: map coordinates of the top-left corner.
        pixel_size: pixel size in map units.

    Returns:
        The scene, classes numbered 1..K with K = n_spectra * n_heights.
    """
    rng = np.random.default_rng(seed)
    n_heights = n_heights if lidar_bands > 0 else 1
    n_classes = n_spectra * n_heights
    spectrum_of = [k % n_spectra for k in range(n_classes)]
    height_of = [k // n_spectra for k in range(n_classes)]

    # Voronoi mosaic, each cell one class; every class appears.
    n_cells = max(n_classes, round(height * width / patch_size**2))
    seeds = rng.random((n_cells, 2)) * (height, width)
    cell_class = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n_cells)])
    cell_class = cell_class[:n_cells]
    rr, cc = np.mgrid[0:height, 0:width]
    nearest = np.empty((height, width), dtype=np.int64)
    step = max(1, 2_000_000 // (width * n_cells))  # rows at a time: bounded memory
    for r0 in range(0, height, step):
        d2 = ((rr[r0:r0 + step, :, None] - seeds[:, 0]) ** 2
              + (cc[r0:r0 + step, :, None] - seeds[:, 1]) ** 2)
        nearest[r0:r0 + step] = d2.argmin(axis=-1)
    labels = (cell_class[nearest] + 1).astype(np.int32)

    sigs = _signatures(n_spectra, hsi_bands, rng)
    index = labels - 1
    spec = sigs[np.asarray(spectrum_of)[index]]  # (H, W, C)
    brightness = 1.0 + 0.05 * rng.standard_normal((height, width, 1))
    hsi = spec * brightness + noise * rng.standard_normal(spec.shape)
    hsi = np.moveaxis(hsi, -1, 0).astype(np.float32)

    lidar = None
    if lidar_bands > 0:
        levels = np.asarray(height_of, dtype=np.float64)[index] * height_step
        terrain = 0.02 * rr + 0.01 * cc  # a gentle slope every class shares
        dsm = terrain + levels + 0.3 * rng.standard_normal((height, width))
        chans = [dsm]
        for _ in range(1, lidar_bands):
            chans.append(50.0 + 5.0 * rng.standard_normal((height, width)))
        lidar = np.stack(chans).astype(np.float32)

    names = []
    for k in range(n_classes):
        name = f"material {chr(ord('a') + spectrum_of[k])}"
        if lidar_bands > 0 and n_heights > 1:
            name += " raised" if height_of[k] else " ground"
        names.append(name)

    transform = Affine(pixel_size, 0.0, origin[0], 0.0, -pixel_size, origin[1])
    return SyntheticScene(
        hsi=hsi,
        lidar=lidar,
        labels=labels,
        class_names=names,
        spectrum_of=spectrum_of,
        height_of=height_of,
        transform=transform,
        crs=CRS.from_user_input(crs) if crs else None,
    )


def write_scene(
    scene: SyntheticScene,
    folder: str | os.PathLike[str],
    *,
    hsi_dtype: str = "float32",
) -> dict[str, Path]:
    """Write a scene as GeoTIFFs plus a classes table.

    Files: ``hsi.tif``, ``lidar.tif`` (when the scene has LiDAR), ``labels.tif`` (uint16, 0 =
    unlabelled, nodata 0) and ``classes.csv`` (``id,name``).

    Args:
        scene: the scene.
        folder: an existing or new folder.
        hsi_dtype: ``float32``, or ``int16``/``uint16`` to store scaled integers
            (scale 1e-4, like many reflectance products), which also exercises scale/offset.

    Returns:
        The paths written, keyed ``hsi``, ``lidar``, ``labels``, ``classes``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    h, w = scene.shape
    profile = {
        "driver": "GTiff",
        "height": h,
        "width": w,
        "transform": scene.transform,
        "crs": scene.crs,
        "tiled": True,
        "blockxsize": 32,
        "blockysize": 32,
    }
    paths: dict[str, Path] = {"hsi": folder / "hsi.tif"}
    scaled = hsi_dtype != "float32"
    data = np.round(scene.hsi / 1e-4).astype(hsi_dtype) if scaled else scene.hsi
    with rasterio.open(paths["hsi"], "w", count=data.shape[0], dtype=data.dtype,
                       **profile) as dst:
        dst.write(data)
        if scaled:
            dst.scales = (1e-4,) * data.shape[0]
            dst.offsets = (0.0,) * data.shape[0]
        dst.descriptions = tuple(f"band {i + 1}" for i in range(data.shape[0]))
    if scene.lidar is not None:
        paths["lidar"] = folder / "lidar.tif"
        with rasterio.open(paths["lidar"], "w", count=scene.lidar.shape[0], dtype="float32",
                           nodata=-9999.0, **profile) as dst:
            dst.write(scene.lidar)
            extra_names = [f"intensity {i}" for i in range(1, scene.lidar.shape[0])]
            dst.descriptions = ("DSM", *extra_names)
    paths["labels"] = folder / "labels.tif"
    with rasterio.open(paths["labels"], "w", count=1, dtype="uint16", nodata=0,
                       **profile) as dst:
        dst.write(scene.labels.astype(np.uint16), 1)
    paths["classes"] = folder / "classes.csv"
    with open(paths["classes"], "w", encoding="utf-8") as f:
        f.write("id,name\n")
        for k, name in enumerate(scene.class_names, start=1):
            f.write(f"{k},{name}\n")
    return paths
