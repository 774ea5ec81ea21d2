"""Scene: reading HSI + LiDAR onto the HSI grid, validity, co-registration, errors."""

import logging
import pickle
import threading

import numpy as np
import pytest
import rasterio
from rasterdata import (
    ORIGIN,
    RES,
    hsi_grid,
    pixel_centres,
    plane,
    write_lidar_plane,
    write_tif,
)
from rasterio.transform import from_origin
from rasterio.windows import Window

from diffclip_cli.errors import GridError, InputError
from diffclip_cli.io.raster import Scene

H, W = 30, 40
BOUNDS = (ORIGIN[0], ORIGIN[1] - H * RES, ORIGIN[0] + W * RES, ORIGIN[1])


@pytest.fixture
def hsi(tmp_path):
    rng = np.random.default_rng(0)
    return write_tif(tmp_path / "hsi.tif", rng.random((3, H, W)).astype("float32"))


def _truth():
    t, h, w = hsi_grid(H, W)
    return plane(*pixel_centres(t, h, w))


@pytest.mark.parametrize(("crs", "res", "resampling", "tol"), [
    ("EPSG:3857", 1.3, "bilinear", 0.05),  # about 1 m on the ground: finer than the HSI
    ("EPSG:3857", 3.7, "bilinear", 0.05),  # about 2.9 m: coarser
    ("EPSG:4326", 2.5e-5, "bilinear", 0.05),
    ("EPSG:3857", 1.3, "nearest", 0.3 * 1.3 + 0.2 * 1.3),
])
def test_lidar_on_another_crs_lands_on_the_hsi_grid(hsi, tmp_path, crs, res, resampling, tol):
    margin = 20.0
    big = (BOUNDS[0] - margin, BOUNDS[1] - margin, BOUNDS[2] + margin, BOUNDS[3] + margin)
    lidar = write_lidar_plane(tmp_path / "lidar.tif", crs, big, res)
    with Scene.open(hsi, lidar, resampling=resampling) as scene:
        assert scene.lidar_bands == 1 and scene.grid.shape == (H, W)
        block = scene.read(scene.grid.full_window())
    assert block.lidar.dtype == np.float32 and block.lidar.shape == (1, H, W)
    assert block.valid.all()
    err = np.abs(block.lidar[0] - _truth())
    assert err.max() < tol
    # The surface rises 0.6 m per HSI pixel, so an unaligned read would be far off.
    assert np.abs(np.diff(block.lidar[0], axis=1)).mean() == pytest.approx(0.6, abs=0.05)


def test_window_reads_match_a_whole_read_exactly(hsi, tmp_path):
    big = (BOUNDS[0] - 10, BOUNDS[1] - 10, BOUNDS[2] + 10, BOUNDS[3] + 10)
    lidar = write_lidar_plane(tmp_path / "lidar.tif", "EPSG:3857", big, 0.9)  # downsampled
    with Scene.open(hsi, lidar) as scene:
        whole = scene.read(scene.grid.full_window()).lidar
        for r0, r1, c0, c1 in [(0, 7, 0, 9), (5, 30, 13, 40), (17, 18, 21, 22)]:
            part = scene.read(((r0, r1), (c0, c1))).lidar
            np.testing.assert_array_equal(part, whole[:, r0:r1, c0:c1])


def test_partial_overlap_marks_uncovered_pixels_invalid(hsi, tmp_path, caplog):
    lidar = write_tif(tmp_path / "lidar2.tif", np.full((1, 40, 12), 7.0, np.float32),
                      transform=from_origin(ORIGIN[0] - 10, ORIGIN[1] + 10, 2.5, 2.5))
    right = ORIGIN[0] - 10 + 12 * 2.5  # 20 m east of the HSI's left edge: columns 0..9
    with caplog.at_level(logging.WARNING, logger="diffclip"):
        scene = Scene.open(hsi, lidar)
    with scene:
        block = scene.read(scene.grid.full_window())
        x, _ = pixel_centres(*hsi_grid(H, W))
        inside = x < right
        assert (block.valid == inside).all()
        assert np.isnan(block.lidar[0][~inside]).all()
        np.testing.assert_allclose(block.lidar[0][inside], 7.0)
        assert scene.lidar_coverage == pytest.approx(10 / 40, abs=0.01)
        assert scene.valid_fraction() == pytest.approx(inside.mean())
    assert "25.0 %" in caplog.text


def test_no_overlap_names_both_extents(hsi, tmp_path):
    far = write_tif(tmp_path / "far.tif", np.ones((1, 10, 10), np.float32),
                    transform=from_origin(600000, 4300000, 1, 1))
    with pytest.raises(GridError) as info:
        Scene.open(hsi, far)
    text = str(info.value)
    assert "far.tif" in text and "600000" in text and "500000" in text
    assert info.value.exit_code == 4


