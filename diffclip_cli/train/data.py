"""In-memory training data: window tensors of both modalities and their labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["WindowData"]


def _as_float(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if not t.is_floating_point():
        raise ValueError(f"{name} windows must be floating point, got {t.dtype}")
    return t.float()


@dataclass(init=False)
class WindowData:
    """Normalised windows around pixels, the unit both training stages work on.

    Attributes:
        hsi: ``(N, C, w, w)`` float32 HSI windows.
        lidar: ``(N, L, w, w)`` float32 LiDAR windows, or ``None`` for HSI only.
        labels: ``(N,)`` int64 0-based class indices (the ``ClassTable`` order), or ``None``
            for unlabelled windows.

    Numpy arrays are accepted and converted.

    Raises:
        ValueError: when shapes disagree (sizes, window sides, non-square windows).
    """

    hsi: torch.Tensor
    lidar: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    def __init__(self, hsi: torch.Tensor | np.ndarray,
                 lidar: torch.Tensor | np.ndarray | None = None,
                 labels: torch.Tensor | np.ndarray | None = None) -> None:
        self.hsi = _as_float(hsi, "HSI")
        if self.hsi.ndim != 4 or self.hsi.shape[2] != self.hsi.shape[3]:
            raise ValueError(f"HSI windows must be (N, C, w, w), got {tuple(self.hsi.shape)}")
        n, w = self.hsi.shape[0], self.hsi.shape[2]
        self.lidar = None if lidar is None else _as_float(lidar, "LiDAR")
        if self.lidar is not None and (self.lidar.ndim != 4 or self.lidar.shape[0] != n
                                       or self.lidar.shape[2:] != (w, w)):
            raise ValueError(f"LiDAR windows must be ({n}, L, {w}, {w}), "
                             f"got {tuple(self.lidar.shape)}")
        self.labels = None if labels is None else torch.as_tensor(labels).long()
        if self.labels is not None and self.labels.shape != (n,):
            raise ValueError(f"labels must be ({n},), got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.hsi.shape[0])

    @property
    def window(self) -> int:
        """The window side ``w``."""
        return int(self.hsi.shape[2])

    @property
    def hsi_bands(self) -> int:
        """HSI bands."""
        return int(self.hsi.shape[1])

    @property
    def lidar_bands(self) -> int:
        """LiDAR channels (0 without LiDAR)."""
        return 0 if self.lidar is None else int(self.lidar.shape[1])

    def subset(self, index: torch.Tensor | Any) -> WindowData:
        """The windows at ``index`` (an index array or boolean mask)."""
        index = torch.as_tensor(index)
        return WindowData(
            hsi=self.hsi[index],
            lidar=None if self.lidar is None else self.lidar[index],
            labels=None if self.labels is None else self.labels[index],
        )

    def batch(self, index: torch.Tensor, device: str | torch.device
              ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(hsi, lidar, labels)`` of the windows at ``index``, on ``device`` (copies)."""
        return (
            self.hsi[index].to(device),
            None if self.lidar is None else self.lidar[index].to(device),
            None if self.labels is None else self.labels[index].to(device),
        )
