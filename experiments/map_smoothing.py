"""Spatial regularisation of the map: does smoothing the class probabilities pay, and where?

Issue 23 lists "spatial regularisation of the map" among the directions for Indian Pines
(fields far wider than a pixel). For each split the recipe's model is rebuilt as
``experiments/head_probe.py`` does (one cached stage-1 model per split, the spatial context
chosen on the shots, ``finetune.members`` fine-tunings of the prompts averaged), every pixel
of the scene is scored, and the probability maps are filtered before the argmax:

* ``none``: the recipe's map;
* ``gauss<s>``: a Gaussian of standard deviation ``s`` pixels on each class's probability;
* ``guided<r>``: an edge-preserving (guided) filter of radius ``r`` on each class's
  probability, guided by the scene's first principal component (He et al. 2013; the filter
  of Kang et al. 2014's "EPF" spectral-spatial classifier): it smooths inside regions of
  like spectra and stops at their edges;
* ``mode<r>``: the most frequent class in a ``(2r+1)`` square (a majority filter).

OA is scored on all the split's test pixels.

    python experiments/map_smoothing.py indian_pines --shots 5 --splits 0 1 2 3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

# Run by path, the script's folder is on sys.path, not the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffclip_cli.model.config import load_preset
from diffclip_cli.model.prompts import build_prompts
from diffclip_cli.sampling.context import fit_projection
from diffclip_cli.sampling.windows import read_windows
from diffclip_cli.train.data import WindowData
from experiments import lab
from experiments.head_probe import fit_members, member_probs, stage1_model


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter of ``src`` by the grey ``guide`` (both ``(H, W)``)."""
    size = 2 * r + 1

    def box(a: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(a, size=size, mode="reflect")

    mg, ms = box(guide), box(src)
    cov = box(guide * src) - mg * ms
    var = box(guide * guide) - mg * mg
    a = cov / (var + eps)
    b = ms - a * mg
    return box(a) * guide + box(b)


def first_component(hsi: np.ndarray) -> np.ndarray:
    """The scene's first principal component (the package's projection, fitted on a
    regular sample of the standardised bands), scaled to [0, 1]."""
    c = hsi.shape[0]
    z = (hsi - hsi.mean(axis=(1, 2), keepdims=True)) / (hsi.std(axis=(1, 2), keepdims=True)
                                                          + 1e-9)
    sample = z.reshape(c, -1).T[:: max(1, z[0].size // 5000)]
    pc = fit_projection(sample, 1).apply(z)[0].astype(np.float64)
    return (pc - pc.min()) / (np.ptp(pc) + 1e-12)


def smooth(variant: str, probs: np.ndarray, guide: np.ndarray) -> np.ndarray:
    """The class index map of ``probs`` ``(K, H, W)`` after the variant's filter."""
    if variant == "none":
        return probs.argmax(0)
    if variant.startswith("gauss"):
        s = float(variant[5:])
        return np.stack([ndimage.gaussian_filter(p, s, mode="reflect") for p in probs]).argmax(0)
    if variant.startswith("guided"):
        r = int(variant[6:])
        return np.stack([guided_filter(guide, p, r, 0.01 ** 2) for p in probs]).argmax(0)
    if variant.startswith("mode"):
        r = int(variant[4:])
        best = probs.argmax(0)
        votes = np.stack([ndimage.uniform_filter((best == k).astype(np.float32), 2 * r + 1,
                                                 mode="reflect") for k in range(len(probs))])
        return votes.argmax(0)
    raise ValueError(variant)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scene")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--splits", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=[
        "none", "gauss1", "gauss2", "gauss4", "guided2", "guided4", "mode1", "mode2"])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--cache", default="/tmp/head-probe-cache")
    ap.add_argument("--json")
    args = ap.parse_args()
    preset = load_preset("cpu")
    s = lab.load(args.scene)
    lab_ = s.labels
    names = [c.name for c in lab_.classes]
    prompts = build_prompts(names, template=preset.model.template)
    ids = np.asarray([c.id for c in lab_.classes])
    h, w = s.scene.grid.height, s.scene.grid.width
    guide = first_component(s.hsi)
    out = []
    for split_seed in args.splits:
        split = s.split(args.shots, split_seed)
        train, test = lab_.subset(split.train), lab_.subset(split.test)
        bundle = stage1_model(s, train, args.shots, split_seed, preset, args.samples,
                              Path(args.cache))
        stats, win = bundle.scene_stats, bundle.config.window
        data = WindowData(read_windows(s.scene, train.rows, train.cols, size=win, stats=stats),
                          train.index)
        members = fit_members("text", bundle, data, prompts, len(names),
                              preset.finetune.members, split_seed, preset.finetune)
        flat = np.arange(h * w)
        flat_probs = np.zeros((len(names), h * w), np.float32)
        for start in range(0, h * w, 2048):
            part = flat[start:start + 2048]
            ww = read_windows(s.scene, part // w, part % w, size=win, stats=stats)
            flat_probs[:, part] = np.mean([member_probs(m, ww) for m in members], 0).T
        probs = flat_probs.reshape(len(names), h, w)
        row: dict[str, Any] = {"split": split_seed,
                                  "scales": bundle.provenance["context"]["scales"]}
        for variant in args.variants:
            pred = ids[smooth(variant, probs, guide)[test.rows, test.cols]]
            row[variant] = round(lab.oa(test.class_ids, pred), 2)
        out.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
    for variant in args.variants:
        v = [r[variant] for r in out]
        d = [r[variant] - r["none"] for r in out]
        print(f"{variant:<10} mean {np.mean(v):6.2f} vs none {np.mean(d):+6.2f} "
              f"(ahead on {sum(x > 0 for x in d)}/{len(d)})")


if __name__ == "__main__":
    main()
