"""The fast path (``diffclip classify --fast``): a distilled student run over whole tiles.

:class:`FastEngine` offers the API of :class:`~diffclip_cli.infer.engine.TileEngine`
(``window``, ``num_classes``, ``predict_windows``, ``predict_tile``), so the whole-scene
classifier can use either. Instead of gathering one window per pixel and running the
transformer on each, it runs the student's valid convolutions once over a tile and its halo,
which gives every core pixel's probabilities at once. A pixel gets the same probabilities from
a tile as from its own window (up to float rounding).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from diffclip_cli.errors import ModelError
from diffclip_cli.model.device import resolve_device
from diffclip_cli.model.modelfile import ModelBundle
from diffclip_cli.model.student import EXTRAS_KEY, StudentNet, student_from_extras
from diffclip_cli.sampling.tiles import TileData

__all__ = ["FastEngine", "has_fast_path", "load_student"]

log = logging.getLogger("diffclip")

#: Core pixels per forward pass by default (bounds the activations' memory: on a CPU, strips
#: of 2**14 pixels are as fast as whole 256 x 256 tiles and need about half the memory).
_CPU_PIXELS = 1 << 14
_GPU_PIXELS = 1 << 20


def has_fast_path(bundle: ModelBundle) -> bool:
    """Whether a model file carries a usable distilled student for ``--fast``."""
    try:
        load_student(bundle)
    except ModelError:
        return False
    return True


def load_student(bundle: ModelBundle) -> StudentNet:
    """The student stored in a classifier bundle, checked against the bundle.

    Raises:
        ModelError: the bundle has no student (re-run ``diffclip fewshot``), or it does not
            fit the bundle's bands or classes.
    """
    classes = bundle.require_classes()  # a pretrained model has no fast path either
    if EXTRAS_KEY not in bundle.extras:
        raise ModelError("the model has no fast path (no distilled student)",
                         hint="re-run diffclip fewshot (it builds the fast path by default) "
                              "or classify without --fast")
    student = student_from_extras(bundle.extras)
    cfg = student.config
    k = len(classes)
    ctx_hsi, ctx_lidar = bundle.scene_stats.context_bands()
    reads = (bundle.hsi_bands + ctx_hsi, bundle.lidar_bands + ctx_lidar)
    if (cfg.hsi_bands, cfg.lidar_bands, cfg.num_classes) != (*reads, k):
        raise ModelError(
            f"the fast path was made for {cfg.hsi_bands} HSI bands, {cfg.lidar_bands} LiDAR "
            f"channels and {cfg.num_classes} classes but the model reads {reads[0]}, "
            f"{reads[1]} and {k}", hint="re-run diffclip fewshot")
    return student


class FastEngine:
    """Runs a distilled student over tiles or windows, deterministically.

    Args:
        model: a classifier bundle carrying a student, or a student.
        device: a torch device or ``auto``/``cpu``/``cuda[:N]``/``mps``.
        batch_size: pixels per forward pass (windows for :meth:`predict_windows`, core pixels
            of a tile strip for :meth:`predict_tile`); default by device.

    Raises:
        ModelError: a bundle without a student.
    """

    def __init__(self, model: ModelBundle | StudentNet, *, device: str | torch.device = "cpu",
                 batch_size: int | None = None) -> None:
        student = model if isinstance(model, StudentNet) else load_student(model)
        self.device = resolve_device(device)
        self.student = student.to(self.device).eval()
        default = _GPU_PIXELS if self.device.type == "cuda" else _CPU_PIXELS
        self.batch_size = int(batch_size or default)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")

    @property
    def window(self) -> int:
        """The receptive field: tiles must be read with a halo of ``window // 2``."""
        return self.student.window

    @property
    def num_classes(self) -> int:
        """Number of classes (probability planes)."""
        return self.student.num_classes

    def _stack(self, hsi: np.ndarray, lidar: np.ndarray | None) -> torch.Tensor:
        cfg = self.student.config
        if hsi.shape[-3] != cfg.hsi_bands:
            raise ValueError(f"expected {cfg.hsi_bands} HSI bands, got {hsi.shape[-3]}")
        if cfg.lidar_bands:
            if lidar is None or lidar.shape[-3] != cfg.lidar_bands:
                raise ValueError(f"expected {cfg.lidar_bands} LiDAR channels, got "
                                 f"{0 if lidar is None else lidar.shape[-3]}")
            x = np.concatenate([hsi, lidar], axis=-3, dtype=np.float32)
        else:
            x = np.ascontiguousarray(hsi, dtype=np.float32)
        return torch.from_numpy(x)

    def predict_windows(self, hsi: np.ndarray, lidar: np.ndarray | None) -> np.ndarray:
        """``(N, K)`` float32 probabilities of the centre pixels of normalised windows.

        Args:
            hsi: ``(N, C, s, s)`` windows, ``s`` odd and at least :attr:`window` (larger
                windows are cropped to their centre, e.g. the teacher's 11 for a student of 9).
            lidar: ``(N, L, s, s)`` or ``None`` for an HSI-only model.
        """
        s, w = hsi.shape[-1], self.window
        if hsi.shape[-2] != s or s < w or (s - w) % 2:
            raise ValueError(f"windows must be square, odd and at least {w} px, got "
                             f"{hsi.shape[-2]} x {s}")
        c = (s - w) // 2
        if c:
            hsi = hsi[..., c:c + w, c:c + w]
            lidar = None if lidar is None else lidar[..., c:c + w, c:c + w]
        x = self._stack(hsi, lidar)
        out = torch.empty((x.shape[0], self.num_classes), dtype=torch.float32)
        with torch.inference_mode():
            for start in range(0, x.shape[0], self.batch_size):
                part = x[start:start + self.batch_size].to(self.device)
                logits = self.student(part)[:, :, 0, 0]
                out[start:start + part.shape[0]] = torch.softmax(logits.float(), 1).cpu()
        return out.numpy()

    def predict_tile(self, data: TileData) -> np.ndarray:
        """``(K, h, w)`` float32 probabilities of a tile's core; 0 on invalid pixels.

        The tile must be read with ``halo == window // 2``. It is processed in strips of
        rows holding about ``batch_size`` core pixels each.
        """
        half = self.window // 2
        if data.tile.halo != half:
            raise ValueError(f"the tile's halo is {data.tile.halo}, the model needs {half}")
        h, w = data.tile.shape
        out = np.zeros((self.num_classes, h, w), dtype=np.float32)
        if not data.valid.any():
            return out
        rows = max(1, self.batch_size // max(1, w))
        with torch.inference_mode():
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                # Stacked strip by strip: a whole stacked tile would be one more copy of it.
                strip = slice(r0, r1 + 2 * half)
                lidar = data.arrays.lidar
                x = self._stack(data.arrays.hsi[:, strip],
                                None if lidar is None else lidar[:, strip])
                part = x.unsqueeze(0).to(self.device)
                probs = torch.softmax(self.student(part)[0].float(), 0)
                out[:, r0:r1] = probs.cpu().numpy()
        out[:, ~data.valid] = 0.0
        return out
