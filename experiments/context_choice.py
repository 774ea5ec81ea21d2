"""Which spatial context the few-shot pipeline gives each split of the development scenes.

    python experiments/context_choice.py --seeds 10

For every scene, k and protocol seed: the context ``choose_context`` picks for the cpu preset
(scales, the cross-validated accuracies, the paired test's p-value), and how often each was
picked. No training: the choice is made from the shots before any.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffclip_cli.model.config import load_preset
from diffclip_cli.sampling.normalise import compute_stats
from diffclip_cli.train.spatial import choose_context
from experiments import lab

CELLS = lab.CELLS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--scenes", nargs="*", default=list(CELLS))
    ap.add_argument("--json")
    args = ap.parse_args()
    config = load_preset("cpu").model
    out = {}
    for name in args.scenes:
        s = lab.load(name)
        for k in CELLS[name]:
            picks: collections.Counter[float] = collections.Counter()
            runs = []
            for seed in range(args.seeds):
                sp = s.split(k, seed)
                lb = s.labels
                pick = choose_context(s.scene, compute_stats(s.scene, seed=seed), config,
                                      lb.rows[sp.train], lb.cols[sp.train],
                                      lb.class_ids[sp.train])
                scales = pick.choice.scales if pick.choice is not None else ()
                runs.append({"seed": seed, **pick.to_dict()})
                picks[max(scales, default=0.0)] += 1
            out[f"{name} k={k}"] = {"picked": {str(a): b for a, b in picks.items()},
                                    "runs": runs}
            print(f"{name} k={k}: picked {dict(picks)}  p = "
                  + " ".join(f"{r['p_value']:.2g}" for r in runs), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
