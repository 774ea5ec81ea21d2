"""Whole-scene maps: the lazy tile graph of ``predict`` written to GeoTIFF/COG.

The scene becomes lazily chunked DataArrays (:func:`~diffclip_cli.io.arrays.scene_arrays`), the
same :func:`~diffclip_cli.infer.predict.predict` a Python user calls builds the dask graph (one
task per tile, a halo of ``window // 2``), and its blocks are written as they are computed:
on dask's local threads by :func:`dask.array.store` into the open writers (one lock), or, with
``scheduler``, computed on a ``distributed`` cluster and written here as they arrive. Memory
depends on the tile size, not on the scene size; the outputs appear only when complete.

What is written (:class:`WriteOptions`) and how it runs (:class:`RunOptions`) are two small
frozen option objects, checked once when built; the classify workflow builds them from the
command's options and hands them down unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.env import get_gdal_config
from rasterio.windows import Window

from diffclip_cli import __version__
from diffclip_cli.errors import ModelError
from diffclip_cli.infer.predict import (
    _CHECKED,
    CONFIDENCE_NODATA,
    DEFAULT_TILE_SIZE,
    MIN_TILE_SIZE,
    TILE_BYTES,
    Engine,
    auto_tile_size,
    make_engine,
    predict,
)
from diffclip_cli.io.arrays import scene_arrays
from diffclip_cli.io.atomic import output_set
from diffclip_cli.io.maps import MapWriter, RasterWriter
from diffclip_cli.io.raster import Scene
from diffclip_cli.io.sidecars import map_files
from diffclip_cli.model.modelfile import ModelBundle

if TYPE_CHECKING:
    import torch

__all__ = [
    "CONFIDENCE_NODATA",
    "DEFAULT_TILE_SIZE",
    "MIN_TILE_SIZE",
    "TILE_BYTES",
    "ClassifyResult",
    "Engine",
    "RunOptions",
    "WriteOptions",
    "auto_tile_size",
    "classify_scene",
    "make_engine",
]

log = logging.getLogger("diffclip")

#: GDAL's raster block cache while a scene is classified, at most (bytes). GDAL's default is
#: 5 % of the RAM, and it keeps the blocks it reads until it is full, so without a bound the
#: peak memory grows with the scene up to that (by 1.1 GiB for a 3000 x 1000 x 144 GeoTIFF on
#: a 24 GiB machine). Tiles are read whole; the cache only spares re-reading the blocks that
#: neighbouring tiles share (which costs time on compressed many-band inputs).
#: ``GDAL_CACHEMAX`` set in the environment is left alone.
GDAL_CACHE_MAX = 64 * 2**20


@dataclass(frozen=True, kw_only=True)
class WriteOptions:
    """What :func:`classify_scene` writes besides the class map, and how.

    Attributes:
        confidence: also write the top-class probability here (float32 GeoTIFF, nodata -1).
        probabilities: also write one probability band per class here (float32, nodata -1).
        cog: write Cloud-Optimized GeoTIFFs (internal tiling, overviews).
        creation_options: GDAL creation options overriding the defaults, as
            ``["KEY=VALUE", ...]`` or a mapping; kept as a mapping with upper-case keys,
            checked by GDAL itself when built
            (:func:`~diffclip_cli.io.maps.check_creation_options`, with ``cog``).
        overwrite: replace existing outputs.

    Raises:
        ValueError: GDAL refuses a creation option (its reason and the common options).
    """

    confidence: str | Path | None = None
    probabilities: str | Path | None = None
    cog: bool = False
    creation_options: Mapping[str, str] | Sequence[str] = field(default_factory=dict)
    overwrite: bool = False

    def __post_init__(self) -> None:
        from diffclip_cli.io.creation import check_creation_options

        object.__setattr__(self, "creation_options",
                           check_creation_options(self.creation_options, cog=self.cog))


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How :func:`classify_scene` computes the map: tiles, engine, device and scheduler.

    Attributes:
        tile_size: core edge of the tiles in pixels (memory grows with its square);
            ``None``: :func:`auto_tile_size` of the scene's band count.
        batch_size: windows per forward pass (faithful engine) / pixels per strip (fast);
            ``None``: by device.
        device: a :class:`torch.device` or a name the tiles run on (this machine's; with a
            ``scheduler`` the workers use their CPUs).
        fast: use the model's distilled fast path.
        precision: ``"fp32"`` or ``"bf16"`` products (faithful engine); ``None``: by device.
        threads: torch intra-op threads while a tile runs (faithful engine); ``None``:
            torch's setting.
        scheduler: a dask.distributed scheduler address (or ``Client``) to compute the tiles
            on; ``None``: dask's local threads. The workers read the scene's files by their
            paths.

    Raises:
        ValueError: a size below its minimum (:data:`MIN_TILE_SIZE` pixels per tile, one
            window per batch, one thread) or an unknown precision.
    """

    tile_size: int | None = None
    batch_size: int | None = None
    device: str | torch.device = "cpu"
    fast: bool = False
    precision: str | None = None
    threads: int | None = None
    scheduler: str | Any | None = None

    def __post_init__(self) -> None:
        for name, minimum in (("tile_size", MIN_TILE_SIZE), ("batch_size", 1), ("threads", 1)):
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ValueError(f"{name} must be at least {minimum}, not {value}")
        if self.precision is not None:
            from diffclip_cli.model.inference import PRECISIONS

            if self.precision not in PRECISIONS:
                raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not "
                                 f"{self.precision!r}")


