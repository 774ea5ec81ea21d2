"""Fine-tuning recipes on one pretrained (or random) encoder: where does stage 2 lose it?

For a scene folder (hsi.tif, optional lidar.tif, labels.tif, classes.csv): per seed, one
pretraining per pretraining variant (cached in ``--cache``), then every fine-tuning variant is
run from a copy of it on the same k-shot split, and scored on up to ``--test-pixels`` other
labelled pixels. ``random`` as a pretraining variant is the untrained encoder (the protocol's
``clip`` row). Variants are preset overrides, ``name=section.field:value,...``. Some
fine-tuning names do more: ``logreg`` (no fine-tuning: logistic regression on the frozen
features, standardised on the training windows), ``flr<C>`` (the same on the features as
they are, L2 penalty C), ``ens*`` (the fine-tuned output averaged with ``logreg``'s),
``rawens*`` (averaged with a logistic regression on the raw centre pixel), ``lin*`` (the
protocol's ``no-text`` ablation: a linear head and cross-entropy instead of the prompts),
``sp<lam>`` (weights shrunk towards a fresh initialisation first), ``stems*`` / ``blocks*``
(keep only the pretrained stems / blocks), ``proto*`` (free class vectors in place of the
prompts' embeddings, everything else as the recipe), ``bias*`` (a learnt logit offset per
class added to the prompts' logits), ``unnorm*`` (the image embedding not L2-normalised),
``ctn*`` (the prompts' mean embedding subtracted, not renormalised: only the text-to-image
loss changes), ``i2t*`` (the image-to-text half of the loss alone), ``fens<M>`` (M
fine-tunes with their own head initialisations and batch orders, random encoders with their
own initialisations too, outputs averaged, once per split whatever ``--head-seeds`` says;
each member's own score is reported as ``fens<M>-member``).

Example::

    python experiments/finetune_probe.py ../shared/data/salinas_a --preset tiny --shots 2 \\
        --seeds 3 --pre random= --pre method= --ft paper= --ft frozen-bn=finetune.freeze_norm:true
"""

from __future__ import annotations

import argparse
import copy
import csv
import functools
import hashlib
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

# Run by path (python experiments/finetune_probe.py), the script's folder is on sys.path, not the
# repository root that holds the 'benchmarks' package; with python -m it already is.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import rasterio
import torch

from benchmarks.ablations import LinearHeadClassifier, finetune_linear_head
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.config import Preset, load_preset
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.prompts import build_prompts
from diffclip_cli.model.text import Vocabulary
from diffclip_cli.sampling.normalise import compute_stats
from diffclip_cli.sampling.unlabelled import sample_unlabelled
from diffclip_cli.sampling.windows import read_windows
from diffclip_cli.train.data import WindowData
from diffclip_cli.train.finetune import class_contrastive_loss, finetune
from diffclip_cli.train.pretrain import pretrain
from experiments.pretrain_probe import parse_variant

# the module itself (diffclip_cli.train re-exports the function under the same name)
ft_module: Any = importlib.import_module("diffclip_cli.train.finetune")


