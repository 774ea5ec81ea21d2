"""Per-pixel baselines: features, accuracy on a generated scene, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scenes import make_scene

from benchmarks.baselines import pixel_features, random_forest, rbf_svm
from diffclip_cli.errors import LabelError

SCENE = make_scene(height=48, width=48, hsi_bands=12, n_spectra=2, n_heights=2, seed=7)


def few_shot(shots: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rows, cols = np.nonzero(SCENE.labels > 0)
    y = SCENE.labels[rows, cols]
    rng = np.random.default_rng(seed)
    train = np.concatenate([rng.choice(np.flatnonzero(y == k), shots, replace=False)
                            for k in np.unique(y)])
    test = np.setdiff1d(np.arange(y.size), train)
    return rows, cols, y, train, test


def test_pixel_features_are_band_vectors():
    hsi = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    lidar = -np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    x = pixel_features(hsi, lidar, np.array([0, 3]), np.array([1, 4]))
    assert x.shape == (2, 5) and x.dtype == np.float32
    np.testing.assert_array_equal(x[1], [*hsi[:, 3, 4], *lidar[:, 3, 4]])
    np.testing.assert_array_equal(pixel_features(hsi, None, [2], [2]), hsi[:, 2, 2][None])
    np.testing.assert_array_equal(pixel_features(hsi, lidar[0], [2], [2])[0, -1], lidar[0, 2, 2])
    with pytest.raises(ValueError, match="outside"):
        pixel_features(hsi, None, [4], [0])
    with pytest.raises(ValueError, match="lidar grid"):
        pixel_features(hsi, lidar[:, :3], [0], [0])


@pytest.mark.parametrize("classifier", [random_forest, rbf_svm])
def test_both_modalities_separate_what_hsi_alone_cannot(classifier):
    rows, cols, y, train, test = few_shot(20)
    both = pixel_features(SCENE.hsi, SCENE.lidar, rows, cols)
    pred = classifier(both[train], y[train], both[test], seed=0)
    assert pred.shape == test.shape
    assert (pred == y[test]).mean() >= 0.95
    hsi_only = pixel_features(SCENE.hsi, None, rows, cols)
    pred = classifier(hsi_only[train], y[train], hsi_only[test], seed=0)
    # Classes that differ only in height look alike: about half of the pixels go wrong.
    assert (pred == y[test]).mean() <= 0.75
    # ...but the spectrum is still told apart.
    spectrum = np.asarray(SCENE.spectrum_of)
    assert (spectrum[pred - 1] == spectrum[y[test] - 1]).mean() >= 0.95


@pytest.mark.parametrize(("shots", "floor"), [(2, 0.55), (5, 0.85)])
def test_deterministic_given_the_seed(shots, floor):
    rows, cols, y, train, test = few_shot(shots, seed=3)
    x = pixel_features(SCENE.hsi, SCENE.lidar, rows, cols)
    for classifier in (random_forest, rbf_svm):
        kwargs = {"n_estimators": 30} if classifier is random_forest else {}
        a = classifier(x[train], y[train], x[test], seed=11, **kwargs)
        b = classifier(x[train], y[train], x[test], seed=11, **kwargs)
        np.testing.assert_array_equal(a, b)
        # Chance is 0.25; 2 shots use the fixed C/gamma, 5 shots the cross-validated grid.
        assert (a == y[test]).mean() >= floor


def test_degenerate_training_sets():
    x = np.random.default_rng(0).random((6, 3))
    np.testing.assert_array_equal(rbf_svm(x[:2], [4, 4], x, seed=0), [4] * 6)
    with pytest.raises(LabelError, match="no training pixel"):
        random_forest(x[:0], [], x, seed=0)
    with pytest.raises(ValueError, match="same F"):
        rbf_svm(x, [1, 2] * 3, x[:, :2], seed=0)
