"""Which spatial context a scene gets: decided from its labelled pixels, before any training.

The network can read, beside each pixel's bands, the scene's principal components smoothed
at a few scales (:mod:`diffclip_cli.sampling.context`). That is worth 20 OA points where land
cover comes in wide fields and costs points where classes are small or mixed, and nothing in
the unlabelled pixels says which. The labelled ones do: the spectral-spatial baseline
(:func:`~diffclip_cli.report.baseline.spectral_spatial_svm`) scores, by leave-one-out on the
shots alone, an SVM on the bands alone and on the bands with the context up to each scale.
The network gets the context of the best candidate only when it beats the bands alone beyond
chance: the shots it gets right that the bands alone get wrong must outnumber the reverse
with a one-sided exact binomial (McNemar) p-value below :data:`SIGNIFICANCE`. With 2 shots
per class a handful of held-out shots decide, and a lucky difference of one or two would
otherwise hand a scene context it does not reward (eo_learn, 2 shots). No test pixel is
looked at.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from diffclip_cli.io.raster import Scene
from diffclip_cli.model.config import ModelConfig
from diffclip_cli.report.baseline import SpatialChoice, spectral_spatial_svm
from diffclip_cli.sampling.context import compute_context, read_context, scene_projection
from diffclip_cli.sampling.normalise import Projection, SceneStats

__all__ = ["SIGNIFICANCE", "ContextChoice", "choose_context", "context_wins"]

log = logging.getLogger("diffclip")

#: The one-sided p-value below which the shots count as evidence for the context.
SIGNIFICANCE = 0.05


def context_wins(with_context: np.ndarray, bands_only: np.ndarray) -> tuple[bool, float]:
    """Whether the context's cross-validated outcomes beat the bands' beyond chance.

    McNemar's exact test on the paired outcomes of the same held-out shots: under "no
    difference" the shots one gets right and the other wrong split evenly.

    Args:
        with_context: per shot, right with the context.
        bands_only: per shot, right with the bands alone.

    Returns:
        ``(significant, p)``; ``p`` is 1.0 when the context gains nothing.
    """
    from scipy.stats import binomtest  # a dependency; imported when used

    gained = int(np.sum(with_context & ~bands_only))
    lost = int(np.sum(~with_context & bands_only))
    if gained <= lost:
        return False, 1.0
    p = float(binomtest(gained, gained + lost, 0.5, alternative="greater").pvalue)
    return p < SIGNIFICANCE, p


@dataclass(frozen=True)
class ContextChoice:
    """The statistics a network trains with, and how the context in them was chosen.

    Attributes:
        stats: the band statistics with the chosen context (or none).
        choice: the cross-validation behind it; ``None`` when the configuration offers no
            context (nothing was compared).
        projection: the scene's principal components (``None`` without candidates), for the
            spectral-spatial baseline to reuse.
        p_value: the paired test's p-value of the best context against the bands alone
            (1.0 when the bands won outright or nothing was compared).
    """

    stats: SceneStats
    choice: SpatialChoice | None
    projection: Projection | None
    p_value: float = 1.0

    def to_dict(self) -> dict[str, object]:
        """What a model's provenance records of the choice."""
        if self.choice is None:
            return {"scales": []}
        return {"scales": list(self.choice.scales), "folds": self.choice.folds,
                "cv_accuracy": {str(k): round(v, 4) for k, v in self.choice.scores.items()},
                "p_value": round(self.p_value, 4)}


def choose_context(
    scene: Scene,
    stats: SceneStats,
    config: ModelConfig,
    rows: np.ndarray,
    cols: np.ndarray,
    class_ids: np.ndarray,
) -> ContextChoice:
    """The context of ``config.context_scales`` that the shots at ``rows``/``cols`` support.

    The spectral-spatial baseline's leave-one-out on the shots compares the bands alone with
    the bands plus the smoothed components up to each candidate scale. The context is given
    when the best of them beats the bands alone beyond chance (:func:`context_wins`); the
    network then reads every candidate scale, not the best prefix: on 5 shots per class the
    prefixes differ by one or two held-out shots, and the network weighs the channels itself
    (docs/model.md, "Spatial context").

    Args:
        scene: the scene.
        stats: its band statistics (any context in them is replaced).
        config: the network's configuration (its candidate scales and components).
        rows: rows of the training pixels.
        cols: their columns.
        class_ids: their classes.

    Returns:
        The statistics with the chosen context, and the choice.
    """
    scales = tuple(float(s) for s in config.context_scales)
    base = SceneStats(stats.hsi, stats.lidar)
    if not scales:
        return ContextChoice(base, None, None)
    # The projection and the context's statistics describe the scene: fixed samples
    # (sampling/context.py), so a run's seed does not change the choice for a given split.
    projection = scene_projection(scene, base, n_components=config.context_components)
    bands, smooth = read_context(scene, rows, cols, stats=base, projection=projection,
                                 scales=scales)
    _, best = spectral_spatial_svm((bands, smooth), np.asarray(class_ids), None,
                                   scales=scales)
    p = 1.0
    choice = best
    if best.scales:
        significant, p = context_wins(best.outcomes[best.scales[-1]], best.outcomes[0.0])
        if not significant:
            choice = dataclasses.replace(best, scales=())
        else:  # the network gets every candidate scale (see the docstring)
            choice = dataclasses.replace(best, scales=scales)
    log.info("Spatial context: %s (cross-validated accuracy on the shots: %s; p = %.3g).",
             f"scales up to {choice.scales[-1]:g} px" if choice.scales else "none",
             ", ".join(f"{'bands' if k == 0 else f'<= {k:g}'} {100 * v:.0f} %"
                       for k, v in choice.scores.items()), p)
    chosen = compute_context(scene, base, choice.scales,
                             n_components=config.context_components, projection=projection)
    return ContextChoice(chosen, choice, projection, p)
