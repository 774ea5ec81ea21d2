"""Shared helpers of the research scripts: the development scenes and the protocol's splits.

Research code (experiments/README.md); nothing in the package imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.protocol import _all_labels, inputs_from_files
from diffclip_cli.io.labels import LabelSet
from diffclip_cli.io.raster import Scene
from diffclip_cli.sampling.shots import Split, sample_shots

ROOT = Path(__file__).resolve().parents[1]

DATA = ROOT.parent / "shared" / "data"

#: The development scenes and the shot counts the issues measure them at.
CELLS: dict[str, tuple[int, ...]] = {"indian_pines": (2, 5, 10), "salinas_a": (2,),
                                     "jasper_ridge": (2, 5), "eo_learn": (2, 5)}


@dataclass
class LabScene:
    name: str
    hsi: np.ndarray          # (C, H, W) float32, raw values
    lidar: np.ndarray | None  # (L, H, W) or None
    labels: LabelSet
    scene: Scene

    def split(self, k: int, seed: int) -> Split:
        return sample_shots(self.labels, k, seed=seed)


def load(name: str, *, classes: str | None = None) -> LabScene:
    folder = DATA / name
    lidar = [folder / "lidar.tif"] if (folder / "lidar.tif").exists() else []
    inputs = inputs_from_files(folder / "hsi.tif", lidar=lidar, labels=folder / "labels.tif",
                               classes=classes or folder / "classes.csv", name=name)
    scene = Scene.open(inputs.hsi, list(inputs.lidar))
    labels = _all_labels(scene, inputs)
    import rasterio

    with rasterio.open(folder / "hsi.tif") as ds:
        hsi = ds.read().astype(np.float32)
    lid = None
    if lidar:
        with rasterio.open(lidar[0]) as ds:
            lid = ds.read().astype(np.float32)
    return LabScene(name, hsi, lid, labels, scene)


def oa(truth: np.ndarray, pred: np.ndarray) -> float:
    return float((truth == pred).mean() * 100)
