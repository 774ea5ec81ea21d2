"""Members fine-tuned from different stage-1 encoders, against members from one.

``head_probe.py`` caches one stage-1 model per split (its seed, its context chosen on its
shots). Splits whose shots chose the same context scales have stage-1 models that read the same
inputs and differ by their pretraining seed (initialisation, unlabelled windows, masks, noise)
and their normalisation sample: encoders trained independently on the same scene. Pretraining
uses no labels, so any of them is a legitimate start for any split's fine-tuning.

For each split, the members are fine-tuned from the split's own encoder and the other cached
encoders with the same scales (in turn, as ``pretrain.encoders`` spreads them), each reading
the windows with its own statistics, and scored as ``head_probe.py`` scores (the same test
pixels): the few-shot stage of ``pretrain.encoders: 4`` without paying for new pretrainings.

    python experiments/encoder_mix.py indian_pines --shots 5 --splits 0 1 2 3 4 5 6 7 8 9 \
        --cache /work/logs/head/cache --heads text lin codes --json mix.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np

# Run by path, the script's folder is on sys.path, not the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ablations import LinearHeadClassifier, finetune_linear_head
from diffclip_cli.model.archive import load_model
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.config import load_preset
from diffclip_cli.model.modelfile import build_network
from diffclip_cli.model.prompts import build_prompts
from diffclip_cli.model.text import Vocabulary
from diffclip_cli.sampling.windows import read_windows
from diffclip_cli.train.data import WindowData
from diffclip_cli.train.finetune import finetune, member_seed
from experiments import lab
from experiments.head_probe import member_probs, scores, split_pixels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scene")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--splits", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--heads", nargs="+", default=["text", "lin", "codes"])
    ap.add_argument("--test-pixels", type=int, default=4000)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--cache", default="/tmp/head-probe-cache")
    ap.add_argument("--json")
    args = ap.parse_args()
    preset = load_preset("cpu")
    members = preset.finetune.members
    s = lab.load(args.scene)
    lab_ = s.labels
    names = [c.name for c in lab_.classes]
    prompts = {"text": build_prompts(names, template=preset.model.template),
               "codes": build_prompts([f"class {i + 1}" for i in range(len(names))],
                                      template=preset.model.template)}
    ids = np.asarray([c.id for c in lab_.classes])
    bundles = {}
    for split_seed in args.splits:
        path = Path(args.cache) / f"{s.name}-k{args.shots}-s{split_seed}-n{args.samples}.pt"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run head_probe.py on split {split_seed} first")
        bundles[split_seed] = load_model(path)
    out: dict[str, dict[str, object]] = {}
    for split_seed in args.splits:
        scales = bundles[split_seed].provenance["context"]["scales"]
        peers = [p for p in args.splits
                 if p != split_seed and bundles[p].provenance["context"]["scales"] == scales]
        encoders = ([split_seed, *peers] * members)[:members]
        train, test = split_pixels(s, args.shots, split_seed, args.test_pixels)
        for head in args.heads:
            probs = []
            for m, e in enumerate(encoders):
                bundle = bundles[e]
                w, stats = bundle.config.window, bundle.scene_stats
                data = WindowData(read_windows(s.scene, train.rows, train.cols, size=w,
                                               stats=stats), train.index)
                ew = read_windows(s.scene, test.rows, test.cols, size=w, stats=stats)
                seed = member_seed(split_seed, m)
                net = build_network(bundle)
                if head == "lin":
                    model = LinearHeadClassifier(net, num_classes=len(names), seed=seed)
                    finetune_linear_head(model, data, preset.finetune, seed=seed)
                    probs.append(member_probs(model, ew))
                    continue
                pr = prompts[head]
                clf = DiffCLIPClassifier(net, vocabulary=Vocabulary.build(pr), seed=seed)
                clf.set_prompts(pr)
                finetune(clf, data, copy.copy(pr), preset.finetune, seed=seed)
                probs.append(member_probs(clf, ew))
            oa, member_oa = scores(probs, test, ids)
            votes = [p.argmax(1) for p in probs]
            disagree = float(np.mean([(a != b).mean() for i, a in enumerate(votes)
                                      for b in votes[i + 1:]])) * 100
            out[f"{split_seed}-{head}"] = {"oa": round(oa, 2), "encoders": encoders,
                                           "members": [round(x, 2) for x in member_oa],
                                           "disagree": round(disagree, 2)}
            print(f"{args.scene} k={args.shots} split {split_seed} {head:<6} encoders "
                  f"{encoders} OA {oa:6.2f} members "
                  f"{' '.join(f'{x:.1f}' for x in member_oa)} disagree {disagree:.1f}",
                  flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(out, indent=1))
    for head in args.heads:
        v = [r["oa"] for k, r in out.items() if k.endswith(f"-{head}")]
        print(f"{head:<6} mean {np.mean(v):6.2f}")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
