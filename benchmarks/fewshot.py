"""Run the paper's few-shot protocol on a dataset and write runs.csv, summary.md, summary.json.

Examples::

    # a MATLAB folder of the paper's layout (HSI.mat, LiDAR.mat, TRLabel.mat, TSLabel.mat)
    python benchmarks/fewshot.py Houston2013/ --shots 2 8 20 --seeds 10 \\
        --methods diffclip clip rf svm --preset paper --out results/houston

    # GeoTIFF inputs (labels: raster or vector)
    python benchmarks/fewshot.py hsi.tif --lidar dsm.tif --labels labels.tif \\
        --classes classes.csv --out results/mine

    # the generated two-modality scene
    python benchmarks/fewshot.py --synthetic --preset tiny --out results/synthetic

Without --preset, --time-budget and recipe options, every DiffCLIP run trains what
``diffclip fewshot`` trains by default on the device: on a CPU the CPU preset sized to the
default time budget, on CUDA the paper preset. The schedule is sized once, before the first
run, as ``fewshot`` sizes it for the largest k and the first seed (fast path included), printed
as its plan line and used by every run, so runs stay comparable.

An interrupted run continues where it stopped when started again with the same --out (a
budget-sized schedule depends on the machine's speed: pass the printed options to resume
elsewhere).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

# Run by path (python benchmarks/fewshot.py), the script's folder is on sys.path, not the
# repository root that holds the 'benchmarks' package; with python -m it already is.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ablations import ABLATIONS
from benchmarks.protocol import (
    ALL_METHODS,
    DEFAULT_METHODS,
    ProtocolConfig,
    ProtocolEvent,
    ProtocolInputs,
    inputs_from_dataset,
    inputs_from_files,
    run_protocol,
)
from diffclip_cli.io.labels import read_labels
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.config import Preset, load_preset
from diffclip_cli.model.device import resolve_device
from diffclip_cli.sampling.defaults import DEFAULT_PRETRAIN_SAMPLES
from diffclip_cli.train.budget import default_recipe, parse_duration, scaled_preset
from diffclip_cli.workflows.fewshot import FewshotRequest, plan_fewshot

#: The generated benchmark scene: 3 spectra x 2 heights = 6 classes; classes sharing a
#: spectrum differ only in LiDAR height, so neither modality alone separates them all.
SYNTHETIC: dict[str, Any] = {"height": 96, "width": 96, "hsi_bands": 32, "lidar_bands": 1,
                             "n_spectra": 3, "n_heights": 2, "patch_size": 10.0, "noise": 0.05,
                             "seed": 0, "crs": None}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("source", nargs="?", help="a folder of .mat files, or the HSI raster")
    p.add_argument("--synthetic", action="store_true",
                   help="generate the two-modality benchmark scene (diffclip_cli.testing) instead")
    p.add_argument("--lidar", nargs="*", default=[], help="LiDAR rasters (with an HSI raster)")
    p.add_argument("--labels", help="every labelled pixel (raster or vector)")
    p.add_argument("--train", help="standard training map (fixed split)")
    p.add_argument("--test", help="standard test map (fixed split)")
    p.add_argument("--classes", help="classes table, CSV id,name[,description]")
    p.add_argument("--class-field", help="class field of vector labels")
    p.add_argument("--name", help="dataset name in the outputs")
    p.add_argument("--paper", choices=["houston2013", "trento", "muufl"],
                   help="show this dataset's published rows (found by itself for .mat folders)")
    p.add_argument("--mode", choices=["random", "fixed"], default="random",
                   help="random: the paper's protocol; fixed: the standard train/test split")
    p.add_argument("--shots", nargs="+", type=int, default=[2, 8, 20],
                   help="shots per class; with --mode fixed, 0 = the whole training map")
    p.add_argument("--seeds", type=int, default=10, help="number of seeds (0..N-1)")
    p.add_argument("--first-seed", type=int, default=0, help="first seed")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   choices=list(ALL_METHODS))
    p.add_argument("--ablations", nargs="*", default=[], choices=list(ABLATIONS),
                   help="ablations to add to --methods")
    p.add_argument("--preset", default=None,
                   help="preset name or .yaml file (default: fewshot's on the device)")
    p.add_argument("--time-budget", default=None,
                   help="as fewshot --time-budget: minutes or 90s, 10m, 1h30m (default: "
                   "fewshot's: 10 min on a CPU without --preset)")
    p.add_argument("--pretrain-epochs", type=int, help="override the preset's")
    p.add_argument("--pretrain-encoders", type=int,
                   help="independent pretrainings; override the preset's")
    p.add_argument("--pretrain-samples", type=int, default=None,
                   help=f"unlabelled windows per pretraining (default "
                   f"{DEFAULT_PRETRAIN_SAMPLES}, fewer to fit a time budget)")
    p.add_argument("--finetune-epochs", type=int, help="override the preset's (milestones "
                   "are scaled with it)")
    p.add_argument("--template", help="prompt template p1..p5 (default: the preset's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--keep-models", action="store_true", help="keep the pretrained models")
    p.add_argument("--restart", action="store_true",
                   help="delete earlier runs in --out instead of resuming")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _preset(args: argparse.Namespace, name: str) -> Preset:
    preset = load_preset(name)
    overrides: dict[str, object] = {}
    if args.pretrain_epochs is not None:
        overrides["pretrain.epochs"] = args.pretrain_epochs
    if args.pretrain_encoders is not None:
        overrides["pretrain.encoders"] = args.pretrain_encoders
    if args.finetune_epochs is not None:
        old = preset.finetune
        scale = args.finetune_epochs / max(1, old.epochs)
        overrides["finetune.epochs"] = args.finetune_epochs
        overrides["finetune.milestones"] = sorted({max(1, round(m * scale))
                                                   for m in old.milestones})
    return preset.with_overrides(**overrides) if overrides else preset


def _inputs(args: argparse.Namespace, out: Path) -> ProtocolInputs:
    if args.synthetic:
        from diffclip_cli.testing import make_scene, write_scene

        paths = write_scene(make_scene(**SYNTHETIC), out / "data")
        return inputs_from_files(paths["hsi"], lidar=[paths["lidar"]], labels=paths["labels"],
                                 classes=paths["classes"], name=args.name or "synthetic")
    if not args.source:
        raise SystemExit("give a dataset folder or an HSI raster, or --synthetic")
    source = Path(args.source)
    if source.is_dir():
        from benchmarks.datasets import load_mat_folder

        dataset = load_mat_folder(source, name=args.name)
        inputs = inputs_from_dataset(dataset, out / "data")
        if args.paper:
            inputs = dataclasses.replace(inputs, paper_key=args.paper)
        return inputs
    return inputs_from_files(source, lidar=args.lidar, labels=args.labels, train=args.train,
                             test=args.test, classes=args.classes,
                             class_field=args.class_field, name=args.name,
                             paper_key=args.paper)


def _fit_budget(args: argparse.Namespace, inputs: ProtocolInputs, preset: Preset,
                budget: float) -> tuple[Preset, int]:
    """The preset and pretraining windows ``fewshot`` would plan in ``budget`` seconds."""
    pinned = [name for name, given in (("pretrain_windows", args.pretrain_samples),
                                       ("pretrain_epochs", args.pretrain_epochs),
                                       ("pretrain_encoders", args.pretrain_encoders),
                                       ("finetune_epochs", args.finetune_epochs))
              if given is not None]
    positive = [k for k in args.shots if k > 0] or [20]
    with Scene.open(inputs.hsi, list(inputs.lidar)) as scene:
        path = inputs.labels or inputs.train
        assert path is not None
        labels = read_labels(path, scene.grid, classes=inputs.classes,
                             class_field=inputs.class_field, layer=inputs.layer)
        plan = plan_fewshot(scene, labels, FewshotRequest(
            shots=max(positive), preset=preset, pretrain_samples=args.pretrain_samples,
            seed=args.first_seed, device=args.device, fast=True, budget=budget,
            pinned=tuple(pinned)))
    print(plan.line(), flush=True)
    print(f"(every run uses it: --preset {preset.name} {plan.options()})", flush=True)
    return scaled_preset(preset, plan.recipe), plan.recipe.pretrain_windows


def main(argv: list[str] | None = None) -> int:
    """Run the protocol from the command line."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = _inputs(args, out)
    methods = tuple(dict.fromkeys([*args.methods, *args.ablations]))
    budget = None if args.time_budget is None else parse_duration(args.time_budget)
    name, budget = default_recipe(resolve_device(args.device).type, args.preset, budget)
    preset = _preset(args, name)
    samples = args.pretrain_samples or DEFAULT_PRETRAIN_SAMPLES
    if budget is not None:
        preset, samples = _fit_budget(args, inputs, preset, budget)
    config = ProtocolConfig(
        preset=preset, shots=tuple(args.shots),
        seeds=tuple(range(args.first_seed, args.first_seed + args.seeds)), methods=methods,
        mode=args.mode, pretrain_samples=samples, template=args.template,
        device=args.device, keep_models=args.keep_models)
    start = time.perf_counter()

    def progress(e: ProtocolEvent) -> None:
        stamp = f"[{time.perf_counter() - start:7.0f} s]"
        if e.kind == "run" and e.record:
            r = e.record
            print(f"{stamp} {e.done}/{e.total} {r['method']} k={r['shots']} seed={r['seed']}: "
                  f"OA {r['oa']:.2f} AA {r['aa']:.2f} kappa {r['kappa']:.2f} "
                  f"(train {r['train_s']:.1f} s, evaluate {r['evaluate_s']:.1f} s)",
                  flush=True)
        elif e.kind == "skip":
            print(f"{stamp} {e.done}/{e.total} {e.method} k={e.shots} seed={e.seed}: done "
                  "before, skipped", flush=True)
        elif e.kind == "pretrain" and e.done == e.total:
            print(f"{stamp} pretraining {e.variant} seed={e.seed}: done ({e.total} steps)",
                  flush=True)

    result = run_protocol(inputs, out, config=config, resume=not args.restart,
                          progress=progress)
    print(result.markdown)
    print(f"wrote {', '.join(str(p) for p in result.paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
