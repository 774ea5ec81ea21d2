"""A scene folder whose "HSI" is a fixed spatial-context cube, to try context on any method.

    python experiments/derived_cube.py indian_pines /tmp/ctx_ip --mode pca --scales 1 2 4 8

Writes ``OUT/hsi.tif`` with the chosen channels and links the scene's labels, classes and
LiDAR, so ``benchmarks/fewshot.py OUT/hsi.tif ...`` runs the protocol on it unchanged. Modes:
``pca``: the scene's 30 principal components (bands standardised) and the same smoothed at
each scale; ``raw``: the bands themselves followed by the smoothed components. This is how
notebook section 10 first measured context before the package had it (no choice, no
normalisation beyond the package's per-band percentiles).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import rasterio
from scipy.ndimage import gaussian_filter

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import lab


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scene")
    ap.add_argument("out")
    ap.add_argument("--mode", choices=("pca", "raw"), default="pca")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    ap.add_argument("--components", type=int, default=30)
    args = ap.parse_args()
    src = lab.DATA / args.scene
    with rasterio.open(src / "hsi.tif") as ds:
        cube = ds.read().astype(np.float32)
        profile = ds.profile
    c, h, w = cube.shape
    x = cube.reshape(c, -1).T
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    comps = (x @ vt[:args.components].T).T.reshape(-1, h, w)
    base = cube if args.mode == "raw" else comps
    parts = [base] + [np.stack([gaussian_filter(b, s, mode="reflect") for b in comps])
                      for s in args.scales]
    out = np.concatenate(parts).astype(np.float32)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    profile.update(count=out.shape[0], dtype="float32", nodata=None)
    with rasterio.open(folder / "hsi.tif", "w", **profile) as dst:
        dst.write(out)
    for name in ("labels.tif", "classes.csv", "lidar.tif"):
        if (src / name).exists():
            shutil.copy(src / name, folder / name)
    print(f"{folder / 'hsi.tif'}: {out.shape[0]} channels")


if __name__ == "__main__":
    main()
