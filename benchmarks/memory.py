"""Peak memory of whole-scene classification (``classify_scene``, what ``diffclip classify`` runs).

Does the peak RSS grow with the scene? The script builds (once, in seconds) a ``tiny``-preset
classifier with a fast path for 144 HSI bands + 1 LiDAR channel, writes one small real source
tile (int16 HSI with scale 1e-4 and a float32 DSM, each with a patch of nodata pixels) and lays
scenes of any size over it, then classifies each scene alone in a fresh process and reports that
process's peak RSS (``VmHWM``; ``ru_maxrss`` would carry the parent's peak across fork and exec).

Inputs come in three forms (a case is ``engine:WxH:inputs``, e.g. ``fast:20000x2000:vrt``):

- ``vrt``: a GDAL VRT mosaic repeating the source tile over the grid (one ``SimpleSource`` per
  tile and band), so a 20000 x 2000 x 144 scene needs no disk (23 GB as float32). Only the
  source tile's blocks can ever be in GDAL's block cache, whatever the scene size.
- ``gtiff``: the same pixels written out as one plain tiled GeoTIFF per modality, what users
  have; every block of it passes through GDAL's block cache, so this form shows whether that
  cache grows with the scene. ``deflate``: the same, DEFLATE-compressed (re-reading a block
  costs decompressing it again).

For each case the child reports RSS after set-up (imports, model, scene opened), the RSS when
10 %, 50 % and 100 % of the tiles are done, the peak, wall time and px/s, and the time spent
reading chunks, computing tiles (normalising and the engine) and writing blocks (summed over
dask's threads): their sum above the wall time means they overlapped. The parent then checks
the map: its shape, and that its nodata pixels are exactly the invalid input pixels (known from
the source tile).

Targets (the issue): the 3000 x 1000 scene peaks within 1.3x of the 300 x 100 one; the
20000 x 2000 x 144 scene on the fast path stays under 2 GiB.

Example::

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/memory.py --append docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

# Run by path (python benchmarks/memory.py), the script's folder is on sys.path, not the
# repository root that holds the 'benchmarks' package; with python -m it already is.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

#: The issue's targets.
RATIO_TARGET = 1.3
HUGE_TARGET_MIB = 2048.0

# -- measuring a process -----------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss() -> int:
    """This process's peak RSS in bytes (``VmHWM``; ``ru_maxrss`` elsewhere)."""
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024


