"""Spatial context of a pixel: the scene's leading spectral components, smoothed at several scales.

Where land cover comes in wide, homogeneous fields (Indian Pines: fields of hundreds of metres
at 20 m pixels), the average spectrum of a pixel's neighbourhood is a cleaner signature of its
class than the pixel or a 5 x 5 window: within-field noise averages out. Where classes are
small or mixed, the same averages blur them. This module computes the context; whether a scene
rewards it is decided from its labelled pixels (:func:`diffclip_cli.report.baseline.
spectral_spatial_svm`'s cross-validation, which the few-shot pipeline reuses).

The context of a scene at ``scales`` ``s_1 < ... < s_m`` (Gaussian standard deviations in
pixels) is made of

1. the HSI bands, normalised with the scene's statistics, projected on their ``n`` leading
   principal components (:class:`~diffclip_cli.sampling.normalise.Projection`, fitted on a
   sample of the scene's pixels), and the normalised LiDAR channels;
2. each of those channels smoothed by a Gaussian of every scale, as a *normalised
   convolution* (nodata pixels carry no weight: ``smooth(x * valid) / smooth(valid)``), the
   scene mirrored at its border (``d c b | a b c d | c b a``, the padding of the windows).

A value depends only on pixels within :func:`context_halo` of it (the kernels are cut at
:data:`TRUNCATE` standard deviations), so computing the context tile by tile with that halo
gives the same numbers as on the whole scene, with memory bounded by the tile.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diffclip_cli.io.pixels import as_pixel_arrays, group_by_tile
from diffclip_cli.io.raster import Scene
from diffclip_cli.modalities import Modalities
from diffclip_cli.sampling.normalise import (
    ContextStats,
    Projection,
    SceneStats,
    band_stats,
)
from diffclip_cli.sampling.unlabelled import sample_unlabelled

__all__ = [
    "CONTEXT_SAMPLES",
    "SCENE_SEED",
    "TRUNCATE",
    "compute_context",
    "context_halo",
    "fit_projection",
    "model_inputs",
    "read_context",
    "scene_projection",
    "smooth_stack",
]

#: Gaussian kernels are cut at this many standard deviations (0.3 % of the weight beyond).
TRUNCATE = 3.0
#: Pixels sampled to fit the projection and the context's statistics (every valid pixel of a
#: scene with fewer), drawn with :data:`SCENE_SEED`: these describe the scene, not a run, so
#: a run's seed does not move them (nor, through them, the context a split is given).
CONTEXT_SAMPLES = 50_000
#: The seed of those samples.
SCENE_SEED = 0


def context_halo(scales: Sequence[float]) -> int:
    """Pixels of neighbourhood the smoothing at ``scales`` reads on every side."""
    return max((int(TRUNCATE * float(s) + 0.5) for s in scales), default=0)


def fit_projection(values: np.ndarray, n_components: int) -> Projection:
    """Principal axes of ``(N, C)`` normalised band values (``min(n_components, C, N)`` kept).

    ``n_components = 0`` keeps them all (a rotation of the bands).

    Raises:
        ValueError: fewer than two samples or ``n_components < 0``.
    """
    v = np.asarray(values, np.float64)
    if v.ndim != 2 or v.shape[0] < 2:
        raise ValueError(f"need (N, C) values with N >= 2, got shape {v.shape}")
    if n_components < 0:
        raise ValueError("n_components must be 0 (all) or more")
    v = np.nan_to_num(v)
    mean = v.mean(axis=0)
    _, _, vt = np.linalg.svd(v - mean, full_matrices=False)
    comp = vt[: min(n_components or vt.shape[0], vt.shape[0])]
    signs = np.sign(comp[np.arange(comp.shape[0]), np.abs(comp).argmax(axis=1)])
    return Projection(mean, comp * np.where(signs == 0, 1.0, signs)[:, None])


def _sample(scene: Scene, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return sample_unlabelled(scene, samples, seed=seed, warn=False)


def scene_projection(scene: Scene, stats: SceneStats, *, n_components: int,
                     seed: int = SCENE_SEED, samples: int = CONTEXT_SAMPLES) -> Projection:
    """:func:`fit_projection` on a seeded sample of the scene's valid pixels (read by tiles)."""
    rows, cols = _sample(scene, samples, seed)
    values = scene.read_pixels(rows, cols)
    return fit_projection(stats.hsi.apply(values.hsi, axis=1), n_components)


