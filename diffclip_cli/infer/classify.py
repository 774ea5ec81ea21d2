"""Whole-scene maps: tiled, bounded-memory inference written straight to GeoTIFF/COG.

The scene is cut into tiles (plus a halo of ``window // 2`` pixels of context); each tile is
read, normalised, classified and written before the next ones are read, so memory depends on
the tile size, not the scene size. Reading the next tile and writing the previous one overlap
with the computation (one reader and one writer thread). With ``scheduler`` the tiles are
computed on a dask.distributed cluster and written here, in the same order, with the same
result.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import rasterio
from rasterio.env import get_gdal_config

from diffclip_cli import __version__
from diffclip_cli.errors import ModelError
from diffclip_cli.infer.engine import TileEngine
from diffclip_cli.io.atomic import output_set
from diffclip_cli.io.maps import MapWriter, RasterWriter, map_files
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.modelfile import ModelBundle, build_classifier
from diffclip_cli.sampling.normalise import SceneStats
from diffclip_cli.sampling.tiles import Tile, TileData, iter_tiles, read_tile

__all__ = [
    "CONFIDENCE_NODATA",
    "ClassifyResult",
    "Engine",
    "TileResult",
    "auto_tile_size",
    "classify_scene",
    "make_engine",
]

log = logging.getLogger("diffclip")

#: Nodata of the confidence and probability rasters (valid values lie in (0, 1]).
CONFIDENCE_NODATA = -1.0
#: Largest default tile edge in pixels.
DEFAULT_TILE_SIZE = 256
#: The default tile edge keeps one tile's float32 input (all bands) within this many bytes, so
#: the memory a tile holds does not depend on the band count (``benchmarks/memory.py``: with
#: 256 px tiles a 144-band scene peaks 1.45x higher than a scene smaller than one tile).
TILE_BYTES = 12 * 2**20
#: GDAL's raster block cache while a scene is classified, at most (bytes). GDAL's default is
#: 5 % of the RAM, and it keeps the blocks it reads until it is full, so without a bound the
#: peak memory grows with the scene up to that (by 1.1 GiB for a 3000 x 1000 x 144 GeoTIFF on
#: a 24 GiB machine). Tiles are read whole; the cache only spares re-reading the blocks that
#: neighbouring tiles' halos share (which costs time on compressed many-band inputs).
#: ``GDAL_CACHEMAX`` set in the environment is left alone.
GDAL_CACHE_MAX = 64 * 2**20


def auto_tile_size(channels: int) -> int:
    """The default tile edge for inputs of ``channels`` bands in all (HSI plus LiDAR).

    The largest multiple of 32 between 64 and :data:`DEFAULT_TILE_SIZE` whose float32 tile
    fits :data:`TILE_BYTES`: 256 up to 48 bands, 128 for 144 + 1, 96 for 204.
    """
    edge = int(math.sqrt(TILE_BYTES / (4 * max(1, channels)))) // 32 * 32
    return max(64, min(DEFAULT_TILE_SIZE, edge))


class Engine(Protocol):
    """What the classifier needs of an inference engine (faithful or fast)."""

    @property
    def window(self) -> int:
        """Window size (tiles are read with a halo of ``window // 2``)."""
        ...

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        ...

    def predict_tile(self, data: TileData) -> np.ndarray:
        """``(K, h, w)`` probabilities of a tile's core, 0 on invalid pixels."""
        ...


@dataclass
class TileResult:
    """One classified tile: class ids (0 = nodata), confidence and probabilities."""

    tile: Tile
    labels: np.ndarray
    confidence: np.ndarray
    probabilities: np.ndarray | None
    valid: int


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


def make_engine(bundle: ModelBundle, *, fast: bool = False, device: str = "cpu",
                batch_size: int | None = None) -> Engine:
    """The inference engine of a classifier model file.

    Args:
        bundle: a ``classifier`` model.
        fast: use the distilled fast path stored in the model.
        device: torch device name.
        batch_size: windows per forward pass (faithful engine).

    Raises:
        ModelError: a pretrained model (no classes), or ``fast`` without a fast path.
    """
    if bundle.kind != "classifier":
        raise ModelError("this is a pretrained model without classes",
                         hint="fine-tune it first with diffclip fewshot --pretrained")
    if fast:
        from diffclip_cli.infer.fast import FastEngine

        return FastEngine(bundle, device=device)
    return TileEngine(build_classifier(bundle), device=device, batch_size=batch_size)


def _finish_tile(engine: Engine, data: TileData, ids: np.ndarray,
                 keep_probabilities: bool) -> TileResult:
    probs = engine.predict_tile(data)
    best = probs.argmax(axis=0)
    labels = np.where(data.valid, ids[best], 0).astype(ids.dtype)
    confidence = np.where(data.valid, probs.max(axis=0), CONFIDENCE_NODATA).astype(np.float32)
    planes = None
    if keep_probabilities:
        planes = np.where(data.valid[None], probs, CONFIDENCE_NODATA).astype(np.float32)
    return TileResult(data.tile, labels, confidence, planes, int(data.valid.sum()))


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


# -- local execution: reader thread -> compute here -> writer thread -------------------------


def _local_results(scene: Scene, tiles: Sequence[Tile], engine: Engine, stats: SceneStats,
                   ids: np.ndarray, keep_probabilities: bool, prefetch: int,
                   ) -> Iterator[TileResult]:
    with cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffclip-read") as reader:
        # While a tile is computed, exactly ``prefetch`` (at least 1) later tiles are read or
        # waiting: each holds the tile's bands as float32 (40 MB for 144 bands at 256 px).
        pending = iter(tiles)
        queue: deque[cf.Future[TileData]] = deque(
            reader.submit(read_tile, scene, tile, stats=stats)
            for tile in itertools.islice(pending, max(1, prefetch)))
        try:
            while queue:
                data = queue.popleft().result()
                nxt = next(pending, None)
                if nxt is not None:
                    queue.append(reader.submit(read_tile, scene, nxt, stats=stats))
                yield _finish_tile(engine, data, ids, keep_probabilities)
        finally:
            for future in queue:
                future.cancel()


# -- distributed execution ----------------------------------------------------------------

_WORKER_ENGINES: dict[tuple[int, bool], Engine] = {}


def _remote_tile(scene: Scene, bundle: ModelBundle, key: int, fast: bool, tile: Tile,
                 ids: np.ndarray, keep_probabilities: bool) -> TileResult:
    """Classify one tile on a dask worker (the engine is built once per worker and model)."""
    engine = _WORKER_ENGINES.get((key, fast))
    if engine is None:
        _WORKER_ENGINES.clear()
        engine = _WORKER_ENGINES[(key, fast)] = make_engine(bundle, fast=fast, device="cpu")
    data = read_tile(scene, tile, stats=SceneStats.from_dict(bundle.stats))
    return _finish_tile(engine, data, ids, keep_probabilities)


def _distributed_results(scheduler: str | Any, scene: Scene, bundle: ModelBundle,
                         tiles: Sequence[Tile], fast: bool, ids: np.ndarray,
                         keep_probabilities: bool, prefetch: int) -> Iterator[TileResult]:
    try:
        from dask.distributed import Client
    except ImportError:  # pragma: no cover - depends on the installation
        raise ModelError("--scheduler needs dask.distributed",
                         hint="pip install 'diffclip[distributed]'") from None
    own = not isinstance(scheduler, Client)
    client = Client(scheduler) if own else scheduler
    try:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        in_flight = max(prefetch, 2 * workers)
        scene_f, bundle_f = client.scatter([scene, bundle], broadcast=True)
        key = time.monotonic_ns()
        futures: deque[Any] = deque()
        pending = iter(tiles)

        def submit(tile: Tile) -> None:
            futures.append(client.submit(_remote_tile, scene_f, bundle_f, key, fast, tile, ids,
                                         keep_probabilities, pure=False))

        for tile in pending:
            submit(tile)
            if len(futures) >= in_flight:
                break
        try:
            while futures:
                result = futures.popleft().result()  # in order: writes stay sequential
                nxt = next(pending, None)
                if nxt is not None:
                    submit(nxt)
                yield result
        finally:
            for future in futures:
                future.cancel()
    finally:
        if own:
            client.close()


# -- the public entry point -----------------------------------------------------------------


def classify_scene(
    scene: Scene,
    bundle: ModelBundle,
    output: str | Path,
    *,
    confidence: str | Path | None = None,
    probabilities: str | Path | None = None,
    tile_size: int | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
    fast: bool = False,
    cog: bool = False,
    creation_options: Sequence[str] | Mapping[str, Any] | None = None,
    overwrite: bool = False,
    scheduler: str | Any | None = None,
    prefetch: int = 1,
    metadata: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ClassifyResult:
    """Classify every pixel of a scene and write the map (and optional rasters).

    Every output is written under a temporary name and renamed when complete, so an error or
    an interruption leaves no partial file and any existing output untouched.

    Args:
        scene: the scene; its bands must be the model's.
        bundle: a ``classifier`` model.
        output: the class map (GeoTIFF): uint8 (uint16 above 255 classes), nodata 0 on
            invalid pixels, a colour table, class names in tags and a sidecar JSON.
        confidence: optional float32 raster of the top class probability (nodata -1).
        probabilities: optional float32 raster with one band per class (nodata -1).
        tile_size: core edge of the tiles (memory grows with its square); default
            :func:`auto_tile_size` of the scene's band count.
        batch_size: windows per forward pass (faithful engine).
        device: torch device name (tiles run on this machine's device; with ``scheduler`` on
            the workers' CPUs).
        fast: use the model's distilled fast path.
        cog: write Cloud-Optimized GeoTIFFs (internal tiling, overviews).
        creation_options: GDAL creation options overriding the defaults.
        overwrite: replace existing outputs.
        scheduler: a dask.distributed scheduler address (or Client) to run the tiles on.
        prefetch: tiles read ahead of the computation (local: one keeps the single reader
            busy; each more holds another tile in memory and gained no speed in
            ``benchmarks/memory.py``) / tiles in flight at least (distributed).
        metadata: extra facts for the map's sidecar JSON (e.g. the model path).
        progress: called with ``(classified pixels so far, pixels in the scene)``.

    Returns:
        Paths written and figures (pixels, per-class counts, time).

    Raises:
        ModelError: the model does not fit the scene or has no classes / fast path.
        OutputError: an output exists (without ``overwrite``), is one of the scene's files
            or collides with another output, or cannot be written. The outputs appear
            together, only when all are complete.
    """
    start = time.perf_counter()
    bundle.check_inputs(scene.hsi_bands, scene.lidar_bands, wavelengths=scene.wavelengths,
                        band_names=scene.band_names["hsi"])
    classes = bundle.class_table
    if classes is None:
        raise ModelError("this is a pretrained model without classes",
                         hint="fine-tune it first with diffclip fewshot --pretrained")
    # Checked against each other and the scene's files now; renamed together at the end.
    outputs = output_set(
        {"map": map_files(output), "confidence raster": confidence,
         "probability raster": probabilities},
        inputs={"the HSI": scene.hsi_path, "a LiDAR raster": list(scene.lidar_paths)},
        overwrite=overwrite)
    with outputs:
        return _classify(scene, bundle, output, start=start, confidence=confidence,
                         probabilities=probabilities, tile_size=tile_size,
                         batch_size=batch_size, device=device, fast=fast, cog=cog,
                         creation_options=creation_options, overwrite=overwrite,
                         scheduler=scheduler, prefetch=prefetch, metadata=metadata,
                         progress=progress)


def _classify(
    scene: Scene,
    bundle: ModelBundle,
    output: str | Path,
    *,
    start: float,
    confidence: str | Path | None,
    probabilities: str | Path | None,
    tile_size: int | None,
    batch_size: int | None,
    device: str,
    fast: bool,
    cog: bool,
    creation_options: Sequence[str] | Mapping[str, Any] | None,
    overwrite: bool,
    scheduler: str | Any | None,
    prefetch: int,
    metadata: Mapping[str, Any] | None,
    progress: Callable[[int, int], None] | None,
) -> ClassifyResult:
    """:func:`classify_scene` once its outputs are checked (same arguments)."""
    classes = bundle.class_table
    assert classes is not None
    if tile_size is None:
        tile_size = auto_tile_size(scene.hsi_bands + scene.lidar_bands)
    if tile_size < 16:
        raise ValueError(f"tile size must be at least 16 pixels, got {tile_size}")

    engine = make_engine(bundle, fast=fast, device=device if scheduler is None else "cpu",
                         batch_size=batch_size)
    stats = SceneStats.from_dict(bundle.stats)
    tiles = list(iter_tiles(scene.grid, tile_size=tile_size, halo=engine.window // 2))
    ids = np.asarray(classes.ids, dtype=np.uint16 if max(classes.ids) > 255 else np.uint8)
    keep_probabilities = probabilities is not None
    meta = {
        "software": f"diffclip {__version__}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {"hsi": str(scene.hsi_path), "lidar": [str(p) for p in scene.lidar_paths]},
        "engine": "fast" if fast else "faithful",
        "model": {"preset": bundle.preset, "provenance": bundle.provenance},
        **dict(metadata or {}),
    }
    grid = scene.grid
    total = grid.width * grid.height
    counts = np.zeros(len(classes) + 1, dtype=np.int64)
    slot = np.zeros(int(ids.max()) + 1, dtype=np.int64)  # class id -> 1 + table index
    slot[ids] = np.arange(1, len(ids) + 1)
    done = valid = 0
    names = classes.names

    with contextlib.ExitStack() as stack:
        stack.enter_context(_bounded_gdal_cache(GDAL_CACHE_MAX))
        writers: list[tuple[str, RasterWriter]] = [("labels", stack.enter_context(MapWriter(
            output, grid, classes, metadata=meta, overwrite=overwrite, cog=cog,
            creation_options=creation_options)))]
        if confidence is not None:
            writers.append(("confidence", stack.enter_context(RasterWriter(
                confidence, grid, count=1, dtype="float32", nodata=CONFIDENCE_NODATA,
                band_descriptions=["confidence (top class probability)"],
                tags={"DIFFCLIP_VERSION": __version__}, overwrite=overwrite, cog=cog,
                creation_options=creation_options))))
        if probabilities is not None:
            writers.append(("probabilities", stack.enter_context(RasterWriter(
                probabilities, grid, count=len(classes), dtype="float32",
                nodata=CONFIDENCE_NODATA, band_descriptions=[f"p({n})" for n in names],
                tags={"DIFFCLIP_VERSION": __version__}, overwrite=overwrite, cog=cog,
                creation_options=creation_options))))
        if scheduler is None:
            results = _local_results(scene, tiles, engine, stats, ids, keep_probabilities,
                                     prefetch)
        else:
            results = _distributed_results(scheduler, scene, bundle, tiles, fast, ids,
                                           keep_probabilities, prefetch)
        writer_pool = stack.enter_context(
            cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffclip-write"))
        last_write: cf.Future[None] | None = None

        def write(result: TileResult) -> None:
            for kind, writer in writers:
                block = getattr(result, kind)
                writer.write(result.tile.window, block if block.ndim == 3 else block[None])

        for result in results:
            if last_write is not None:
                last_write.result()  # one write in flight: bounded memory, errors surface
            last_write = writer_pool.submit(write, result)
            counts += np.bincount(slot[result.labels].ravel(), minlength=counts.size)
            valid += result.valid
            done += result.tile.height * result.tile.width
            if progress is not None:
                progress(done, total)
        if last_write is not None:
            last_write.result()

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
        confidence=None if confidence is None else Path(confidence),
        probabilities=None if probabilities is None else Path(probabilities),
        pixels=total,
        valid_pixels=valid,
        class_pixels={n: int(c) for n, c in zip(names, counts[1:], strict=True)},
        tiles=len(tiles),
        seconds=seconds,
        engine="fast" if fast else "faithful",
    )