def current_rss() -> int:
    """This process's RSS now, in bytes."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        kib = _status_kib("VmRSS")
        return 0 if kib is None else kib * 1024


# -- the child: one classification in a fresh process ------------------------------------------


class _Timer:
    """Seconds spent in wrapped calls, summed (calls from any thread)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()

    def wrap(self, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds += time.perf_counter() - start
        return timed


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Classify one scene as ``diffclip classify`` does and measure this process."""
    import torch

    torch.set_num_threads(int(spec["threads"]))
    import diffclip_cli.infer.predict as predict_mod
    from diffclip_cli.infer.classify import RunOptions, WriteOptions, classify_scene
    from diffclip_cli.io.maps import RasterWriter
    from diffclip_cli.io.raster import Scene
    from diffclip_cli.model.archive import load_model

    # Where the time goes, per stage, summed over dask's threads: reading (the scene's
    # chunks), computing (the tile tasks: normalising and the engine), writing (the writers).
    # Wrapping costs a perf_counter call per chunk.
    read_t, compute_t, write_t = _Timer(), _Timer(), _Timer()
    Scene.read_bands = read_t.wrap(Scene.read_bands)  # type: ignore[method-assign]
    real_tile = predict_mod._tile_probabilities

    def tile(*args: Any, block_info: Any = None, **kwargs: Any) -> Any:  # dask passes it by name
        start = time.perf_counter()
        try:
            return real_tile(*args, block_info=block_info, **kwargs)
        finally:
            with compute_t._lock:
                compute_t.seconds += time.perf_counter() - start

    predict_mod._tile_probabilities = tile
    RasterWriter.write = write_t.wrap(RasterWriter.write)  # type: ignore[method-assign]

    bundle = load_model(spec["model"])
    marks: dict[str, int] = {}

    def progress(done: int, total: int) -> None:
        for share in (10, 50):
            key = f"rss_{share}"
            if key not in marks and done * 100 >= share * total:
                marks[key] = current_rss()

    with Scene.open(spec["hsi"], [spec["lidar"]]) as scene:
        setup = current_rss()
        start = time.perf_counter()
        result = classify_scene(scene, bundle, spec["output"],
                                write=WriteOptions(overwrite=True),
                                run=RunOptions(fast=bool(spec["fast"]),
                                               tile_size=spec["tile_size"]),
                                progress=progress)
        wall = time.perf_counter() - start
        end = current_rss()
    return {
        "setup": setup, "rss_10": marks.get("rss_10", end), "rss_50": marks.get("rss_50", end),
        "rss_end": end, "peak": peak_rss(), "wall": wall, "pixels": result.pixels,
        "valid": result.valid_pixels, "tiles": result.tiles,
        "px_s": result.pixels / wall if wall > 0 else 0.0,
        "read_s": read_t.seconds, "compute_s": compute_t.seconds, "write_s": write_t.seconds,
        "engine": result.engine,
    }


# -- inputs ------------------------------------------------------------------------------------


@dataclass
class SourceTile:
    """The real tile every scene is made of, and its invalid-pixel mask."""

    hsi: Path
    lidar: Path
    edge: int
    invalid: np.ndarray  # (edge, edge) bool: some HSI band or the LiDAR is nodata

    def invalid_pixels(self, width: int, height: int) -> int:
        """Invalid pixels of a ``width x height`` scene tiled with this tile from (0, 0)."""
        e = self.edge
        total = 0
        for r0 in range(0, height, e):
            for c0 in range(0, width, e):
                total += int(self.invalid[:min(e, height - r0), :min(e, width - c0)].sum())
        return total


def build_model(folder: Path, hsi_bands: int, seed: int) -> Path:
    """A ``tiny``-preset classifier with a fast path, trained in seconds on a small scene.

    Accuracy is irrelevant here; the architecture (and so the memory and the speed) is that
    of the ``tiny`` preset and of the default fast-path student (only its distillation is
    shortened).
    """
    from diffclip_cli.io.labels import read_labels
    from diffclip_cli.io.raster import Scene
    from diffclip_cli.model.archive import save_model
    from diffclip_cli.model.config import load_preset
    from diffclip_cli.testing import make_scene, write_scene
    from diffclip_cli.train.distill import add_fast_path
    from diffclip_cli.workflows.fewshot import FewshotRequest, fewshot_scene

    files = write_scene(make_scene(height=64, width=64, hsi_bands=hsi_bands, n_spectra=3,
                                   n_heights=2, patch_size=12, seed=seed),
                        folder / "train", hsi_dtype="int16")
    preset = load_preset("tiny").with_overrides(**{"pretrain.epochs": 3,
                                                   "finetune.epochs": 20})
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        labels = read_labels(files["labels"], scene.grid, classes=files["classes"])
        result = fewshot_scene(scene, labels, FewshotRequest(
            shots=5, preset=preset, pretrain_samples=300, seed=seed, evaluate=False))
        bundle = add_fast_path(scene, result.bundle, classifier=result.classifier, seed=seed,
                               pixels=2000, steps=300)
    return save_model(bundle, folder / "model.pt", overwrite=True)


def make_source_tile(folder: Path, edge: int, hsi_bands: int, seed: int) -> SourceTile:
    """Write the source tile: int16 HSI (scale 1e-4, nodata -32768), float32 DSM (nodata -9999).

    A rectangle of one HSI band and another of the DSM are nodata, so every scene has invalid
    pixels the map must leave as nodata.
    """
    import rasterio

    from diffclip_cli.testing import make_scene

    syn = make_scene(height=edge, width=edge, hsi_bands=hsi_bands, n_spectra=3, n_heights=2,
                     patch_size=16, seed=seed + 1)
    hsi = np.round(syn.hsi / 1e-4).astype(np.int16)
    del syn.hsi
    assert syn.lidar is not None
    lidar = syn.lidar
    # inside the first 100 rows, so that even the smallest scene has some
    hsi[min(7, hsi_bands - 1), 20:40, 50:80] = -32768
    lidar[0, 60:70, 200:240] = -9999.0
    invalid = (hsi == -32768).any(axis=0) | (lidar == -9999.0).any(axis=0)
    profile = {"driver": "GTiff", "height": edge, "width": edge, "transform": syn.transform,
               "crs": syn.crs, "tiled": True, "blockxsize": 256, "blockysize": 256}
    hsi_path, lidar_path = folder / "tile_hsi.tif", folder / "tile_lidar.tif"
    with rasterio.open(hsi_path, "w", count=hsi_bands, dtype="int16", nodata=-32768,
                       **profile) as dst:
        dst.write(hsi)
        dst.scales = (1e-4,) * hsi_bands
        dst.offsets = (0.0,) * hsi_bands
    with rasterio.open(lidar_path, "w", count=1, dtype="float32", nodata=-9999.0,
                       **profile) as dst:
        dst.write(lidar)
    return SourceTile(hsi_path, lidar_path, edge, invalid)


def write_mosaic_vrt(tile: Path, out: Path, width: int, height: int) -> Path:
    """A VRT of ``width x height`` pixels that repeats ``tile`` from the top-left corner.

    Same CRS, pixel size, origin, data type, nodata and scale/offset as the tile; one
    ``SimpleSource`` per placed tile and band (clipped at the right and bottom edges).
    """
    import rasterio
    from rasterio.dtypes import _gdal_typename

    with rasterio.open(tile) as src:
        e_w, e_h, count = src.width, src.height, src.count
        gdal_type = _gdal_typename(src.dtypes[0])
        nodata, scales, offsets = src.nodata, src.scales, src.offsets
        gt = src.transform.to_gdal()
        wkt = src.crs.to_wkt() if src.crs else ""
        bx, by = src.block_shapes[0][1], src.block_shapes[0][0]
    rel = os.path.relpath(tile, out.parent)
    placements = [(r0, c0, min(e_h, height - r0), min(e_w, width - c0))
                  for r0 in range(0, height, e_h) for c0 in range(0, width, e_w)]
    parts = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f"  <SRS>{escape(wkt)}</SRS>" if wkt else "",
             "  <GeoTransform>" + ", ".join(repr(float(v)) for v in gt) + "</GeoTransform>"]
    for b in range(1, count + 1):
        parts.append(f'  <VRTRasterBand dataType="{gdal_type}" band="{b}">')
        if nodata is not None:
            parts.append(f"    <NoDataValue>{nodata!r}</NoDataValue>")
        if scales[b - 1] != 1.0 or offsets[b - 1] != 0.0:
            parts.append(f"    <Offset>{offsets[b - 1]!r}</Offset>"
                         f"<Scale>{scales[b - 1]!r}</Scale>")
        for r0, c0, h, w in placements:
            parts.append(
                f'    <SimpleSource><SourceFilename relativeToVRT="1">{escape(rel)}'
                f"</SourceFilename><SourceBand>{b}</SourceBand>"
                f'<SourceProperties RasterXSize="{e_w}" RasterYSize="{e_h}" '
                f'DataType="{gdal_type}" BlockXSize="{bx}" BlockYSize="{by}"/>'
                f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                f'<DstRect xOff="{c0}" yOff="{r0}" xSize="{w}" ySize="{h}"/></SimpleSource>')
        parts.append("  </VRTRasterBand>")
    parts.append("</VRTDataset>")
    out.write_text("\n".join(p for p in parts if p) + "\n", encoding="utf-8")
    return out


def write_mosaic_gtiff(tile: Path, out: Path, width: int, height: int, *,
                       compress: str | None = None) -> Path:
    """The same pixels as :func:`write_mosaic_vrt`, written as one plain tiled GeoTIFF."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(tile) as src:
        profile = src.profile.copy()
        data = src.read()
        scales, offsets = src.scales, src.offsets
    e_h, e_w = data.shape[1:]
    profile.update(width=width, height=height, tiled=True, blockxsize=256, blockysize=256,
                   compress=compress, interleave="pixel",
                   bigtiff="IF_SAFER")
    with rasterio.Env(GDAL_CACHEMAX=64 * 2**20), rasterio.open(out, "w", **profile) as dst:
        for r0 in range(0, height, e_h):
            for c0 in range(0, width, e_w):
                h, w = min(e_h, height - r0), min(e_w, width - c0)
                dst.write(data[:, :h, :w], window=Window(c0, r0, w, h))
        dst.scales, dst.offsets = scales, offsets
    return out


# -- the parent ------------------------------------------------------------------------------


@dataclass
class Case:
    """One classification to measure."""

    engine: str  # "faithful" or "fast"
    width: int
    height: int
    inputs: str  # "vrt", "gtiff" or "deflate"

    @property
    def name(self) -> str:
        return f"{self.engine} {self.width}x{self.height} {self.inputs}"


def parse_cases(text: str) -> list[Case]:
    """``engine:WxH:inputs`` items, comma-separated."""
    cases = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            engine, size, inputs = item.split(":")
            w, h = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise SystemExit(f"bad case {item!r}: expected engine:WxH:inputs, e.g. "
                             "fast:20000x2000:vrt") from None
        if engine not in ("faithful", "fast") or inputs not in ("vrt", "gtiff", "deflate"):
            raise SystemExit(f"bad case {item!r}: engine faithful|fast, inputs "
                             "vrt|gtiff|deflate")
        cases.append(Case(engine, w, h, inputs))
    return cases


def check_map(path: Path, case: Case, expected_invalid: int) -> tuple[bool, str]:
    """Whether the map has the scene's shape and nodata exactly on the invalid pixels."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(path) as ds:
        if (ds.width, ds.height) != (case.width, case.height):
            return False, f"shape {ds.width}x{ds.height}"
        nodata = 0
        for r0 in range(0, ds.height, 1024):
            block = ds.read(1, window=Window(0, r0, ds.width, min(1024, ds.height - r0)))
            nodata += int((block == 0).sum())
    ok = nodata == expected_invalid
    return ok, f"{nodata:,} nodata px {'=' if ok else '!='} {expected_invalid:,} invalid"


def run_child(spec: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """:func:`child` in a fresh interpreter; its JSON result (or an ``error``)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: {' | '.join(tail)}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def diffclip_revision(package: Path) -> str:
    """The commit of the diffclip measured (``+`` with uncommitted changes), if in git."""
    def git(*cmd: str) -> str:
        done = subprocess.run(["git", "-C", str(package), *cmd], capture_output=True,
                              text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "(not in git)"
    dirty = git("status", "--porcelain", "--", ".")
    return f"at commit {commit}{' + uncommitted changes' if dirty else ''}"


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def main(argv: list[str] | None = None) -> None:
    from benchmarks.machine import cpu_model
    from diffclip_cli.infer.classify import auto_tile_size

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=(
        "faithful:300x100:vrt,faithful:3000x1000:vrt,faithful:300x100:gtiff,"
        "faithful:3000x1000:gtiff,fast:300x100:vrt,fast:3000x1000:vrt,fast:300x100:gtiff,"
        "fast:3000x1000:gtiff,fast:20000x2000:vrt"),
        help="comma-separated engine:WxH:inputs (engine faithful|fast, inputs "
             "vrt|gtiff|deflate)")
    parser.add_argument("--hsi-bands", type=int, default=144)
    parser.add_argument("--source-tile", type=int, default=512,
                        help="edge of the real tile the scenes are made of")
    parser.add_argument("--tile-size", type=int, default=None,
                        help="classify tile size (default: classify's, from the band count)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each child")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the model, inputs and maps (default: a temporary "
                             "folder, removed at the end)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds allowed to each classification")
    parser.add_argument("--append", type=Path, default=None, help="append the section here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return

    import psutil
    import rasterio
    import torch
    from rasterio.env import get_gdal_config

    import diffclip_cli
    import diffclip_cli.infer.classify as classify_mod
    from diffclip_cli.io.sidecars import sidecar_path

    cache_bound = getattr(classify_mod, "GDAL_CACHE_MAX", None)  # None: an older diffclip

    cases = parse_cases(args.cases)
    command = ("python benchmarks/memory.py "
               + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)))
    load_start = os.getloadavg()
    own = args.work is None
    work = Path(tempfile.mkdtemp(prefix="diffclip-memory-", dir="/tmp")) if own else args.work
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        model = build_model(work, args.hsi_bands, args.seed)
        tile = make_source_tile(work, args.source_tile, args.hsi_bands, args.seed)
        print(f"model and source tile: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        results: list[tuple[Case, dict[str, Any]]] = []
        for case in cases:
            stem = f"{case.width}x{case.height}"
            suffix = "vrt" if case.inputs == "vrt" else "tif"
            hsi = work / f"hsi_{stem}_{case.inputs}.{suffix}"
            lidar = work / f"lidar_{stem}_{case.inputs}.{suffix}"
            if not hsi.exists():
                for source, path in ((tile.hsi, hsi), (tile.lidar, lidar)):
                    if case.inputs == "vrt":
                        write_mosaic_vrt(source, path, case.width, case.height)
                    else:
                        write_mosaic_gtiff(source, path, case.width, case.height,
                                           compress="deflate" if case.inputs == "deflate"
                                           else None)
            output = work / f"map_{case.engine}_{stem}_{case.inputs}.tif"
            spec = {"model": str(model), "hsi": str(hsi), "lidar": str(lidar),
                    "output": str(output), "fast": case.engine == "fast",
                    "tile_size": args.tile_size, "threads": args.threads}
            print(f"{case.name} ...", file=sys.stderr, flush=True)
            res = run_child(spec, args.timeout)
            if "error" not in res:
                ok, text = check_map(output, case, tile.invalid_pixels(case.width, case.height))
                res["check_ok"], res["check"] = ok, text
                res["inputs_mib"] = sum(p.stat().st_size for p in (hsi, lidar)) / 2**20
                for path in (output, sidecar_path(output)):
                    path.unlink(missing_ok=True)
            print(f"  {json.dumps(res)}", file=sys.stderr, flush=True)
            results.append((case, res))
            if case.inputs != "vrt" and not any(
                    c.inputs == case.inputs and (c.width, c.height) == (case.width, case.height)
                    for c in cases[cases.index(case) + 1:]):
                hsi.unlink()
                lidar.unlink()
        load_end = os.getloadavg()
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)

    ram = psutil.virtual_memory().total
    gdal_cache = int(get_gdal_config("GDAL_CACHEMAX"))
    lines = [
        "```",
        " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "GDAL_CACHEMAX")
                 if k in os.environ) + f" {command}",
        "```",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {ram / 2**30:.0f} GiB RAM; "
        f"Python {platform.python_version()}, torch {torch.__version__} ({args.threads} "
        f"thread(s) per classification), rasterio {rasterio.__version__}, GDAL "
        f"{rasterio.__gdal_version__} (block cache {gdal_cache / 2**20:,.0f} MiB by default "
        + (f"here, at most {cache_bound / 2**20:,.0f} MiB while classifying"
           if cache_bound else "here, not bounded while classifying by this diffclip")
        + ("" if "GDAL_CACHEMAX" not in os.environ else "; GDAL_CACHEMAX is set")
        + f"); diffclip {diffclip_revision(Path(diffclip_cli.__file__).parent)}; load average "
        f"{load_start[0]:.2f} at start, {load_end[0]:.2f} at end.",
        f"Model: `tiny` preset with a fast path (default student), {args.hsi_bands} HSI "
        f"bands (int16, scale 1e-4) + 1 LiDAR band (float32); source tile "
        f"{args.source_tile} x {args.source_tile}; classify tiles "
        f"{args.tile_size or auto_tile_size(args.hsi_bands + 1)} px; map "
        "only (no confidence or probability rasters).",
        "",
        "| case | engine | inputs | pixels | RSS after set-up (MiB) | RSS at 10 / 50 / 100 % "
        "of tiles (MiB) | peak RSS (MiB) | wall (s) | px/s | read / compute / write (s) | "
        "map check |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for case, res in results:
        scene = f"{case.width} x {case.height} x {args.hsi_bands}"
        if "error" in res:
            lines.append(f"| {scene} | {case.engine} | {case.inputs} | - | - | - | - | - | - "
                         f"| - | FAILED: {res['error']} |")
            continue
        lines.append(
            f"| {scene} | {case.engine} | {case.inputs} | {res['pixels']:,} | "
            f"{mib(res['setup'])} | {mib(res['rss_10'])} / {mib(res['rss_50'])} / "
            f"{mib(res['rss_end'])} | **{mib(res['peak'])}** | {res['wall']:.1f} | "
            f"{res['px_s']:,.0f} | {res['read_s']:.1f} / {res['compute_s']:.1f} / "
            f"{res['write_s']:.1f} | {'ok' if res['check_ok'] else 'WRONG'}: "
            f"{res['check']} |")
    lines.append("")
    verdicts = []
    by = {(c.engine, c.width, c.height, c.inputs): r for c, r in results if "error" not in r}
    for engine in ("faithful", "fast"):
        for inputs in ("vrt", "gtiff", "deflate"):
            small = by.get((engine, 300, 100, inputs))
            large = by.get((engine, 3000, 1000, inputs))
            if small and large:
                ratio = large["peak"] / small["peak"]
                verdicts.append(
                    f"- Peak 3000 x 1000 / 300 x 100, {engine}, {inputs} inputs: "
                    f"{mib(large['peak'])} / {mib(small['peak'])} MiB = **{ratio:.2f}x** "
                    f"(target <= {RATIO_TARGET}x): "
                    f"**{'PASS' if ratio <= RATIO_TARGET else 'FAIL'}**.")
    for (engine, w, h, inputs), res in by.items():
        if engine == "fast" and (w, h) == (20000, 2000) and args.hsi_bands == 144:
            peak = res["peak"] / 2**20
            verdicts.append(
                f"- Peak 20000 x 2000 x 144, fast path, {inputs} inputs: **{peak:,.0f} MiB** "
                f"(target < {HUGE_TARGET_MIB:,.0f} MiB): "
                f"**{'PASS' if peak < HUGE_TARGET_MIB else 'FAIL'}**.")
    for case, res in results:
        if "error" in res:
            continue
        # Overlap: how much of the shorter stages' time the longest stage hid (100 %: the
        # wall time is the longest stage's; 0 %: the stages ran one after the other).
        stages = (res["read_s"], res["compute_s"], res["write_s"])
        busy, longest = sum(stages), max(stages)
        hidden = (busy - res["wall"]) / (busy - longest) if busy > longest else 1.0
        verdicts.append(
            f"- Overlap, {case.name}: read {stages[0]:.1f} s + compute {stages[1]:.1f} s + "
            f"write {stages[2]:.1f} s in {res['wall']:.1f} s of wall time: "
            f"{100 * min(max(hidden, 0.0), 1.0):.0f} % of the other stages' time hidden "
            f"behind the longest ({('reading', 'computing', 'writing')[stages.index(longest)]}).")
    bad = [c.name for c, r in results if "error" in r or not r.get("check_ok")]
    verdicts.append("- Maps: " + ("every map has the scene's shape and nodata exactly on the "
                                  "invalid input pixels." if not bad else
                                  f"**wrong or missing for {', '.join(bad)}**."))
    text = "\n".join(lines + verdicts) + "\n"
    print(text)
    if args.append is not None:
        with args.append.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
