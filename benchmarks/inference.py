"""Throughput of the faithful inference path (TileEngine.predict_tile) against the machine's peak.

Builds a classifier of a preset (default ``paper``) with random weights for a Houston-like band
count (144 HSI + 1 LiDAR by default), measures in the same run the float32 peak of a large
square ``torch.matmul`` (and of oneDNN's float32 and bfloat16 products, when available), then
times ``predict_tile`` over random normalised tiles after a warm-up, for:

- ``reference``: the per-window path, ``classifier.predict_proba`` on the gathered windows of
  the tile (what the engine did before; on a subset of the pixels, it is slow);
- ``fp32``: the engine's default (oneDNN linear kernels when usable);
- ``fp32-aten``: the engine with plain torch operations (MKL products);
- ``bf16``: the engine with ``precision="bf16"``.

Repeats are interleaved (path A, B, C, A, B, C, ...) and the best repeat of each path counts,
so a machine shared with other work disturbs all paths alike. Effective GFLOP/s = px/s times
the nominal cost of the network per pixel (the encoder only: ``(w*w + 1)`` tokens x depth x
modalities, stems excluded: 0.317 GFLOP for the paper preset), so an engine that skips work
(the last block's non-class tokens) can exceed what it actually computes. Memory: each path
classifies one tile alone in a fresh process, which reports its RSS after set-up and its peak.

Example::

    python benchmarks/inference.py --threads 2 --tile 128 --tiles 3 --append docs/bench.md
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Run by path (python benchmarks/inference.py), the script's folder is on sys.path, not the
# repository root that holds the 'benchmarks' package; with python -m it already is.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import psutil
import torch

from benchmarks.machine import cpu_model
from diffclip_cli.infer.engine import TileEngine, tile_windows
from diffclip_cli.modalities import Modalities
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.config import ModelConfig, load_preset
from diffclip_cli.model.inference import onednn_available
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.text import Vocabulary
from diffclip_cli.sampling.tiles import Tile, TileData


def nominal_flops(config: ModelConfig, modalities: int) -> float:
    """FLOP per classified pixel of the shared encoder, every token through every block."""
    d, tokens = config.dim, config.window**2 + 1
    hidden = round(config.dim * config.mlp_ratio)
    per_token = 4 * d * d + 2 * d * hidden + 2 * tokens * d  # qkv+proj, MLP, QK^T and AV (MAC)
    return 2.0 * modalities * config.depth * tokens * per_token


#: The clock every figure is timed with: wall time, or (``--clock cpu``) the process's CPU time,
#: which on a shared machine measures a single-threaded run's own work only.
CLOCK: Callable[[], float] = time.perf_counter


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """The best of ``repeats`` timed calls (after one untimed call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = CLOCK()
        fn()
        best = min(best, CLOCK() - start)
    return best


def matmul_peaks(n: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of an ``n x n`` product: torch.matmul float32 and, if usable, oneDNN fp32/bf16."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    flop = 2.0 * n**3
    peaks = {"torch.matmul fp32": flop / best_time(lambda: torch.matmul(a, b), repeats) / 1e9}
    op = torch.ops.mkldnn._linear_pointwise
    if onednn_available(torch.float32):
        peaks["oneDNN fp32"] = flop / best_time(lambda: op(a, b, None, "none", [], ""),
                                                repeats) / 1e9
    if onednn_available(torch.bfloat16):
        ab, bb = a.bfloat16(), b.bfloat16()
        peaks["oneDNN bf16"] = flop / best_time(lambda: op(ab, bb, None, "none", [], ""),
                                                repeats) / 1e9
    return peaks


def rss_child(args: argparse.Namespace) -> None:
    """In a fresh process: set up, classify one tile with one path, print RSS figures as JSON.

    ``reference`` gathers every window of the tile (as the engine used to) but classifies only
    the first ``--reference-pixels`` of them: its memory peak is the gathered windows.
    """
    clf = build_classifier(args.preset, args.hsi_bands, args.lidar_bands, args.classes,
                           args.seed)
    data = random_tiles(1, args.tile, clf.config.window // 2, args.hsi_bands,
                        args.lidar_bands, args.seed)[0]
    engine = None
    if args.rss_child != "reference":
        engine = TileEngine(clf, batch_size=args.batch_size, onednn=(
            False if args.rss_child == "fp32-aten" else None),
            precision="bf16" if args.rss_child == "bf16" else "fp32")
    setup = psutil.Process().memory_info().rss
    if engine is None:
        hsi, lidar, _, _ = tile_windows(data, clf.config.window)
        n = args.reference_pixels
        with torch.inference_mode():
            clf.predict_proba(torch.from_numpy(hsi[:n]),
                              None if lidar is None else torch.from_numpy(lidar[:n]),
                              batch_size=256)
    else:
        engine.predict_tile(data)
    print(json.dumps({"setup": setup, "peak": peak_rss()}))


def peak_rss() -> int:
    """This process's peak RSS in bytes.

    ``VmHWM`` on Linux: ``ru_maxrss`` would include the parent's peak (it survives fork and
    exec); elsewhere ``ru_maxrss`` (KiB on Linux and the BSDs).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def fresh_rss(args: argparse.Namespace, path: str) -> dict[str, int] | None:
    """:func:`rss_child` of ``path`` in a subprocess; ``None`` if it failed."""
    cmd = [sys.executable, __file__, "--rss-child", path, "--preset", args.preset,
           "--hsi-bands", str(args.hsi_bands), "--lidar-bands", str(args.lidar_bands),
           "--classes", str(args.classes), "--tile", str(args.tile), "--threads",
           str(args.threads), "--seed", str(args.seed), "--reference-pixels",
           str(args.reference_pixels)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_classifier(preset: str, hsi_bands: int, lidar_bands: int, classes: int,
                     seed: int) -> DiffCLIPClassifier:
    """A classifier of ``preset`` with random (seeded) weights and ``classes`` prompts."""
    config = load_preset(preset).model
    net = DiffCLIPNet(config, hsi_bands=hsi_bands, lidar_bands=lidar_bands, seed=seed)
    prompts = [f"a multimodal fusion patch of a class{i} with strong semantic information."
               for i in range(classes)]
    return DiffCLIPClassifier(net, vocabulary=Vocabulary.build(prompts), prompts=prompts,
                              seed=seed).eval()


def random_tiles(count: int, size: int, halo: int, hsi_bands: int, lidar_bands: int,
                 seed: int) -> list[TileData]:
    """Normalised-looking random tiles, every pixel valid."""
    rng = np.random.default_rng(seed)
    padded = size + 2 * halo
    return [
        TileData(Tile(0, 0, size, size, halo),
                 Modalities(rng.standard_normal((hsi_bands, padded, padded), dtype=np.float32),
                            rng.standard_normal((lidar_bands, padded, padded), dtype=np.float32)
                            if lidar_bands else None),
                 np.ones((size, size), dtype=bool))
        for _ in range(count)
    ]


#: Profiler op names by category (self CPU time); the rest is "other".
CATEGORIES = {
    "matrix products (linear layers)": ("mkldnn::_linear_pointwise", "aten::addmm",
                                        "aten::addmm_", "aten::mm"),
    "attention (SDPA or QK^T, softmax, AV)": (
        "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::bmm", "aten::_softmax"),
    "layernorm": ("aten::native_layer_norm",),
    "gelu": ("aten::gelu",),
    "casts and copies": ("aten::copy_", "aten::_to_copy"),
    "window gather (index) and adds": ("aten::index", "aten::add", "aten::add_"),
}


def profile_breakdown(fn: Callable[[], object], runs: int = 3) -> list[tuple[str, float]]:
    """Self CPU time of ``fn`` by category, as (category, share) sorted by share.

    ``fn`` is profiled ``runs`` times and the run with the least total time counts (on a
    shared machine the others are disturbed).
    """
    from torch.profiler import ProfilerActivity, profile

    best: tuple[float, dict[str, float]] | None = None
    for _ in range(runs):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        times: dict[str, float] = {}
        for event in prof.key_averages():
            cat = next((c for c, names in CATEGORIES.items() if event.key in names), "other")
            times[cat] = times.get(cat, 0.0) + event.self_cpu_time_total
        total = sum(times.values())
        if best is None or total < best[0]:
            best = (total, times)
    assert best is not None
    total, times = best
    return sorted(((c, t / total) for c, t in times.items()), key=lambda ct: -ct[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--hsi-bands", type=int, default=144)
    parser.add_argument("--lidar-bands", type=int, default=1)
    parser.add_argument("--classes", type=int, default=15)
    parser.add_argument("--tile", type=int, default=128, help="tile core edge in pixels")
    parser.add_argument("--tiles", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per path")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch-size", type=int, default=None, help="engine default if unset")
    parser.add_argument("--paths", default="reference,fp32,fp32-aten,bf16",
                        help="comma-separated: reference, fp32, fp32-aten, bf16")
    parser.add_argument("--reference-pixels", type=int, default=512,
                        help="pixels per tile the slow reference path classifies")
    parser.add_argument("--peak-size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--append", type=Path, default=None, help="append the table here")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one tile per engine path (torch.profiler)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time (meaningful with --threads 1 only)")
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        torch.set_num_threads(args.threads)
        rss_child(args)
        return
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1 (idle threads spin and count as CPU time)")
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    clf = build_classifier(args.preset, args.hsi_bands, args.lidar_bands, args.classes,
                           args.seed)
    modalities = 2 if args.lidar_bands else 1
    flop_px = nominal_flops(clf.config, modalities)
    window = clf.config.window
    tiles = random_tiles(args.tiles, args.tile, window // 2, args.hsi_bands, args.lidar_bands,
                         args.seed)
    warm = random_tiles(1, min(args.tile, 32), window // 2, args.hsi_bands, args.lidar_bands,
                        args.seed + 1)[0]
    peaks = matmul_peaks(args.peak_size, 5)

    engines = {
        "fp32": TileEngine(clf, batch_size=args.batch_size),
        "fp32-aten": TileEngine(clf, batch_size=args.batch_size, onednn=False),
        "bf16": TileEngine(clf, batch_size=args.batch_size, precision="bf16"),
    }
    rng = np.random.default_rng(args.seed)
    ref_windows, ref_pixels = [], []
    for data in tiles:
        hsi, lidar, rows, cols = tile_windows(data, window)
        pick = np.sort(rng.choice(hsi.shape[0], min(args.reference_pixels, hsi.shape[0]),
                                  replace=False))
        ref_windows.append((torch.from_numpy(hsi[pick]),
                            None if lidar is None else torch.from_numpy(lidar[pick])))
        ref_pixels.append((rows[pick], cols[pick]))

    def run(path: str, warmup: bool = False) -> int:
        if path == "reference":
            todo = ref_windows[:1] if warmup else ref_windows
            with torch.inference_mode():
                for h, li in todo:
                    clf.predict_proba(h[:64] if warmup else h,
                                      None if li is None else (li[:64] if warmup else li),
                                      batch_size=256)
            return sum(int(h.shape[0]) for h, _ in todo)
        for data in [warm] if warmup else tiles:
            engines[path].predict_tile(data)
        return int(sum(d.valid.sum() for d in ([warm] if warmup else tiles)))

    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if "bf16" in paths and not onednn_available(torch.bfloat16):
        paths.remove("bf16")  # bfloat16 products would run without fast kernels
    best: dict[str, float] = {p: 0.0 for p in paths}
    for p in paths:
        run(p, warmup=True)
    for _ in range(args.repeats):
        for p in paths:
            start = CLOCK()
            pixels = run(p)
            best[p] = max(best[p], pixels / (CLOCK() - start))
    peaks_end = matmul_peaks(args.peak_size, 5)
    peaks = {k: max(v, peaks_end.get(k, 0.0)) for k, v in peaks.items()}
    load_end = os.getloadavg()

    peak = peaks["torch.matmul fp32"]
    onednn_peak = peaks.get("oneDNN fp32")
    lines = [
        f"Machine: {cpu_model()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}; "
        f"{args.threads} threads; {args.clock} clock; load average {load_start[0]:.2f} at "
        f"start, {load_end[0]:.2f} at end.",
        f"Model: preset {args.preset}, random weights, {args.hsi_bands} HSI + "
        f"{args.lidar_bands} LiDAR bands, {args.classes} classes; nominal "
        f"{flop_px / 1e9:.3f} GFLOP/px. Tiles: {args.tiles} x {args.tile}^2 px, batch "
        f"{engines['fp32'].batch_size}; reference on {args.reference_pixels} px/tile. "
        "Memory: each path alone in a fresh process classifying one tile (the reference "
        "gathers all the tile's windows, as the engine used to); RSS after set-up (model, "
        "tile) and peak.",
        "Peaks (GFLOP/s, best of the start and end of the run): "
        + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()) + ".",
        "",
        "| path | px/s | effective GFLOP/s | % of torch.matmul fp32 peak | % of oneDNN fp32 peak "
        "| speed-up vs reference | RSS set-up / peak (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in paths:
        rss = fresh_rss(args, p)
        mem = "n/a" if rss is None else f"{rss['setup'] / 2**20:.0f} / {rss['peak'] / 2**20:.0f}"
        gflops = best[p] * flop_px / 1e9
        of_onednn = f"{100 * gflops / onednn_peak:.0f} %" if onednn_peak else "n/a"
        speedup = (f"{best[p] / best['reference']:.2f}x" if "reference" in best else "n/a")
        lines.append(f"| {p} | {best[p]:.1f} | {gflops:.1f} | {100 * gflops / peak:.0f} % | "
                     f"{of_onednn} | {speedup} | {mem} |")
    # Agreement on the first tile: each engine path against predict_proba on the reference
    # pixels, and bf16 against fp32 on every pixel.
    with torch.inference_mode():
        h, li = ref_windows[0]
        ref = clf.predict_proba(h, li, batch_size=256).numpy()
    rows, cols = ref_pixels[0]
    probs = {p: engines[p].predict_tile(tiles[0]) for p in paths if p != "reference"}
    checks = [f"`{p}` vs reference: max |dp| {np.abs(q[:, rows, cols].T - ref).max():.1e}, "
              f"labels agree on {100 * (q[:, rows, cols].argmax(0) == ref.argmax(1)).mean():.2f}"
              f" % of {rows.size} px" for p, q in probs.items()]
    if "bf16" in probs and "fp32" in probs:
        same = probs["bf16"].argmax(0) == probs["fp32"].argmax(0)
        checks.append(f"`bf16` vs `fp32`: max |dp| "
                      f"{np.abs(probs['bf16'] - probs['fp32']).max():.1e}, labels agree on "
                      f"{100 * same.mean():.2f} % of {same.size} px (random weights: "
                      "near-uniform probabilities, a hard case for agreement)")
    lines += ["", "Agreement (first tile): " + "; ".join(checks) + "."]
    if args.profile:
        for p in paths:
            if p == "reference":
                continue
            shares = profile_breakdown(functools.partial(engines[p].predict_tile, tiles[0]))
            lines += ["", f"Profile of `{p}` (self CPU time, one tile, least of 3 runs):", "",
                      "| part | share |", "|---|---:|"]
            lines += [f"| {c} | {100 * share:.1f} % |" for c, share in shares]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append is not None:
        with args.append.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
