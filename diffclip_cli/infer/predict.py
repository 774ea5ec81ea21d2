"""Land-cover prediction on arrays: one lazy dask graph over tiles with a halo.

:func:`predict` is the one way diffclip classifies a scene. It takes the HSI (and LiDAR) as
xarray DataArrays ``(band, y, x)`` (dask-backed, e.g. from ``rioxarray.open_rasterio(path,
chunks=...)`` or :func:`diffclip_cli.io.arrays.scene_arrays`, or in memory) and builds a dask
graph of one task per tile (``tile_size`` pixels square): the task computes its own window of
the input, the core plus a halo of ``window // 2`` pixels (for arrays read from files dask fuses
that into reads of just the window, so no task holds a neighbour's data), reflect-pads it at
the scene border as the training windows were, normalises it and runs the inference engine
(:class:`~diffclip_cli.infer.engine.TileEngine` or, with ``fast``,
:class:`~diffclip_cli.infer.fast.FastEngine`). The result is lazy for a dask-backed input and
computed for an in-memory one. ``diffclip classify`` writes the same graph's blocks to GeoTIFFs
(:func:`diffclip_cli.infer.classify.classify_scene`), on dask's local threads or on a
``distributed`` cluster.

On dask's local threads one tile at a time runs the network (with torch's threads, all cores
by default), so dask's other threads read, prepare and write tiles meanwhile instead of fighting
torch's threads for the cores; on ``distributed`` workers each worker thread runs its own tile
(:mod:`diffclip_cli.infer.runner`: the engine and who runs it).
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from diffclip_cli.errors import GridError
from diffclip_cli.infer.runner import Engine, Runner, compute_slot, load_model, make_engine

if TYPE_CHECKING:
    import dask.array as da
    import torch
    import xarray as xr

    from diffclip_cli.io.classes import ClassTable
    from diffclip_cli.io.grid import Grid
    from diffclip_cli.model.modelfile import ModelBundle

__all__ = [
    "CONFIDENCE_NODATA",
    "DEFAULT_TILE_SIZE",
    "MIN_TILE_SIZE",
    "TILE_BYTES",
    "Engine",
    "Prediction",
    "Runner",
    "auto_tile_size",
    "load_model",
    "make_engine",
    "predict",
    "tile_chunks",
]

log = logging.getLogger("diffclip")

#: Nodata of the confidence and probability rasters written to files (valid values lie in
#: (0, 1]); in arrays invalid pixels are NaN.
CONFIDENCE_NODATA = -1.0
#: Largest default tile edge in pixels.
DEFAULT_TILE_SIZE = 256
#: The smallest tile edge in pixels.
MIN_TILE_SIZE = 16
#: The default tile edge keeps one tile's float32 input (all bands) within this many bytes, so
#: the memory a tile holds does not depend on the band count (``benchmarks/memory.py``: with
#: 256 px tiles a 144-band scene peaks 1.45x higher than a scene smaller than one tile).
TILE_BYTES = 12 * 2**20


def auto_tile_size(channels: int) -> int:
    """The default tile edge for inputs of ``channels`` bands in all (HSI, LiDAR, context).

    The largest multiple of 32 between 64 and :data:`DEFAULT_TILE_SIZE` whose float32 tile
    fits :data:`TILE_BYTES`: 256 up to 48 bands, 128 for 144 + 1, 96 for 204.
    """
    edge = int(math.sqrt(TILE_BYTES / (4 * max(1, channels)))) // 32 * 32
    return max(64, min(DEFAULT_TILE_SIZE, edge))


# -- the tile task ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Decode:
    """How raw input values become float32 values with NaN for nodata (per modality)."""

    nodata: float | None = None
    scale: tuple[float, ...] | None = None
    offset: tuple[float, ...] | None = None

    def __call__(self, block: np.ndarray, *, private: bool = False) -> np.ndarray:
        """Float32 values, NaN where nodata.

        A new array unless ``block`` is ``private`` float32 (read for this task alone; then it
        is overwritten in place: a tile of 144 bands at 256 px is 40 MB). Anything else is
        never changed: a scheduler may hand the same object to another task (a
        ``distributed`` worker did, and normalising it in place garbled the map).
        """
        x = block if private and block.dtype == np.float32 and block.flags.writeable \
            else block.astype(np.float32, copy=True)
        if self.nodata is not None and not math.isnan(self.nodata):
            x[block == self.nodata] = np.nan
        if self.scale is not None:
            x *= np.asarray(self.scale, np.float32).reshape(-1, 1, 1)
        if self.offset is not None:
            x += np.asarray(self.offset, np.float32).reshape(-1, 1, 1)
        return x


class _Inputs:
    """The input arrays, held by one key of the graph (shipped once per cluster worker).

    A tile task slices its own window (core plus halo) out of them and computes just that,
    synchronously, where it runs: for arrays read from files (a Scene, rioxarray) dask fuses
    the slice into reads of that window, so no task holds another tile's data and memory does
    not grow with the scene.
    """

    def __init__(self, hsi: da.Array, lidar: da.Array | None) -> None:
        from diffclip_cli.io.arrays import window_reader

        self.hsi = hsi
        self.lidar = lidar
        # A scene's own arrays are read straight through its reader: the same values as the
        # fused dask read, in one read per modality (the arrays are still the graph's input).
        readers = (window_reader(hsi), None if lidar is None else window_reader(lidar))
        self.readers = readers if all(r is not None for r in readers[:1 + (lidar is not None)]
                                      ) else None

    def window(self, rows: slice, cols: slice
               ) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """The raw values of one window of each modality, and whether they are private.

        Private: read for this call alone, so they may be overwritten.
        """
        import dask

        if self.readers is not None:
            hsi, lidar = self.readers
            assert hsi is not None
            return (hsi[:, rows, cols],
                    None if lidar is None else lidar[:, rows, cols], True)
        parts = [self.hsi[:, rows, cols]]
        if self.lidar is not None:
            parts.append(self.lidar[:, rows, cols])
        values = dask.compute(*parts, scheduler="sync")
        return (np.asarray(values[0]), None if self.lidar is None else np.asarray(values[1]),
                False)

    def __dask_tokenize__(self) -> Any:
        return ("diffclip-inputs", self.hsi.name,
                None if self.lidar is None else self.lidar.name)


def _tile_probabilities(inputs: _Inputs, runner: Runner, *, halo: int, shape: tuple[int, int],
                        decode: tuple[_Decode, _Decode | None],
                        block_info: dict[Any, Any] | None = None) -> np.ndarray:
    """``(K, h, w)`` float32 probabilities of one tile's core, NaN on invalid pixels.

    The tile reads its core plus a halo of ``halo`` pixels (less at the scene border, where
    it is reflect-padded as :func:`~diffclip_cli.sampling.tiles.read_tile` does).
    """
    from diffclip_cli.sampling.context import context_halo, model_inputs
    from diffclip_cli.sampling.tiles import Tile, TileData

    assert block_info is not None
    (r0, r1), (c0, c1) = block_info[None]["array-location"][1:]
    height, width = shape
    stats = runner.bundle.scene_stats
    # The context (if the model reads one) needs its own reach beyond the windows' halo.
    reach = halo + (context_halo(stats.context.scales) if stats.context is not None else 0)
    a0, a1 = max(0, r0 - reach), min(height, r1 + reach)
    b0, b1 = max(0, c0 - reach), min(width, c1 + reach)
    top, left = r0 - a0, c0 - b0
    h, w = r1 - r0, c1 - c0
    hsi, lidar, private = inputs.window(slice(a0, a1), slice(b0, b1))
    pad = ((reach - top, reach - (a1 - r1)), (reach - left, reach - (b1 - c1)))
    decoded = {}
    valid_all = None
    for name, block, dec in (("hsi", hsi, decode[0]), ("lidar", lidar, decode[1])):
        if block is None:
            continue
        x = (dec or _Decode())(block, private=private)
        ok = np.isfinite(x).all(axis=0)
        valid_all = ok if valid_all is None else valid_all & ok
        decoded[name] = x
    assert valid_all is not None
    valid = valid_all[top:top + h, left:left + w]
    # Normalised in place (ours), padded only at the scene border: what read_tile does, so
    # the values are the same bit for bit.
    arrays = model_inputs(decoded["hsi"], decoded.get("lidar"), valid_all, stats=stats,
                          pad=pad, inplace=True)
    data = TileData(Tile(r0, c0, h, w, halo), arrays, valid)
    engine = runner.engine()
    with compute_slot():
        probs = engine.predict_tile(data)
    probs = np.asarray(probs, dtype=np.float32)
    if not valid.all():
        probs[:, ~valid] = np.nan
    return probs


def _labels(probs: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Class ids (0 where invalid) of a probability block."""
    valid = ~np.isnan(probs[0])
    best = np.where(valid, probs, 0).argmax(axis=0)
    return np.where(valid, ids[best], 0).astype(ids.dtype)


