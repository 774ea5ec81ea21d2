"""Class probabilities for tiles and windows with the faithful DiffCLIP network.

:class:`TileEngine` is the one place the whole-scene classifier turns normalised tile data into
probabilities; a faster engine (``--fast``) offers the same two methods.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.device import resolve_device
from diffclip_cli.sampling.tiles import TileData

__all__ = ["TileEngine", "default_batch_size"]


def default_batch_size(device: torch.device) -> int:
    """Windows per forward pass: large on GPUs, cache-friendly on CPUs."""
    return 4096 if device.type == "cuda" else 256


def tile_windows(data: TileData, window: int) -> tuple[np.ndarray, np.ndarray | None,
                                                       np.ndarray, np.ndarray]:
    """The windows of a tile's valid core pixels, as strided views gathered once.

    Args:
        data: a tile read with ``halo == window // 2``.
        window: the window size.

    Returns:
        ``(hsi (N,C,w,w), lidar (N,L,w,w) | None, rows, cols)`` with rows/cols in the core.
    """
    if data.tile.halo != window // 2:
        raise ValueError(f"the tile's halo is {data.tile.halo}, the model needs {window // 2}")
    rows, cols = np.nonzero(data.valid)

    def gather(array: np.ndarray) -> np.ndarray:
        view = sliding_window_view(array, (window, window), axis=(1, 2))  # (C, h, w, ww, ww)
        return np.ascontiguousarray(view[:, rows, cols].transpose(1, 0, 2, 3))

    lidar = None if data.lidar is None else gather(data.lidar)
    return gather(data.hsi), lidar, rows, cols


class TileEngine:
    """Runs a fine-tuned classifier over tiles or windows, deterministically.

    Args:
        classifier: the fine-tuned classifier (moved to ``device``, put in eval mode).
        device: a torch device or ``auto``/``cpu``/``cuda[:N]``/``mps``.
        batch_size: windows per forward pass; default by device.
    """

    def __init__(self, classifier: DiffCLIPClassifier, *, device: str | torch.device = "cpu",
                 batch_size: int | None = None) -> None:
        self.device = resolve_device(device)
        self.classifier = classifier.to(self.device).eval()
        self.batch_size = batch_size or default_batch_size(self.device)

    @property
    def window(self) -> int:
        """The window size the model reads."""
        return self.classifier.config.window

    @property
    def num_classes(self) -> int:
        """Number of classes (probability planes)."""
        return self.classifier.num_classes

    def predict_windows(self, hsi: np.ndarray, lidar: np.ndarray | None) -> np.ndarray:
        """``(N, K)`` float32 probabilities of normalised windows ``(N, C, w, w)``."""
        with torch.inference_mode():
            probs = self.classifier.predict_proba(
                torch.from_numpy(np.ascontiguousarray(hsi, dtype=np.float32)),
                None if lidar is None else torch.from_numpy(
                    np.ascontiguousarray(lidar, dtype=np.float32)),
                batch_size=self.batch_size)
        return probs.numpy()

    def predict_tile(self, data: TileData) -> np.ndarray:
        """``(K, h, w)`` float32 probabilities of a tile's core; 0 on invalid pixels."""
        h, w = data.tile.shape
        out = np.zeros((self.num_classes, h, w), dtype=np.float32)
        hsi, lidar, rows, cols = tile_windows(data, self.window)
        if rows.size:
            out[:, rows, cols] = self.predict_windows(hsi, lidar).T
        return out
