"""Whether a scene's values look like those the model was trained on.

A model normalises each band with the statistics of its training scene. A scene in other units
(reflectance 0-1 against a model trained on 0-10000, digital numbers against reflectance) is
still classified without an error, but the map is mostly wrong. :func:`distribution_shift`
compares the scene's statistics (a few small windows) with the model's, band by band.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from diffclip_cli.io.raster import Scene
from diffclip_cli.sampling.normalise import BandStats, SceneStats, band_stats

__all__ = ["SHIFT_SCALE", "SHIFT_SHARE", "SHIFT_Z", "BandShift", "describe_shift",
           "distribution_shift"]

#: A band is off when its spread differs from the model's by more than this factor...
SHIFT_SCALE = 10.0
#: ...or its centre lies more than this many of the model's half-ranges from the model's.
SHIFT_Z = 4.0
#: The scene is off when at least this share of a modality's bands is.
SHIFT_SHARE = 0.5
#: Fewer valid pixels in the sample than this: no verdict.
MIN_PIXELS = 50


@dataclass(frozen=True)
class BandShift:
    """One band whose values are far from the model's statistics.

    Attributes:
        modality: ``"hsi"`` or ``"lidar"``.
        band: 0-based band index in its modality.
        name: the band's name.
        scene_center: the scene's centre value (after scale/offset).
        scene_scale: the scene's half-range.
        model_center: the model's centre value.
        model_scale: the model's half-range.
    """

    modality: str
    band: int
    name: str
    scene_center: float
    scene_scale: float
    model_center: float
    model_scale: float


def _off(scene: BandStats, model: BandStats) -> np.ndarray:
    ratio = np.maximum(scene.scale, 1e-12) / np.maximum(model.scale, 1e-12)
    z = np.abs(scene.center - model.center) / np.maximum(model.scale, 1e-12)
    return (ratio > SHIFT_SCALE) | (ratio < 1 / SHIFT_SCALE) | (z > SHIFT_Z)


def _sample_stats(scene: Scene, method: str, *, per_side: int, size: int
                  ) -> SceneStats | None:
    """Statistics of the valid pixels of ``per_side``**2 small windows spread over the scene.

    A few small reads, whatever the scene's size (sampling scattered pixels would read every
    tile of the scene).
    """
    h, w = scene.grid.height, scene.grid.width
    hsi: list[np.ndarray] = []
    lidar: list[np.ndarray] = []
    starts_r = sorted({int(v) for v in np.linspace(0, max(0, h - size), per_side)})
    starts_c = sorted({int(v) for v in np.linspace(0, max(0, w - size), per_side)})
    for r0 in starts_r:
        for c0 in starts_c:
            block = scene.read(((r0, min(h, r0 + size)), (c0, min(w, c0 + size))))
            hsi.append(block.hsi[:, block.valid].T)
            if block.lidar is not None:
                lidar.append(block.lidar[:, block.valid].T)
    values = np.concatenate(hsi)
    if values.shape[0] < MIN_PIXELS:
        return None
    return SceneStats(band_stats(values, method=method),
                      band_stats(np.concatenate(lidar), method=method) if lidar else None)


def distribution_shift(scene: Scene, stats: dict[str, Any] | SceneStats, *, grid: int = 4,
                       size: int = 32) -> list[BandShift]:
    """The bands of ``scene`` whose values are clearly not those the model was trained on.

    Per band, the scene's robust centre and half-range (the model's normalisation method, on
    the valid pixels of ``grid`` x ``grid`` windows of ``size`` pixels spread over the scene)
    are compared with the model's: a band is off when its
    half-range differs by more than :data:`SHIFT_SCALE` times or its centre lies more than
    :data:`SHIFT_Z` model half-ranges away. Only when at least half the bands of a modality
    are off are they reported (a few odd bands are normal between two scenes).

    Args:
        scene: the scene to classify.
        stats: the model's normalisation statistics.
        grid: windows per side of the scene.
        size: the windows' edge in pixels.

    Returns:
        The off bands (empty when the scene looks like the model's, or has no valid pixel).
    """
    model = stats if isinstance(stats, SceneStats) else SceneStats.from_dict(stats)
    mine = _sample_stats(scene, model.hsi.method, per_side=grid, size=size)
    if mine is None:  # (almost) no valid pixel in the sample: nothing to compare
        return []
    names = scene.band_names
    shifts: list[BandShift] = []
    for modality, a, b in (("hsi", mine.hsi, model.hsi), ("lidar", mine.lidar, model.lidar)):
        if a is None or b is None or a.center.size != b.center.size:
            continue
        off = _off(a, b)
        if off.sum() < max(1, SHIFT_SHARE * off.size):
            continue
        shifts.extend(BandShift(modality, int(i), names[modality][i], float(a.center[i]),
                                float(a.scale[i]), float(b.center[i]), float(b.scale[i]))
                      for i in np.flatnonzero(off))
    return shifts


def describe_shift(shifts: list[BandShift], *, limit: int = 3) -> str:
    """One sentence fragment naming the first ``limit`` off bands and their statistics."""
    parts = [f"{s.name} (scene {s.scene_center:.4g} +- {s.scene_scale:.4g}, model "
             f"{s.model_center:.4g} +- {s.model_scale:.4g})" for s in shifts[:limit]]
    more = len(shifts) - len(parts)
    return ", ".join(parts) + (f" and {more} more band{'s' if more > 1 else ''}" if more else "")
