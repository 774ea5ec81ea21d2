"""Fast path (``--fast``) versus the faithful engine: speed, agreement, accuracy.

For each scene: fine-tune the paper preset (with a CPU-affordable pretraining schedule), distil
the fast path's student exactly as ``diffclip fewshot`` does, then run both engines over the
same whole-scene tiles on this machine and compare:

* px/s of the teacher (``TileEngine.predict_tile``) and of the student
  (``FastEngine.predict_tile``) on tiles already read, and the speedup;
* label agreement student vs teacher on every labelled pixel (and every valid pixel);
* OA (AA, kappa) of both on the held-out labelled pixels (every labelled pixel that is not a
  shot).

Scenes: ``synthetic`` (a generated two-modality scene, 120 x 120, 64 bands + a DSM, 3 spectra
x 2 heights) and ``salinas`` (the embedded Salinas-A, HSI only).

Usage::

    python benchmarks/fast_path.py --scenes synthetic salinas --out fast_path.json

Nothing here runs in CI; results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run by path (python benchmarks/fast_path.py), the script's folder is on sys.path, not the
# repository root that holds the 'benchmarks' package; with python -m it already is.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks.machine import cpu_model
from diffclip_cli.data import salinas_a_dir
from diffclip_cli.infer.engine import TileEngine
from diffclip_cli.infer.fast import FastEngine
from diffclip_cli.io.labels import read_labels
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.archive import load_model, save_model
from diffclip_cli.model.config import load_preset
from diffclip_cli.model.modelfile import build_classifiers
from diffclip_cli.report.metrics import AccuracyReport
from diffclip_cli.sampling.shots import sample_shots
from diffclip_cli.sampling.tiles import iter_tiles, read_tile
from diffclip_cli.testing import make_scene, write_scene
from diffclip_cli.train.distill import attach_student, distill_student
from diffclip_cli.workflows.fewshot import FewshotRequest, fewshot_scene


def machine() -> str:
    """CPU model, cores, torch threads and versions."""
    return (f"{cpu_model()}, {os.cpu_count()} logical CPUs visible, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def open_scene(name: str, tmp: Path, *, patch_size: float) -> tuple[Scene, Any]:
    """The scene and its labels."""
    if name == "synthetic":
        syn = make_scene(height=120, width=120, hsi_bands=64, lidar_bands=1, n_spectra=3,
                         n_heights=2, patch_size=patch_size, seed=0)
        paths = write_scene(syn, tmp / "synthetic")
        scene = Scene.open(paths["hsi"], [paths["lidar"]])
        return scene, read_labels(paths["labels"], scene.grid, classes=paths["classes"])
    if name == "salinas":
        root = salinas_a_dir()
        scene = Scene.open(root / "hsi.tif")
        return scene, read_labels(root / "labels.tif", scene.grid,
                                  classes=root / "classes.csv")
    raise SystemExit(f"unknown scene {name!r}")


def timed_tiles(engine: Any, tiles: list, shape: tuple[int, int], repeats: int
                ) -> tuple[np.ndarray, float]:
    """Probability map of the scene and the median seconds of one pass over the tiles."""
    out = np.zeros((engine.num_classes, *shape), np.float32)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for data in tiles:
            index = (slice(None), *data.tile.slices)
            out[index] = engine.predict_tile(data)
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def run_scene(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Everything measured on one scene."""
    preset = load_preset("paper").with_overrides(**{"pretrain.epochs": args.pretrain_epochs})
    scene, labels = open_scene(name, tmp, patch_size=args.patch_size)
    cache: Path | None = args.cache
    cached = cache is not None and (cache / f"{name}-teacher.pt").exists()
    with scene:
        start = time.perf_counter()
        if cached:  # quick iterations on the student only; the reported run has no cache
            assert cache is not None
            teacher_bundle = load_model(cache / f"{name}-teacher.pt")
            classifier = build_classifiers(teacher_bundle)
            labels = labels.drop_invalid(scene)
            split = sample_shots(labels, args.shots, seed=args.seed)
        else:
            res = fewshot_scene(scene, labels, FewshotRequest(
                shots=args.shots, preset=preset, pretrain_samples=args.pretrain_samples,
                seed=args.seed, evaluate=False))
            teacher_bundle, classifier = res.bundle, res.members
            labels, split = res.labels, res.split
            if cache is not None:
                cache.mkdir(parents=True, exist_ok=True)
                save_model(teacher_bundle, cache / f"{name}-teacher.pt", overwrite=True)
        fewshot_s = time.perf_counter() - start
        start = time.perf_counter()
        # add_fast_path(...) is distill_student + attach_student; the report is kept here
        student, report = distill_student(scene, teacher_bundle, classifier=classifier,
                                          seed=args.seed, pixels=args.pixels,
                                          **dict(json.loads(args.distill)))
        bundle = attach_student(teacher_bundle, student, report)
        distill_s = time.perf_counter() - start
        path = save_model(bundle, tmp / f"{name}.pt", overwrite=True)
        bundle = load_model(path)  # the fast engine runs from the file, as classify would

        teacher = TileEngine(classifier)
        fast = FastEngine(bundle)
        stats = bundle.scene_stats
        start = time.perf_counter()
        tiles = [read_tile(scene, t, stats=stats)
                 for t in iter_tiles(scene.grid, tile_size=args.tile_size,
                                     halo=teacher.window // 2)]
        read_s = time.perf_counter() - start
        valid = np.zeros(scene.grid.shape, bool)
        for data in tiles:
            valid[data.tile.slices] = data.valid
        n_valid = int(valid.sum())
        map_file = None if cache is None else cache / f"{name}-teacher-map.npz"
        if cached and map_file is not None and map_file.exists():
            saved = np.load(map_file)
            t_map, t_s = saved["probs"], float(saved["seconds"])
        else:
            t_map, t_s = timed_tiles(teacher, tiles, scene.grid.shape, 1)
            if map_file is not None:
                np.savez(map_file, probs=t_map, seconds=t_s)
        if fast.window != teacher.window:
            tiles = [read_tile(scene, t, stats=stats)
                     for t in iter_tiles(scene.grid, tile_size=args.tile_size,
                                         halo=fast.window // 2)]
        s_map, s_s = timed_tiles(fast, tiles, scene.grid.shape, args.repeats)

    t_lab, s_lab = t_map.argmax(0), s_map.argmax(0)
    classes = bundle.require_classes()
    ids = np.asarray(classes.ids)
    test = labels.subset(split.test)
    t_rep = AccuracyReport.from_labels(test.class_ids, ids[t_lab[test.rows, test.cols]],
                                       classes)
    s_rep = AccuracyReport.from_labels(test.class_ids, ids[s_lab[test.rows, test.cols]],
                                       classes)
    lab = labels
    trained = np.zeros(scene.grid.shape, bool)  # pixels whose teacher output was trained on
    trained[report.rows[~report.heldout], report.cols[~report.heldout]] = True
    unseen = ~trained[lab.rows, lab.cols]
    summary = bundle.provenance["fast_path"]
    return {
        "scene": name,
        "teacher_from_cache": cached,
        "grid": list(scene.grid.shape),
        "bands": {"hsi": scene.hsi_bands, "lidar": scene.lidar_bands},
        "classes": len(classes),
        "valid_pixels": n_valid,
        "labelled_pixels": len(lab),
        "test_pixels": len(test),
        "fewshot_seconds": round(fewshot_s, 1),
        "distill_seconds": round(distill_s, 1),
        "distill": summary,
        "tile_size": args.tile_size,
        "read_seconds": round(read_s, 3),
        "teacher_seconds": round(t_s, 2),
        "student_seconds": round(s_s, 4),
        "teacher_px_s": round(n_valid / t_s, 1),
        "student_px_s": round(n_valid / s_s, 1),
        "speedup": round(t_s / s_s, 1),
        "speedup_with_reading": round((t_s + read_s) / (s_s + read_s), 1),
        "agreement_labelled": float((t_lab[lab.rows, lab.cols] == s_lab[lab.rows, lab.cols])
                                    .mean()),
        "agreement_valid": float((t_lab == s_lab)[valid].mean()),
        "agreement_labelled_unseen": float(
            (t_lab[lab.rows, lab.cols] == s_lab[lab.rows, lab.cols])[unseen].mean()),
        "labelled_unseen_pixels": int(unseen.sum()),
        "teacher": {"oa": t_rep.overall_accuracy, "aa": t_rep.average_accuracy,
                    "kappa": t_rep.kappa},
        "student": {"oa": s_rep.overall_accuracy, "aa": s_rep.average_accuracy,
                    "kappa": s_rep.kappa},
        "oa_delta_points": round(100 * (float(s_rep.overall_accuracy or 0.0)
                                        - float(t_rep.overall_accuracy or 0.0)), 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", nargs="+", default=["synthetic", "salinas"])
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--patch-size", type=float, default=8.0,
                        help="typical class patch diameter of the synthetic scene (px)")
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--pretrain-samples", type=int, default=500)
    parser.add_argument("--pixels", type=int, default=8192, help="distillation pixels")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="student timing repeats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for both engines (1: stable on shared CPUs)")
    parser.add_argument("--distill", default="{}",
                        help="JSON of further distillation options (DistillConfig fields)")
    parser.add_argument("--cache", type=Path,
                        help="keep/reuse the teacher and its map here (iterating on the "
                             "student only; reported figures come from runs without it)")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    results = {"machine": machine(), "command": "python " + " ".join(sys.argv),
               "preset": f"paper with pretrain.epochs={args.pretrain_epochs}, "
                         f"{args.pretrain_samples} pretraining windows, {args.shots} shots",
               "threads": args.threads, "synthetic_patch_size": args.patch_size,
               "distill_options": json.loads(args.distill),
               "scenes": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.scenes:
            results["scenes"].append(run_scene(name, args, Path(tmp)))
            if args.out:
                args.out.write_text(json.dumps(results, indent=2))
    print(f"machine: {results['machine']}\n")
    print("| scene | teacher px/s | student px/s | speedup | agreement, labelled px | "
          "agreement, labelled px not distilled on | OA teacher | OA student | delta OA |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results["scenes"]:
        print(f"| {r['scene']} | {r['teacher_px_s']:.0f} | {r['student_px_s']:.0f} | "
              f"{r['speedup']:.0f}x | {100 * r['agreement_labelled']:.2f} % | "
              f"{100 * r['agreement_labelled_unseen']:.2f} % "
              f"({r['labelled_unseen_pixels']} px) | "
              f"{100 * r['teacher']['oa']:.2f} | {100 * r['student']['oa']:.2f} | "
              f"{r['oa_delta_points']:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
