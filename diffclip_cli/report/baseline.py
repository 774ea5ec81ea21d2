"""The classical baselines every ``fewshot`` report scores (docs/report.md).

Two alternatives a user could run instead, trained on the same shots as the model and scored
on the same test pixels, so a report says plainly whether DiffCLIP earned its cost:

* a per-pixel random forest (:func:`random_forest`): each pixel's own HSI band vector plus
  its LiDAR values, no spatial context, no text;
* a spectral-spatial SVM (:func:`spectral_spatial_svm`): the pixel's bands plus the scene's
  leading principal components smoothed at a few scales, the scale chosen by leave-one-out
  on the shots. The few-shot pipeline reuses its choice for the network's spatial context
  (:mod:`diffclip_cli.train.spatial`).

The benchmark protocol (``benchmarks/``) scores both, next to a per-pixel RBF SVM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from diffclip_cli.errors import LabelError

if TYPE_CHECKING:
    from diffclip_cli.io.labels import LabelSet
    from diffclip_cli.io.raster import Scene
    from diffclip_cli.report.metrics import AccuracyReport
    from diffclip_cli.sampling.normalise import Projection, SceneStats
    from diffclip_cli.sampling.shots import Split

__all__ = [
    "LOO_MAX_PIXELS",
    "PER_PIXEL_METHOD",
    "SPATIAL_COMPONENTS",
    "SPATIAL_METHOD",
    "SPATIAL_SCALES",
    "Baseline",
    "SpatialChoice",
    "check_features",
    "random_forest",
    "score_baselines",
    "spectral_spatial_svm",
]


def check_features(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> tuple[
        np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel training and test features as float64 arrays, checked.

    Args:
        x_train: ``(N, F)`` training features.
        y_train: ``(N,)`` class ids.
        x_test: ``(M, F)`` features to classify.

    Returns:
        ``(x_train, y_train, x_test)`` as arrays (``y_train`` flattened).

    Raises:
        ValueError: when the shapes disagree.
        LabelError: with no training pixel.
    """
    x_train = np.asarray(x_train, dtype=np.float64)
    y_train = np.asarray(y_train).ravel()
    x_test = np.asarray(x_test, dtype=np.float64)
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"features must be (N, F) with the same F, got {x_train.shape} and "
                         f"{x_test.shape}")
    if x_train.shape[0] != y_train.size:
        raise ValueError(f"{x_train.shape[0]} training rows but {y_train.size} labels")
    if y_train.size == 0:
        raise LabelError("no training pixel", hint="give at least one labelled pixel per class")
    return x_train, y_train, x_test


def random_forest(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    *,
    seed: int,
    n_estimators: int = 200,
    n_jobs: int = 1,
) -> np.ndarray:
    """Train a random forest on per-pixel features and predict the test pixels.

    Args:
        x_train: ``(N, F)`` training features.
        y_train: ``(N,)`` class ids.
        x_test: ``(M, F)`` features to classify.
        seed: the random seed; the same seed gives the same predictions.
        n_estimators: number of trees.
        n_jobs: parallel workers (the result does not depend on it).

    Returns:
        ``(M,)`` predicted class ids, of ``y_train``'s dtype.

    Raises:
        LabelError: with no training pixel.
    """
    from sklearn.ensemble import RandomForestClassifier  # a dependency; imported when used

    x_train, y_train, x_test = check_features(x_train, y_train, x_test)
    model = RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs)
    model.fit(x_train, y_train)
    return model.predict(x_test)


#: Context scales of the spectral-spatial baseline (Gaussian standard deviations, pixels).
SPATIAL_SCALES: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
#: Leading principal components of the HSI bands the spectral-spatial baseline smooths.
SPATIAL_COMPONENTS = 30
#: Above this many training pixels, cross-validation uses 10 stratified folds, not one pixel.
LOO_MAX_PIXELS = 400
_SVM_C = 10.0


