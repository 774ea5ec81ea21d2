"""The few-shot head on one pretrained encoder per split: prompts, a linear head, and why.

For each split (k shots, protocol seed s) the spatial context is chosen on the shots and one
stage-1 model is trained (the ``cpu`` preset, as ``diffclip fewshot`` does); every head
variant is then fine-tuned from copies of it (``finetune.members`` members each, their
probabilities averaged, as the product does) and scored on the split's test pixels
(``--test-pixels`` of them, the same for every variant):

* ``text``: the recipe (class prompts, cosine logits, the symmetric loss);
* ``codes``: the recipe with the class names replaced by ``class 1`` .. ``class K``;
* ``lin``: the protocol's ``no-text`` (a linear head, cross-entropy);
* ``spread`` / ``spread-codes``: the recipe after a label-free warm-up of the text side
  alone that pulls the K prompt embeddings apart (``--spread-steps`` Adam steps on the mean
  squared cosine between different prompts), from their near-collinear start;
* ``proto``, ``bias``, ``unnorm``, ``i2t`` (``experiments/finetune_probe.py``'s controls:
  free class vectors, a learnt offset per class, no image normalisation, the image-to-text
  half of the loss alone);
* ``t<temperature>`` (e.g. ``t0.15``): the recipe with another initial temperature;
* ``lr<factor>`` (e.g. ``lr3``): the recipe with the text side's learning rate multiplied;
* ``biaslr<factor>``: ``bias`` with the offsets' learning rate multiplied (they cannot move
  far in 60 epochs at the recipe's rate);
* ``gain`` / ``gainlr<factor>``: a learnt length per class prompt (a class whose windows
  spread can get a wider region, as with a linear head's longer weight vector);
* ``elr<factor>`` (e.g. ``elr0.1``): the image encoder's learning rate multiplied (the
  heads keep the recipe's);
* ``lp<n>`` (e.g. ``lp20``): the image encoder frozen for the first ``n`` epochs, then
  fine-tuned with the rest (LP-FT; ``lp60``: frozen throughout);
* ``lin-elr<factor>``, ``lin-lp<n>``: the same for the linear head;
* ``reinit-<part>`` / ``lin-reinit-<part>`` (``blocks``, ``b1``: the last block, ``stem``):
  that part of stage 1's encoder drawn afresh for each member from the member's seed, the
  rest pretrained (members that differ where a random start makes them differ);
* ``rand-<variant>`` (e.g. ``rand-text``, ``rand-lin``, ``rand-lp20``): the variant from an
  image encoder never pretrained (the protocol's ``clip`` start: one random encoder per
  split, copied into every member), the control that says what stage 1 adds;
* ``tpl`` / ``tpl-codes``: member m prompts with the paper's template ``p<m+1>`` (p1..p4)
  instead of every member with ``p4``;
* ``pl<c>`` / ``lin-pl<c>`` (e.g. ``pl10``): the scene's unlabelled pixels at the few-shot
  stage. The members (prompts, or the linear head) are fine-tuned on the shots, score a
  pool of ``--pool`` random scene pixels (any pixel, labelled in the ground truth or not:
  the product does not know which), and the pool pixels on which every member agrees give
  up to ``c`` pseudo-labels per class (the most confident by the members' mean
  probability); fresh members are then fine-tuned from stage 1 on the shots plus the
  pseudo-labels. ``pls<c>``: the same, a pool pixel counts only where its 3 x 3
  neighbours' mean probability agrees (the fields are wider than a pixel). ``plr<c>``: up
  to ``c`` per class drawn at random among the agreed pixels (coverage of the class, not
  its most typical pixels).

Besides OA the probe reports how often two members disagree on a test pixel (the diversity
an average of members can use).

Stage-1 models are cached in ``--cache`` (one per scene, split and sample size).

    python experiments/head_probe.py indian_pines --shots 5 --splits 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Run by path, the script's folder is on sys.path, not the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import ablations
from benchmarks.ablations import LinearHeadClassifier, finetune_linear_head
from diffclip_cli.model.archive import load_model, save_model
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.config import load_preset
from diffclip_cli.model.modelfile import build_network
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.prompts import build_prompts
from diffclip_cli.model.text import Vocabulary
from diffclip_cli.sampling.context import compute_context
from diffclip_cli.sampling.normalise import SceneStats, compute_stats
from diffclip_cli.sampling.windows import read_windows
from diffclip_cli.train.data import WindowData
from diffclip_cli.train.finetune import class_contrastive_loss, finetune, member_seed
from diffclip_cli.train.spatial import choose_context
from diffclip_cli.workflows.pretrain import pretrain_scene
from experiments import lab
from experiments.finetune_probe import (
    BiasedClassifier,
    PrototypeClassifier,
    UnnormalisedImageClassifier,
    _image_to_text_only,
    ft_module,
)

_make_optimizer = ft_module.make_optimizer


def text_lr_optimizer(factor: float, prefix: str = "text."):
    """``make_optimizer`` with the learning rate of the parameters whose names start with
    ``prefix`` (the text side, or ``beta``: the offsets of ``bias``) multiplied by ``factor``."""
    def make(model, cfg):
        optimizer, scheduler = _make_optimizer(model, cfg)
        text = [p for n, p in model.named_parameters() if n.startswith(prefix)]
        ids = {id(p) for p in text}
        group = optimizer.param_groups[0]
        group["params"] = [p for p in group["params"] if id(p) not in ids]
        optimizer.add_param_group({"params": text, "lr": cfg.lr * factor,
                                   "initial_lr": cfg.lr * factor})
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
        return optimizer, scheduler
    return make


class GainClassifier(DiffCLIPClassifier):
    """The recipe's head with a learnt length per class prompt (initially 1): a class whose
    windows spread can get a longer vector, as in a linear head (a research control)."""

    def __init__(self, net, *, vocabulary: Vocabulary, classes: int, seed: int) -> None:
        super().__init__(net, vocabulary=vocabulary, seed=seed)
        self.gain = torch.nn.Parameter(torch.ones(classes))

    def encode_text(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        return super().encode_text(ids) * self.gain[:, None]

    def text_features(self) -> torch.Tensor:
        return self.encode_text()


def encoder_optimizer(factor: float = 1.0, frozen_epochs: int = 0):
    """``make_optimizer`` with the image encoder (``net.*``) in its own group: its learning
    rate multiplied by ``factor`` and zero for the first ``frozen_epochs`` epochs; the
    recipe's step decay for both groups."""
    def make(model, cfg):
        named = [(n, p) for n, p in model.named_parameters() if not n.startswith("net.decoders.")]
        enc = [p for n, p in named if n.startswith("net.")]
        rest = [p for n, p in named if not n.startswith("net.")]
        optimizer = torch.optim.Adam([{"params": enc, "lr": cfg.lr * factor},
                                      {"params": rest, "lr": cfg.lr}],
                                     weight_decay=cfg.weight_decay)

        def decay(epoch: int) -> float:
            return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)

        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, [lambda e: decay(e) * (e >= frozen_epochs), decay])
        return optimizer, scheduler
    return make