def smooth_stack(channels: np.ndarray, valid: np.ndarray, scales: Sequence[float]
                 ) -> np.ndarray:
    """Each channel smoothed at each scale, as a normalised convolution over valid pixels.

    Args:
        channels: ``(n, H, W)`` values (anything where ``valid`` is False).
        valid: ``(H, W)`` bool.
        scales: Gaussian standard deviations in pixels.

    Returns:
        ``(len(scales) * n, H, W)`` float32, scale-major (all channels at the first scale,
        then the next); 0 where no valid pixel lies within reach. The array is mirrored at
        its own border, so only pixels at least :func:`context_halo` inside it are exact.
    """
    from scipy.ndimage import gaussian_filter  # a dependency; imported when used

    n, h, w = channels.shape
    weight = valid.astype(np.float32)
    data = np.where(valid[None], channels, 0.0).astype(np.float32)
    out = np.empty((len(scales) * n, h, w), np.float32)
    for i, sigma in enumerate(scales):
        norm = gaussian_filter(weight, float(sigma), mode="mirror", truncate=TRUNCATE)
        ok = norm > 1e-6
        safe = np.where(ok, norm, 1.0)
        for j in range(n):
            s = gaussian_filter(data[j], float(sigma), mode="mirror", truncate=TRUNCATE)
            out[i * n + j] = np.where(ok, s / safe, 0.0)
    return out