@dataclass(frozen=True)
class SpatialChoice:
    """What the spectral-spatial baseline's cross-validation chose, and the scores it compared.

    Attributes:
        scales: the context scales used (empty: no smoothing).
        scores: cross-validated accuracy on the training pixels (0-1) of each candidate, keyed
            by its largest scale (0 for none).
        folds: ``"leave-one-out"`` or ``"10-fold"``.
        outcomes: for each candidate, whether the cross-validation got each training pixel
            right (what a paired test of two candidates needs).
    """

    scales: tuple[float, ...]
    scores: dict[float, float]
    folds: str
    outcomes: dict[float, np.ndarray] = field(default_factory=dict, repr=False, compare=False)


def _svm_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    model = make_pipeline(StandardScaler(), SVC(C=_SVM_C, gamma="scale"))
    return model.fit(x_train, y_train).predict(x_test)


def _cv_outcomes(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, str]:
    """Per training pixel, whether the cross-validated :func:`_svm_predict` gets it right.

    Each pixel is held out once (leave-one-out, or 10 stratified folds above
    :data:`LOO_MAX_PIXELS`); the training pixels alone are used.
    """
    from sklearn.model_selection import LeaveOneOut, StratifiedKFold

    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        return np.ones(y.size, bool), "none"
    if y.size <= LOO_MAX_PIXELS or counts.min() < 10:
        splits = LeaveOneOut().split(x)
        how = "leave-one-out"
    else:
        splits = StratifiedKFold(10, shuffle=True, random_state=0).split(x, y)
        how = "10-fold"
    right = np.zeros(y.size, bool)
    for train, test in splits:
        if np.unique(y[train]).size < 2:
            right[test] = y[test] == y[train][0]
            continue
        right[test] = _svm_predict(x[train], y[train], x[test]) == y[test]
    return right, how


def spectral_spatial_svm(
    train: tuple[np.ndarray, np.ndarray],
    y_train: np.ndarray,
    test: tuple[np.ndarray, np.ndarray] | None,
    *,
    scales: tuple[float, ...] = SPATIAL_SCALES,
) -> tuple[np.ndarray, SpatialChoice]:
    """The spectral-spatial baseline: an RBF SVM on pixels and their context, scale chosen by CV.

    Features (:func:`~diffclip_cli.sampling.context.read_context`): each pixel's normalised
    bands (HSI then LiDAR), followed by the scene's leading principal components (and LiDAR
    channels) smoothed at each scale. The candidates are the bands alone (no context) and the
    bands with every prefix of ``scales`` (``<= 1``, ``<= 2``, ...); each is scored by
    cross-validation on the training pixels alone (leave-one-out up to
    :data:`LOO_MAX_PIXELS` pixels, 10 stratified folds above), features standardised with
    the training folds' statistics, ``C = 10``, ``gamma = "scale"``. The best candidate (the
    fewer scales on a tie) is refitted on every training pixel; test pixels are never looked
    at before predicting.

    Args:
        train: ``(bands (N, B), smoothed (N, len(scales) * m))`` of the training pixels.
        y_train: ``(N,)`` class ids.
        test: the same two arrays for the pixels to classify, or ``None`` to only choose.
        scales: the scales of the smoothed column blocks.

    Returns:
        ``(M,)`` predicted class ids (empty without ``test``), and what was chosen.

    Raises:
        ValueError: when the feature widths disagree with each other or with ``scales``.
        LabelError: with no training pixel.
    """
    bands, smooth = (np.asarray(a, dtype=np.float64) for a in train)
    if smooth.ndim != 2 or (scales and smooth.shape[1] % len(scales)) or (
            not scales and smooth.shape[1]):
        raise ValueError(f"{smooth.shape[1]} smoothed columns do not split into "
                         f"{len(scales)} scales")
    m = smooth.shape[1] // len(scales) if scales else 0

    def features(b: np.ndarray, s: np.ndarray, used: int) -> np.ndarray:
        return np.concatenate([b, s[:, : used * m]], axis=1)

    _, y_train, _ = check_features(features(bands, smooth, len(scales)), y_train,
                                   features(bands, smooth, len(scales))[:0])
    best: tuple[float, int] | None = None
    scores: dict[float, float] = {}
    outcomes: dict[float, np.ndarray] = {}
    how = "none"
    for used in range(len(scales) + 1):
        right, how = _cv_outcomes(features(bands, smooth, used), y_train)
        key = float(scales[used - 1]) if used else 0.0
        scores[key], outcomes[key] = float(right.mean()), right
        if best is None or scores[key] > best[0] + 1e-12:
            best = (scores[key], used)
    assert best is not None
    used = best[1]
    choice = SpatialChoice(tuple(float(s) for s in scales[:used]), scores, how, outcomes)
    if test is None:
        return np.empty(0, dtype=y_train.dtype), choice
    t_bands, t_smooth = (np.asarray(a, dtype=np.float64) for a in test)
    x_test = features(t_bands, t_smooth, used)
    x_train = features(bands, smooth, used)
    if x_test.shape[1] != x_train.shape[1]:
        raise ValueError("training and test features differ in width")
    if np.unique(y_train).size < 2:
        return np.full(x_test.shape[0], y_train[0], dtype=y_train.dtype), choice
    return _svm_predict(x_train, y_train, x_test), choice