class PrototypeClassifier(DiffCLIPClassifier):
    """The recipe's head with free class vectors in place of the text encoder's prompts.

    Cosine logits, the learnable temperature and the symmetric loss stay: only where the
    class embeddings come from changes (a research control, not a method).
    """

    def __init__(self, net: DiffCLIPNet, *, vocabulary: Vocabulary, classes: int,
                 seed: int) -> None:
        super().__init__(net, vocabulary=vocabulary, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        self.prototypes = torch.nn.Parameter(
            torch.randn(classes, net.config.embed_dim, generator=gen))

    def encode_text(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        return torch.nn.functional.normalize(self.prototypes, dim=-1)

    def text_features(self) -> torch.Tensor:
        return self.encode_text()


class BiasedClassifier(DiffCLIPClassifier):
    """The recipe's head plus a learnt logit offset per class (initially 0).

    ``scale * (z_img . z_txt) + scale * beta_c``, written as one more embedding dimension (1
    on the image side, ``beta_c`` on the text side) so that the recipe's loss and predictions
    use it unchanged. A cosine head gives every class a unit vector and no offset; a linear
    head can widen a class whose windows spread (a research control).
    """

    def __init__(self, net: DiffCLIPNet, *, vocabulary: Vocabulary, classes: int,
                 seed: int) -> None:
        super().__init__(net, vocabulary=vocabulary, seed=seed)
        self.beta = torch.nn.Parameter(torch.zeros(classes))

    def encode_image(self, hsi: torch.Tensor, lidar: torch.Tensor | None = None
                     ) -> torch.Tensor:
        z = super().encode_image(hsi, lidar)
        return torch.cat([z, torch.ones_like(z[:, :1])], dim=1)

    def encode_text(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([super().encode_text(ids), self.beta[:, None]], dim=1)

    def text_features(self) -> torch.Tensor:
        return self.encode_text()


class UnnormalisedImageClassifier(DiffCLIPClassifier):
    """The recipe's head without the image embedding's L2 normalisation (the prompts keep
    theirs): a window's embedding length scales its logits, as in a linear head (a research
    control)."""

    def encode_image(self, hsi: torch.Tensor, lidar: torch.Tensor | None = None
                     ) -> torch.Tensor:
        return self.image_projection(self.net.features(hsi, lidar))


def _image_to_text_only(logits: torch.Tensor, labels: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    i2t = torch.nn.functional.cross_entropy(logits, labels)
    return i2t, i2t, torch.zeros_like(i2t)


class CentredTextClassifier(DiffCLIPClassifier):
    """The recipe's head with the mean of the K prompt embeddings subtracted, not renormalised.

    The image-to-text softmax is unchanged (a shift common to every class); only the
    text-to-image half of the loss loses the component no class owns (a research control).
    """

    def encode_text(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        text = super().encode_text(ids)
        return text - text.mean(0, keepdim=True)


@torch.no_grad()
def logreg_proba(net: DiffCLIPNet, tw, ew, ytr: np.ndarray, *, c: float = 1.0,
                 standardise: bool = True) -> np.ndarray:
    """Class probabilities of a logistic regression (L2 penalty ``c``) on the frozen features.

    With ``standardise`` the features are standardised with the training windows' statistics
    (2-5 per class: noisy); without, they are used as the network gives them (its class
    tokens and readout leave LayerNorms, so every part is already on a unit scale).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    net.eval()

    def feats(b):
        return net.features(torch.from_numpy(b.hsi),
                            None if b.lidar is None else torch.from_numpy(b.lidar)).numpy()

    ftr, fte = feats(tw), feats(ew)
    if standardise:
        sc = StandardScaler().fit(ftr)
        ftr, fte = sc.transform(ftr), sc.transform(fte)
    clf = LogisticRegression(C=c, max_iter=5000).fit(ftr, ytr)
    return clf.predict_proba(fte)


def raw_pixel_proba(tw, ew, ytr: np.ndarray) -> np.ndarray:
    """Class probabilities of a logistic regression on the windows' centre pixels.

    The pixels are the windows' values, standardised with the scene's statistics (not the
    few training pixels'); scikit-learn's default L2 penalty (C = 1).
    """
    from sklearn.linear_model import LogisticRegression

    c = tw.hsi.shape[-1] // 2
    clf = LogisticRegression(max_iter=3000).fit(tw.hsi[:, :, c, c], ytr)
    return clf.predict_proba(ew.hsi[:, :, c, c])


def load_encoder(net: DiffCLIPNet, state: dict[str, torch.Tensor], problem: str) -> None:
    """Load pretrained weights into ``net``, which may hold the readout's LayerNorm beside them.

    Stage 1 never trains ``pixel_norm`` (encoders cached before ``pixel_readout`` lack it, and a
    variant that turns the readout on adds it), so only its keys may be missing.

    Raises:
        SystemExit: with ``problem`` when any other weight is missing.
    """
    missing = net.load_state_dict(state, strict=False).missing_keys
    if any(not k.startswith("pixel_norm.") for k in missing):
        raise SystemExit(problem)


def fine_tune_one(ft_name: str, preset: Preset, pre_preset: Preset, net: DiffCLIPNet,
                  hsi_bands: int, lidar_bands: int, prompts: list[str], tw: Any, ew: Any,
                  ytr: np.ndarray, *, seed: int, hseed: int, random_encoder: bool,
                  ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """One fine-tuning of variant ``ft_name`` from ``net`` on the training windows ``tw``: the
    probabilities of ``ew`` and the epoch records. ``hseed`` seeds the head; with
    ``random_encoder`` (``net`` is the split's untrained encoder) a head seed other than the
    split's ``seed`` also draws a new random encoder."""
    # a fresh network of the variant's configuration holding the pretrained weights
    # (modules the variant adds keep their init)
    net_copy = DiffCLIPNet(preset.model, hsi_bands=hsi_bands, lidar_bands=lidar_bands,
                           seed=hseed)
    if not random_encoder or hseed == seed:
        load_encoder(net_copy, copy.deepcopy(net.state_dict()),
                     f"variant {ft_name} changes pretrained weights")
    if ft_name.startswith("sp"):
        # shrink towards a fresh initialisation: w = lam w_pre + (1-lam) w_0
        lam = float(ft_name[2:])
        fresh = DiffCLIPNet(pre_preset.model, hsi_bands=hsi_bands, lidar_bands=lidar_bands,
                            seed=seed)
        f_state = fresh.state_dict()
        state = {k: (lam * v + (1 - lam) * f_state[k]) if v.is_floating_point() else v
                 for k, v in net_copy.state_dict().items()}
        net_copy.load_state_dict(state)
    if ft_name.startswith(("stems", "blocks")):
        # keep only the pretrained stems (or only the blocks): the other part comes from a
        # fresh network with the same seed
        fresh = DiffCLIPNet(pre_preset.model, hsi_bands=hsi_bands, lidar_bands=lidar_bands,
                            seed=seed)
        part = ("stems.", "token_embed.") if ft_name.startswith("blocks") \
            else ("blocks.", "norm.", "cls_token.", "time_embed.")
        state = net_copy.state_dict()
        state.update({k: v for k, v in fresh.state_dict().items() if k.startswith(part)})
        net_copy.load_state_dict(state)
    data = WindowData(tw, ytr)
    if ft_name.startswith("lin"):
        # the no-text ablation: a linear head, cross-entropy
        head = LinearHeadClassifier(net_copy, num_classes=len(prompts), seed=hseed)
        hist = finetune_linear_head(head, data, preset.finetune, seed=hseed)
        return torch.from_numpy(head.predict_proba(ew.hsi, ew.lidar)), hist
    vocab = Vocabulary.build(prompts)
    clf = (PrototypeClassifier(net_copy, vocabulary=vocab, classes=len(prompts), seed=hseed)
           if ft_name.startswith("proto") else
           BiasedClassifier(net_copy, vocabulary=vocab, classes=len(prompts), seed=hseed)
           if ft_name.startswith("bias") else
           UnnormalisedImageClassifier(net_copy, vocabulary=vocab, seed=hseed)
           if ft_name.startswith("unnorm") else
           CentredTextClassifier(net_copy, vocabulary=vocab, seed=hseed)
           if ft_name.startswith("ctn") else
           DiffCLIPClassifier(net_copy, vocabulary=vocab, seed=hseed))
    if ft_name.startswith("i2t"):
        # the image-to-text half of the loss alone
        ft_module.class_contrastive_loss = _image_to_text_only
    try:
        hist = finetune(clf, data, prompts, preset.finetune, seed=hseed)
    finally:
        ft_module.class_contrastive_loss = class_contrastive_loss
    proba = clf.predict_proba(torch.from_numpy(ew.hsi),
                              None if ew.lidar is None else torch.from_numpy(ew.lidar))
    return proba, hist


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scene")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every variant")
    ap.add_argument("--pre", action="append", default=[], help="pretraining variants")
    ap.add_argument("--ft", action="append", default=[], help="fine-tuning variants")
    ap.add_argument("--shots", type=int, nargs="+", default=[2])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--test-pixels", type=int, default=3000)
    ap.add_argument("--head-seeds", type=int, default=1,
                    help="fine-tune every variant this many times per split, each with its "
                         "own head initialisation and batch order; the table averages them")
    ap.add_argument("--cache", default="/tmp/ftprobe-cache")
    ap.add_argument("--out", help="append CSV rows here")
    args = ap.parse_args()

    folder = Path(args.scene)
    lidar = [folder / "lidar.tif"] if (folder / "lidar.tif").exists() else []
    with rasterio.open(folder / "labels.tif") as src:
        lab = src.read(1)
    with open(folder / "classes.csv", newline="") as fh:
        names = {int(r["id"]): r["name"] for r in csv.DictReader(fh)}
    ids = sorted(int(i) for i in np.unique(lab) if i)
    rows_all, cols_all = np.nonzero(lab)
    y_all = np.searchsorted(ids, lab[rows_all, cols_all])
    common = parse_variant("x=" + ",".join(args.set))[1]
    base = load_preset(args.preset).with_overrides(**common)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    table: dict[tuple[str, str, int], list[float]] = {}
    with Scene.open(folder / "hsi.tif", lidar) as scene:
        for seed in range(args.seeds):
            stats = compute_stats(scene, seed=seed)
            for pre_spec in args.pre or ["method="]:
                pre_name, pre_over = parse_variant(pre_spec)
                pre_preset = base.with_overrides(**pre_over)
                w = pre_preset.model.window
                net = DiffCLIPNet(pre_preset.model, hsi_bands=scene.hsi_bands,
                                  lidar_bands=scene.lidar_bands, seed=seed)
                key = json.dumps([folder.name, args.preset, common, pre_over, seed,
                                  args.samples], sort_keys=True)
                # A stable name (str hash() changes with every process).
                path = cache / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
                tic = time.perf_counter()
                if pre_name != "random":
                    if path.exists():
                        load_encoder(net, torch.load(path, weights_only=True),
                                     f"cached encoder {path} does not fit {pre_name}")
                    else:
                        ur, uc = sample_unlabelled(scene, args.samples, seed=seed)
                        unl = read_windows(scene, ur, uc, size=w, stats=stats)
                        pretrain(net, WindowData(unl), pre_preset.pretrain,
                                 seed=seed)
                        torch.save(net.state_dict(), path)
                pre_s = time.perf_counter() - tic
                for k in args.shots:
                    rng = np.random.default_rng(seed)
                    train = np.concatenate([
                        rng.choice(np.flatnonzero(y_all == c),
                                   min(k, (y_all == c).sum() // 2), replace=False)
                        for c in range(len(ids))])
                    test = np.setdiff1d(np.arange(y_all.size), train)
                    if test.size > args.test_pixels:
                        test = np.sort(rng.choice(test, args.test_pixels, replace=False))
                    tw = read_windows(scene, rows_all[train], cols_all[train], size=w,
                                      stats=stats)
                    ew = read_windows(scene, rows_all[test], cols_all[test], size=w,
                                      stats=stats)
                    for ft_spec in args.ft or ["paper="]:
                        ft_name, ft_over = parse_variant(ft_spec)
                        if ft_name == "logreg" or ft_name.startswith("flr"):
                            # frozen features: standardised, C = 1 (logreg); as they are,
                            # C = <value> (flr<value>)
                            probe = (logreg_proba(net, tw, ew, y_all[train])
                                     if ft_name == "logreg" else
                                     logreg_proba(net, tw, ew, y_all[train],
                                                  c=float(ft_name[3:]), standardise=False))
                            oa = 100 * float((probe.argmax(1) == y_all[test]).mean())
                            table.setdefault((pre_name, ft_name, k), []).append(oa)
                            print(f"{folder.name} seed {seed} k={k} pre={pre_name:<10} "
                                  f"ft={ft_name:<12} OA {oa:6.2f}", flush=True)
                            continue
                        preset = pre_preset.with_overrides(**ft_over)
                        prompts = build_prompts([names[i] for i in ids],
                                                template=preset.model.template)

                        one = functools.partial(
                            fine_tune_one, ft_name, preset, pre_preset, net, scene.hsi_bands,
                            scene.lidar_bands, prompts, tw, ew, y_all[train], seed=seed,
                            random_encoder=pre_name == "random")

                        members = int(ft_name[4:]) if ft_name.startswith("fens") else 0
                        for j in range(1 if members else args.head_seeds):
                            # head seed j: its own head initialisation (a random encoder its
                            # own initialisation too); j = 0 is the split's seed
                            hseed = seed if j == 0 else 1000 * (seed + 1) + j
                            tic = time.perf_counter()
                            if members:
                                # an ensemble of M fine-tunes, each with its own head seed
                                parts = [one(hseed=1000 * (seed + 1) + m) for m in range(members)]
                                for p_m, _ in parts:
                                    # each member alone, to tell the ensemble from seed luck
                                    table.setdefault((pre_name, ft_name + "-member", k),
                                                     []).append(100 * float(
                                        (p_m.argmax(1).numpy() == y_all[test]).mean()))
                                proba = torch.stack([p_m for p_m, _ in parts]).mean(0)
                                hist = parts[-1][1]
                            else:
                                proba, hist = one(hseed=hseed)
                            ft_s = time.perf_counter() - tic
                            if ft_name.startswith("ens"):
                                # average with a probe on the frozen features of the encoder
                                # before fine-tuning (an output ensemble, WiSE-FT-like)
                                frozen = logreg_proba(net, tw, ew, y_all[train])
                                proba = 0.5 * proba + 0.5 * torch.from_numpy(frozen).float()
                            if ft_name.startswith("rawens"):
                                # average with a logistic regression on the raw centre pixel
                                raw = raw_pixel_proba(tw, ew, y_all[train])
                                proba = 0.5 * proba + 0.5 * torch.from_numpy(raw).float()
                            oa = 100 * float((proba.argmax(1).numpy() == y_all[test]).mean())
                            table.setdefault((pre_name, ft_name, k), []).append(oa)
                            print(f"{folder.name} seed {seed} k={k} pre={pre_name:<10} "
                                  f"ft={ft_name:<12} OA {oa:6.2f} (train acc "
                                  f"{hist[-1]['train_accuracy']:.2f}, pre {pre_s:.0f} s, "
                                  f"ft {ft_s:.0f} s)", flush=True)
                            if args.out:
                                with open(args.out, "a") as fh:
                                    fh.write(f"{folder.name},{seed},{k},{pre_name},{ft_name},"
                                             f"{oa:.3f},{ft_s:.1f}\n")
    print(f"\n{folder.name}: mean OA over {args.seeds} seeds")
    for (pre_name, ft_name, k), v in sorted(table.items()):
        print(f"  k={k} pre={pre_name:<10} ft={ft_name:<12} {np.mean(v):6.2f} "
              f"+- {np.std(v):5.2f}")


if __name__ == "__main__":
    main()