@dataclass
class ClassifyResult:
    """What :func:`classify_scene` wrote and measured.

    Attributes:
        output: the class map.
        confidence: the confidence raster, if asked for.
        probabilities: the probability raster, if asked for.
        pixels: pixels in the scene.
        valid_pixels: pixels classified (the others are nodata).
        class_pixels: classified pixels per class name.
        tiles: number of tiles.
        seconds: wall time.
        engine: ``"faithful"`` or ``"fast"``.
    """

    output: Path
    confidence: Path | None
    probabilities: Path | None
    pixels: int
    valid_pixels: int
    class_pixels: dict[str, int] = field(default_factory=dict)
    tiles: int = 0
    seconds: float = 0.0
    engine: str = "faithful"

    @property
    def pixels_per_second(self) -> float:
        """Classified pixels per second of wall time."""
        return self.valid_pixels / self.seconds if self.seconds > 0 else 0.0


@contextlib.contextmanager
def _bounded_gdal_cache(limit: int) -> Iterator[None]:
    """GDAL's block cache at most ``limit`` bytes inside the block, restored afterwards.

    Left alone when ``GDAL_CACHEMAX`` is set in the environment (the user chose), already
    smaller, or not settable through this rasterio (then it reports no size in bytes).
    """
    current = get_gdal_config("GDAL_CACHEMAX")
    if "GDAL_CACHEMAX" in os.environ or not isinstance(current, int) or current <= limit:
        yield
        return
    with rasterio.Env(GDAL_CACHEMAX=int(limit)):
        yield


# -- writing the graph's blocks -----------------------------------------------------------


class _Sink:
    """A :func:`dask.array.store` target that writes each block it is given to a raster.

    Args:
        writer: the open writer.
        fill: the value NaN becomes (the raster's nodata), or ``None`` for integer blocks.
        seen: called with each block and its window after it is written.
    """

    def __init__(self, writer: RasterWriter, *, fill: float | None = None,
                 seen: Callable[[np.ndarray, Window], None] | None = None) -> None:
        self.writer = writer
        self.fill = fill
        self.seen = seen
        self.shape = (writer.count, writer.grid.height, writer.grid.width)
        self.closed = False

    def __setitem__(self, key: tuple[slice, ...], value: np.ndarray) -> None:
        if self.closed:  # a task still running after another failed: its writer is gone
            return
        ys, xs = key[-2], key[-1]
        window = Window(xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start)
        block = np.asarray(value)
        if self.fill is not None:
            block = np.where(np.isnan(block), np.float32(self.fill), block)
        self.writer.write(window, block if block.ndim == 3 else block[None])
        if self.seen is not None:
            self.seen(value, window)


def _regions(chunks: tuple[tuple[int, ...], ...]) -> list[tuple[slice, ...]]:
    """The region of every block of an array with these chunks.

    In the order of ``to_delayed().ravel()``.
    """
    import itertools

    bounds = [np.cumsum((0, *c)) for c in chunks]
    return [tuple(slice(int(b[i]), int(b[i + 1])) for b, i in zip(bounds, idx, strict=True))
            for idx in itertools.product(*(range(len(c)) for c in chunks))]


