"""How much of a split's OA is seed luck, and what averaging fine-tunings buys.

For each split (k shots, protocol seed s) the spatial context is chosen on the shots, then
``--pretrain-seeds`` stage-1 models are trained, each fine-tuned with ``--heads`` seeds; the
script prints every member's OA, the ensemble of the heads of one pretraining, and the
ensemble of everything, on the split's test pixels.

    python experiments/ensemble_probe.py indian_pines --shots 5 --splits 0 1 2 \\
        --pretrain-seeds 2 --heads 4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

# Run by path, the script's folder is on sys.path, not the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffclip_cli.model.config import load_preset
from diffclip_cli.report.scoring import predict_pixels
from diffclip_cli.sampling.normalise import compute_stats
from diffclip_cli.train.spatial import choose_context
from diffclip_cli.workflows.fewshot import FewshotRequest, fewshot_scene
from diffclip_cli.workflows.pretrain import pretrain_scene
from experiments import lab


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scene")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--splits", type=int, nargs="+", default=[0])
    ap.add_argument("--pretrain-seeds", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--override", nargs="*", default=[])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--json")
    args = ap.parse_args()
    preset = load_preset(args.preset)
    if args.override:
        preset = preset.with_overrides(**dict(o.split("=", 1) for o in args.override))
    s = lab.load(args.scene)
    out = []
    for split_seed in args.splits:
        split = s.split(args.shots, split_seed)
        lab_ = s.labels
        test = lab_.subset(split.test)
        rows_all = []
        for pseed in range(args.pretrain_seeds):
            seed = 1000 * split_seed + pseed
            ctx = choose_context(s.scene, compute_stats(s.scene, seed=seed), preset.model,
                                 lab_.rows[split.train], lab_.cols[split.train],
                                 lab_.class_ids[split.train])
            stage1 = pretrain_scene(s.scene, preset=preset, samples=args.samples, seed=seed,
                                    stats=ctx.stats)
            probs = []
            for h in range(args.heads):
                res = fewshot_scene(s.scene, lab_, FewshotRequest(
                    shots=args.shots, preset=preset, pretrained=stage1.bundle, split=split,
                    seed=seed + 100 * h, evaluate=False), baseline=False)
                p = predict_pixels(s.scene, res.bundle, test.rows, test.cols,
                                   classifier=res.classifier)
                probs.append(p)
            ids = np.asarray([c.id for c in lab_.classes])
            member = [lab.oa(test.class_ids, ids[p.argmax(1)]) for p in probs]
            ens = lab.oa(test.class_ids, ids[np.mean(probs, 0).argmax(1)])
            rows_all.append((member, ens, probs))
            print(f"split {split_seed} pretrain {pseed} ctx {ctx.to_dict()['scales']}: members "
                  + " ".join(f"{m:.1f}" for m in member) + f"  head-ensemble {ens:.1f}",
                  flush=True)
        allp = [p for r in rows_all for p in r[2]]
        ids = np.asarray([c.id for c in lab_.classes])
        full = lab.oa(test.class_ids, ids[np.mean(allp, 0).argmax(1)])
        members = [m for r in rows_all for m in r[0]]
        print(f"split {split_seed}: mean member {np.mean(members):.2f} (std {np.std(members):.2f}),"
              f" mean head-ensemble {np.mean([r[1] for r in rows_all]):.2f}, all {full:.2f}",
              flush=True)
        out.append({"split": split_seed, "members": [r[0] for r in rows_all],
                    "head_ensembles": [r[1] for r in rows_all], "all": full})
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
