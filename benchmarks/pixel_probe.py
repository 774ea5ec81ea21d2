"""Which per-pixel features carry a scene's classes: RF and SVM on all bands, HSI only, LiDAR only.

A research probe for the question "what does a per-pixel random forest use that the window
models do not find" (docs/model.md, "What pretraining does, measured", section 7). For a scene
folder (hsi.tif, optional lidar.tif, labels.tif): per seed, k labelled pixels per class drawn at
random (numpy's default_rng(seed), not the protocol's splits), every other labelled pixel
scored; a random forest (200 trees) and an RBF SVM (standardised, C = 100, gamma = 'scale')
on each feature set.

Example::

    python benchmarks/pixel_probe.py ../shared/data/eo_learn --shots 2 5 --seeds 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read().astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scene")
    ap.add_argument("--shots", type=int, nargs="+", default=[2, 5])
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()

    folder = Path(args.scene)
    hsi = _read(folder / "hsi.tif")
    lidar = _read(folder / "lidar.tif") if (folder / "lidar.tif").exists() else None
    labels = _read(folder / "labels.tif")[0].astype(np.int64)
    rows, cols = np.nonzero(labels)
    y = labels[rows, cols]
    parts = [hsi[:, rows, cols].T] + ([] if lidar is None else [lidar[:, rows, cols].T])
    x = np.concatenate(parts, axis=1)
    c = hsi.shape[0]
    sets = {"all": slice(None), "hsi": slice(0, c)}
    if lidar is not None:
        sets["lidar"] = slice(c, None)
    for k in args.shots:
        scores: dict[str, list[float]] = {}
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            train = np.concatenate([rng.choice(np.flatnonzero(y == cls), k, replace=False)
                                    for cls in np.unique(y)])
            test = np.setdiff1d(np.arange(y.size), train)
            for name, cut in sets.items():
                models = {"rf": RandomForestClassifier(200, random_state=seed, n_jobs=1),
                          "svm": make_pipeline(StandardScaler(), SVC(C=100, gamma="scale"))}
                for method, model in models.items():
                    model.fit(x[train][:, cut], y[train])
                    oa = 100 * float((model.predict(x[test][:, cut]) == y[test]).mean())
                    scores.setdefault(f"{method} {name}", []).append(oa)
        print(f"{folder.name} k={k}, {args.seeds} seeds, OA % mean +- std:")
        for name, values in scores.items():
            print(f"  {name:<10} {np.mean(values):6.2f} +- {np.std(values):5.2f}")


if __name__ == "__main__":
    main()
