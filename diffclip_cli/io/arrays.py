"""Scenes as lazily chunked xarray DataArrays ``(band, y, x)`` on the HSI grid.

:func:`scene_arrays` turns an open :class:`~diffclip_cli.io.raster.Scene` into dask-backed
DataArrays with the coordinates, CRS and transform rioxarray uses (``.rio.crs``,
``.rio.transform()``), so the whole-scene classifier and a user's own arrays go through one
function (:func:`diffclip_cli.infer.predict.predict`). Nothing is read until a chunk is
computed; a chunk is read through the scene (values after scale/offset, NaN where nodata, LiDAR
co-registered onto the HSI grid by rasterio as :class:`Scene` does).

:func:`grid_of` recovers a :class:`~diffclip_cli.io.grid.Grid` from such a DataArray (or any
rioxarray-readable one).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from diffclip_cli.io.grid import Grid
from diffclip_cli.io.raster import Scene

__all__ = ["SceneArrays", "SceneBands", "grid_coords", "grid_of", "scene_arrays",
           "window_reader"]

_SHARED: dict[tuple[str, tuple[str, ...], str], Scene] = {}
_SHARED_LOCK = threading.Lock()
#: The reader behind each dask array scene_arrays made, by the array's name.
_READERS: weakref.WeakValueDictionary[str, SceneBands] = weakref.WeakValueDictionary()


def window_reader(data: Any) -> SceneBands | None:
    """The scene reader behind a dask array made by :func:`scene_arrays`, else ``None``.

    Reading a window through it gives what computing that slice of the array gives, in one
    read per modality and without dask's per-graph overhead (about 5 ms a window).
    """
    return _READERS.get(getattr(data, "name", None) or "")


def _shared_scene(hsi: str, lidar: tuple[str, ...], resampling: str) -> Scene:
    """One open scene per process for these files (what unpickled chunk readers share).

    A dask worker receives a reader with every task that reads a chunk; opening the files
    again for each of them would cost more than the read.
    """
    key = (hsi, lidar, resampling)
    with _SHARED_LOCK:
        scene = _SHARED.get(key)
        if scene is None or scene.closed:
            scene = _SHARED[key] = Scene.__new__(Scene)
            scene.__setstate__({"hsi": hsi, "lidar": list(lidar), "resampling": resampling})
        return scene


class SceneBands:
    """One modality of a scene as a read-only array ``(bands, height, width)`` float32.

    What :func:`dask.array.from_array` wraps: indexing with slices reads that window through
    the scene (:meth:`Scene.read_bands`). Pickles as the scene's file names, so a dask worker
    reads the files itself (one open scene per worker process).

    Args:
        scene: the open scene.
        modality: ``"hsi"`` or ``"lidar"``.
    """

    def __init__(self, scene: Scene, modality: str) -> None:
        bands = scene.hsi_bands if modality == "hsi" else scene.lidar_bands
        if modality not in ("hsi", "lidar") or bands == 0:
            raise ValueError(f"the scene has no {modality!r} bands")
        self.scene = scene
        self.modality = modality
        self.shape = (bands, scene.grid.height, scene.grid.width)
        self.dtype = np.dtype(np.float32)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        if len(key) != 3 or not all(isinstance(k, slice) for k in key):
            raise IndexError("a scene is indexed with three slices (band, y, x)")
        (b0, b1, bs), (r0, r1, rs), (c0, c1, cs) = (k.indices(n) for k, n in
                                                    zip(key, self.shape, strict=True))
        if rs != 1 or cs != 1:
            raise IndexError("a scene is read with unit steps in y and x")
        if r1 <= r0 or c1 <= c0 or b1 <= b0:  # dask asks for empty slices to learn the type
            return np.zeros((len(range(b0, b1, bs)), max(0, r1 - r0), max(0, c1 - c0)),
                            np.float32)
        data = self.scene.read_bands(((r0, r1), (c0, c1)), self.modality)
        return data if (b0, b1, bs) == (0, self.shape[0], 1) else data[b0:b1:bs]

    def __reduce__(self) -> Any:
        return (_unpickle_bands, (str(self.scene.hsi_path),
                                  tuple(str(p) for p in self.scene.lidar_paths),
                                  self.scene.resampling, self.modality))

    def __repr__(self) -> str:
        return f"SceneBands({self.scene!r}, {self.modality!r})"


def _unpickle_bands(hsi: str, lidar: tuple[str, ...], resampling: str,
                    modality: str) -> SceneBands:
    return SceneBands(_shared_scene(hsi, lidar, resampling), modality)


@dataclass
class SceneArrays:
    """A scene's modalities as lazy DataArrays ``(band, y, x)``; ``lidar`` is ``None`` without."""

    hsi: xr.DataArray
    lidar: xr.DataArray | None


