"""Scoring a model on labelled pixels: class probabilities of scattered pixels, and accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from diffclip_cli.infer.engine import TileEngine
from diffclip_cli.io.labels import LabelSet
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.modelfile import ModelBundle, build_classifiers
from diffclip_cli.progress import Progress, counting
from diffclip_cli.report.metrics import AccuracyReport

__all__ = ["evaluate_pixels", "predict_pixels"]


def predict_pixels(
    scene: Scene,
    bundle: ModelBundle,
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    progress: Progress | None = None,
    classifier: DiffCLIPClassifier | Sequence[DiffCLIPClassifier] | None = None,
) -> np.ndarray:
    """Class probabilities ``(N, K)`` of scattered pixels, reading their windows in chunks.

    Args:
        scene: the scene (its band counts must match the model's).
        bundle: a ``classifier`` model.
        rows: pixel rows.
        cols: pixel columns.
        device: a :class:`torch.device` or a name.
        batch_size: windows per forward pass.
        progress: called with ``"evaluate"`` :class:`~diffclip_cli.progress.ProgressEvent` s
            (pixels).
        classifier: the bundle's classifier (or its ensemble's members) when already built
            (skips rebuilding them).
    """
    bundle.check_inputs(scene.hsi_bands, scene.lidar_bands)
    engine = TileEngine(classifier or build_classifiers(bundle), device=device,
                        batch_size=batch_size)
    return engine.predict_pixels(scene, rows, cols, stats=bundle.scene_stats,
                                 progress=counting(progress, "evaluate"))


def evaluate_pixels(
    scene: Scene,
    bundle: ModelBundle,
    labels: LabelSet,
    *,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    progress: Progress | None = None,
    classifier: DiffCLIPClassifier | Sequence[DiffCLIPClassifier] | None = None,
) -> AccuracyReport:
    """Score a classifier on labelled pixels (their classes must be the model's classes).

    Returns:
        OA, AA, kappa, per-class accuracies and the confusion matrix.
    """
    classes = bundle.require_classes()
    probs = predict_pixels(scene, bundle, labels.rows, labels.cols, device=device,
                           batch_size=batch_size, progress=progress, classifier=classifier)
    predicted = np.asarray(classes.ids)[probs.argmax(axis=1)]
    return AccuracyReport.from_labels(labels.class_ids, predicted, classes)
