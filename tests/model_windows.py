"""Windows of synthetic scenes for the model and training tests.

The sampling layer has its own window extraction; these tests build windows independently with
numpy (reflect padding + sliding_window_view) and a per-band standardisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scenes import SyntheticScene, make_scene

from diffclip_cli.modalities import Modalities
from diffclip_cli.train.data import WindowData


def extract(array: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) -> (N, C, size, size) windows centred on (rows, cols), reflect-padded."""
    r = size // 2
    padded = np.pad(array, ((0, 0), (r, r), (r, r)), mode="reflect")
    view = np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=(1, 2))
    return np.ascontiguousarray(view[:, rows, cols].transpose(1, 0, 2, 3))


def standardise(array: np.ndarray) -> np.ndarray:
    """Per-band zero mean, unit variance."""
    mean = array.mean(axis=(1, 2), keepdims=True)
    std = array.std(axis=(1, 2), keepdims=True) + 1e-6
    return ((array - mean) / std).astype(np.float32)


@dataclass
class SceneWindows:
    """A scene, normalised, with one flat index per pixel."""

    scene: SyntheticScene
    window: int
    hsi: np.ndarray
    lidar: np.ndarray | None
    labels: np.ndarray  # (H*W,) 0-based class index
    rows: np.ndarray
    cols: np.ndarray

    def data(self, index: np.ndarray, *, labels: bool = False, lidar: bool = True
             ) -> WindowData:
        r, c = self.rows[index], self.cols[index]
        return WindowData(
            Modalities(torch.from_numpy(extract(self.hsi, r, c, self.window)),
                       (torch.from_numpy(extract(self.lidar, r, c, self.window))
                        if lidar and self.lidar is not None else None)),
            labels=torch.from_numpy(self.labels[index].astype(np.int64)) if labels else None,
        )

    def few_shot(self, k: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """k random pixels per class for training, every other pixel for testing."""
        rng = np.random.default_rng(seed)
        train = np.concatenate([
            rng.choice(np.flatnonzero(self.labels == c), k, replace=False)
            for c in range(int(self.labels.max()) + 1)
        ])
        test = np.setdiff1d(np.arange(self.labels.size), train)
        return train, test

    def unlabelled(self, n: int, *, seed: int) -> np.ndarray:
        """n pixels drawn without their labels."""
        return np.random.default_rng(seed).choice(self.labels.size, n, replace=False)


def scene_windows(*, window: int = 5, size: int = 48, bands: int = 16, lidar_bands: int = 1,
                  patch_size: float = 20.0, seed: int = 0) -> SceneWindows:
    """A 2-spectra x 2-heights scene (4 classes; 2 without LiDAR) as normalised windows."""
    scene = make_scene(height=size, width=size, hsi_bands=bands, lidar_bands=lidar_bands,
                       n_spectra=2, n_heights=2, patch_size=patch_size, seed=seed)
    rows, cols = np.mgrid[0:size, 0:size]
    return SceneWindows(
        scene=scene,
        window=window,
        hsi=standardise(scene.hsi),
        lidar=None if scene.lidar is None else standardise(scene.lidar),
        labels=(scene.labels.ravel() - 1).astype(np.int64),
        rows=rows.ravel(),
        cols=cols.ravel(),
    )