def start_network(bundle, variant: str, split_seed: int):
    """The image side a member starts from: stage 1's, or (``rand-``) a random one."""
    if not variant.startswith("rand-"):
        return build_network(bundle)
    return DiffCLIPNet(bundle.config, hsi_bands=bundle.hsi_bands,
                       lidar_bands=bundle.lidar_bands, seed=split_seed,
                       context_bands=bundle.scene_stats.context_bands())


#: ``reinit-<part>`` variants: the pretrained encoder's parameters re-initialised per member.
REINIT = {"blocks": ("blocks.",), "b1": ("blocks.1.",), "stem": ("stems.",)}


def reinit_start(net, variant: str, seed: int):
    """``net`` (stage 1's) with the parameters of a ``reinit-<part>`` variant drawn afresh
    from ``seed`` (the member's): members that share the rest of the pretrained encoder and
    differ there."""
    part = variant.removeprefix("lin-").removeprefix("reinit-")
    fresh = DiffCLIPNet(net.config, hsi_bands=net.hsi_bands, lidar_bands=net.lidar_bands,
                        seed=seed, context_bands=net.context_bands)
    state = fresh.state_dict()
    for key, value in net.state_dict().items():
        if not key.startswith(REINIT[part]):
            state[key] = value
    fresh.load_state_dict(state)
    return fresh


