"""The generated benchmark scene has the structure the model tests rely on."""

import numpy as np
import rasterio
from scenes import make_scene, write_scene


def test_classes_need_both_modalities():
    s = make_scene(height=48, width=40, hsi_bands=12, n_spectra=2, n_heights=2, seed=3)
    assert s.hsi.shape == (12, 48, 40) and s.lidar.shape == (1, 48, 40)
    assert set(np.unique(s.labels)) == {1, 2, 3, 4}
    # Classes 1 and 3 share a spectrum and differ in height; 1 and 2 share a height.
    assert s.spectrum_of[0] == s.spectrum_of[2] and s.height_of[0] != s.height_of[2]
    assert s.height_of[0] == s.height_of[1] and s.spectrum_of[0] != s.spectrum_of[1]
    mean_spec = [s.hsi[:, s.labels == k].mean(axis=1) for k in (1, 2, 3)]
    assert np.abs(mean_spec[0] - mean_spec[2]).max() < 0.03
    assert np.abs(mean_spec[0] - mean_spec[1]).max() > 0.1
    dsm = s.lidar[0]
    assert dsm[s.labels == 3].mean() - dsm[s.labels == 1].mean() > 5


def test_seeded_and_written(tmp_path):
    a = make_scene(height=20, width=24, seed=1)
    b = make_scene(height=20, width=24, seed=1)
    np.testing.assert_array_equal(a.hsi, b.hsi)
    paths = write_scene(a, tmp_path, hsi_dtype="int16")
    with rasterio.open(paths["hsi"]) as src:
        assert src.count == 16 and src.scales[0] == 1e-4 and src.crs == a.crs
        np.testing.assert_allclose(src.read().astype(np.float32) * 1e-4, a.hsi, atol=1e-4)
    with rasterio.open(paths["labels"]) as src:
        np.testing.assert_array_equal(src.read(1), a.labels)
    hsi_only = make_scene(height=16, width=16, lidar_bands=0, n_spectra=3, seed=0)
    assert hsi_only.lidar is None and len(hsi_only.class_names) == 3
