"""Which per-pixel features and classifiers carry a scene's classes, with a few shots.

A research probe for the question "what does a per-pixel model get that the window models do
not" (experiments/notebook.md, sections 7 and 8). For a scene folder
(hsi.tif, optional lidar.tif, labels.tif): per seed, k labelled pixels per class drawn at
random (numpy's default_rng(seed), not the protocol's splits; at most half of a class), every
other labelled pixel scored (or ``--test-pixels`` of them, drawn after the training pixels:
then the splits are those of ``finetune_probe.py`` with the same value).

``--mode models`` (the default): a random forest (200 trees) and an RBF SVM (standardised,
C = 100, gamma = 'scale') on all bands, HSI only and LiDAR only.

``--mode linear``: linear classifiers on the HSI centre pixel standardised with the scene's
band statistics (as diffclip normalises): logistic regression at several L2 strengths C,
nearest class mean (Euclidean and cosine), the same after a per-pixel normalisation of the
spectrum (``ln``: zero mean and unit variance across bands), and a linear head trained the
way ``finetune`` trains diffclip's (Adam, the recipe's learning rate, epochs and step decay,
full batches, no penalty; a ``d``-wide projection, then either cosine similarity to learnt
class vectors with a learnt temperature and the symmetric class-contrastive loss, ``adam-cos``,
or a linear layer and cross-entropy, ``adam-lin``).

``--mode unlabelled``: two uses of the scene's unlabelled pixels on top of a logistic
regression (C = 1) and the random forest: re-estimating the class priors by EM (Saerens et
al. 2002) from the posteriors of every scene pixel and re-weighting, and self-training (three
rounds adding the ``n`` most confident unlabelled pixels per class). Prints OA and AA.

Example::

    python experiments/pixel_probe.py ../shared/data/eo_learn --shots 2 5 --seeds 10
    python experiments/pixel_probe.py ../shared/data/salinas_a --mode linear --test-pixels 2000
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

# Run by path, the script's folder is on sys.path, not the repository root (as finetune_probe).
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestCentroid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from diffclip_cli.model.config import load_preset
from diffclip_cli.train.finetune import class_contrastive_loss

Scores = dict[str, list[float]]


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read().astype(np.float32)


def _standardise(image: np.ndarray) -> np.ndarray:
    """Each band to zero mean and unit variance over the scene (diffclip's normalisation)."""
    flat = image.reshape(image.shape[0], -1)
    return ((flat - flat.mean(1, keepdims=True)) / (flat.std(1, keepdims=True) + 1e-6)
            ).reshape(image.shape)


def _per_pixel_norm(x: np.ndarray) -> np.ndarray:
    """Each spectrum to zero mean and unit variance across its bands (what a LayerNorm does)."""
    return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)


def _oa(pred: np.ndarray, y: np.ndarray) -> float:
    return 100 * float((pred == y).mean())


def _aa(pred: np.ndarray, y: np.ndarray) -> float:
    return 100 * float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


