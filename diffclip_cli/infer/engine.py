"""Class probabilities for tiles and windows with the faithful DiffCLIP network.

:class:`TileEngine` is the one place the whole-scene classifier turns normalised tile data into
probabilities; a faster engine (``--fast``) offers the same two methods.

The engine computes what :meth:`DiffCLIPClassifier.predict_proba
<diffclip_cli.model.classifier.DiffCLIPClassifier.predict_proba>` computes on the same windows
(to float rounding), through :class:`~diffclip_cli.model.inference.InferenceModel`:

- :meth:`TileEngine.predict_tile` embeds every pixel of the padded tile once (spectral stems and
  token embedding are per-pixel maps), then gathers each batch of token windows from a strided
  view of the embedded tile: no window of raw bands is ever copied, and memory per batch is
  bounded by ``batch_size`` windows.
- :meth:`TileEngine.predict_windows` embeds the pixels of given windows.

On CUDA the tile goes to the GPU once (pinned memory, asynchronous copy), every batch stays
there and the probabilities come back once per tile; products run in bfloat16 there unless
``precision="fp32"``. On CPUs float32 is the default; ``precision="bf16"`` is an option.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from diffclip_cli.io.raster import Scene
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.device import resolve_device
from diffclip_cli.model.inference import PRECISIONS, InferenceModel
from diffclip_cli.sampling import PIXEL_CHUNK
from diffclip_cli.sampling.normalise import SceneStats
from diffclip_cli.sampling.tiles import TileData
from diffclip_cli.sampling.windows import read_windows

__all__ = ["TileEngine", "default_batch_size", "default_precision", "tile_windows"]

#: Pixels embedded at a time when embedding a tile (bounds the stems' intermediates).
_EMBED_CHUNK = 8192


def default_batch_size(device: torch.device) -> int:
    """Windows per forward pass: large on GPUs, cache-friendly on CPUs."""
    return 4096 if device.type == "cuda" else 32


def default_precision(device: torch.device) -> str:
    """``"bf16"`` on CUDA GPUs, ``"fp32"`` elsewhere."""
    return "bf16" if device.type == "cuda" else "fp32"


def tile_windows(data: TileData, window: int) -> tuple[np.ndarray, np.ndarray | None,
                                                       np.ndarray, np.ndarray]:
    """The windows of a tile's valid core pixels, copied out of strided views.

    This is what a per-window model reads; :meth:`TileEngine.predict_tile` does not need it.

    Args:
        data: a tile read with ``halo == window // 2``.
        window: the window size.

    Returns:
        ``(hsi (N,C,w,w), lidar (N,L,w,w) | None, rows, cols)`` with rows/cols in the core.
    """
    _check_halo(data, window)
    rows, cols = np.nonzero(data.valid)

    def gather(array: np.ndarray) -> np.ndarray:
        view = sliding_window_view(array, (window, window), axis=(1, 2))  # (C, h, w, ww, ww)
        return np.ascontiguousarray(view[:, rows, cols].transpose(1, 0, 2, 3))

    lidar = None if data.arrays.lidar is None else gather(data.arrays.lidar)
    return gather(data.arrays.hsi), lidar, rows, cols


def _check_halo(data: TileData, window: int) -> None:
    if data.tile.halo != window // 2:
        raise ValueError(f"the tile's halo is {data.tile.halo}, the model needs {window // 2}")


def _version(tensor: torch.Tensor) -> int:
    """The tensor's in-place modification counter; -1 for an inference tensor (it has none)."""
    return -1 if tensor.is_inference() else tensor._version