def optimizer_of(variant: str):
    """The optimiser factory of an ``elr``/``lp`` variant, or None (the recipe's)."""
    v = variant.removeprefix("rand-").removeprefix("lin-")
    if v.startswith("elr"):
        return encoder_optimizer(float(v[3:]))
    if v.startswith("lp") and v[2:].isdigit():
        return encoder_optimizer(frozen_epochs=int(v[2:]))
    return None


def make_head(variant: str, net, vocab: Vocabulary, k: int, seed: int) -> DiffCLIPClassifier:
    """The classifier of a variant (the research controls of finetune_probe.py)."""
    if variant.startswith("proto"):
        return PrototypeClassifier(net, vocabulary=vocab, classes=k, seed=seed)
    if variant.startswith("bias"):
        return BiasedClassifier(net, vocabulary=vocab, classes=k, seed=seed)
    if variant.startswith("gain"):
        return GainClassifier(net, vocabulary=vocab, classes=k, seed=seed)
    if variant.startswith("unnorm"):
        return UnnormalisedImageClassifier(net, vocabulary=vocab, seed=seed)
    clf = DiffCLIPClassifier(net, vocabulary=vocab, seed=seed)
    if variant.startswith("t") and variant[1:2].isdigit():
        with torch.no_grad():
            clf.logit_scale.fill_(math.log(1.0 / float(variant[1:])))
    return clf


def off_diagonal_cosine(z: torch.Tensor) -> torch.Tensor:
    """The cosines between different rows of unit vectors ``z``."""
    sim = z @ z.T
    return sim[~torch.eye(len(z), dtype=torch.bool)]