def test_rasters_without_crs(tmp_path):
    hsi = write_tif(tmp_path / "h.tif", np.ones((2, 8, 9), np.float32), crs=None)
    lid = write_tif(tmp_path / "l.tif", np.arange(72, dtype=np.float32).reshape(1, 8, 9),
                    crs=None, transform=from_origin(0, 0, 5, 5))  # transform ignored
    with Scene.open(hsi, lid) as scene:
        assert scene.grid.crs is None
        np.testing.assert_array_equal(scene.read(scene.grid.full_window()).lidar[0],
                                      np.arange(72).reshape(8, 9))
    other_shape = write_tif(tmp_path / "s.tif", np.ones((1, 8, 10), np.float32), crs=None)
    with pytest.raises(GridError, match="same size"):
        Scene.open(hsi, other_shape)
    with_crs = write_tif(tmp_path / "c.tif", np.ones((1, 8, 9), np.float32))
    with pytest.raises(GridError, match="has no CRS"):
        Scene.open(hsi, with_crs)
    with pytest.raises(GridError, match="has no CRS"):
        Scene.open(with_crs, hsi)


def test_several_single_band_lidar_files_stack_in_order(hsi, tmp_path):
    a = write_tif(tmp_path / "dsm.tif", np.full((1, H, W), 1.0, np.float32),
                  descriptions=["DSM"])
    b = write_tif(tmp_path / "int.tif", np.full((1, H, W), 2.0, np.float32))
    c = write_tif(tmp_path / "two.tif", np.stack([np.full((H, W), 3.0), np.full((H, W), 4.0)])
                  .astype(np.float32), descriptions=[None, "return count"])
    with Scene.open(hsi, [b, a, c]) as scene:
        assert scene.lidar_bands == 4
        assert scene.band_names == {"hsi": ["band_1", "band_2", "band_3"],
                                    "lidar": ["band_1", "DSM", "band_3", "return count"]}
        lid = scene.read(((3, 5), (4, 9))).lidar
        assert lid.shape == (4, 2, 5)
        np.testing.assert_array_equal(lid[:, 0, 0], [2.0, 1.0, 3.0, 4.0])
    with Scene.open(hsi) as scene:
        assert scene.lidar_bands == 0 and not scene.has_lidar
        assert scene.read(((0, 2), (0, 2))).lidar is None


def test_scale_offset_and_nodata(tmp_path):
    raw = np.arange(2 * 5 * 6, dtype=np.int16).reshape(2, 5, 6) * 10
    raw[1, 2, 3] = -9999
    path = write_tif(tmp_path / "h.tif", raw, nodata=-9999, scales=[0.01, 0.5],
                     offsets=[1.0, -2.0], descriptions=["blue", "red"])
    with Scene.open(path) as scene:
        assert scene.band_names["hsi"] == ["blue", "red"]
        block = scene.read(scene.grid.full_window())
    assert block.hsi.dtype == np.float32
    np.testing.assert_allclose(block.hsi[0], raw[0] * 0.01 + 1.0, rtol=1e-6)
    expected = raw[1] * 0.5 - 2.0
    assert np.isnan(block.hsi[1, 2, 3]) and not block.valid[2, 3]
    mask = np.ones((5, 6), bool)
    mask[2, 3] = False
    np.testing.assert_allclose(block.hsi[1][mask], expected[mask])
    assert block.valid.sum() == 29


def test_nan_and_lidar_nodata_make_pixels_invalid(hsi, tmp_path):
    data = np.ones((2, H, W), np.float32)
    data[0, 4, 5] = np.nan
    path = write_tif(tmp_path / "nan.tif", data)
    lid = np.zeros((1, H, W), np.float32)
    lid[0, 7, 8] = -1.0
    lidar = write_tif(tmp_path / "l.tif", lid, nodata=-1.0)
    with Scene.open(path, lidar) as scene:
        valid = scene.read(scene.grid.full_window()).valid
        assert not valid[4, 5] and not valid[7, 8] and valid.sum() == H * W - 2
        np.testing.assert_array_equal(scene.valid_at(np.array([4, 7, 0, -1]),
                                                     np.array([5, 8, 0, 0])),
                                      [False, False, True, False])


def test_read_pixels_groups_by_tile(hsi, tmp_path):
    with Scene.open(hsi) as scene:
        whole = scene.read(scene.grid.full_window()).hsi
        rng = np.random.default_rng(1)
        r = rng.integers(0, H, 50)
        c = rng.integers(0, W, 50)
        vals = scene.read_pixels(r, c, tile_size=8)
        np.testing.assert_array_equal(vals.hsi, whole[:, r, c].T)
        with pytest.raises(ValueError):
            scene.read(((0, H + 1), (0, 2)))