def grid_coords(grid: Grid) -> dict[str, np.ndarray]:
    """Pixel-centre ``x`` and ``y`` coordinates of a north-up grid (empty if rotated)."""
    t = grid.transform
    if t.b != 0 or t.d != 0:
        return {}
    return {"y": t.f + t.e * (np.arange(grid.height) + 0.5),
            "x": t.c + t.a * (np.arange(grid.width) + 0.5)}


def _georeferenced(array: xr.DataArray, grid: Grid) -> xr.DataArray:
    """``array`` with the grid's transform and CRS where rioxarray looks for them."""
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    array = array.rio.write_transform(grid.transform)
    if grid.crs is not None:
        array = array.rio.write_crs(grid.crs)
    return array


def scene_arrays(scene: Scene, *, chunks: int | None = None) -> SceneArrays:
    """The scene's HSI (and LiDAR) as lazily chunked DataArrays on the HSI grid.

    Args:
        scene: an open scene; it must stay open until the arrays are computed.
        chunks: chunk edge in pixels (all bands in one chunk); default 256.

    Returns:
        DataArrays ``(band, y, x)`` float32 (NaN where nodata), with ``x``/``y`` pixel-centre
        coordinates, the CRS and transform (rioxarray), ``band`` numbered from 1, the band
        names in ``long_name``, the wavelengths (nm) in ``wavelength`` when the file gives
        them, and nodata NaN.
    """
    edge = int(chunks or 256)
    coords = grid_coords(scene.grid)
    names = scene.band_names

    def wrap(modality: str) -> xr.DataArray:
        bands = SceneBands(scene, modality)
        data = da.from_array(bands, chunks=(bands.shape[0], edge, edge), asarray=False,
                             lock=False, inline_array=True,
                             name=f"diffclip-{modality}-{_scene_token(scene, modality)}")
        _READERS[data.name] = bands
        array = xr.DataArray(data, dims=("band", "y", "x"),
                             coords={"band": np.arange(1, bands.shape[0] + 1), **coords},
                             attrs={"long_name": tuple(names[modality]),
                                    "source": str(scene.hsi_path if modality == "hsi"
                                                  else ", ".join(map(str, scene.lidar_paths))),
                                    "_FillValue": np.float32(np.nan)})
        if modality == "hsi" and scene.wavelengths is not None:
            array.attrs["wavelength"] = tuple(scene.wavelengths)
        return _georeferenced(array, scene.grid)

    return SceneArrays(wrap("hsi"), wrap("lidar") if scene.has_lidar else None)


def _scene_token(scene: Scene, modality: str) -> str:
    """A name for a scene's chunks: the same files and grid give the same name."""
    from dask.base import tokenize

    return tokenize(str(scene.hsi_path), [str(p) for p in scene.lidar_paths],
                    scene.resampling, modality, scene.grid.to_dict(), id(scene))


def grid_of(array: xr.DataArray) -> Grid | None:
    """The pixel grid of a georeferenced DataArray ``(..., y, x)``; ``None`` without one.

    The transform comes from rioxarray (``.rio.transform()``: the ``spatial_ref`` it wrote or
    the ``x``/``y`` coordinates); the CRS from ``.rio.crs`` (may be ``None``).
    """
    import rioxarray  # noqa: F401

    has_ref = "spatial_ref" in array.coords or {"x", "y"} <= set(array.coords)
    if not has_ref:
        return None
    try:
        transform = array.rio.transform()
        crs = array.rio.crs
    except Exception:  # rioxarray raises several kinds for missing georeferencing
        return None
    return Grid(int(array.sizes[array.dims[-1]]), int(array.sizes[array.dims[-2]]),
                transform, crs)
