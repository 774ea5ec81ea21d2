"""The schedule the default budget buys against a larger one, on scene folders (no training).

For each scene folder (hsi.tif, optional lidar.tif, labels.tif, classes.csv) and each budget,
print the plan ``diffclip fewshot`` would make by default on this machine (the CPU preset,
``--shots`` per class) and its options. Identical options mean an identical (seeded) run, so
the accuracy of the two budgets is the same by construction.

Example::

    python benchmarks/budget_plans.py ../shared/data/salinas_a ../shared/data/jasper_ridge \\
        ../shared/data/eo_learn --shots 2 5 --budgets 10 40
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffclip_cli.io.labels import read_labels
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.config import load_preset
from diffclip_cli.train.budget import default_recipe
from diffclip_cli.workflows.fewshot import FewshotRequest, plan_fewshot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenes", nargs="+")
    ap.add_argument("--shots", type=int, nargs="+", default=[2, 5])
    ap.add_argument("--budgets", type=float, nargs="+", default=[10, 40], help="minutes")
    args = ap.parse_args()
    for folder in map(Path, args.scenes):
        lidar = [folder / "lidar.tif"] if (folder / "lidar.tif").exists() else []
        with Scene.open(folder / "hsi.tif", lidar) as scene:
            labels = read_labels(folder / "labels.tif", scene.grid,
                                 classes=folder / "classes.csv")
            for shots in args.shots:
                options = set()
                for minutes in args.budgets:
                    name, budget = default_recipe("cpu", None, minutes * 60)
                    plan = plan_fewshot(scene, labels, FewshotRequest(
                        shots=shots, preset=load_preset(name), fast=True, budget=budget))
                    options.add(plan.options())
                    print(f"{folder.name} k={shots} budget {minutes:g} min: {plan.line()}")
                    print(f"    options: {plan.options()}")
                print(f"{folder.name} k={shots}: "
                      + ("same schedule for every budget" if len(options) == 1
                         else "the schedules differ"), flush=True)


if __name__ == "__main__":
    main()