def _store_local(sources: Sequence[Any], sinks: Sequence[_Sink]) -> None:
    """Compute the graph on dask's threads, each block written into its sink (one lock).

    At least two threads: one reads or writes while another runs the network (the tile
    tasks themselves bound how many run the network at once).
    """
    import dask.array as da

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    lock = threading.Lock()
    try:
        da.store(list(sources), list(sinks), lock=lock, scheduler="threads",  # type: ignore[arg-type]
                 num_workers=max(2, cores))
    finally:
        # When a task fails, dask returns at once while others still run: a write in progress
        # ends (it holds the lock) and any later one is dropped, before the writers close.
        with lock:
            for sink in sinks:
                sink.closed = True


def _store_distributed(scheduler: Any, sources: Sequence[Any], sinks: Sequence[_Sink]) -> None:
    """Compute the same graph on a ``distributed`` cluster, writing blocks here as they come.

    Each block is released on the cluster as soon as it is written, so neither side holds
    the whole map; the scheduler's own memory control bounds what is computed ahead.
    """
    try:
        from distributed import Client, as_completed
    except ImportError:  # pragma: no cover - depends on the installation
        raise ModelError("--scheduler needs dask.distributed",
                         hint="pip install 'diffclip[distributed]'") from None
    own = not isinstance(scheduler, Client)
    client = Client(scheduler) if own else scheduler
    try:
        import dask

        # Optimised together: optimised one by one, the arrays' graphs could give one fused
        # key two different meanings.
        delayed: list[Any] = []
        targets: list[tuple[_Sink, tuple[slice, ...]]] = []
        for source, sink in zip(dask.optimize(*sources), sinks, strict=True):
            blocks = source.to_delayed(optimize_graph=False).ravel()
            delayed.extend(blocks)
            targets.extend((sink, region) for region in _regions(source.chunks))
        futures = client.compute(delayed)
        where = {f.key: target for f, target in zip(futures, targets, strict=True)}
        pending = as_completed(futures)
        del futures, delayed  # as_completed holds each future until it is written
        for future in pending:
            sink, region = where.pop(future.key)
            sink[region] = future.result()
    finally:
        if own:
            client.close()


# -- the public entry point -----------------------------------------------------------------