#: What the per-pixel baseline is, in the reports' words.
PER_PIXEL_METHOD = ("random forest (200 trees) on each pixel's own HSI and LiDAR values, no "
                    "spatial context, trained on the same shots")
#: What the spectral-spatial baseline is, in the reports' words.
SPATIAL_METHOD = ("RBF SVM (C = 10) on each pixel's normalised bands plus the scene's 30 leading "
                  "principal components smoothed at Gaussian scales up to the one chosen by "
                  "leave-one-out on the shots (none, 1, 2, 4, 8 or 16 pixels), trained on the "
                  "same shots")


@dataclass(frozen=True)
class Baseline:
    """A classical classifier's accuracy on the model's test pixels, for comparison.

    Attributes:
        name: what to call it in a sentence (``"per-pixel baseline"``).
        method: what it is, in words.
        report: its accuracy on the same test pixels as the model's.
        details: plain facts about the run (e.g. the scales the spatial one chose).
    """

    name: str
    method: str
    report: AccuracyReport
    details: dict[str, Any] = field(default_factory=dict)


def score_baselines(scene: Scene, labels: LabelSet, split: Split, *, stats: SceneStats,
                    seed: int = 0, projection: Projection | None = None) -> list[Baseline]:
    """The two classical alternatives every ``fewshot`` report scores, on the model's pixels.

    * the **per-pixel baseline**: :func:`random_forest` on each pixel's own HSI and LiDAR
      values, no spatial context (what per-pixel tools do);
    * the **spectral-spatial baseline**: :func:`spectral_spatial_svm`, whose context scale
      is chosen by leave-one-out on the shots.

    Both train on the shots (``split.train``) and are scored on ``split.test``.

    Args:
        scene: the scene.
        labels: the labelled pixels (valid ones).
        split: training and test indices into ``labels``.
        stats: the scene's band statistics (the spatial baseline's normalisation).
        seed: the forest's seed.
        projection: the scene's principal components, when already fitted.

    Returns:
        The per-pixel baseline, then the spectral-spatial one.
    """
    from diffclip_cli.report.metrics import AccuracyReport
    from diffclip_cli.sampling.context import read_context, scene_projection
    from diffclip_cli.sampling.normalise import SceneStats as _Stats

    train, test = labels.subset(split.train), labels.subset(split.test)

    def values(part: LabelSet) -> np.ndarray:
        read = scene.read_pixels(part.rows, part.cols)
        parts = [read.hsi] if read.lidar is None else [read.hsi, read.lidar]
        return np.nan_to_num(np.concatenate(parts, axis=1))

    forest = random_forest(values(train), train.class_ids, values(test), seed=seed)
    base = _Stats(stats.hsi, stats.lidar)
    if projection is None:
        projection = scene_projection(scene, base, n_components=SPATIAL_COMPONENTS)
    features = [read_context(scene, part.rows, part.cols, stats=base, projection=projection,
                             scales=SPATIAL_SCALES) for part in (train, test)]
    svm, choice = spectral_spatial_svm(features[0], train.class_ids, features[1])
    return [
        Baseline("per-pixel baseline", PER_PIXEL_METHOD,
                 AccuracyReport.from_labels(test.class_ids, forest, labels.classes)),
        Baseline("spectral-spatial baseline", SPATIAL_METHOD,
                 AccuracyReport.from_labels(test.class_ids, svm, labels.classes),
                 {"scales": list(choice.scales), "cv": choice.folds}),
    ]
