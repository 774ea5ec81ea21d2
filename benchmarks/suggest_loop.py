"""A simulated user of ``diffclip suggest``: rounds of suggestions against random pixels.

For each scene and seed: 2 labelled pixels per class are drawn (the protocol's ``sample_shots``
with ``--start-shots``); a model is trained with the default recipe (``diffclip fewshot``
without options: the CPU preset, which the default budget leaves whole on these scenes; the
fast path is left out, it does not change the model's accuracy); then for each strategy
(``--strategies``: the shipped default and ``random``), ``--rounds`` times: the strategy
picks ``2 x K`` pixels
(K classes) among the labelled pixels not yet used (the simulated user reads their class from
the full ground truth, so only ground-truth pixels may be picked), they join the shots, and
the model is trained again. Every model is scored on the labelled pixels that the strategy
never picked nor started from. Pretrained models are reused across rounds when the spatial
context chosen on the shots is the same (stage 1 does not see the labels).

    python benchmarks/suggest_loop.py ../shared/data/indian_pines --seeds 5 --out DIR

Writes ``DIR/runs.csv`` (scene, seed, strategy, round, shots, oa, aa, kappa, test pixels,
seconds) and ``DIR/summary.md`` (mean OA per strategy and round).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.protocol import _all_labels, inputs_from_files
from diffclip_cli.infer.engine import TileEngine
from diffclip_cli.infer.predict import auto_tile_size
from diffclip_cli.infer.suggest import suggest_pixels
from diffclip_cli.io.labels import LabelSet
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.config import load_preset
from diffclip_cli.model.modelfile import ModelBundle
from diffclip_cli.sampling.normalise import compute_stats
from diffclip_cli.sampling.shots import Split, sample_shots
from diffclip_cli.train.budget import default_recipe
from diffclip_cli.train.spatial import choose_context
from diffclip_cli.workflows.fewshot import FewshotRequest, fewshot_scene
from diffclip_cli.workflows.pretrain import pretrain_scene


def _train(scene: Scene, labels: LabelSet, used: np.ndarray, *, preset_name: str, seed: int,
           cache: dict[Any, ModelBundle]) -> Any:
    """The default recipe on the shots ``used``; scored on every other labelled pixel.

    The CPU preset in full: on the development scenes the default budget cuts nothing.
    """
    preset = load_preset(preset_name)
    train = np.sort(used)
    test = np.setdiff1d(np.arange(len(labels)), train)
    split = Split(train, test)
    picked = choose_context(scene, compute_stats(scene, seed=seed), preset.model,
                            labels.rows[train], labels.cols[train], labels.class_ids[train])
    key = (seed, None if picked.stats.context is None else picked.stats.context.scales)
    if key not in cache:
        cache[key] = pretrain_scene(scene, preset=preset, seed=seed, stats=picked.stats).bundle
    return fewshot_scene(scene, labels, FewshotRequest(
        shots=0, preset=preset, pretrained=cache[key], split=split, seed=seed),
        baseline=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenes", nargs="+", help="scene folders (hsi.tif, labels.tif, classes.csv"
                    "[, lidar.tif])")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds first-seed .. first-seed + seeds - 1 (more seeds in another run)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--start-shots", type=int, default=2)
    ap.add_argument("--per-round", type=float, default=2.0,
                    help="pixels per round, as a multiple of the number of classes")
    ap.add_argument("--strategies", nargs="+", default=["cluster", "random"])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    preset_name, _ = default_recipe("cpu", None, None)
    rows_out: list[dict[str, Any]] = []
    for folder in map(Path, args.scenes):
        lidar = [folder / "lidar.tif"] if (folder / "lidar.tif").exists() else []
        inputs = inputs_from_files(folder / "hsi.tif", lidar=lidar,
                                   labels=folder / "labels.tif",
                                   classes=folder / "classes.csv", name=folder.name)
        with Scene.open(inputs.hsi, list(inputs.lidar)) as scene:
            labels = _all_labels(scene, inputs)
            k = len(labels.classes)
            per_round = max(1, round(args.per_round * k))
            tile = auto_tile_size(scene.hsi_bands + scene.lidar_bands)
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                cache: dict[Any, ModelBundle] = {}
                start = sample_shots(labels, args.start_shots, seed=seed).train
                tic = time.perf_counter()
                base = _train(scene, labels, start, preset_name=preset_name, seed=seed,
                              cache=cache)
                record = {"scene": folder.name, "seed": seed, "round": 0, "shots": start.size,
                          "seconds": round(time.perf_counter() - tic, 1)}
                for strategy in args.strategies:
                    rows_out.append({**record, "strategy": strategy,
                                     **_scores(base.report)})
                    used, result = start.copy(), base
                    for rnd in range(1, args.rounds + 1):
                        tic = time.perf_counter()
                        free = np.setdiff1d(np.arange(len(labels)), used)
                        engine = TileEngine(result.members, batch_size=None)
                        found = suggest_pixels(
                            scene, engine, result.bundle.scene_stats, per_round,
                            strategy=strategy, exclude=(labels.rows[used], labels.cols[used]),
                            within=(labels.rows[free], labels.cols[free]), tile_size=tile,
                            seed=1000 * seed + rnd)
                        key = labels.rows * scene.grid.width + labels.cols
                        new = np.flatnonzero(np.isin(
                            key, found.rows * scene.grid.width + found.cols))
                        used = np.union1d(used, new)
                        result = _train(scene, labels, used, preset_name=preset_name,
                                        seed=seed, cache=cache)
                        rows_out.append({"scene": folder.name, "seed": seed, "round": rnd,
                                         "shots": used.size, "strategy": strategy,
                                         "seconds": round(time.perf_counter() - tic, 1),
                                         **_scores(result.report)})
                        print(json.dumps(rows_out[-1]), flush=True)
                        _write(out, rows_out)
    _write(out, rows_out)


def _scores(report: Any) -> dict[str, Any]:
    return {"oa": round(100 * (report.overall_accuracy or 0), 3),
            "aa": round(100 * (report.average_accuracy or 0), 3),
            "kappa": round(100 * (report.kappa or 0), 3), "test_pixels": report.n_pixels}


def _write(out: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    fields = ["scene", "seed", "strategy", "round", "shots", "oa", "aa", "kappa",
              "test_pixels", "seconds"]
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows([{k: r.get(k) for k in fields} for r in rows])
    table: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in rows:
        table[(r["scene"], r["strategy"], r["round"])].append(float(r["oa"]))
    lines = ["| scene | strategy | round | runs | OA % (mean +- std) |", "|---|---|---:|---:|---:|"]
    for (scene, strategy, rnd), v in sorted(table.items()):
        lines.append(f"| {scene} | {strategy} | {rnd} | {len(v)} | "
                     f"{np.mean(v):.2f} +- {np.std(v):.2f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
