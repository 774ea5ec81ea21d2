"""Windows and tiles: equal to naive references, and memory bounded by the tile size."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rasterdata import ORIGIN, RES, write_lidar_plane, write_tif

from diffclip_cli.io.grid import Grid
from diffclip_cli.io.raster import Scene
from diffclip_cli.modalities import MaskedModalities, Modalities
from diffclip_cli.sampling.normalise import BandStats, SceneStats, compute_stats
from diffclip_cli.sampling.tiles import iter_tiles, read_tile
from diffclip_cli.sampling.windows import extract_windows, read_windows
from diffclip_cli.train.data import WindowData


def naive_windows(array, rows, cols, size):
    """Per-pixel reference: pad the whole array with reflect, cut each window in a loop."""
    half = size // 2
    padded = np.pad(array, ((0, 0), (half, half), (half, half)), mode="reflect")
    out = []
    for r, c in zip(rows, cols, strict=True):
        out.append(padded[:, r:r + size, c:c + size])
    return np.stack(out) if out else np.empty((0, array.shape[0], size, size), array.dtype)


@st.composite
def array_and_pixels(draw):
    c = draw(st.integers(1, 3))
    h = draw(st.integers(1, 9))
    w = draw(st.integers(1, 9))
    arr = draw(arrays(np.float32, (c, h, w), elements=st.floats(-1e3, 1e3, width=32)))
    n = draw(st.integers(0, 12))
    rows = np.array(draw(st.lists(st.integers(0, h - 1), min_size=n, max_size=n)), np.int64)
    cols = np.array(draw(st.lists(st.integers(0, w - 1), min_size=n, max_size=n)), np.int64)
    size = draw(st.sampled_from([1, 3, 5, 7, 11]))
    return arr, rows, cols, size


@settings(max_examples=60, deadline=None)
@given(array_and_pixels())
def test_extract_windows_equals_a_per_pixel_reference(case):
    arr, rows, cols, size = case
    got = extract_windows(arr, rows, cols, size)
    assert got.shape == (rows.size, arr.shape[0], size, size)
    np.testing.assert_array_equal(got, naive_windows(arr, rows, cols, size))


def test_extract_windows_centre_and_reflection():
    arr = np.arange(20, dtype=np.float32).reshape(1, 4, 5)
    win = extract_windows(arr, np.array([0, 2]), np.array([0, 3]), 3)
    assert win[1, 0, 1, 1] == arr[0, 2, 3]
    # reflect (no edge repeat): row -1 is row 1, column -1 is column 1
    np.testing.assert_array_equal(win[0, 0], [[6, 5, 6], [1, 0, 1], [6, 5, 6]])
    edge = extract_windows(arr, np.array([0]), np.array([0]), 3, pad_mode="edge")
    np.testing.assert_array_equal(edge[0, 0], [[0, 0, 1], [0, 0, 1], [5, 5, 6]])
    with pytest.raises(ValueError, match="odd"):
        extract_windows(arr, np.array([0]), np.array([0]), 4)
    with pytest.raises(ValueError, match="outside"):
        extract_windows(arr, np.array([4]), np.array([0]), 3)


@pytest.fixture
def scene_files(tmp_path):
    rng = np.random.default_rng(3)
    hsi = rng.normal(50, 10, (4, 37, 45)).astype(np.float32)
    hsi[2, 5, 6] = np.nan  # a nodata pixel: normalised to 0
    h_path = write_tif(tmp_path / "hsi.tif", hsi, block=16)
    bounds = (ORIGIN[0] - 6, ORIGIN[1] - 37 * RES - 6, ORIGIN[0] + 45 * RES + 6, ORIGIN[1] + 6)
    l_path = write_lidar_plane(tmp_path / "lidar.tif", "EPSG:3857", bounds, 1.6)
    return h_path, l_path


def test_read_windows_equals_extract_windows_on_the_whole_scene(scene_files):
    with Scene.open(*scene_files) as scene:
        stats = compute_stats(scene, seed=0, n_samples=500)
        whole = scene.read(scene.grid.full_window())
        rng = np.random.default_rng(0)
        rows = np.concatenate([rng.integers(0, 37, 60), [0, 36, 0, 36, 5]])
        cols = np.concatenate([rng.integers(0, 45, 60), [0, 44, 44, 0, 6]])
        got = read_windows(scene, rows, cols, size=9, stats=stats, tile_size=10)
    ref_h = extract_windows(stats.hsi.apply(whole.hsi), rows, cols, 9)
    ref_l = extract_windows(stats.lidar.apply(whole.lidar), rows, cols, 9)
    assert got.hsi.dtype == np.float32 and got.hsi.shape == (65, 4, 9, 9)
    np.testing.assert_array_equal(got.hsi, ref_h)
    np.testing.assert_array_equal(got.lidar, ref_l)
    assert got.hsi[-1, 2, 4, 4] == 0.0  # the NaN pixel


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 70), st.integers(1, 70), st.integers(1, 32), st.integers(0, 6))
def test_tiles_cover_every_pixel_exactly_once(height, width, tile_size, halo):
    grid = Grid(width, height, Affine.identity())
    hits = np.zeros((height, width), int)
    for tile in iter_tiles(grid, tile_size=tile_size, halo=halo):
        assert 1 <= tile.height <= tile_size and 1 <= tile.width <= tile_size
        hits[tile.slices] += 1
    assert (hits == 1).all()


def test_read_tile_equals_the_padded_whole_scene(scene_files):
    halo = 4
    with Scene.open(*scene_files) as scene:
        stats = compute_stats(scene, seed=0, n_samples=500)
        whole = scene.read(scene.grid.full_window())
        pad = ((0, 0), (halo, halo), (halo, halo))
        ref_h = np.pad(stats.hsi.apply(whole.hsi), pad, mode="reflect")
        ref_l = np.pad(stats.lidar.apply(whole.lidar), pad, mode="reflect")
        tiles = list(iter_tiles(scene.grid, tile_size=16, halo=halo))
        assert len(tiles) == 3 * 3
        for tile in tiles:
            data = read_tile(scene, tile, stats=stats)
            sl = (slice(None), slice(tile.row, tile.row + tile.height + 2 * halo),
                  slice(tile.col, tile.col + tile.width + 2 * halo))
            assert data.arrays.hsi.shape == (4, tile.height + 2 * halo, tile.width + 2 * halo)
            np.testing.assert_array_equal(data.arrays.hsi, ref_h[sl])
            np.testing.assert_array_equal(data.arrays.lidar, ref_l[sl])
            np.testing.assert_array_equal(data.valid, whole.valid[tile.slices])


def _largest_read(tmp_path, size, monkeypatch):
    path = write_tif(tmp_path / f"s{size}.tif", np.ones((2, size, size), np.float32))
    asked = []
    original = Scene.read

    def spy(self, window):
        block = original(self, window)
        asked.append(block.hsi.shape[1] * block.hsi.shape[2])
        return block

    monkeypatch.setattr(Scene, "read", spy)
    with Scene.open(path) as scene:
        stats = compute_stats(scene, seed=0, n_samples=200)
        asked.clear()
        for tile in iter_tiles(scene.grid, tile_size=16, halo=5):
            read_tile(scene, tile, stats=stats)
        rows, cols = np.mgrid[0:size:3, 0:size:3]
        read_windows(scene, rows.ravel(), cols.ravel(), size=11, stats=stats, tile_size=16)
    monkeypatch.undo()
    return max(asked)


def test_memory_depends_on_the_tile_not_the_scene(tmp_path, monkeypatch):
    small = _largest_read(tmp_path, 48, monkeypatch)
    large = _largest_read(tmp_path, 192, monkeypatch)
    assert small == large == (16 + 10) ** 2


def test_salinas_windows(salinas_dir):
    with Scene.open(salinas_dir / "hsi.tif") as scene:
        stats = compute_stats(scene, seed=0, n_samples=300)
        rows = np.array([0, 82, 40])
        cols = np.array([0, 85, 40])
        got = read_windows(scene, rows, cols, size=11, stats=stats)
        whole = stats.hsi.apply(scene.read(scene.grid.full_window()).hsi)
    np.testing.assert_array_equal(got.hsi, extract_windows(whole, rows, cols, 11))
    assert got.lidar is None and got.hsi.shape == (3, 204, 11, 11)


# ------------------------------------------------------------ scenes smaller than a window
def _identity_stats(bands: int) -> SceneStats:
    return SceneStats(BandStats(np.zeros(bands), np.ones(bands)))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.sampled_from([3, 5, 11]), st.integers(1, 4),
       st.integers(0, 2**31 - 1))
def test_windows_and_tiles_of_scenes_smaller_than_the_window(height, width, size, tile, seed):
    """Reflect padding of a scene smaller than the window repeats the reflection (numpy's
    ``reflect`` mode); a one-pixel axis repeats its pixel. Tiles and window reads agree with it.
    """
    data = np.random.default_rng(seed).normal(size=(2, height, width)).astype(np.float32)
    half = size // 2
    with tempfile.TemporaryDirectory() as folder:
        path = write_tif(Path(folder) / "tiny.tif", data)
        with Scene.open(path) as scene:
            stats = _identity_stats(2)
            rows, cols = (a.ravel() for a in np.mgrid[0:height, 0:width])
            got = read_windows(scene, rows, cols, size=size, stats=stats, tile_size=tile)
            tiles = [read_tile(scene, t, stats=stats)
                     for t in iter_tiles(scene.grid, tile_size=tile, halo=half)]
    padded = np.pad(data, ((0, 0), (half, half), (half, half)), mode="reflect")
    np.testing.assert_array_equal(got.hsi, extract_windows(data, rows, cols, size))
    np.testing.assert_array_equal(got.hsi[:, :, half, half], data[:, rows, cols].T)
    assert set(np.unique(got.hsi)) <= set(np.unique(data))  # nothing invented
    for t in tiles:
        np.testing.assert_array_equal(
            t.arrays.hsi, padded[:, t.tile.row:t.tile.row + t.tile.height + 2 * half,
                          t.tile.col:t.tile.col + t.tile.width + 2 * half])


def test_reflect_padding_of_tiny_axes_is_pinned():
    # 2 pixels, 11 x 11 window: the reflection repeats (a b a b ...); 1 pixel: it is repeated.
    two = np.array([[[1.0, 2.0]]], np.float32)
    win = extract_windows(two, np.array([0]), np.array([0]), 11)
    np.testing.assert_array_equal(win[0, 0, 5], [2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2])
    np.testing.assert_array_equal(win[0, 0, :, 5], np.ones(11))
    one = np.array([[[7.0]]], np.float32)
    assert (extract_windows(one, np.array([0]), np.array([0]), 11) == 7).all()


def test_every_layer_passes_both_modalities_in_one_container(scene_files):
    with Scene.open(*scene_files) as scene:
        stats = compute_stats(scene, seed=0, n_samples=500)
        block = scene.read(((0, 8), (0, 9)))
        pixels = scene.read_pixels(np.array([0, 5, 7]), np.array([0, 6, 8]))
        windows = read_windows(scene, np.array([0, 5]), np.array([0, 6]), size=3, stats=stats)
        tile = read_tile(scene, next(iter_tiles(scene.grid, tile_size=8, halo=1)), stats=stats)
    # values read from the files carry their validity beside the arrays
    assert isinstance(block, MaskedModalities) and isinstance(pixels, MaskedModalities)
    assert block.valid.shape == (8, 9) and pixels.valid.tolist() == [True, False, True]
    np.testing.assert_array_equal(pixels.hsi, block.hsi[:, [0, 5, 7], [0, 6, 8]].T)
    assert type(windows) is Modalities and windows.hsi.shape == (2, 4, 3, 3)
    assert type(tile.arrays) is Modalities and tile.arrays.lidar is not None
    assert tile.arrays.hsi.shape == (4, 10, 10) and tile.valid.shape == (8, 8)
    # one way to walk and convert them, whatever the layout
    assert [name for name, _ in block.items()] == ["hsi", "lidar"] and block.has_lidar
    hsi_only = Modalities(block.hsi)
    assert [name for name, _ in hsi_only.items()] == ["hsi"] and not hsi_only.has_lidar
    data = WindowData(windows, np.array([1, 0]))
    assert isinstance(data.windows.hsi, torch.Tensor) and (data.hsi_bands, data.lidar_bands,
                                                           data.window) == (4, 1, 3)
    first = data.subset(torch.tensor([0]))
    assert torch.equal(first.windows.lidar, torch.from_numpy(windows.lidar[:1]))
    assert type(block.map(np.copy)) is Modalities  # the mask does not follow a conversion
    with pytest.raises(TypeError):
        MaskedModalities(block.hsi, None, block.valid)  # the mask is keyword-only
    with pytest.raises(ValueError, match="LiDAR windows"):
        WindowData(Modalities(windows.hsi, windows.lidar[:1]))
