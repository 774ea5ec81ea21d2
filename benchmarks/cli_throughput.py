"""End-to-end throughput of ``diffclip classify`` against the machine's float32 matmul peak.

Writes a scene (default 96 x 128 pixels, 48 HSI bands + 1 LiDAR band, float32 GeoTIFFs) and a
``paper``-preset classifier with random weights for it (15 classes), then, in the same run:

- the machine's float32 peak: a large square ``torch.matmul`` (best of 5), at the start and
  the end (the larger counts);
- the engine alone: ``TileEngine.predict_tile`` over the scene's tiles, read and normalised
  beforehand (what docs/benchmarks.md's "Inference throughput" measures);
- the command, each given checkout in turn (``--checkout`` NAME=PATH, repeatable; the first
  is this one), interleaved over ``--repeats`` rounds: ``python -m diffclip_cli classify``
  in a fresh process, wall time from start to exit, and the time of ``python -c "import
  torch, diffclip_cli.cli"`` (start-up) measured the same way.

px/s = scene pixels / seconds; effective GFLOP/s = px/s x the paper network's nominal cost
per pixel (benchmarks/inference.py); % of peak = that / the matmul peak.

Example::

    python benchmarks/cli_throughput.py --checkout before=/work/base --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

from benchmarks.inference import matmul_peaks, nominal_flops
from benchmarks.machine import cpu_model

HERE = Path(__file__).resolve().parents[1]


def write_inputs(folder: Path, height: int, width: int, bands: int, classes: int,
                 seed: int) -> tuple[Path, Path, Path]:
    """The scene's GeoTIFFs and a random-weight ``paper`` classifier file for it."""
    from diffclip_cli.io.classes import ClassTable
    from diffclip_cli.io.raster import Scene
    from diffclip_cli.model.archive import save_model
    from diffclip_cli.model.classifier import DiffCLIPClassifier
    from diffclip_cli.model.config import load_preset
    from diffclip_cli.model.modelfile import bundle_from_classifier
    from diffclip_cli.model.network import DiffCLIPNet
    from diffclip_cli.model.text import Vocabulary
    from diffclip_cli.sampling.normalise import compute_stats

    rng = np.random.default_rng(seed)
    profile = {"driver": "GTiff", "height": height, "width": width, "dtype": "float32",
               "crs": "EPSG:32615", "transform": from_origin(500000, 4200000, 1, 1),
               "tiled": True, "blockxsize": 256, "blockysize": 256}
    hsi, lidar = folder / "hsi.tif", folder / "lidar.tif"
    with rasterio.open(hsi, "w", count=bands, **profile) as ds:
        ds.write(rng.random((bands, height, width), dtype=np.float32))
    with rasterio.open(lidar, "w", count=1, **profile) as ds:
        ds.write(rng.random((1, height, width), dtype=np.float32) * 30)
    preset = load_preset("paper")
    with Scene.open(hsi, lidar) as scene:
        stats = compute_stats(scene, seed=0, n_samples=2000)
        net = DiffCLIPNet(preset.model, hsi_bands=bands, lidar_bands=1, seed=seed)
        prompts = [f"a multimodal fusion patch of a class{i} with strong semantic information."
                   for i in range(classes)]
        clf = DiffCLIPClassifier(net, vocabulary=Vocabulary.build(prompts), prompts=prompts,
                                 seed=seed)
        table = ClassTable({"id": k + 1, "name": f"class{k}"} for k in range(classes))
        model = save_model(bundle_from_classifier(clf, preset=preset, stats=stats,
                                                  classes=table, template="p4",
                                                  band_names=scene.band_names),
                           folder / "model.pt")
    return hsi, lidar, model


def engine_alone(hsi: Path, lidar: Path, model: Path, repeats: int) -> float:
    """Seconds of ``predict_tile`` over the scene's tiles (read beforehand), best repeat."""
    from diffclip_cli.infer.engine import TileEngine
    from diffclip_cli.io.raster import Scene
    from diffclip_cli.model.archive import load_model
    from diffclip_cli.model.modelfile import build_classifiers
    from diffclip_cli.sampling.tiles import iter_tiles, read_tile

    bundle = load_model(model)
    engine = TileEngine(build_classifiers(bundle))
    stats = bundle.scene_stats
    with Scene.open(hsi, lidar) as scene:
        tiles = [read_tile(scene, t, stats=stats)
                 for t in iter_tiles(scene.grid, tile_size=256, halo=engine.window // 2)]
    best = float("inf")
    for i in range(repeats + 1):
        start = time.perf_counter()
        for data in tiles:
            engine.predict_tile(data)
        if i:  # the first is a warm-up
            best = min(best, time.perf_counter() - start)
    return best


def run(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--bands", type=int, default=48)
    parser.add_argument("--classes", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkout", action="append", default=[],
                        help="NAME=PATH of another source checkout to time too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    checkouts = {"this": HERE, **{k: Path(v) for k, v in
                                  (c.split("=", 1) for c in args.checkout)}}
    load0 = os.getloadavg()[0]
    peak = max(matmul_peaks(2048, 5)["torch.matmul fp32"], 0.0)
    from diffclip_cli.model.config import load_preset

    flop = nominal_flops(load_preset("paper").model, 2)
    pixels = args.height * args.width
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        hsi, lidar, model = write_inputs(folder, args.height, args.width, args.bands,
                                         args.classes, args.seed)
        times: dict[str, list[float]] = {f"{n} classify": [] for n in checkouts}
        times.update({f"{n} start-up": [] for n in checkouts})
        for _ in range(args.repeats):
            for name, path in checkouts.items():
                env = {**os.environ, "PYTHONPATH": str(path)}
                times[f"{name} start-up"].append(run(
                    [sys.executable, "-c", "import torch, diffclip_cli.cli"], env))
                times[f"{name} classify"].append(run(
                    [sys.executable, "-m", "diffclip_cli", "classify", str(hsi), str(lidar),
                     "-o", str(folder / f"map-{name}.tif"), "--model", str(model), "-q",
                     "--overwrite"], env))
        maps = {n: rasterio.open(folder / f"map-{n}.tif").read(1) for n in checkouts}
        same = all(np.array_equal(m, maps["this"]) for m in maps.values())
        engine_s = engine_alone(hsi, lidar, model, args.repeats)
    peak = max(peak, matmul_peaks(2048, 5)["torch.matmul fp32"])
    load1 = os.getloadavg()[0]

    def pct(seconds: float) -> str:
        rate = pixels / seconds
        gflops = rate * flop / 1e9
        return f"{rate:,.0f} px/s, {gflops:,.1f} GFLOP/s, {100 * gflops / peak:.0f} % of peak"

    print(f"{cpu_model()}, {torch.get_num_threads()} torch threads, load {load0:.2f} -> "
          f"{load1:.2f}; torch.matmul fp32 peak {peak:.0f} GFLOP/s; scene {args.height} x "
          f"{args.width} x {args.bands} + 1; maps identical across checkouts: {same}")
    print(f"engine alone (predict_tile, best of {args.repeats}): {engine_s:.2f} s, "
          f"{pct(engine_s)}")
    for key, values in times.items():
        best = min(values)
        extra = f", {pct(best)}" if key.endswith("classify") else ""
        print(f"{key}: best {best:.2f} s (all: {', '.join(f'{v:.2f}' for v in values)}){extra}")
    if args.json:
        args.json.write_text(json.dumps({"peak": peak, "engine_s": engine_s, "times": times,
                                         "pixels": pixels, "flop": flop, "load": [load0, load1],
                                         "same": same}, indent=1))


if __name__ == "__main__":
    main()
