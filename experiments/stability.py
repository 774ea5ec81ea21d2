"""One fixed split, several seeds of the default recipe: how much a user's map moves with the seed.

The split is drawn once (``--split-seed``); every run trains what ``diffclip fewshot`` trains
without options on this machine (the CPU preset sized to the default time budget, the fast
path built), with its own ``--seeds``, and is scored on the split's test pixels. Also prints
each run's wall time against its plan's estimate.

    python experiments/stability.py indian_pines --shots 5 --split-seed 0 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

# Run by path, the script's folder is on sys.path, not the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffclip_cli.model.config import load_preset
from diffclip_cli.train.budget import Plan, default_recipe
from diffclip_cli.workflows.fewshot import FewshotRequest, fewshot_scene
from experiments import lab


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scene")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--classes", help="another classes.csv (e.g. code names)")
    ap.add_argument("--json")
    args = ap.parse_args()
    s = lab.load(args.scene, classes=args.classes)
    split = s.split(args.shots, args.split_seed)
    name, budget = default_recipe("cpu", None, None)
    preset = load_preset(name)
    runs = []
    for seed in args.seeds:
        plans: list[Plan] = []
        tic = time.perf_counter()
        res = fewshot_scene(s.scene, s.labels, FewshotRequest(
            shots=args.shots, preset=preset, split=split, seed=seed, budget=budget,
            fast=True), on_plan=plans.append)
        wall = time.perf_counter() - tic
        assert res.report is not None
        est = plans[0].total_s
        runs.append({"seed": seed, "oa": 100 * (res.report.overall_accuracy or 0),
                     "aa": 100 * (res.report.average_accuracy or 0),
                     "kappa": 100 * (res.report.kappa or 0), "wall_s": wall,
                     "estimate_s": est, "plan": plans[0].line(),
                     "estimated_stages_s": {k: round(v, 1) for k, v in plans[0].seconds.items()},
                     "stages_s": {k: round(float(v), 1) for k, v in res.timings.items()},
                     "baselines": {b.name: 100 * (b.report.overall_accuracy or 0)
                                   for b in res.baselines},
                     "context": res.bundle.provenance.get("context")})
        r = runs[-1]
        print(f"seed {seed}: OA {r['oa']:.2f} AA {r['aa']:.2f} wall {wall:.0f} s "
              f"(estimate {est:.0f} s, {100 * (est - wall) / wall:+.0f} %) "
              f"baselines {r['baselines']} context {r['context']['scales']}", flush=True)
    oas = [r["oa"] for r in runs]
    print(f"OA mean {np.mean(oas):.2f} std {np.std(oas):.2f} (min {min(oas):.2f}, "
          f"max {max(oas):.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
