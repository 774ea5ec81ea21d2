"""Does ``precision="bf16"`` change the map? fp32 vs bf16 TileEngine on a trained model.

Trains a few-shot classifier of a preset (default ``paper``, with shortened schedules) on the
embedded Salinas-A scene (real AVIRIS data, 204 bands, HSI only), or loads one (``--model``),
then classifies every pixel of the scene tile by tile with the float32 and the bfloat16 engine
and reports: label agreement (share of pixels with the same argmax), the largest and mean
absolute probability difference, each map's overall accuracy on every labelled pixel (for
context: training pixels included), and the throughput of each engine in the same run.

Example::

    python benchmarks/bf16_agreement.py --pretrain-epochs 10 --finetune-epochs 100 --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from diffclip_cli.data import salinas_a_dir
from diffclip_cli.infer.engine import TileEngine
from diffclip_cli.io.labels import read_labels
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.archive import load_model, save_model
from diffclip_cli.model.config import load_preset
from diffclip_cli.model.modelfile import build_classifier
from diffclip_cli.sampling.normalise import SceneStats
from diffclip_cli.sampling.tiles import iter_tiles, read_tile
from diffclip_cli.workflows.fewshot import FewshotRequest, fewshot_scene


def classify(engine: TileEngine, scene: Scene, stats: SceneStats, tile_size: int
             ) -> tuple[np.ndarray, float]:
    """``(K, H, W)`` probabilities of the whole scene and the seconds it took."""
    h, w = scene.grid.shape
    out = np.zeros((engine.num_classes, h, w), dtype=np.float32)
    start = time.perf_counter()
    for tile in iter_tiles(scene.grid, tile_size=tile_size, halo=engine.window // 2):
        rows, cols = tile.slices
        out[:, rows, cols] = engine.predict_tile(read_tile(scene, tile, stats=stats))
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--model", type=Path, default=None, help="a classifier model file")
    parser.add_argument("--save", type=Path, default=None, help="save the trained model here")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--pretrain-samples", type=int, default=1000)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--tile", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    folder = salinas_a_dir()
    with Scene.open(folder / "hsi.tif") as scene:
        labels = read_labels(folder / "labels.tif", scene.grid,
                             classes=folder / "classes.csv")
        if args.model is not None:
            bundle = load_model(args.model)
            train_note = f"model {args.model}"
        else:
            epochs = args.finetune_epochs
            preset = load_preset(args.preset).with_overrides(**{
                "pretrain.epochs": args.pretrain_epochs, "finetune.epochs": epochs,
                "finetune.milestones": [max(1, round(epochs * 2 / 3))]})
            start = time.perf_counter()
            result = fewshot_scene(scene, labels, FewshotRequest(
                shots=args.shots, preset=preset, pretrain_samples=args.pretrain_samples,
                seed=args.seed, evaluate=False))
            bundle = result.bundle
            train_note = (f"preset {args.preset}, {args.pretrain_epochs} pretraining epochs on "
                          f"{args.pretrain_samples} windows, {epochs} fine-tuning epochs, "
                          f"{args.shots} shots/class, seed {args.seed}; trained in "
                          f"{time.perf_counter() - start:.0f} s")
            if args.save is not None:
                save_model(bundle, args.save, overwrite=True)
        stats = bundle.scene_stats
        clf = build_classifier(bundle)
        maps, seconds = {}, {}
        for precision in ("fp32", "bf16"):
            engine = TileEngine(clf, precision=precision)
            classify(engine, scene, stats, 16)  # warm-up
            maps[precision], seconds[precision] = classify(engine, scene, stats, args.tile)
        valid = scene.read(((0, scene.grid.height), (0, scene.grid.width))).valid

    fp32, bf16 = maps["fp32"][:, valid], maps["bf16"][:, valid]
    same = fp32.argmax(0) == bf16.argmax(0)
    agree = float(same.mean())
    diff = np.abs(fp32 - bf16)
    ids = np.asarray(bundle.require_classes().ids)
    lines = [
        f"Salinas-A ({valid.sum()} valid px, {len(labels)} labelled), {train_note}; "
        f"{args.threads} threads, torch {torch.__version__}.",
        "",
        "| | fp32 | bf16 |",
        "|---|---:|---:|",
        f"| px/s (whole scene, tiles of {args.tile}) | {valid.sum() / seconds['fp32']:.0f} | "
        f"{valid.sum() / seconds['bf16']:.0f} |",
    ]
    oa = {}
    for p in ("fp32", "bf16"):
        predicted = ids[maps[p].argmax(0)[labels.rows, labels.cols]]
        oa[p] = float((predicted == labels.class_ids).mean())
    lines += [
        f"| overall accuracy, all labelled px | {100 * oa['fp32']:.2f} % | "
        f"{100 * oa['bf16']:.2f} % |",
        "",
        f"Label agreement fp32 vs bf16: {100 * agree:.3f} % of {valid.sum()} px "
        f"({int((~same).sum())} differ); max |dp| {diff.max():.2e}, "
        f"mean |dp| {diff.mean():.2e}.",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
