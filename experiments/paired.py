"""Paired differences between methods over the same splits, from one or more ``runs.csv``.

The protocol gives every method the same k-shot split per seed, so methods are compared seed by
seed: for each dataset and k, the mean and standard error of ``reference - method`` over the
seeds both ran, and in how many of them the reference is ahead. Several ``runs.csv`` (e.g. seeds
0-9 and 10-29 run separately) are pooled; a (dataset, method, k, seed) that appears twice is an
error rather than counted twice.

Example::

    python experiments/paired.py docs/results/fewshot-cpu-pixel-eo-learn/runs.csv \\
        docs/results/fewshot-cpu-pixel-s10-19-eo-learn/runs.csv
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.protocol import read_runs

__all__ = ["PairedDifference", "paired_differences"]


@dataclass(frozen=True)
class PairedDifference:
    """``reference - method`` over the seeds both ran, for one dataset and k."""

    dataset: str
    shots: str
    method: str
    seeds: int
    mean: float
    stderr: float
    ahead: int
    reference_mean: float
    method_mean: float


def paired_differences(rows: list[dict[str, Any]], *, reference: str = "diffclip",
                       metric: str = "oa") -> list[PairedDifference]:
    """The paired differences of ``reference`` against every other method.

    Args:
        rows: ``runs.csv`` rows (:func:`benchmarks.protocol.read_runs`), possibly pooled.
        reference: the method the others are compared with.
        metric: ``oa``, ``aa`` or ``kappa``.

    Returns:
        One record per (dataset, k, other method) with at least one seed in common, in the
        order they first appear; ``stderr`` is ``nan`` with a single seed.

    Raises:
        ValueError: a (dataset, method, k, seed) appears more than once.
    """
    scores: dict[tuple[str, str, str], dict[int, float]] = {}
    for row in rows:
        key = (str(row["dataset"]), str(row["shots"]), str(row["method"]))
        per_seed = scores.setdefault(key, {})
        if row["seed"] in per_seed:
            raise ValueError(f"{key[0]} {key[2]} k={key[1]} seed {row['seed']} appears twice")
        per_seed[int(row["seed"])] = float(row[metric])
    out = []
    for (dataset, shots, method), theirs in scores.items():
        ours = scores.get((dataset, shots, reference))
        if method == reference or ours is None:
            continue
        seeds = sorted(set(ours) & set(theirs))
        if not seeds:
            continue
        diffs = [ours[s] - theirs[s] for s in seeds]
        n = len(diffs)
        mean = sum(diffs) / n
        stderr = (math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n)
                  if n > 1 else math.nan)
        out.append(PairedDifference(
            dataset, shots, method, n, mean, stderr, sum(d > 0 for d in diffs),
            sum(ours[s] for s in seeds) / n, sum(theirs[s] for s in seeds) / n))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="runs.csv files (pooled)")
    ap.add_argument("--reference", default="diffclip")
    ap.add_argument("--metric", choices=("oa", "aa", "kappa"), default="oa")
    args = ap.parse_args()
    rows = [row for path in args.runs for row in read_runs(path)]
    print(f"| dataset | k | method | seeds | {args.reference} | method | "
          f"{args.reference} - method | std. error | {args.reference} ahead |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for d in paired_differences(rows, reference=args.reference, metric=args.metric):
        print(f"| {d.dataset} | {d.shots} | {d.method} | {d.seeds} | {d.reference_mean:.2f} | "
              f"{d.method_mean:.2f} | {d.mean:+.2f} | {d.stderr:.2f} | {d.ahead} of {d.seeds} |")


if __name__ == "__main__":
    main()