def test_errors_are_clear(tmp_path, hsi):
    with pytest.raises(InputError, match="not found"):
        Scene.open(tmp_path / "missing.tif")
    with pytest.raises(InputError, match="directory"):
        Scene.open(tmp_path)
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    with pytest.raises(InputError, match="not a readable HSI raster"):
        Scene.open(text)
    with pytest.raises(InputError, match="LiDAR file not found"):
        Scene.open(hsi, tmp_path / "nope.tif")
    big = write_tif(tmp_path / "big.tif", np.random.default_rng(0).random((4, 64, 64))
                    .astype(np.float32), block=16, compress="deflate")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    with pytest.raises(InputError) as info:
        Scene.open(cut)
    assert "cut.tif" in str(info.value) and info.value.exit_code == 3
    assert "\n" not in str(info.value)
    # Damage in the middle: opening works, the read that meets it fails with a sentence.
    damaged = bytearray(big.read_bytes())
    damaged[len(damaged) // 4:len(damaged) // 4 + 4000] = b"\x55" * 4000
    bad = tmp_path / "bad.tif"
    bad.write_bytes(bytes(damaged))
    with Scene.open(bad) as scene, pytest.raises(InputError, match=r"bad\.tif: reading failed"
                                                 ) as info:
        scene.read(scene.grid.full_window())
    assert "previous exception" not in str(info.value)


def test_pickle_and_threads(hsi, tmp_path):
    lidar = write_lidar_plane(tmp_path / "l.tif", "EPSG:3857",
                              (BOUNDS[0] - 5, BOUNDS[1] - 5, BOUNDS[2] + 5, BOUNDS[3] + 5), 1.7)
    with Scene.open(hsi, lidar) as scene:
        expected = scene.read(scene.grid.full_window())
        clone = pickle.loads(pickle.dumps(scene))
        with clone:
            got = clone.read(clone.grid.full_window())
            np.testing.assert_array_equal(got.lidar, expected.lidar)
            assert clone.band_names == scene.band_names
        windows = [((r, r + 5), (c, c + 7)) for r in range(0, 25, 5) for c in range(0, 33, 7)]
        results: dict = {}

        def work(k):
            for w in windows[k::4]:
                results[w] = scene.read(w)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for ((r0, r1), (c0, c1)), b in results.items():
            np.testing.assert_array_equal(b.hsi, expected.hsi[:, r0:r1, c0:c1])
            np.testing.assert_array_equal(b.lidar, expected.lidar[:, r0:r1, c0:c1])
        assert len(results) == len(windows)


def test_lidar_on_the_same_grid_is_read_as_is(hsi, tmp_path):
    vals = np.random.default_rng(2).random((1, H, W)).astype(np.float32)
    lidar = write_tif(tmp_path / "l.tif", vals)
    with Scene.open(hsi, lidar) as scene:
        np.testing.assert_array_equal(scene.read(Window(0, 0, W, H)).lidar, vals)
        assert scene.lidar_coverage == 1.0


def test_salinas_sample_scene(salinas_dir):
    with Scene.open(salinas_dir / "hsi.tif") as scene:
        assert scene.hsi_bands == 204 and scene.grid.crs is None
        assert scene.grid.shape == (83, 86)
        block = scene.read(((10, 20), (30, 42)))
        with rasterio.open(salinas_dir / "hsi.tif") as src:
            raw = src.read(window=Window(30, 10, 12, 10))
        np.testing.assert_array_equal(block.hsi, raw.astype(np.float32))
        assert block.valid.all()


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "float32", "float64"])
def test_values_and_nodata_of_every_dtype(tmp_path, dtype):
    """Types float32 holds exactly are read straight into float32; others are converted
    after reading: the values and the nodata pixels come out the same either way."""
    big = np.iinfo(np.int32).max if dtype == "int32" else 200  # nodata float32 cannot hold
    raw = (np.arange(2 * 4 * 5).reshape(2, 4, 5) % 50).astype(dtype)
    raw[0, 1, 2] = raw[1, 3, 4] = big
    if dtype == "int32":
        raw[0, 0, 0] = big - 1  # equal to the nodata in float32, not in int32
    path = write_tif(tmp_path / "h.tif", raw, nodata=big, scales=[0.5, 2.0],
                     offsets=[1.0, 0.0])
    with Scene.open(path) as scene:
        block = scene.read(scene.grid.full_window())
    expected = raw.astype(np.float64) * np.array([0.5, 2.0])[:, None, None]
    expected[0] += 1.0
    expected[raw == big] = np.nan
    np.testing.assert_allclose(block.hsi, expected.astype(np.float32), rtol=1e-6)
    assert (~block.valid).sum() == 2
