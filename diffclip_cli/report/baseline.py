"""The per-pixel random forest every ``fewshot`` report scores (docs/report.md).

It classifies each pixel from its own HSI band vector plus its LiDAR values (no spatial
context, no text), trained on the same shots as the model, so a report shows what the
spatial-spectral model adds over a classical classifier. The benchmark protocol
(``benchmarks/``) scores it too, next to an RBF SVM.
"""

from __future__ import annotations

import numpy as np

from diffclip_cli.errors import LabelError

__all__ = ["check_features", "random_forest"]


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