def classify_scene(
    scene: Scene,
    bundle: ModelBundle,
    output: str | Path,
    *,
    write: WriteOptions | None = None,
    run: RunOptions | None = None,
    metadata: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ClassifyResult:
    """Classify every pixel of a scene and write the map (and optional rasters).

    The scene's lazy arrays go through :func:`~diffclip_cli.infer.predict.predict` (the same
    graph a Python user gets) and the blocks are written as they are computed. Every output
    is written under a temporary name and renamed when complete, so an error or an
    interruption leaves no partial file and any existing output untouched.

    Args:
        scene: the scene; its bands must be the model's.
        bundle: a ``classifier`` model.
        output: the class map (GeoTIFF): uint8 (uint16 above 255 classes), nodata 0 on
            invalid pixels, a colour table, class names in tags and a sidecar JSON.
        write: the side rasters (confidence, probabilities), COG, creation options and
            overwriting; default ``WriteOptions()``: the map alone, never replacing a file.
        run: tile size, batch size, device, engine, precision, threads and scheduler;
            default ``RunOptions()``: the faithful engine on the CPU, on dask's local threads.
        metadata: extra facts for the map's sidecar JSON (e.g. the model path).
        progress: called with ``(classified pixels so far, pixels in the scene)``.

    Returns:
        Paths written and figures (pixels, per-class counts, time).

    Raises:
        ModelError: the model does not fit the scene or has no classes / fast path.
        OutputError: an output exists (without ``write.overwrite``), is one of the scene's
            files or collides with another output, or cannot be written. The outputs appear
            together, only when all are complete.
    """
    start = time.perf_counter()
    write = WriteOptions() if write is None else write
    run = RunOptions() if run is None else run
    bundle.check_inputs(scene.hsi_bands, scene.lidar_bands, wavelengths=scene.wavelengths,
                        band_names=scene.band_names["hsi"])
    bundle.require_classes()
    # Checked against each other and the scene's files now; renamed together at the end.
    outputs = output_set(
        {"map": map_files(output), "confidence raster": write.confidence,
         "probability raster": write.probabilities},
        inputs={"the HSI": scene.hsi_path, "a LiDAR raster": list(scene.lidar_paths)},
        overwrite=write.overwrite)
    with outputs:
        return _classify(scene, bundle, output, write, run, start=start, metadata=metadata,
                         progress=progress)


def _classify(
    scene: Scene,
    bundle: ModelBundle,
    output: str | Path,
    write: WriteOptions,
    run: RunOptions,
    *,
    start: float,
    metadata: Mapping[str, Any] | None,
    progress: Callable[[int, int], None] | None,
) -> ClassifyResult:
    """:func:`classify_scene` once its outputs are checked (same arguments)."""
    classes = bundle.require_classes()
    tile_size = run.tile_size
    if tile_size is None:
        # the network's input channels: the bands and any spatial context the model reads
        tile_size = auto_tile_size(scene.hsi_bands + scene.lidar_bands
                                   + sum(bundle.scene_stats.context_bands()))
    # The tiles read their own windows; chunks larger than a tile let most windows (core and
    # halo) be one read. Nothing computes these arrays whole.
    arrays = scene_arrays(scene, chunks=max(1024, tile_size))
    token = _CHECKED.set(True)  # classify_scene checked the bands (and warned) already
    try:
        result = predict(bundle, arrays.hsi, arrays.lidar, probabilities=True, fast=run.fast,
                         tile_size=tile_size, batch_size=run.batch_size,
                         device=run.device if run.scheduler is None else "cpu",
                         precision=run.precision, threads=run.threads)
    finally:
        _CHECKED.reset(token)
    labels = result["classes"].data
    meta = {
        "software": f"diffclip {__version__}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {"hsi": str(scene.hsi_path), "lidar": [str(p) for p in scene.lidar_paths]},
        "engine": "fast" if run.fast else "faithful",
        "model": {"preset": bundle.preset, "provenance": bundle.provenance},
        **dict(metadata or {}),
    }
    grid = scene.grid
    total = grid.width * grid.height
    ids = np.asarray(classes.ids)
    counts = np.zeros(len(classes) + 1, dtype=np.int64)
    slot = np.zeros(int(ids.max()) + 1, dtype=np.int64)  # class id -> 1 + table index
    slot[ids] = np.arange(1, len(ids) + 1)
    done = 0
    names = classes.names

    def seen(block: np.ndarray, window: Window) -> None:
        nonlocal done
        counts[:] += np.bincount(slot[block].ravel(), minlength=counts.size)
        done += int(window.width * window.height)
        if progress is not None:
            progress(done, total)

    with contextlib.ExitStack() as stack:
        stack.enter_context(_bounded_gdal_cache(GDAL_CACHE_MAX))
        sources: list[Any] = [labels]
        sinks = [_Sink(stack.enter_context(MapWriter(
            output, grid, classes, metadata=meta, overwrite=write.overwrite, cog=write.cog,
            creation_options=write.creation_options)), seen=seen)]
        if write.confidence is not None:
            sources.append(result["confidence"].data)
            sinks.append(_Sink(stack.enter_context(RasterWriter(
                write.confidence, grid, count=1, dtype="float32", nodata=CONFIDENCE_NODATA,
                band_descriptions=["confidence (top class probability)"],
                tags={"DIFFCLIP_VERSION": __version__}, overwrite=write.overwrite,
                cog=write.cog, creation_options=write.creation_options)),
                fill=CONFIDENCE_NODATA))
        if write.probabilities is not None:
            sources.append(result["probabilities"].data)
            sinks.append(_Sink(stack.enter_context(RasterWriter(
                write.probabilities, grid, count=len(classes), dtype="float32",
                nodata=CONFIDENCE_NODATA, band_descriptions=[f"p({n})" for n in names],
                tags={"DIFFCLIP_VERSION": __version__}, overwrite=write.overwrite,
                cog=write.cog, creation_options=write.creation_options)),
                fill=CONFIDENCE_NODATA))
        if run.scheduler is None:
            _store_local(sources, sinks)
        else:
            _store_distributed(run.scheduler, sources, sinks)

    valid = int(counts[1:].sum())
    seconds = time.perf_counter() - start
    if valid == 0:
        log.warning("%s: no pixel of the scene is valid (every pixel is nodata in some band or "
                    "outside the LiDAR), so the map is nodata everywhere; check the inputs' "
                    "nodata values and that the LiDAR covers the HSI", scene.hsi_path)
    elif valid < total:
        log.info("%d of %d pixels had no valid data (or no LiDAR coverage) and are nodata.",
                 total - valid, total)
    return ClassifyResult(
        output=Path(output),
        confidence=None if write.confidence is None else Path(write.confidence),
        probabilities=None if write.probabilities is None else Path(write.probabilities),
        pixels=total,
        valid_pixels=valid,
        class_pixels={n: int(c) for n, c in zip(names, counts[1:], strict=True)},
        tiles=int(labels.npartitions),
        seconds=seconds,
        engine="fast" if run.fast else "faithful",
    )