def spread_prompts(clf: DiffCLIPClassifier, steps: int, lr: float = 1e-3) -> tuple[float, float]:
    """Pull the class prompts' embeddings apart before fine-tuning (text side only).

    Returns the mean off-diagonal cosine before and after.
    """
    params = list(clf.text.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    with torch.no_grad():
        before = float(off_diagonal_cosine(clf.encode_text()).mean())
    for _ in range(steps):
        loss = off_diagonal_cosine(clf.encode_text()).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(off_diagonal_cosine(clf.encode_text()).mean())
    return before, after


def stage1_model(s: lab.LabScene, train, shots: int, split_seed: int, preset, samples: int,
                 cache: Path, *, all_scales: bool = False):
    """The split's stage-1 model (context chosen on the shots, as the product trains),
    from ``cache`` when it is there. ``all_scales``: where the shots choose context, every
    candidate scale instead of the prefix their cross-validation picks."""
    tag = "-allscales" if all_scales else ""
    cached = cache / f"{s.name}-k{shots}-s{split_seed}-n{samples}{tag}.pt"
    if cached.exists():
        return load_model(cached)
    ctx = choose_context(s.scene, compute_stats(s.scene, seed=split_seed),
                         preset.model, train.rows, train.cols, train.class_ids)
    if all_scales and ctx.choice is not None and ctx.choice.scales:
        scales = tuple(float(x) for x in preset.model.context_scales)
        stats = compute_context(s.scene, SceneStats(ctx.stats.hsi, ctx.stats.lidar), scales,
                                n_components=preset.model.context_components,
                                projection=ctx.projection)
        ctx = dataclasses.replace(ctx, stats=stats,
                                  choice=dataclasses.replace(ctx.choice, scales=scales))
    bundle = pretrain_scene(s.scene, preset=preset, samples=samples,
                            seed=split_seed, stats=ctx.stats).bundle
    bundle.provenance["context"] = ctx.to_dict()
    cached.parent.mkdir(parents=True, exist_ok=True)
    save_model(bundle, cached, overwrite=True)
    return bundle


def fit_members(kind: str, bundle, data: WindowData, pr: list[str] | None, k: int,
                members: int, split_seed: int, cfg) -> list:
    """``members`` fine-tunings of ``kind`` (``lin`` or the prompts) from the stage-1 model."""
    out: list = []
    for m in range(members):
        seed = member_seed(split_seed, m)
        net = build_network(bundle)
        if kind == "lin":
            head = LinearHeadClassifier(net, num_classes=k, seed=seed)
            finetune_linear_head(head, data, cfg, seed=seed)
            out.append(head)
            continue
        assert pr is not None
        clf = make_head("text", net, Vocabulary.build(pr), len(pr), seed)
        clf.set_prompts(pr)
        finetune(clf, data, copy.copy(pr), cfg, seed=seed)
        out.append(clf)
    return out


def member_probs(model, windows) -> np.ndarray:
    if isinstance(model, LinearHeadClassifier):
        return model.predict_proba(windows.hsi, windows.lidar)
    return model.predict_proba(torch.from_numpy(windows.hsi), None if windows.lidar is None
                               else torch.from_numpy(windows.lidar)).numpy()


def pseudo_labels(probs: np.ndarray, per_class: int, rng: np.random.Generator | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pool positions and class indices of up to ``per_class`` pseudo-labels per class: pool
    pixels on which every member votes for the members' mean choice, most confident first
    (``rng``: drawn at random among them)."""
    mean = probs.mean(0)
    pred = mean.argmax(1)
    agree = (probs.argmax(2) == pred[None]).all(0)
    conf = mean.max(1)
    pos, cls = [], []
    for c in range(mean.shape[1]):
        cand = np.flatnonzero(agree & (pred == c))
        if rng is None:
            cand = cand[np.argsort(-conf[cand], kind="stable")][:per_class]
        else:
            cand = np.sort(rng.permutation(cand)[:per_class])
        pos.append(cand)
        cls.append(np.full(len(cand), c))
    return np.concatenate(pos), np.concatenate(cls)


def split_pixels(s: lab.LabScene, shots: int, split_seed: int, test_pixels: int):
    """The split's training pixels and up to ``test_pixels`` of its test pixels (a sample
    drawn with the split's seed, the same for every variant and script)."""
    split = s.split(shots, split_seed)
    rng = np.random.default_rng(split_seed)
    test_idx = split.test if len(split.test) <= test_pixels else np.sort(
        rng.choice(split.test, test_pixels, replace=False))
    return s.labels.subset(split.train), s.labels.subset(test_idx)


def scores(probs: list[np.ndarray], test, ids: np.ndarray) -> tuple[float, list[float]]:
    """OA of the members' mean probability and of each member, on ``test``."""
    oa = lab.oa(test.class_ids, ids[np.mean(probs, 0).argmax(1)])
    return oa, [lab.oa(test.class_ids, ids[p.argmax(1)]) for p in probs]


def pseudo_label_variant(variant: str, s: lab.LabScene, bundle, data: WindowData, test, ew,
                         prompts: list[str], members: int, split_seed: int, pool: int,
                         cfg) -> dict[str, Any]:
    """The ``pl``/``plr``/``pls``/``lin-pl`` variants (module docstring): members on the
    shots score a random pool of scene pixels, their agreed pixels become pseudo-labels and
    fresh members are fine-tuned on both; with how right the pseudo-labels are where the
    ground truth knows (a check only)."""
    tic = time.perf_counter()
    kind = "lin" if variant.startswith("lin") else "text"
    per_class = int(variant.split("pl")[1].lstrip("sr"))
    spatial = "pls" in variant
    ids = np.asarray([c.id for c in s.labels.classes])
    k, w, stats = len(ids), bundle.config.window, bundle.scene_stats
    h, wd = s.scene.grid.height, s.scene.grid.width
    flat = np.random.default_rng(1000 + split_seed).choice(h * wd, pool, replace=False)
    rows, cols = flat // wd, flat % wd
    if spatial:  # the pool pixel and its 8 neighbours, clipped to the scene
        dr, dc = np.meshgrid([-1, 0, 1], [-1, 0, 1], indexing="ij")
        nr = np.clip(rows[:, None] + dr.ravel(), 0, h - 1).ravel()
        nc = np.clip(cols[:, None] + dc.ravel(), 0, wd - 1).ravel()
        pw = read_windows(s.scene, nr, nc, size=w, stats=stats)
    else:
        pw = read_windows(s.scene, rows, cols, size=w, stats=stats)
    first = fit_members(kind, bundle, data, prompts, k, members, split_seed, cfg)
    pp = np.stack([member_probs(m, pw) for m in first])
    if spatial:  # members x pool x 9 x K -> the neighbourhood's mean
        pp = pp.reshape(members, pool, 9, -1).mean(2)
    first_oa, _ = scores([member_probs(m, ew) for m in first], test, ids)
    pos, cls = pseudo_labels(pp, per_class, np.random.default_rng(split_seed)
                             if "plr" in variant else None)
    centre = read_windows(s.scene, rows[pos], cols[pos], size=w, stats=stats)
    tw = data.windows
    both = type(tw)(torch.cat([tw.hsi, torch.from_numpy(centre.hsi)]),
                    None if tw.lidar is None
                    else torch.cat([tw.lidar, torch.from_numpy(centre.lidar)]))
    assert data.labels is not None
    grown = WindowData(both, torch.cat([data.labels, torch.from_numpy(cls)]))
    second = fit_members(kind, bundle, grown, prompts, k, members, split_seed, cfg)
    oa, member_oa = scores([member_probs(m, ew) for m in second], test, ids)
    truth = s.labels.to_raster(s.scene.grid)[rows[pos], cols[pos]]  # 0: not in the truth
    known = truth > 0
    right = round(100 * float((truth[known] == ids[cls][known]).mean()), 2) if known.any() \
        else None
    return {"oa": round(oa, 2), "first_oa": round(first_oa, 2),
            "members": [round(x, 2) for x in member_oa], "pseudo": len(cls),
            "pseudo_acc_on_labelled": right, "pseudo_labelled": int(known.sum()),
            "seconds": round(time.perf_counter() - tic, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scene")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--splits", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+",
                    default=["text", "codes", "lin", "spread", "spread-codes"])
    ap.add_argument("--spread-steps", type=int, default=100)
    ap.add_argument("--members", type=int, default=None, help="default: the preset's")
    ap.add_argument("--test-pixels", type=int, default=4000)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--pool", type=int, default=3000)
    ap.add_argument("--all-scales", action="store_true",
                    help="where the shots choose context, give every candidate scale")
    ap.add_argument("--json")
    ap.add_argument("--cache", default="/tmp/head-probe-cache")
    ap.add_argument("--save-probs", help="folder: every member's test probabilities, per split "
                    "and variant (npz), with the test labels")
    args = ap.parse_args()
    preset = load_preset("cpu")
    members = args.members or preset.finetune.members
    s = lab.load(args.scene)
    lab_ = s.labels
    names = [c.name for c in lab_.classes]
    codes = [f"class {i + 1}" for i in range(len(names))]
    prompts = {"real": build_prompts(names, template=preset.model.template),
               "codes": build_prompts(codes, template=preset.model.template)}
    for m in range(4):
        prompts[f"real-p{m + 1}"] = build_prompts(names, template=f"p{m + 1}")
        prompts[f"codes-p{m + 1}"] = build_prompts(codes, template=f"p{m + 1}")
    out = []
    for split_seed in args.splits:
        train, test = split_pixels(s, args.shots, split_seed, args.test_pixels)
        tic = time.perf_counter()
        bundle = stage1_model(s, train, args.shots, split_seed, preset, args.samples,
                              Path(args.cache), all_scales=args.all_scales)
        stats = bundle.scene_stats
        pre_s = time.perf_counter() - tic
        w = bundle.config.window
        tw = read_windows(s.scene, train.rows, train.cols, size=w, stats=stats)
        ew = read_windows(s.scene, test.rows, test.cols, size=w, stats=stats)
        data = WindowData(tw, train.index)
        ids = np.asarray([c.id for c in lab_.classes])
        row: dict[str, object] = {"split": split_seed,
                                  "scales": bundle.provenance["context"]["scales"],
                                  "pretrain_s": round(pre_s, 1)}
        for variant in args.variants:
            tic = time.perf_counter()
            probs = []
            cos: list[tuple[float, float]] = []
            if "pl" in variant:
                r = pseudo_label_variant(variant, s, bundle, data, test, ew, prompts["real"],
                                         members, split_seed, args.pool, preset.finetune)
                row[variant] = r
                print(f"{args.scene} k={args.shots} split {split_seed} {variant:<13} OA "
                      f"{r['oa']:6.2f} (first {r['first_oa']:.2f}) pseudo {r['pseudo']} acc "
                      f"{r['pseudo_acc_on_labelled']}", flush=True)
                continue
            base = variant.removeprefix("rand-")
            start = start_network(bundle, variant, split_seed)
            opt = optimizer_of(variant)
            for m in range(members):
                seed = member_seed(split_seed, m)
                net = (reinit_start(start, variant, seed) if "reinit-" in variant
                       else copy.deepcopy(start))
                if base == "lin" or base.startswith("lin-"):  # lin, lin-lp20, lin-reinit-...
                    head = LinearHeadClassifier(net, num_classes=len(names), seed=seed)
                    ablations.make_optimizer = opt or _make_optimizer
                    try:
                        finetune_linear_head(head, data, preset.finetune, seed=seed)
                    finally:
                        ablations.make_optimizer = _make_optimizer
                    probs.append(member_probs(head, ew))
                    continue
                pr = prompts[("codes" if variant.endswith("codes") else "real")
                             + (f"-p{m % 4 + 1}" if variant.startswith("tpl") else "")]
                clf = make_head(base, net, Vocabulary.build(pr), len(pr), seed)
                clf.set_prompts(pr)
                if variant.startswith("spread"):
                    cos.append(spread_prompts(clf, args.spread_steps))
                else:
                    with torch.no_grad():
                        c0 = float(off_diagonal_cosine(clf.encode_text()).mean())
                    cos.append((c0, c0))
                if variant.startswith("i2t"):
                    ft_module.class_contrastive_loss = _image_to_text_only
                if variant.startswith("lr"):
                    ft_module.make_optimizer = text_lr_optimizer(float(variant[2:]))
                if variant.startswith("biaslr"):
                    ft_module.make_optimizer = text_lr_optimizer(float(variant[6:]), "beta")
                if variant.startswith("gainlr"):
                    ft_module.make_optimizer = text_lr_optimizer(float(variant[6:]), "gain")
                if opt is not None:
                    ft_module.make_optimizer = opt
                try:
                    finetune(clf, data, copy.copy(pr), preset.finetune, seed=seed)
                finally:
                    ft_module.class_contrastive_loss = class_contrastive_loss
                    ft_module.make_optimizer = _make_optimizer
                with torch.no_grad():
                    c_end = float(off_diagonal_cosine(clf.encode_text()).mean())
                cos[-1] = (*cos[-1], c_end)  # type: ignore[assignment]
                probs.append(member_probs(clf, ew))
            if args.save_probs:
                Path(args.save_probs).mkdir(parents=True, exist_ok=True)
                np.savez_compressed(Path(args.save_probs) / f"s{split_seed}-{variant}.npz",
                                    probs=np.stack(probs).astype(np.float32),
                                    truth=np.searchsorted(ids, test.class_ids))
            oa, member_oa = scores(probs, test, ids)
            votes = [p.argmax(1) for p in probs]
            disagree = [float((a != b).mean()) for i, a in enumerate(votes)
                        for b in votes[i + 1:]]
            spread = round(100 * float(np.mean(disagree)), 2) if disagree else None
            row[variant] = {"oa": round(oa, 2), "members": [round(x, 2) for x in member_oa],
                            "cosine": [[round(c, 3) for c in t] for t in cos],
                            "disagree": spread, "seconds": round(time.perf_counter() - tic, 1)}
            print(f"{args.scene} k={args.shots} split {split_seed} {variant:<13} OA {oa:6.2f} "
                  f"members {' '.join(f'{x:.1f}' for x in member_oa)} disagree {spread} cos "
                  f"{' '.join('/'.join(f'{c:.2f}' for c in t) for t in cos)}", flush=True)
        out.append(row)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
    for variant in args.variants:
        v = [r[variant]["oa"] for r in out]  # type: ignore[index]
        print(f"{variant:<13} mean {np.mean(v):6.2f} +- {np.std(v):5.2f}")


if __name__ == "__main__":
    main()