@contextmanager
def _num_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads (``None``: leave torch's setting alone)."""
    old = torch.get_num_threads()
    if threads is None or threads == old:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class TileEngine:
    """Runs a fine-tuned classifier (or an ensemble of them) over tiles or windows.

    Deterministic. With several classifiers (the members of an ensemble,
    ``finetune.members``) the probabilities are their mean.

    Args:
        classifier: the fine-tuned classifier, or the members of an ensemble (moved to
            ``device``, put in eval mode; they read the same windows). Their weights are read
            when a prediction is made; a change of weights is picked up.
        device: a torch device or ``auto``/``cpu``/``cuda[:N]``/``mps``.
        batch_size: windows per forward pass; default by device (:func:`default_batch_size`).
        precision: ``"fp32"`` or ``"bf16"`` (matrix products and attention in bfloat16,
            float32 accumulation, residuals, norms and softmax); default ``"bf16"`` on CUDA,
            ``"fp32"`` elsewhere.
        threads: intra-op CPU threads while predicting (restored afterwards); default torch's
            current setting. With several engines or processes per machine, give each a share
            of the cores rather than all of them.
        onednn: oneDNN's fused linear kernels on CPUs: ``None`` when usable, ``False`` never
            (plain torch operations), ``True`` required.

    Raises:
        ValueError: an unknown precision or a non-positive batch size or thread count.
    """

    def __init__(self, classifier: DiffCLIPClassifier | Sequence[DiffCLIPClassifier], *,
                 device: str | torch.device = "cpu", batch_size: int | None = None,
                 precision: str | None = None, threads: int | None = None,
                 onednn: bool | None = None) -> None:
        self.device = resolve_device(device)
        members = [classifier] if isinstance(classifier, DiffCLIPClassifier) else list(classifier)
        if not members:
            raise ValueError("an engine needs at least one classifier")
        self.members = [m.to(self.device).eval() for m in members]
        self.classifier = self.members[0]
        first = self.classifier
        for other in self.members[1:]:
            if (other.config.window, other.num_classes, other.net.input_bands) != (
                    first.config.window, first.num_classes, first.net.input_bands):
                raise ValueError("the members of an ensemble must read the same windows and "
                                 "have the same classes")
        self.batch_size = batch_size or default_batch_size(self.device)
        self.precision = precision or default_precision(self.device)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size < 1 or (threads is not None and threads < 1):
            raise ValueError("batch_size and threads must be positive")
        self.threads = threads
        self._onednn = onednn
        self._models: list[InferenceModel | None] = [None] * len(self.members)
        self._keys: list[tuple[object, ...] | None] = [None] * len(self.members)

    @property
    def window(self) -> int:
        """The window size the model reads."""
        return self.classifier.config.window

    @property
    def num_classes(self) -> int:
        """Number of classes (probability planes)."""
        return self.classifier.num_classes

    def model(self, member: int = 0) -> InferenceModel:
        """The inference form of a member, rebuilt when one of its weights or prompts changed."""
        clf = self.members[member]
        key = (clf.prompt_ids.data_ptr(), clf.logit_scale.device,
               *((id(t), _version(t)) for t in (*clf.parameters(), *clf.buffers())))
        model = self._models[member]
        if model is None or key != self._keys[member]:
            clf.eval()
            model = InferenceModel(clf, precision=self.precision, onednn=self._onednn)
            self._models[member], self._keys[member] = model, key
        return model

    # -- moving data --------------------------------------------------------------------

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        """A float32 (or, for indices, int64) copy on the device; asynchronous on CUDA."""
        dtype = np.int64 if np.issubdtype(array.dtype, np.integer) else np.float32
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    # -- predictions --------------------------------------------------------------------

    def predict_windows(self, hsi: np.ndarray, lidar: np.ndarray | None) -> np.ndarray:
        """``(N, K)`` float32 probabilities of normalised windows ``(N, C, w, w)``.

        Raises:
            ModelError: the windows do not fit the model (bands, size, LiDAR or not).
        """
        net = self.classifier.net
        # Shape checks only (the same errors as the network's own).
        net._check(torch.empty(hsi.shape, device="meta"),
                   None if lidar is None else torch.empty(lidar.shape, device="meta"))
        n = hsi.shape[0]
        with _num_threads(self.threads), torch.inference_mode():
            out = torch.zeros(n, self.num_classes, device=self.device)
            for member in range(len(self.members)):
                model = self.model(member)
                for start in range(0, n, self.batch_size):
                    sl = slice(start, start + self.batch_size)
                    inputs = {"hsi": self._to_device(hsi[sl])}
                    if lidar is not None:
                        inputs["lidar"] = self._to_device(lidar[sl])
                    out[sl] += model.predict_windows(inputs)
            if len(self.members) > 1:
                out /= len(self.members)
            return out.cpu().numpy()

    def predict_pixels(
        self,
        scene: Scene,
        rows: np.ndarray,
        cols: np.ndarray,
        *,
        stats: SceneStats,
        chunk: int = PIXEL_CHUNK,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """``(N, K)`` float32 probabilities of scattered pixels of ``scene``.

        Their windows are read and normalised ``chunk`` pixels at a time, so memory depends on
        ``chunk``, not on ``N``.

        Args:
            scene: the scene (its band counts must be the model's).
            rows: pixel rows.
            cols: pixel columns.
            stats: the model's normalisation statistics.
            chunk: pixels read per step.
            progress: ``(done, total)`` callback after every chunk.
        """
        out = np.empty((rows.size, self.num_classes), dtype=np.float32)
        for start in range(0, rows.size, chunk):
            sl = slice(start, start + chunk)
            batch = read_windows(scene, rows[sl], cols[sl], size=self.window, stats=stats)
            out[sl] = self.predict_windows(batch.hsi, batch.lidar)
            if progress is not None:
                progress(min(rows.size, start + chunk), rows.size)
        return out

    def predict_tile(self, data: TileData) -> np.ndarray:
        """``(K, h, w)`` float32 probabilities of a tile's core; 0 on invalid pixels.

        Raises:
            ValueError: the tile's halo is not ``window // 2``.
            ModelError: the tile's bands do not fit the model.
        """
        w = self.window
        _check_halo(data, w)
        h, wd = data.tile.shape
        k = self.num_classes
        rows, cols = np.nonzero(data.valid)
        if rows.size == 0:
            return np.zeros((k, h, wd), dtype=np.float32)
        arrays = dict(data.arrays.items())
        padded = (h + 2 * data.tile.halo, wd + 2 * data.tile.halo)
        for m, array in arrays.items():
            if array.ndim != 3 or array.shape[1:] != padded:
                raise ValueError(f"the tile's {m} array is {array.shape}, expected (bands, "
                                 f"{padded[0]}, {padded[1]}): the core plus the halo")
        meta = {m: torch.empty((1, a.shape[0], w, w), device="meta") for m, a in arrays.items()}
        self.classifier.net._check(meta["hsi"], meta.get("lidar"))
        with _num_threads(self.threads), torch.inference_mode():
            r = self._to_device(rows)
            c = self._to_device(cols)
            flat = r * wd + c
            out = torch.zeros(k, h * wd, device=self.device)
            for member in range(len(self.members)):
                model = self.model(member)
                d = model.dim
                views = {m: self._embedded_windows(model, m, arrays[m], (h, wd))
                         for m in model.modalities}
                for start in range(0, rows.size, self.batch_size):
                    rb, cb = r[start:start + self.batch_size], c[start:start + self.batch_size]
                    n = rb.shape[0]
                    seqs = model.new_sequences(n)
                    for i, m in enumerate(model.modalities):
                        torch.add(views[m][rb, cb].view(n, w * w, d), model.pos_embed,
                                  out=seqs[i * n:(i + 1) * n, 1:])
                    probs = model.probabilities(model.encode(seqs), n)
                    out[:, flat[start:start + n]] += probs.T
            if len(self.members) > 1:
                out /= len(self.members)
            return out.view(k, h, wd).cpu().numpy()

    def _embedded_windows(self, model: InferenceModel, modality: str, array: np.ndarray,
                          core: tuple[int, int]) -> torch.Tensor:
        """Embed each pixel of a padded tile once; a strided view of its token windows.

        Args:
            model: the inference model.
            modality: ``hsi`` or ``lidar``.
            array: the padded tile ``(C, h + 2 halo, w + 2 halo)``.
            core: ``(h, w)``.

        Returns:
            ``(h, w, window, window, d)``: a view (no copy) of the embedded pixels, one
            window per core pixel.
        """
        bands, hp, wp = array.shape
        d, w = model.dim, self.window
        pixels = self._to_device(array).view(bands, hp * wp)
        emb = torch.empty(hp * wp, d, device=self.device)
        # In cache-sized chunks on CPUs; at once on GPUs.
        step = _EMBED_CHUNK if self.device.type == "cpu" else hp * wp
        for start in range(0, hp * wp, step):
            sl = slice(start, start + step)
            emb[sl] = model.embed(modality, pixels[:, sl].t())
        return emb.as_strided((core[0], core[1], w, w, d), (wp * d, d, wp * d, d, 1))
