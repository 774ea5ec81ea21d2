"""Per-pixel baselines for the benchmark: random forest and RBF SVM on band vectors.

The random forest is the library's (``diffclip_cli.report.baseline``, the one every ``fewshot``
report scores); this module adds the SVM and the band vectors of whole cubes.

They classify each pixel from its own HSI band vector plus its LiDAR values (no spatial
context), trained on the same few-shot splits as DiffCLIP, so the benchmark shows what the
spatial-spectral model adds over a classical classifier.

SVM hyper-parameters: with k shots per class there is no held-out data to tune on that is not
also training data. When every class has at least 3 training pixels, ``C`` and ``gamma`` are
chosen on a small grid (``C`` in 1, 10, 100, 1000; ``gamma`` in 0.1, 1, 10 times 1/n_features)
by stratified cross-validation on the training pixels only, with ``min(k, 5)`` folds: for
k <= 5 that is leave-one-per-class-out, each fold holding out one pixel of every class. With
fewer shots the fixed ``C = 100`` and ``gamma = 1 / n_features`` (scikit-learn's ``"scale"`` on
standardised features) are used. Test pixels are never looked at.
"""

from __future__ import annotations

import logging

import numpy as np

from benchmarks._deps import require
from diffclip_cli.report.baseline import check_features, random_forest

__all__ = ["SVM_C_GRID", "SVM_GAMMA_GRID", "pixel_features", "random_forest", "rbf_svm"]

_LOG = logging.getLogger("diffclip")

#: Values of the SVM's C tried by cross-validation.
SVM_C_GRID: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0)
#: Values of the SVM's gamma tried, in units of 1 / n_features.
SVM_GAMMA_GRID: tuple[float, ...] = (0.1, 1.0, 10.0)
_SVM_FIXED_C = 100.0
_MIN_SHOTS_FOR_CV = 3
_MAX_FOLDS = 5


def pixel_features(
    hsi: np.ndarray,
    lidar: np.ndarray | None,
    rows: np.ndarray,
    cols: np.ndarray,
) -> np.ndarray:
    """The band vectors of some pixels: HSI bands followed by LiDAR channels.

    The values are raw; the classifiers standardise them with training statistics.

    Args:
        hsi: ``(C, H, W)`` cube.
        lidar: ``(L, H, W)`` rasters on the same grid, or ``None`` for HSI only.
        rows: row of each pixel.
        cols: column of each pixel.

    Returns:
        ``(N, C + L)`` float32 features.

    Raises:
        ValueError: when the shapes disagree or a position is outside the grid.
    """
    rows = np.asarray(rows, dtype=np.intp).ravel()
    cols = np.asarray(cols, dtype=np.intp).ravel()
    if hsi.ndim != 3:
        raise ValueError(f"hsi must be (C, H, W), got {hsi.shape}")
    h, w = hsi.shape[1:]
    if rows.shape != cols.shape:
        raise ValueError(f"rows and cols differ in length: {rows.size} vs {cols.size}")
    if rows.size and (rows.min() < 0 or rows.max() >= h or cols.min() < 0 or cols.max() >= w):
        raise ValueError(f"pixel positions outside the {h} x {w} grid")
    parts = [hsi[:, rows, cols].T]
    if lidar is not None:
        if lidar.ndim == 2:
            lidar = lidar[None]
        if lidar.shape[1:] != (h, w):
            raise ValueError(f"lidar grid {lidar.shape[1:]} differs from the HSI grid {(h, w)}")
        parts.append(lidar[:, rows, cols].T)
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


def rbf_svm(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    *,
    seed: int,
    n_jobs: int = 1,
) -> np.ndarray:
    """Train an RBF SVM (after standardising with training statistics) and predict.

    ``C`` and ``gamma`` come from cross-validation on the training pixels when every class has
    at least 3 of them, else they are fixed (see the module documentation).

    Args:
        x_train: ``(N, F)`` training features.
        y_train: ``(N,)`` class ids.
        x_test: ``(M, F)`` features to classify.
        seed: the random seed of the cross-validation folds; the same seed gives the same
            predictions.
        n_jobs: parallel workers of the grid search (the result does not depend on it).

    Returns:
        ``(M,)`` predicted class ids, of ``y_train``'s dtype.

    Raises:
        LabelError: with no training pixel.
        DiffclipError: when scikit-learn is not installed.
    """
    x_train, y_train, x_test = check_features(x_train, y_train, x_test)
    svm = require("sklearn.svm", purpose="the SVM baseline")
    pipeline = require("sklearn.pipeline", purpose="the SVM baseline")
    preprocessing = require("sklearn.preprocessing", purpose="the SVM baseline")
    model_selection = require("sklearn.model_selection", purpose="the SVM baseline")

    classes, counts = np.unique(y_train, return_counts=True)
    if classes.size == 1:
        return np.full(x_test.shape[0], classes[0], dtype=y_train.dtype)
    n_features = x_train.shape[1]
    model = pipeline.Pipeline([
        ("scale", preprocessing.StandardScaler()),
        ("svm", svm.SVC(kernel="rbf", C=_SVM_FIXED_C, gamma=1.0 / n_features,
                        random_state=seed)),
    ])
    shots = int(counts.min())
    if shots >= _MIN_SHOTS_FOR_CV:
        folds = model_selection.StratifiedKFold(n_splits=min(shots, _MAX_FOLDS), shuffle=True,
                                                random_state=seed)
        grid = {"svm__C": list(SVM_C_GRID),
                "svm__gamma": [g / n_features for g in SVM_GAMMA_GRID]}
        search = model_selection.GridSearchCV(model, grid, cv=folds, n_jobs=n_jobs)
        search.fit(x_train, y_train)
        params = search.best_params_
        _LOG.debug("SVM: C=%g, gamma=%g x 1/n_features (cv accuracy %.3f)",
                   params["svm__C"], params["svm__gamma"] * n_features, search.best_score_)
        return search.best_estimator_.predict(x_test)
    model.fit(x_train, y_train)
    return model.predict(x_test)
