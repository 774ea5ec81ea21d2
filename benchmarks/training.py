"""Wall time of training per stage on a generated Trento-sized scene (what `diffclip fewshot` does).

Generates a 166 x 600 scene with 63 HSI bands and 1 LiDAR channel (Trento's size; classes that
differ in spectrum, in height, or both, see ``diffclip_cli.testing``), writes it as
GeoTIFFs, then runs, for each ``--samples`` value, the same library call as
``diffclip fewshot hsi.tif lidar.tif --labels labels.tif --classes classes.csv``
(``fewshot_scene`` with the fast path, the preset and time budget ``fewshot`` uses without
options unless ``--preset``/``--time-budget`` say otherwise; ``--samples`` pins the windows as
``--pretrain-samples`` does), printing its plan line first:

1. ``pretrain``: masked-diffusion pretraining on that many unlabelled windows (the preset's
   epochs: 400 for ``paper``);
2. ``finetune``: few-shot language-driven fine-tuning on ``--shots`` pixels per class (150
   epochs for ``paper``);
3. ``fast path``: the distillation of the ``--fast`` student (on by default in ``fewshot``);
4. ``evaluate``: scoring every other labelled pixel with the faithful network (reported, not
   part of the training time).

``--epochs N`` times only the first N pretraining epochs and extrapolates the stage to the
preset's epoch count (marked as such in the table): every epoch does the same work.

Examples::

    python benchmarks/training.py                      # the default fewshot: plan vs time taken
    python benchmarks/training.py --preset paper --samples 300 --append docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run by path (python benchmarks/training.py), the script's folder is on sys.path, not the
# repository root that holds the 'benchmarks' package; with python -m it already is.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.fast_path import machine
from diffclip_cli.io.labels import LabelSet, read_labels
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.config import load_preset
from diffclip_cli.testing import make_scene, write_scene
from diffclip_cli.train.budget import default_recipe, format_seconds, parse_duration
from diffclip_cli.workflows.fewshot import FewshotRequest, fewshot_scene

#: Trento: 166 x 600 pixels, 63 HSI bands, 1 LiDAR channel, 6 classes.
TRENTO: dict[str, Any] = {"height": 166, "width": 600, "hsi_bands": 63, "lidar_bands": 1,
                          "n_spectra": 3, "n_heights": 2, "patch_size": 12.0, "noise": 0.05,
                          "seed": 0}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--samples", type=int, nargs="+", default=[None],
                   help="unlabelled pretraining windows (one run per value; default "
                   "fewshot's)")
    p.add_argument("--shots", type=int, default=8, help="labelled pixels per class")
    p.add_argument("--preset", default=None, help="default: what fewshot uses on this device")
    p.add_argument("--time-budget", default=None,
                   help="as fewshot --time-budget (default: fewshot's for the device)")
    p.add_argument("--epochs", type=int, default=None,
                   help="time only this many pretraining epochs and extrapolate")
    p.add_argument("--no-fast", action="store_true", help="skip the fast-path distillation")
    p.add_argument("--no-evaluate", action="store_true", help="skip scoring the test pixels")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--budget", type=float, default=10.0,
                   help="the target for the whole fewshot run, minutes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the records as JSON here")
    p.add_argument("--append", type=Path, help="append the Markdown section to this file")
    return p


def run_one(scene: Scene, labels: LabelSet, args: argparse.Namespace,
            samples: int | None) -> dict[str, Any]:
    """Train once as ``fewshot`` does (``samples`` pins the windows); seconds and accuracy."""
    name, budget = default_recipe("cpu", args.preset, None if args.time_budget is None
                                  else parse_duration(args.time_budget))
    preset = load_preset(name)
    full_epochs = preset.pretrain.epochs
    pinned = [] if samples is None else ["pretrain_windows"]
    if args.epochs is not None:
        preset = preset.with_overrides(**{"pretrain.epochs": args.epochs})
        pinned.append("pretrain_epochs")
    start = time.perf_counter()
    result = fewshot_scene(
        scene, labels,
        FewshotRequest(shots=args.shots, preset=preset, pretrain_samples=samples,
                       seed=args.seed, evaluate=not args.no_evaluate, fast=not args.no_fast,
                       budget=budget, pinned=tuple(pinned)),
        on_plan=lambda plan: print(plan.line(), flush=True))
    seconds = dict(result.timings)
    plan = result.plan
    assert plan is not None
    recipe = plan.recipe
    record: dict[str, Any] = {"preset": name, "budget_s": budget,
                              "samples": recipe.pretrain_windows, "shots": args.shots,
                              "train_pixels": int(result.split.train.size),
                              "pretrain_epochs": recipe.pretrain_epochs,
                              "finetune_epochs": recipe.finetune_epochs,
                              "fast_steps": recipe.distill_steps,
                              "plan": plan.line(), "estimated_s": plan.total_s,
                              "estimated_stage_s": plan.seconds,
                              "extrapolated": args.epochs is not None}
    epoch_s = sorted(h["seconds"] for h in result.pretrain_history)
    record["pretrain_epoch_median_s"] = epoch_s[len(epoch_s) // 2] if epoch_s else None
    if args.epochs is not None:
        # Set-up (statistics, window sampling) once, then every epoch does the same work.
        epochs = [h["seconds"] for h in result.pretrain_history]
        per_epoch = sum(epochs) / len(epochs)
        record["pretrain_epoch_s"] = per_epoch
        record["pretrain_setup_s"] = seconds["pretrain"] - sum(epochs)
        seconds["pretrain"] = record["pretrain_setup_s"] + per_epoch * full_epochs
        record["pretrain_epochs"] = full_epochs
    fast = result.bundle.provenance.get("fast_path") or {}
    record["fast_agreement"] = fast.get("agreement_heldout")
    record["seconds"] = seconds
    record["train_s"] = seconds["pretrain"] + seconds["finetune"]
    record["fewshot_s"] = record["train_s"] + seconds.get("fast path", 0.0)
    record["wall_s"] = time.perf_counter() - start
    if result.report is not None:
        record["oa"] = result.report.overall_accuracy
        record["kappa"] = result.report.kappa
        record["test_pixels"] = int(result.split.test.size)
    return record


def _minutes(s: float) -> str:
    return f"{s / 60:.1f}"


def markdown(records: list[dict[str, Any]], args: argparse.Namespace, load: tuple[str, str]
             ) -> str:
    """The section for docs/benchmarks.md."""
    argv = " ".join(sys.argv[1:])
    lines = [
        "```",
        f"python benchmarks/training.py {argv}".rstrip(),
        "```",
        "",
        f"Machine: {machine()}. Load average {load[0]} at start, {load[1]} at end.",
        "",
        "| preset (budget) | pretraining windows x epochs | fine-tune epochs | fast-path steps "
        "| pretrain (min) | fine-tune (min) | fast path (min) | evaluate (min) | total (min) "
        f"| estimated (min) | estimate off by | total <= {args.budget:g} min | held-out OA "
        "| fast path agreement (held-out) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|",
    ]
    for r in records:
        s = r["seconds"]
        pre = _minutes(s["pretrain"]) + (" (extrapolated)" if r["extrapolated"] else "")
        total = r["wall_s"] if not r["extrapolated"] else r["fewshot_s"] + s.get("evaluate", 0)
        met = "met" if total <= args.budget * 60 else "not met"
        oa = f"{100 * r['oa']:.2f} %" if "oa" in r else "-"
        fast = _minutes(s["fast path"]) if "fast path" in s else "-"
        ev = _minutes(s["evaluate"]) if "evaluate" in s else "-"
        budget = "none" if r["budget_s"] is None else format_seconds(r["budget_s"])
        agree = "-" if r.get("fast_agreement") is None else f"{100 * r['fast_agreement']:.1f} %"
        off = f"{100 * (r['estimated_s'] - total) / total:+.0f} %"
        lines.append(f"| {r['preset']} ({budget}) | {r['samples']:,} x {r['pretrain_epochs']} "
                     f"| {r['finetune_epochs']} | {r['fast_steps']:,} | {pre} "
                     f"| {_minutes(s['finetune'])} | {fast} | {ev} | {_minutes(total)} "
                     f"| {_minutes(r['estimated_s'])} | {off} | {met} | {oa} "
                     f"| {agree} |")
    lines += ["", "Plan lines printed:", ""] + [f"- `{r['plan']}`" for r in records]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = f"{os.getloadavg()[0]:.2f}"
    records = []
    with tempfile.TemporaryDirectory(prefix="diffclip-training-") as tmp:
        paths = write_scene(make_scene(**TRENTO, crs="EPSG:32632"), tmp)
        scene = Scene.open(paths["hsi"], [paths["lidar"]])
        labels = read_labels(paths["labels"], scene.grid, classes=paths["classes"])
        for samples in args.samples:
            record = run_one(scene, labels, args, samples)
            print(json.dumps(record), flush=True)
            records.append(record)
    text = markdown(records, args, (load_start, f"{os.getloadavg()[0]:.2f}"))
    print(text)
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    if args.append:
        with args.append.open("a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