def _confidence(probs: np.ndarray) -> np.ndarray:
    """The top class probability of a probability block (NaN where invalid)."""
    valid = ~np.isnan(probs[0])
    return np.where(valid, np.where(valid, probs, 0).max(axis=0), np.nan).astype(np.float32)


# -- the graph ----------------------------------------------------------------------------


def tile_chunks(size: int, tile: int) -> tuple[int, ...]:
    """Tile edges along one axis: ``tile`` pixels, the last one what remains."""
    return (tile,) * (size // tile) + ((size % tile,) if size % tile else ())


@dataclass
class Prediction:
    """The lazy outputs of one prediction (dask arrays on the input's grid).

    Attributes:
        labels: ``(H, W)`` class ids, 0 where invalid (uint8, uint16 above 255 classes).
        confidence: ``(H, W)`` float32 top probability, NaN where invalid.
        probabilities: ``(K, H, W)`` float32, NaN where invalid.
        tiles: the number of tiles.
        engine: ``"faithful"`` or ``"fast"``.
    """

    labels: da.Array
    confidence: da.Array
    probabilities: da.Array
    tiles: int
    engine: str


def _decode_of(array: xr.DataArray) -> _Decode:
    """Nodata, scale and offset a DataArray still carries (rioxarray without masking)."""
    nodata = None
    try:
        value = array.rio.nodata
        nodata = None if value is None else float(value)
    except (AttributeError, ValueError, TypeError):
        nodata = None
    if nodata is not None and math.isnan(nodata):
        nodata = None

    def per_band(name: str, neutral: float) -> tuple[float, ...] | None:
        value = array.attrs.get(name)
        if value is None:
            return None
        values = np.broadcast_to(np.asarray(value, dtype=np.float64).ravel(),
                                 (array.shape[0],))
        return None if np.all(values == neutral) else tuple(float(v) for v in values)

    return _Decode(nodata, per_band("scale_factor", 1.0), per_band("add_offset", 0.0))


def build(runner: Runner, hsi: da.Array, lidar: da.Array | None, *, tile_size: int,
          decode: tuple[_Decode, _Decode | None] = (_Decode(), None)) -> Prediction:
    """The lazy graph of :func:`predict` on dask arrays ``(bands, H, W)`` already checked.

    Args:
        runner: the model and engine options.
        hsi: HSI values.
        lidar: LiDAR values on the same grid, or ``None``.
        tile_size: tile core edge (chunk size).
        decode: how each modality's raw values become float32 with NaN for nodata.
    """
    import dask
    import dask.array as da

    engine = "fast" if runner.fast else "faithful"
    if runner.fast:
        from diffclip_cli.infer.fast import load_student

        window = load_student(runner.bundle).window
    else:
        window = runner.bundle.config.window
    halo = window // 2
    _, height, width = hsi.shape
    chunks = (tile_chunks(height, tile_size), tile_chunks(width, tile_size))
    classes = runner.bundle.require_classes()
    k = len(classes)
    token = dask.base.tokenize(runner, hsi.name, None if lidar is None else lidar.name, halo,
                               decode, chunks)
    inputs = dask.delayed(_Inputs(hsi, lidar), pure=True, name=f"diffclip-inputs-{token}")
    model = dask.delayed(runner, pure=True, name=f"diffclip-model-{runner.token}")
    probs = da.map_blocks(
        _tile_probabilities, inputs, model, halo=halo, shape=(height, width), decode=decode,
        chunks=((k,), *chunks), dtype=np.float32, meta=np.empty((0, 0, 0), np.float32),
        name=f"diffclip-tiles-{token}")
    ids = np.asarray(classes.ids, dtype=np.uint16 if max(classes.ids) > 255 else np.uint8)
    labels = probs.map_blocks(_labels, ids, drop_axis=0, dtype=ids.dtype,
                              meta=np.empty((0, 0), ids.dtype))
    confidence = probs.map_blocks(_confidence, drop_axis=0, dtype=np.float32,
                                  meta=np.empty((0, 0), np.float32))
    return Prediction(labels, confidence, probs, len(chunks[0]) * len(chunks[1]), engine)


# -- the public function ------------------------------------------------------------------

#: Set by :func:`diffclip_cli.infer.classify.classify_scene`, which checks (and warns about)
#: the scene's bands itself before it creates its outputs: the check is not repeated.
_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("diffclip_checked",
                                                                default=False)


def _as_dataarray(value: Any, what: str) -> xr.DataArray:
    """``value`` as a DataArray with dims ``(band, y, x)``."""
    import dask.array as da
    import xarray as xr

    if isinstance(value, xr.DataArray):
        array = value
        if array.ndim == 2:
            array = array.expand_dims("band")
        if array.ndim != 3:
            raise ValueError(f"the {what} must have dimensions (band, y, x), got {array.dims}")
        if {"band", "y", "x"} <= set(array.dims):
            array = array.transpose("band", "y", "x")
        elif array.dims != ("band", "y", "x"):
            array = array.rename(dict(zip(array.dims, ("band", "y", "x"), strict=True)))
        return array
    if isinstance(value, np.ndarray | da.Array):
        if value.ndim == 2:
            value = value[None]
        if value.ndim != 3:
            raise ValueError(f"the {what} array must be (bands, height, width), got shape "
                             f"{value.shape}")
        return xr.DataArray(value, dims=("band", "y", "x"))
    raise TypeError(f"the {what} must be an xarray DataArray or a numpy/dask array "
                    f"(band, y, x), got {type(value).__name__}")


def _same_grid(hsi: xr.DataArray, lidar: xr.DataArray) -> bool:
    """Whether the LiDAR lies on the HSI's pixel grid (GridError where it cannot be brought).

    Raises:
        GridError: the two differ and at least one lacks a CRS or a transform to co-register
            them with.
    """
    from diffclip_cli.io.arrays import grid_of

    hint = ("give both arrays a CRS and a transform (rioxarray reads them from the files), "
            "or classify the files with `diffclip classify`")
    a, b = grid_of(hsi), grid_of(lidar)
    same_shape = hsi.shape[1:] == lidar.shape[1:]
    if a is None or b is None:
        if not same_shape:
            raise GridError(f"the LiDAR array is {lidar.shape[2]} x {lidar.shape[1]} pixels "
                            f"but the HSI is {hsi.shape[2]} x {hsi.shape[1]}, and one of them "
                            "has no georeferencing to bring it onto the other", hint=hint)
        return True
    if (a.crs is None) != (b.crs is None):
        raise GridError(f"the LiDAR array's CRS ({b.crs}) is not the HSI's ({a.crs})",
                        hint=hint)
    if a.crs is None:
        if not same_shape or not a.transform.almost_equals(
                b.transform, precision=1e-9 * max(map(abs, a.res))):
            raise GridError("the LiDAR array is not on the HSI's pixel grid and neither has "
                            "a CRS to co-register them with", hint=hint)
        return True
    return bool(same_shape and a.crs == b.crs and a.transform.almost_equals(
        b.transform, precision=1e-9 * max(map(abs, a.res))))


def _onto_grid(lidar: xr.DataArray, hsi: xr.DataArray, resampling: str) -> xr.DataArray:
    """The LiDAR resampled onto the HSI's grid as ``diffclip classify`` does it.

    The same GDAL warp as :class:`~diffclip_cli.io.raster.Scene` (``resampling``, a fixed
    kernel scale, NaN outside the LiDAR), done in memory: the LiDAR's values are read whole
    (a few channels), the result has the HSI's coordinates and chunks.
    """
    import xarray as xr
    from rasterio.warp import reproject

    from diffclip_cli.io.arrays import grid_of
    from diffclip_cli.io.raster import RESAMPLING, kernel_scale

    a, b = grid_of(hsi), grid_of(lidar)
    assert a is not None and b is not None
    values = _decode_of(lidar)(np.asarray(lidar.values))
    out = np.full((values.shape[0], a.height, a.width), np.nan, np.float32)
    res = (abs(b.transform.a), abs(b.transform.e))
    options = kernel_scale(b.transform, (b.height, b.width), res, b.crs, a)
    reproject(values, out, src_transform=b.transform, src_crs=b.crs, src_nodata=np.nan,
              dst_transform=a.transform, dst_crs=a.crs, dst_nodata=np.nan,
              resampling=RESAMPLING[resampling], **options)
    coords = {name: hsi.coords[name] for name in ("y", "x") if name in hsi.coords}
    if "band" in lidar.coords:
        coords["band"] = lidar.coords["band"]
    moved = xr.DataArray(out, dims=("band", "y", "x"), coords=coords,
                         attrs={"long_name": lidar.attrs.get("long_name")}
                         if "long_name" in lidar.attrs else {})
    moved = moved.rio.write_crs(a.crs).rio.write_transform(a.transform)
    chunks = getattr(hsi.data, "chunks", None)
    if chunks is not None:
        moved = moved.chunk({"band": -1, "y": chunks[1], "x": chunks[2]})
    return moved


def _class_attrs(classes: ClassTable, engine: str) -> dict[str, Any]:
    return {
        "long_name": "land cover class",
        "class_ids": tuple(classes.ids),
        "class_names": tuple(classes.names),
        "class_colors": tuple("#{:02x}{:02x}{:02x}".format(*(c.color or (0, 0, 0)))
                              for c in classes),
        "flag_values": tuple(classes.ids),
        "flag_meanings": " ".join(n.replace(" ", "_") for n in classes.names),
        "engine": engine,
    }


def _wrap(data: da.Array, like: xr.DataArray, dims: Sequence[str], attrs: dict[str, Any],
          nodata: float, grid: Grid | None, extra: dict[str, Any] | None = None
          ) -> xr.DataArray:
    import xarray as xr

    coords = {d: like.coords[d] for d in ("y", "x") if d in like.coords}
    coords.update(extra or {})
    array = xr.DataArray(data, dims=tuple(dims), coords=coords, attrs=dict(attrs))
    if grid is not None:
        array = array.rio.write_transform(grid.transform)
        if grid.crs is not None:
            array = array.rio.write_crs(grid.crs)
    return array.rio.write_nodata(nodata, encoded=False)


@overload
def predict(
    model: ModelBundle | str | os.PathLike[str],
    hsi: Any,
    lidar: Any = None,
    *,
    probabilities: Literal[False] = False,
    fast: bool = False,
    tile_size: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    threads: int | None = None,
    resampling: str = "bilinear",
) -> xr.DataArray: ...


@overload
def predict(
    model: ModelBundle | str | os.PathLike[str],
    hsi: Any,
    lidar: Any = None,
    *,
    probabilities: Literal[True],
    fast: bool = False,
    tile_size: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    threads: int | None = None,
    resampling: str = "bilinear",
) -> xr.Dataset: ...


@overload
def predict(
    model: ModelBundle | str | os.PathLike[str],
    hsi: Any,
    lidar: Any = None,
    *,
    probabilities: bool = False,
    fast: bool = False,
    tile_size: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    threads: int | None = None,
    resampling: str = "bilinear",
) -> xr.DataArray | xr.Dataset: ...


def predict(
    model: ModelBundle | str | os.PathLike[str],
    hsi: Any,
    lidar: Any = None,
    *,
    probabilities: bool = False,
    fast: bool = False,
    tile_size: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    threads: int | None = None,
    resampling: str = "bilinear",
) -> xr.DataArray | xr.Dataset:
    """Classify every pixel of a scene given as arrays.

    Args:
        model: a classifier model (:func:`load_model`) or its path.
        hsi: the HSI, an xarray DataArray ``(band, y, x)`` (dask-backed for a lazy result)
            with coordinates and a CRS as rioxarray reads them, or a numpy/dask array
            ``(bands, height, width)``. Values are the physical values the model was trained
            on; NaN (or the DataArray's ``rio.nodata``) marks nodata, and ``scale_factor`` /
            ``add_offset`` attributes (``open_rasterio`` without ``mask_and_scale``) are
            applied.
        lidar: the LiDAR, or ``None`` for an HSI-only model. On another grid (both arrays
            with a CRS and a transform, as rioxarray reads them), it is resampled onto the
            HSI's as ``diffclip classify`` does (``resampling``, a fixed kernel scale, NaN
            where it does not reach), in memory.
        probabilities: also return the class probabilities and the confidence.
        fast: use the model's distilled fast path.
        tile_size: tile core edge in pixels (memory grows with its square); default from
            the band count (:func:`auto_tile_size`).
        batch_size: windows per forward pass (faithful) / pixels per strip (fast).
        device: the device the tiles run on, a :class:`torch.device` or a name
            ("cpu"; cluster workers always use theirs).
        precision: ``"fp32"`` or ``"bf16"`` products (faithful engine).
        threads: torch intra-op threads while a tile runs (faithful engine).
        resampling: how LiDAR on another grid is resampled (``"bilinear"``, ``"nearest"``,
            ``"cubic"``; the command's default is bilinear).

    Returns:
        A DataArray ``(y, x)`` of class ids (0 where any input band is nodata; uint8, uint16
        above 255 classes) with the input's ``x``/``y`` coordinates, CRS and transform, and
        the class ids, names and colours in its attributes (``class_ids``, ``class_names``,
        ``class_colors``, CF ``flag_values``/``flag_meanings``). With ``probabilities``, a
        Dataset with that array as ``classes``, ``confidence`` ``(y, x)`` and
        ``probabilities`` ``(class, y, x)`` (float32, NaN where invalid; ``class`` holds the
        names). Lazy (dask) when the input is dask-backed, computed otherwise.

    Raises:
        ModelError: the model has no classes or no fast path, or its bands are not the
            input's.
        GridError: the LiDAR is on another grid and one of the arrays lacks the CRS or the
            transform to co-register them.
        TypeError / ValueError: inputs that are not (band, y, x) arrays, a tile size below
            16.
    """
    import dask.array as da
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    from diffclip_cli.io.arrays import grid_of
    from diffclip_cli.model.modelfile import ModelBundle

    bundle = model if isinstance(model, ModelBundle) else load_model(model)
    classes = bundle.require_classes()
    h = _as_dataarray(hsi, "HSI")
    lid = None if lidar is None else _as_dataarray(lidar, "LiDAR")
    if lid is not None and not _same_grid(h, lid):
        lid = _onto_grid(lid, h, resampling)
    names = h.attrs.get("long_name")
    wavelengths = h.attrs.get("wavelength")
    # The band counts always; the bands themselves (and the warnings) only when
    # classify_scene has not compared the scene's already, before its outputs.
    spectrum = not _CHECKED.get()
    bundle.check_inputs(
        int(h.shape[0]), 0 if lid is None else int(lid.shape[0]),
        wavelengths=list(wavelengths) if spectrum and isinstance(wavelengths, Sequence)
        and len(wavelengths) == h.shape[0] else None,
        band_names=list(names) if spectrum and isinstance(names, Sequence)
        and not isinstance(names, str) and len(names) == h.shape[0] else None)
    if tile_size is None:
        tile_size = auto_tile_size(int(h.shape[0]) + (0 if lid is None else int(lid.shape[0]))
                                   + sum(bundle.scene_stats.context_bands()))
    if tile_size < MIN_TILE_SIZE:
        raise ValueError(f"tile size must be at least {MIN_TILE_SIZE} pixels, got {tile_size}")
    lazy = isinstance(h.data, da.Array) or (lid is not None and isinstance(lid.data, da.Array))

    def dask_data(array: xr.DataArray) -> da.Array:
        data = array.data
        if not isinstance(data, da.Array):
            data = da.from_array(np.asarray(data), chunks=(array.shape[0], tile_size, tile_size))
        return data

    runner = Runner(bundle, fast=fast, device=device, batch_size=batch_size,
                    precision=precision, threads=threads)
    decode = (_decode_of(h), None if lid is None else _decode_of(lid))
    out = build(runner, dask_data(h), None if lid is None else dask_data(lid),
                tile_size=tile_size, decode=decode)
    grid = grid_of(h)
    attrs = _class_attrs(classes, out.engine)
    labels = _wrap(out.labels, h, ("y", "x"), attrs, 0, grid).rename("classes")
    result: xr.DataArray | xr.Dataset = labels
    if probabilities:
        conf = _wrap(out.confidence, h, ("y", "x"),
                     {"long_name": "confidence (top class probability)"}, np.nan, grid)
        probs = _wrap(out.probabilities, h, ("class", "y", "x"),
                      {"long_name": "class probability"}, np.nan, grid,
                      extra={"class": list(classes.names)})
        result = xr.Dataset({"classes": labels, "confidence": conf, "probabilities": probs},
                            attrs={"engine": out.engine})
    return result if lazy else result.compute()
