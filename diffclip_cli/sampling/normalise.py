"""Per-band normalisation statistics, computed once from the scene and stored with the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from diffclip_cli.errors import InputError
from diffclip_cli.io.raster import Scene
from diffclip_cli.sampling.unlabelled import sample_unlabelled

__all__ = ["METHODS", "BandStats", "ContextStats", "Projection", "SceneStats", "band_stats",
           "compute_stats"]

#: Normalisation methods: robust percentiles (default) or mean and standard deviation.
METHODS = ("percentile", "meanstd")

#: Relative floor on a band's scale; below it the band counts as constant.
_TINY = 1e-6


@dataclass(frozen=True, eq=False)
class BandStats:
    """Per-band centre and scale: ``(x - center) / scale``.

    Attributes:
        center: ``(C,)`` float64.
        scale: ``(C,)`` float64, positive.
        method: ``"percentile"`` or ``"meanstd"``.
    """

    center: np.ndarray
    scale: np.ndarray
    method: str = "percentile"

    def __post_init__(self) -> None:
        center = np.asarray(self.center, np.float64).ravel()
        scale = np.asarray(self.scale, np.float64).ravel()
        if center.shape != scale.shape:
            raise ValueError("center and scale must have one value per band")
        if not (np.isfinite(center).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("center must be finite and scale finite and positive")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        object.__setattr__(self, "center", center)
        object.__setattr__(self, "scale", scale)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, BandStats) and self.method == other.method
                and np.array_equal(self.center, other.center)
                and np.array_equal(self.scale, other.scale))

    __hash__ = None  # type: ignore[assignment]

    @property
    def bands(self) -> int:
        """Number of bands."""
        return int(self.center.size)

    def apply(self, x: np.ndarray, *, axis: int = 0, inplace: bool = False) -> np.ndarray:
        """Normalise an array whose ``axis`` is the band axis; NaN becomes 0.

        Args:
            x: e.g. ``(C, H, W)``, ``(C, N)`` or, with ``axis=1``, ``(N, C, w, w)``.
            axis: the band axis.
            inplace: overwrite ``x`` when it is a writable float32 array (same values as a
                new array, without the temporaries: a tile of 144 bands is 40 MB each).

        Returns:
            A float32 array of the same shape: ``x`` itself when normalised in place, else a
            new one.

        Raises:
            ValueError: the band axis does not have :attr:`bands` entries.
        """
        x = np.asarray(x)
        axis = axis % max(x.ndim, 1)
        if x.ndim == 0 or x.shape[axis] != self.bands:
            raise ValueError(f"expected {self.bands} bands on axis {axis}, got shape {x.shape}")
        shape = [1] * x.ndim
        shape[axis] = self.bands
        center = self.center.astype(np.float32).reshape(shape)
        scale = self.scale.astype(np.float32).reshape(shape)
        if inplace and x.dtype == np.float32 and x.flags.writeable:
            out = np.subtract(x, center, out=x)
            np.divide(out, scale, out=out)
        else:
            out = (x.astype(np.float32) - center) / scale
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0, copy=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {"method": self.method, "center": [float(v) for v in self.center],
                "scale": [float(v) for v in self.scale]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BandStats:
        """Rebuild from :meth:`to_dict`."""
        return cls(np.asarray(data["center"], np.float64), np.asarray(data["scale"], np.float64),
                   str(data.get("method", "percentile")))


@dataclass(frozen=True, eq=False)
class Projection:
    """A linear map of normalised HSI bands onto their leading principal components.

    Attributes:
        mean: ``(C,)`` mean of the normalised bands.
        components: ``(n, C)`` orthonormal rows, the leading principal axes (each with its
            largest coefficient positive, so a fit is reproducible to the sign).
    """

    mean: np.ndarray
    components: np.ndarray

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, np.float64).ravel()
        comp = np.asarray(self.components, np.float64)
        if comp.ndim != 2 or comp.shape[1] != mean.size or comp.shape[0] < 1:
            raise ValueError("components must be (n, C) with one mean per band")
        if not (np.isfinite(mean).all() and np.isfinite(comp).all()):
            raise ValueError("a projection must be finite")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "components", comp)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Projection) and np.array_equal(self.mean, other.mean)
                and np.array_equal(self.components, other.components))

    __hash__ = None  # type: ignore[assignment]

    @property
    def bands(self) -> int:
        """Bands it projects."""
        return int(self.mean.size)

    @property
    def size(self) -> int:
        """Components it keeps."""
        return int(self.components.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``(C, h, w)`` normalised bands -> ``(n, h, w)`` float32 components."""
        if x.ndim != 3 or x.shape[0] != self.bands:
            raise ValueError(f"expected ({self.bands}, h, w), got {x.shape}")
        c, h, w = x.shape
        flat = x.reshape(c, h * w).astype(np.float32, copy=False)
        comp = self.components.astype(np.float32)
        out = comp @ flat - (comp @ self.mean.astype(np.float32))[:, None]
        return out.reshape(self.size, h, w)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {"mean": [float(v) for v in self.mean],
                "components": [[float(v) for v in row] for row in self.components]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Projection:
        """Rebuild from :meth:`to_dict`."""
        return cls(np.asarray(data["mean"], np.float64),
                   np.asarray(data["components"], np.float64))


@dataclass(frozen=True)
class ContextStats:
    """The spatial context a model reads beside each pixel's bands (docs/model.md).

    The HSI modality gets the scene's leading principal components smoothed at every scale,
    the LiDAR modality its channels smoothed at every scale, each smoothed channel normalised
    like a band (:mod:`diffclip_cli.sampling.context` computes them).

    Attributes:
        scales: Gaussian standard deviations in pixels, increasing.
        projection: the HSI bands' principal components.
        hsi: statistics of the ``projection.size * len(scales)`` smoothed HSI channels.
        lidar: statistics of the ``L * len(scales)`` smoothed LiDAR channels, or ``None``.
    """

    scales: tuple[float, ...]
    projection: Projection
    hsi: BandStats
    lidar: BandStats | None = None

    def __post_init__(self) -> None:
        scales = tuple(float(s) for s in self.scales)
        if not scales or any(not s > 0 for s in scales) or list(scales) != sorted(set(scales)):
            raise ValueError("context scales must be positive and increasing")
        object.__setattr__(self, "scales", scales)
        if self.hsi.bands != self.projection.size * len(scales):
            raise ValueError("the HSI context statistics do not match the projection and scales")
        if self.lidar is not None and self.lidar.bands % len(scales):
            raise ValueError("the LiDAR context statistics do not match the scales")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {"scales": list(self.scales), "projection": self.projection.to_dict(),
                "hsi": self.hsi.to_dict(),
                "lidar": None if self.lidar is None else self.lidar.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContextStats:
        """Rebuild from :meth:`to_dict`."""
        lidar = data.get("lidar")
        return cls(tuple(data["scales"]), Projection.from_dict(data["projection"]),
                   BandStats.from_dict(data["hsi"]),
                   None if lidar is None else BandStats.from_dict(lidar))


@dataclass(frozen=True)
class SceneStats:
    """Normalisation statistics of both modalities, and the spatial context, if any.

    Attributes:
        hsi: HSI band statistics.
        lidar: LiDAR channel statistics, or ``None`` without LiDAR.
        context: the spatial context appended to each modality's bands, or ``None``.
    """

    hsi: BandStats
    lidar: BandStats | None = None
    context: ContextStats | None = None

    def context_bands(self) -> tuple[int, int]:
        """Channels the context appends to the HSI and to the LiDAR bands."""
        if self.context is None:
            return (0, 0)
        lidar = 0 if self.context.lidar is None else self.context.lidar.bands
        return (self.context.hsi.bands, lidar)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (no ``context`` key without context, as files before it)."""
        out: dict[str, Any] = {"hsi": self.hsi.to_dict(),
                               "lidar": None if self.lidar is None else self.lidar.to_dict()}
        if self.context is not None:
            out["context"] = self.context.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneStats:
        """Rebuild from :meth:`to_dict`."""
        lidar = data.get("lidar")
        context = data.get("context")
        return cls(BandStats.from_dict(data["hsi"]),
                   None if lidar is None else BandStats.from_dict(lidar),
                   None if context is None else ContextStats.from_dict(context))


def band_stats(
    values: np.ndarray,
    *,
    method: str = "percentile",
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> BandStats:
    """Statistics of ``(N, C)`` sample values.

    ``percentile``: center = (p_lo + p_hi) / 2, scale = (p_hi - p_lo) / 2, so the central 96 %
    of values map to [-1, 1]. ``meanstd``: mean and standard deviation. A band whose scale is
    (almost) zero falls back to half its sample range, and a truly constant band to 1, so it
    normalises to 0 instead of blowing up.

    Raises:
        ValueError: no values, or an unknown method.
    """
    v = np.asarray(values, np.float64)
    if v.ndim != 2 or v.shape[0] == 0:
        raise ValueError(f"need (N, C) values with N > 0, got shape {v.shape}")
    if method == "percentile":
        lo, hi = np.percentile(v, percentiles, axis=0)
        center = (lo + hi) / 2
        scale = (hi - lo) / 2
    elif method == "meanstd":
        center = v.mean(axis=0)
        scale = v.std(axis=0)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    floor = _TINY * np.maximum(1.0, np.abs(center))
    half_range = (v.max(axis=0) - v.min(axis=0)) / 2
    scale = np.where(scale > floor, scale, half_range)
    scale = np.where(scale > floor, scale, 1.0)
    return BandStats(center, scale, method)


def compute_stats(
    scene: Scene,
    *,
    seed: int | np.random.Generator,
    n_samples: int = 50_000,
    method: str = "percentile",
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> SceneStats:
    """Per-band statistics of a scene from a seeded sample of its valid pixels.

    Pixels are drawn by :func:`~diffclip_cli.sampling.unlabelled.sample_unlabelled` (spread over
    the whole valid area) and read tile by tile, never the whole scene at once.

    Args:
        scene: the scene.
        seed: the random seed.
        n_samples: pixels to sample.
        method: ``"percentile"`` or ``"meanstd"``.
        percentiles: the low and high percentiles of the ``percentile`` method.

    Raises:
        InputError: the scene has no valid pixel.
    """
    rows, cols = sample_unlabelled(scene, n_samples, seed=seed, warn=False)
    if rows.size == 0:
        raise InputError("the scene has no valid pixel (every pixel is nodata in some band or "
                         "outside the LiDAR)", path=scene.hsi_path,
                         hint="check the nodata values and that the LiDAR covers the HSI")
    values = scene.read_pixels(rows, cols)
    hsi = band_stats(values.hsi, method=method, percentiles=percentiles)
    lidar = (band_stats(values.lidar, method=method, percentiles=percentiles)
             if values.lidar is not None else None)
    return SceneStats(hsi, lidar)