def adam_head(xtr: np.ndarray, ytr: np.ndarray, *, kind: str, seed: int,
              preset: str = "cpu") -> Callable[[np.ndarray], np.ndarray]:
    """Train a linear head as diffclip's fine-tuning trains its heads; return its predictor.

    Args:
        xtr: ``(n, bands)`` training features; ``ytr``: ``(n,)`` class indices ``0..K-1``.
        kind: ``"cos"`` (cosine to learnt class vectors, learnt temperature, diffclip's
            symmetric class-contrastive loss) or ``"lin"`` (a linear layer, cross-entropy).
        seed: the initialisation (normal, std 0.02, as diffclip's linear layers).
        preset: whose embedding width, initial temperature and fine-tuning schedule (epochs,
            learning rate, step decay) to use; no weight decay.
    """
    model_cfg, cfg = (p := load_preset(preset)).model, p.finetune
    width = model_cfg.embed_dim
    gen = torch.Generator().manual_seed(seed)
    k = int(ytr.max()) + 1
    proj = torch.nn.Linear(xtr.shape[1], width)
    torch.nn.init.normal_(proj.weight, std=0.02, generator=gen)
    torch.nn.init.zeros_(proj.bias)
    classes = torch.nn.Parameter(torch.randn(k, width, generator=gen) * 0.02)
    log_scale = torch.nn.Parameter(torch.tensor(float(np.log(1 / model_cfg.init_temperature))))
    opt = torch.optim.Adam([*proj.parameters(), classes, log_scale], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), cfg.gamma)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr).long()

    def logits(v: torch.Tensor) -> torch.Tensor:
        z = proj(v)
        if kind == "lin":
            return z @ classes.T
        scale = log_scale.clamp(0, float(np.log(model_cfg.max_logit_scale))).exp()
        return scale * F.normalize(z, dim=-1) @ F.normalize(classes, dim=-1).T

    for _ in range(cfg.epochs):
        out = logits(x)
        loss = (class_contrastive_loss(out, y)[0] if kind == "cos"
                else F.cross_entropy(out, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    def predict(v: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return logits(torch.from_numpy(v)).argmax(1).numpy()

    return predict


def em_priors(proba: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Class priors of unlabelled data by EM, from posteriors trained under uniform priors."""
    k = proba.shape[1]
    prior = np.full(k, 1.0 / k)
    for _ in range(iterations):
        q = proba * prior * k
        q /= q.sum(1, keepdims=True)
        prior = q.mean(0)
    return prior


def models_mode(x: np.ndarray, y: np.ndarray, sets: dict[str, slice], tr: np.ndarray,
                te: np.ndarray, seed: int, scores: Scores) -> None:
    for name, cut in sets.items():
        models = {"rf": RandomForestClassifier(200, random_state=seed, n_jobs=1),
                  "svm": make_pipeline(StandardScaler(), SVC(C=100, gamma="scale"))}
        for method, model in models.items():
            model.fit(x[tr][:, cut], y[tr])
            scores.setdefault(f"{method} {name}", []).append(
                _oa(model.predict(x[te][:, cut]), y[te]))


def linear_mode(x: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray, seed: int,
                scores: Scores) -> None:
    for norm, feats in (("", x), ("ln ", _per_pixel_norm(x))):
        for c in (0.01, 1.0, 1000.0) if not norm else (1.0,):
            model = LogisticRegression(C=c, max_iter=5000).fit(feats[tr], y[tr])
            scores.setdefault(f"{norm}logreg C={c:g}", []).append(
                _oa(model.predict(feats[te]), y[te]))
        ncm = NearestCentroid().fit(feats[tr], y[tr])
        scores.setdefault(f"{norm}nearest mean", []).append(_oa(ncm.predict(feats[te]), y[te]))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    ncm = NearestCentroid().fit(unit[tr], y[tr])
    scores.setdefault("nearest mean (cosine)", []).append(_oa(ncm.predict(unit[te]), y[te]))
    for kind in ("cos", "lin"):
        predict = adam_head(x[tr], y[tr], kind=kind, seed=seed)
        scores.setdefault(f"adam-{kind} (diffclip's schedule)", []).append(
            _oa(predict(x[te]), y[te]))


def unlabelled_mode(x: np.ndarray, y: np.ndarray, scene: np.ndarray, tr: np.ndarray,
                    te: np.ndarray, seed: int, scores: Scores, *, per_class: int = 20) -> None:
    pool = scene[np.random.default_rng(10_000 + seed).choice(len(scene), 5000, replace=False)]
    for name, make in (("logreg", lambda: LogisticRegression(max_iter=5000)),
                       ("rf", lambda: RandomForestClassifier(200, random_state=seed,
                                                             n_jobs=1))):
        model = make().fit(x[tr], y[tr])
        proba = model.predict_proba(x[te])
        for label, pred in (
            ("", model.classes_[proba.argmax(1)]),
            (" + EM priors", model.classes_[(proba * em_priors(model.predict_proba(scene))
                                             ).argmax(1)]),
        ):
            scores.setdefault(f"{name}{label} OA", []).append(_oa(pred, y[te]))
            scores.setdefault(f"{name}{label} AA", []).append(_aa(pred, y[te]))
        if name == "logreg":
            xs, ys = x[tr], y[tr]
            for round_ in range(1, 4):
                p = model.predict_proba(pool)
                keep = [np.argsort(-p[:, j])[:per_class * round_] for j in range(p.shape[1])]
                picks = np.concatenate([i[p[i].argmax(1) == j] for j, i in enumerate(keep)])
                model = make().fit(np.concatenate([xs, pool[picks]]),
                                   np.concatenate([ys, model.classes_[p[picks].argmax(1)]]))
            pred = model.predict(x[te])
            scores.setdefault("logreg + self-training OA", []).append(_oa(pred, y[te]))
            scores.setdefault("logreg + self-training AA", []).append(_aa(pred, y[te]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scene")
    ap.add_argument("--mode", choices=("models", "linear", "unlabelled"), default="models")
    ap.add_argument("--shots", type=int, nargs="+", default=[2, 5])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--test-pixels", type=int, default=0,
                    help="score at most this many labelled pixels (0: all)")
    args = ap.parse_args()

    folder = Path(args.scene)
    hsi = _read(folder / "hsi.tif")
    lidar = _read(folder / "lidar.tif") if (folder / "lidar.tif").exists() else None
    labels = _read(folder / "labels.tif")[0].astype(np.int64)
    rows, cols = np.nonzero(labels)
    y = labels[rows, cols]
    c = hsi.shape[0]
    if args.mode == "models":
        parts = [hsi[:, rows, cols].T] + ([] if lidar is None else [lidar[:, rows, cols].T])
        x = np.concatenate(parts, axis=1)
        sets = {"all": slice(None), "hsi": slice(0, c)}
        if lidar is not None:
            sets["lidar"] = slice(c, None)
    else:
        std = _standardise(hsi)
        x = std[:, rows, cols].T
        scene = std.reshape(c, -1).T
        y = np.searchsorted(np.unique(y), y)
    for k in args.shots:
        scores: Scores = {}
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            tr = np.concatenate([rng.choice(np.flatnonzero(y == cls),
                                            min(k, int((y == cls).sum()) // 2), replace=False)
                                 for cls in np.unique(y)])
            te = np.setdiff1d(np.arange(y.size), tr)
            if 0 < args.test_pixels < te.size:
                te = np.sort(rng.choice(te, args.test_pixels, replace=False))
            if args.mode == "models":
                models_mode(x, y, sets, tr, te, seed, scores)
            elif args.mode == "linear":
                linear_mode(x, y, tr, te, seed, scores)
            else:
                unlabelled_mode(x, y, scene, tr, te, seed, scores)
        print(f"{folder.name} k={k}, {args.seeds} seeds, {args.mode}, OA % mean +- std:")
        for name, values in scores.items():
            print(f"  {name:<34} {np.mean(values):6.2f} +- {np.std(values):5.2f}")


if __name__ == "__main__":
    main()
