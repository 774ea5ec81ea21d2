"""In-memory training data: window tensors of both modalities and their labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffclip_cli.io.raster import Scene
from diffclip_cli.modalities import Modalities
from diffclip_cli.sampling.normalise import SceneStats
from diffclip_cli.sampling.windows import read_windows

__all__ = ["WindowData"]


def _as_float(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if not t.is_floating_point():
        raise ValueError(f"{name} windows must be floating point, got {t.dtype}")
    return t.float()


@dataclass(init=False, eq=False)
class WindowData:
    """Normalised windows around pixels and their labels, the unit both training stages use.

    A thin wrapper of :class:`~diffclip_cli.modalities.Modalities` rather than one of them:
    it is a training set, so it converts and checks its windows once (float32 tensors,
    square, as many LiDAR windows of the same size as HSI ones) and keeps the labels of the
    windows beside them.

    Attributes:
        windows: ``hsi`` ``(N, C, w, w)`` and ``lidar`` ``(N, L, w, w)`` float32 tensors
            (``lidar`` ``None`` for HSI only).
        labels: ``(N,)`` int64 0-based class indices (the ``ClassTable`` order), or ``None``
            for unlabelled windows.

    Args:
        windows: the windows; numpy arrays are accepted and converted.
        labels: the labels, if any.

    Raises:
        ValueError: when shapes disagree (sizes, window sides, non-square windows).
    """

    windows: Modalities[torch.Tensor]
    labels: torch.Tensor | None = None

    def __init__(self, windows: Modalities[torch.Tensor] | Modalities[np.ndarray],
                 labels: torch.Tensor | np.ndarray | None = None) -> None:
        hsi = _as_float(windows.hsi, "HSI")
        if hsi.ndim != 4 or hsi.shape[2] != hsi.shape[3]:
            raise ValueError(f"HSI windows must be (N, C, w, w), got {tuple(hsi.shape)}")
        n, w = hsi.shape[0], hsi.shape[2]
        lidar = None if windows.lidar is None else _as_float(windows.lidar, "LiDAR")
        if lidar is not None and (lidar.ndim != 4 or lidar.shape[0] != n
                                  or lidar.shape[2:] != (w, w)):
            raise ValueError(f"LiDAR windows must be ({n}, L, {w}, {w}), "
                             f"got {tuple(lidar.shape)}")
        self.windows = Modalities(hsi, lidar)
        self.labels = None if labels is None else torch.as_tensor(labels).long()
        if self.labels is not None and self.labels.shape != (n,):
            raise ValueError(f"labels must be ({n},), got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.windows.hsi.shape[0])

    @property
    def window(self) -> int:
        """The window side ``w``."""
        return int(self.windows.hsi.shape[2])

    @property
    def hsi_bands(self) -> int:
        """HSI bands."""
        return int(self.windows.hsi.shape[1])

    @property
    def lidar_bands(self) -> int:
        """LiDAR channels (0 without LiDAR)."""
        lidar = self.windows.lidar
        return 0 if lidar is None else int(lidar.shape[1])

    def subset(self, index: torch.Tensor | Any) -> WindowData:
        """The windows at ``index`` (an index array or boolean mask)."""
        index = torch.as_tensor(index)
        return WindowData(self.windows.map(lambda x: x[index]),
                          None if self.labels is None else self.labels[index])

    def batch(self, index: torch.Tensor, device: str | torch.device
              ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(hsi, lidar, labels)`` of the windows at ``index``, on ``device`` (copies)."""
        lidar = self.windows.lidar
        return (
            self.windows.hsi[index].to(device),
            None if lidar is None else lidar[index].to(device),
            None if self.labels is None else self.labels[index].to(device),
        )


def window_data(scene: Scene, rows: np.ndarray, cols: np.ndarray, *, window: int,
                stats: SceneStats, labels: np.ndarray | None = None) -> WindowData:
    """The model's input windows of some pixels (:func:`read_windows`), with their labels."""
    batch = read_windows(scene, rows, cols, size=window, stats=stats)
    return WindowData(batch, labels)