def _mirror(array: np.ndarray, pad: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """``array`` (``(..., H, W)``) reflect-padded on its last two axes (a no-op without pad)."""
    if not any(map(any, pad)):
        return array
    return np.pad(array, ((0, 0),) * (array.ndim - 2) + pad, mode="reflect")


def model_inputs(
    hsi: np.ndarray,
    lidar: np.ndarray | None,
    valid: np.ndarray,
    *,
    stats: SceneStats,
    pad: tuple[tuple[int, int], tuple[int, int]],
    inplace: bool = False,
) -> Modalities[np.ndarray]:
    """The network's input arrays from raw bands: normalised, with the context appended.

    The one place raw values become model inputs (windows, tiles and the array API read
    through it), so every path gives the same numbers for the same pixel.

    Args:
        hsi: ``(C, h, w)`` raw HSI values (NaN where nodata), read around the pixels wanted
            with :func:`context_halo` (``stats.context.scales``) pixels beyond the halo the
            caller needs, less where the scene ends.
        lidar: ``(L, h, w)`` raw LiDAR values on the same grid, or ``None``.
        valid: ``(h, w)`` bool, where every band of both modalities is valid.
        stats: the model's statistics (and context).
        pad: rows (top, bottom) and columns (left, right) missing where the read met the scene
            border; they are filled by mirroring, as the windows are.
        inplace: the raw arrays may be overwritten (float32 arrays read for this call alone).

    Returns:
        ``hsi`` ``(C [+ context], h', w')`` and ``lidar`` likewise, float32: the read region
        mirrored by ``pad``, minus the context halo on every side.

    Raises:
        ValueError: LiDAR without LiDAR statistics.
    """
    hsi_n = _mirror(stats.hsi.apply(hsi, inplace=inplace), pad)
    lidar_n = None
    if lidar is not None:
        if stats.lidar is None:
            raise ValueError("the scene has LiDAR but the statistics have none")
        lidar_n = _mirror(stats.lidar.apply(lidar, inplace=inplace), pad)
    context = stats.context
    if context is None:
        return Modalities(hsi_n, lidar_n)
    k = context_halo(context.scales)
    valid_p = _mirror(valid, pad)
    crop = (slice(None), slice(k, hsi_n.shape[1] - k), slice(k, hsi_n.shape[2] - k))
    smooth = smooth_stack(context.projection.apply(hsi_n), valid_p, context.scales)[crop]
    hsi_out = np.concatenate([hsi_n[crop], context.hsi.apply(smooth, inplace=True)])
    lidar_out = None
    if lidar_n is not None:
        parts = [lidar_n[crop]]
        if context.lidar is not None:
            lsmooth = smooth_stack(lidar_n, valid_p, context.scales)[crop]
            parts.append(context.lidar.apply(lsmooth, inplace=True))
        lidar_out = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return Modalities(hsi_out, lidar_out)


def _pixel_features(
    scene: Scene, rows: np.ndarray, cols: np.ndarray, *, stats: SceneStats,
    projection: Projection | None, scales: Sequence[float], tile_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised bands and smoothed channels (unnormalised) of scattered pixels."""
    r, c = as_pixel_arrays(rows, cols)
    h, w = scene.grid.shape
    if r.size and (r.min() < 0 or c.min() < 0 or r.max() >= h or c.max() >= w):
        raise ValueError("pixel positions outside the scene")
    lidar_bands = scene.lidar_bands if scene.has_lidar else 0
    n = (projection.size if projection is not None else 0) + lidar_bands
    base = np.empty((r.size, scene.hsi_bands + lidar_bands), np.float32)
    smooth = np.empty((r.size, len(scales) * n), np.float32)
    halo = context_halo(scales)
    for g in group_by_tile(r, c, tile_size=tile_size):
        block, pad = scene.read_around((g.row_start, g.row_stop), (g.col_start, g.col_stop),
                                       halo)
        hsi = _mirror(stats.hsi.apply(block.hsi, inplace=True), pad)
        parts = [hsi]
        if block.lidar is not None:
            if stats.lidar is None:
                raise ValueError("the scene has LiDAR but the statistics have none")
            parts.append(_mirror(stats.lidar.apply(block.lidar, inplace=True), pad))
        lr = r[g.index] - g.row_start + halo
        lc = c[g.index] - g.col_start + halo
        base[g.index] = np.concatenate([p[:, lr, lc] for p in parts]).T
        if scales:
            channels = ([projection.apply(hsi)] if projection is not None else []) + parts[1:]
            stack = smooth_stack(np.concatenate(channels), _mirror(block.valid, pad), scales)
            smooth[g.index] = stack[:, lr, lc].T
    return base, smooth


def read_context(
    scene: Scene,
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    stats: SceneStats,
    projection: Projection,
    scales: Sequence[float],
    tile_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """The features of the spectral-spatial baseline at scattered pixels, read tile by tile.

    Args:
        scene: the scene.
        rows: pixel rows.
        cols: pixel columns.
        stats: the scene's normalisation statistics (its context, if any, is not used).
        projection: the HSI projection (:func:`scene_projection`).
        scales: Gaussian standard deviations in pixels (may be empty).
        tile_size: pixels are grouped by tiles of this size; each group reads its bounding
            box plus :func:`context_halo` pixels.

    Returns:
        ``bands (N, C + L)``: each pixel's normalised HSI bands and LiDAR channels, and
        ``smoothed (N, len(scales) * (n + L))``: the ``n`` projected HSI channels and the
        LiDAR channels smoothed at each scale, scale-major (unnormalised).
    """
    return _pixel_features(scene, rows, cols, stats=stats, projection=projection,
                           scales=scales, tile_size=tile_size)


def compute_context(
    scene: Scene,
    stats: SceneStats,
    scales: Sequence[float],
    *,
    n_components: int,
    seed: int = SCENE_SEED,
    projection: Projection | None = None,
    samples: int = CONTEXT_SAMPLES,
) -> SceneStats:
    """``stats`` with the spatial context at ``scales`` (none for empty ``scales``).

    The projection is fitted on a seeded sample of the scene's pixels (unless given), and each
    smoothed channel gets percentile statistics, like a band, from a second sample.

    Args:
        scene: the scene.
        stats: its band statistics.
        scales: Gaussian standard deviations in pixels, increasing.
        n_components: principal components of the HSI bands to smooth.
        seed: the seed of both samples.
        projection: a projection already fitted on this scene.
        samples: pixels per sample.
    """
    base = SceneStats(stats.hsi, stats.lidar)
    if not scales:
        return base
    if projection is None:
        projection = scene_projection(scene, base, n_components=n_components, seed=seed,
                                      samples=samples)
    rows, cols = _sample(scene, samples, seed + 1)
    _, smooth = _pixel_features(scene, rows, cols, stats=base, projection=projection,
                                scales=scales, tile_size=256)
    n = projection.size
    lidar_bands = scene.lidar_bands if scene.has_lidar else 0
    per = n + lidar_bands
    blocks = smooth.reshape(len(rows), len(scales), per)
    hsi = band_stats(blocks[:, :, :n].reshape(len(rows), -1))
    lidar = (band_stats(blocks[:, :, n:].reshape(len(rows), -1)) if lidar_bands else None)
    return SceneStats(stats.hsi, stats.lidar, ContextStats(tuple(scales), projection, hsi, lidar))
