r"""The spectral-spatial baseline on the development scenes: which scale its CV picks, and its OA.

    python experiments/spatial_baseline.py --seeds 10 [--scenes indian_pines ...] \
        [--components 0]

Prints, per scene and k, the mean OA of the baseline (scale chosen by leave-one-out on the
shots), of each fixed candidate, and how often each candidate was chosen.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

# Run by path, the script's folder is on sys.path, not the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.baselines import rbf_svm
from diffclip_cli.report.baseline import (
    SPATIAL_COMPONENTS,
    SPATIAL_SCALES,
    _svm_predict,
    spectral_spatial_svm,
)
from diffclip_cli.sampling.context import read_context, scene_projection
from diffclip_cli.sampling.normalise import compute_stats
from experiments import lab

CELLS = lab.CELLS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--scenes", nargs="*", default=list(CELLS))
    ap.add_argument("--components", type=int, default=SPATIAL_COMPONENTS,
                    help="principal components smoothed (0: all; the baseline uses 30)")
    ap.add_argument("--json")
    args = ap.parse_args()
    out = {}
    for name in args.scenes:
        s = lab.load(name)
        for k in CELLS[name]:
            rows: dict[str, list[float]] = collections.defaultdict(list)
            chosen: collections.Counter[float] = collections.Counter()
            for seed in range(args.seeds):
                stats = compute_stats(s.scene, seed=seed)
                proj = scene_projection(s.scene, stats, n_components=args.components)
                bands, smooth = read_context(s.scene, s.labels.rows, s.labels.cols,
                                             stats=stats, projection=proj,
                                             scales=SPATIAL_SCALES)
                m = smooth.shape[1] // len(SPATIAL_SCALES)
                sp = s.split(k, seed)
                y = s.labels.index
                pred, choice = spectral_spatial_svm((bands[sp.train], smooth[sp.train]),
                                                    y[sp.train],
                                                    (bands[sp.test], smooth[sp.test]))
                rows["ss-svm"].append(lab.oa(y[sp.test], pred))
                chosen[max(choice.scales, default=0.0)] += 1
                for used in range(len(SPATIAL_SCALES) + 1):
                    x = np.concatenate([bands, smooth[:, :used * m]], axis=1)
                    p = _svm_predict(x[sp.train], y[sp.train], x[sp.test])
                    rows[f"fixed<={SPATIAL_SCALES[used - 1] if used else 0}"].append(
                        lab.oa(y[sp.test], p))
                feats = np.concatenate([s.hsi[:, s.labels.rows, s.labels.cols].T] + (
                    [s.lidar[:, s.labels.rows, s.labels.cols].T] if s.lidar is not None else []),
                    axis=1)
                p = rbf_svm(feats[sp.train], s.labels.class_ids[sp.train], feats[sp.test],
                            seed=seed)
                rows["svm (per pixel)"].append(lab.oa(s.labels.class_ids[sp.test], p))
            summary = {m_: (float(np.mean(v)), float(np.std(v))) for m_, v in rows.items()}
            out[f"{name} k={k}"] = {"summary": summary, "chosen": dict(chosen), "runs": rows}
            print(f"{name} k={k}: " + "  ".join(f"{m_} {a:.1f}±{b:.1f}"
                                                for m_, (a, b) in summary.items())
                  + f"  chosen {dict(chosen)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
