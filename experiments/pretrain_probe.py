"""Frozen-feature probes of the pretrained encoder: is stage 1 better than a random encoder?

For a scene folder (hsi.tif, optional lidar.tif, labels.tif), normalise as ``fewshot`` does,
read the windows of up to ``--probe-pixels`` labelled pixels and encode them at ``t = 0`` with
no masking. Readouts: the class token, the mean of the pixel tokens and the centre pixel's
token (final LayerNorm output), and the normalised centre spectrum alone ("raw"). Each is
scored with a logistic regression (features standardised on the training pixels) and a 1-NN
fitted on ``--shots`` labelled pixels per class, tested on the rest, mean of ``--draws``
draws. The random encoder (epoch 0) and the pretrained one after each epoch in ``--at`` are
probed, for each variant (preset overrides as ``name=field:value,field:value``).

Example::

    python experiments/pretrain_probe.py ../shared/data/jasper_ridge --preset tiny \\
        --epochs 15 --at 5 15 --variant method= --variant cls=model.decoder_input:class
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from diffclip_cli.io.raster import Scene
from diffclip_cli.model.config import load_preset
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.progress import ProgressEvent
from diffclip_cli.sampling.normalise import compute_stats
from diffclip_cli.sampling.unlabelled import sample_unlabelled
from diffclip_cli.sampling.windows import read_windows
from diffclip_cli.train.data import WindowData
from diffclip_cli.train.pretrain import pretrain


def _parse_value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_variant(spec: str) -> tuple[str, dict[str, object]]:
    name, _, rest = spec.partition("=")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition(":")
        overrides[key] = _parse_value(value)
    return name, overrides


@torch.no_grad()
def encode_tokens(net: DiffCLIPNet, data: WindowData, batch: int = 512) -> dict[str, np.ndarray]:
    """Class token, mean of pixel tokens and centre token per modality, concatenated."""
    net.eval()
    outs: dict[str, list[np.ndarray]] = {"cls": [], "mean": [], "centre": []}
    p = net.config.tokens
    for start in range(0, len(data), batch):
        idx = torch.arange(start, min(len(data), start + batch))
        hsi, lidar, _ = data.batch(idx, "cpu")
        inputs = {"hsi": hsi} if lidar is None else {"hsi": hsi, "lidar": lidar}
        n = hsi.shape[0]
        t0 = net.time_embed(torch.zeros(1, dtype=torch.long))[:, None]
        seqs = [torch.cat([(net.cls_token[m] + t0).expand(n, -1, -1), net.tokens(x, m)], 1)
                for m, x in inputs.items()]
        enc = net.encode(torch.cat(seqs, 0)).split(n, 0)
        outs["cls"].append(torch.cat([e[:, 0] for e in enc], 1).numpy())
        outs["mean"].append(torch.cat([e[:, 1:].mean(1) for e in enc], 1).numpy())
        outs["centre"].append(torch.cat([e[:, 1 + p // 2] for e in enc], 1).numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def probe(features: np.ndarray, y: np.ndarray, shots: int, draws: int) -> tuple[float, float]:
    """Mean (logistic regression, 1-NN) accuracy in percent over ``draws`` draws."""
    lr_acc, nn_acc = [], []
    for d in range(draws):
        rng = np.random.default_rng(1000 + d)
        train = np.concatenate([rng.choice(np.flatnonzero(y == c), min(shots, (y == c).sum() - 1),
                                           replace=False) for c in np.unique(y)])
        test = np.setdiff1d(np.arange(y.size), train)
        sc = StandardScaler().fit(features[train])
        xtr, xte = sc.transform(features[train]), sc.transform(features[test])
        lr = LogisticRegression(max_iter=2000, C=1.0).fit(xtr, y[train])
        lr_acc.append((lr.predict(xte) == y[test]).mean())
        knn = KNeighborsClassifier(1).fit(xtr, y[train])
        nn_acc.append((knn.predict(xte) == y[test]).mean())
    return 100 * float(np.mean(lr_acc)), 100 * float(np.mean(nn_acc))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scene", help="folder with hsi.tif, optional lidar.tif, labels.tif")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every variant, "
                    "section.field:value")
    ap.add_argument("--variant", action="append", default=[],
                    help="name=section.field:value,... (repeatable); 'method=' = the preset")
    ap.add_argument("--samples", type=int, default=2000, help="unlabelled windows")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--at", type=int, nargs="*", default=[], help="epochs to probe at")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--probe-pixels", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="append JSON lines here")
    args = ap.parse_args()

    folder = Path(args.scene)
    lidar = [folder / "lidar.tif"] if (folder / "lidar.tif").exists() else []
    base = load_preset(args.preset)
    common = dict(parse_variant("x=" + ",".join(args.set))[1])
    with rasterio.open(folder / "labels.tif") as src:
        lab = src.read(1)
    rows, cols = np.nonzero(lab)
    rng = np.random.default_rng(args.seed)
    if rows.size > args.probe_pixels:
        keep = np.sort(rng.choice(rows.size, args.probe_pixels, replace=False))
        rows, cols = rows[keep], cols[keep]
    y = lab[rows, cols].astype(int)
    results = []
    with Scene.open(folder / "hsi.tif", lidar) as scene:
        stats = compute_stats(scene, seed=args.seed)
        ur, uc = sample_unlabelled(scene, args.samples, seed=args.seed)
        raw = read_windows(scene, rows, cols, size=1, stats=stats)
        raw_x = raw.hsi[:, :, 0, 0] if raw.lidar is None else np.concatenate(
            [raw.hsi[:, :, 0, 0], raw.lidar[:, :, 0, 0]], 1)
        raw_lr, raw_nn = probe(raw_x, y, args.shots, args.draws)
        print(f"{folder.name}: raw centre spectrum logreg/1-NN {raw_lr:.1f} / {raw_nn:.1f}",
              flush=True)
        for spec in args.variant or ["method="]:
            name, overrides = parse_variant(spec)
            preset = base.with_overrides(**{**common, **overrides})
            w = preset.model.window
            unl = read_windows(scene, ur, uc, size=w, stats=stats)
            lab_w = read_windows(scene, rows, cols, size=w, stats=stats)
            data = WindowData(unl)
            probe_data = WindowData(lab_w)
            net = DiffCLIPNet(preset.model, hsi_bands=scene.hsi_bands,
                              lidar_bands=scene.lidar_bands, seed=args.seed)
            tic = time.perf_counter()

            def report(epoch: int, loss: float | None, net: DiffCLIPNet = net,
                       name: str = name, probe_data: WindowData = probe_data,
                       tic: float = tic) -> None:
                feats = encode_tokens(net, probe_data)
                row = {"scene": folder.name, "variant": name, "epoch": epoch, "loss": loss,
                       "seconds": round(time.perf_counter() - tic, 1)}
                for k, f in feats.items():
                    row[k] = probe(f, y, args.shots, args.draws)
                results.append(row)
                print(f"{folder.name} {name:>12} ep {epoch:3d} loss "
                      f"{'-' if loss is None else f'{loss:.4f}'} | "
                      + " | ".join(f"{k} {v[0]:.1f}/{v[1]:.1f}" for k, v in row.items()
                                   if isinstance(v, tuple))
                      + f" | {row['seconds']} s", flush=True)
                if args.out:
                    with open(args.out, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                net.train()

            report(0, None)
            cfg = preset.pretrain.with_overrides(epochs=args.epochs)
            at = set(args.at or [args.epochs])

            def progress(event: ProgressEvent, report=report, at=at) -> None:
                if event.record is not None and event.record["epoch"] in at:
                    report(event.record["epoch"], event.record["loss"])

            pretrain(net, data, cfg, seed=args.seed, progress=progress)


if __name__ == "__main__":
    main()
