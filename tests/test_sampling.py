"""Normalisation statistics, k-shot and spatial splits, unlabelled pixel sampling."""

import json
import logging

import numpy as np
import pytest
from rasterdata import ORIGIN, RES, write_tif
from rasterio.crs import CRS
from rasterio.transform import from_origin

from diffclip_cli.errors import InputError
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.io.grid import Grid
from diffclip_cli.io.labels import LabelReport, LabelSet
from diffclip_cli.io.raster import Scene
from diffclip_cli.sampling.normalise import BandStats, SceneStats, band_stats, compute_stats
from diffclip_cli.sampling.shots import sample_shots, spatial_split
from diffclip_cli.sampling.unlabelled import sample_unlabelled

GRID = Grid(60, 50, from_origin(*ORIGIN, RES, RES), CRS.from_epsg(32615))


def make_labels(counts, *, seed=0, grid=GRID):
    """Labels with counts[k] pixels of class k+1 at distinct random positions."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(grid.width * grid.height, size=sum(counts), replace=False)
    ids = np.repeat(np.arange(1, len(counts) + 1), counts)
    table = ClassTable({"id": i + 1, "name": f"c{i + 1}"} for i in range(len(counts)))
    return LabelSet(flat // grid.width, flat % grid.width, ids, table,
                    LabelReport(source="mem", kind="vector"), grid)


# -- shots -------------------------------------------------------------------------------


def test_k_shots_per_class_and_the_small_class_rule(caplog):
    labels = make_labels([40, 30, 5, 3, 1])
    with caplog.at_level(logging.WARNING, logger="diffclip"):
        split = sample_shots(labels, 5, seed=3)
    per_class = np.bincount(labels.index[split.train], minlength=5)
    np.testing.assert_array_equal(per_class, [5, 5, 2, 1, 0])  # n <= k: floor(n / 2)
    assert len(split.warnings) == 3 and "c3" in split.warnings[0] and "c3" in caplog.text
    assert np.intersect1d(split.train, split.test).size == 0
    np.testing.assert_array_equal(np.union1d(split.train, split.test), np.arange(len(labels)))
    test_per_class = np.bincount(labels.index[split.test], minlength=5)
    assert (test_per_class > 0).all()


def test_shots_are_seed_deterministic():
    labels = make_labels([50, 50, 50])
    a = sample_shots(labels, 8, seed=11)
    b = sample_shots(labels, 8, seed=11)
    c = sample_shots(labels, 8, seed=12)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.test, b.test)
    assert not np.array_equal(a.train, c.train)
    with pytest.raises(ValueError):
        sample_shots(labels, 0, seed=0)


def test_spatial_split_keeps_train_and_test_apart():
    labels = make_labels([300, 300, 300], seed=4)
    gap = 3
    split = spatial_split(labels, 5, seed=0, block_size=10, gap=gap)
    np.testing.assert_array_equal(np.bincount(labels.index[split.train], minlength=3), [5] * 3)
    assert split.test.size > 100 and np.intersect1d(split.train, split.test).size == 0
    tr, tc = labels.rows[split.train], labels.cols[split.train]
    sr, sc = labels.rows[split.test], labels.cols[split.test]
    cheb = np.maximum(np.abs(sr[:, None] - tr[None]), np.abs(sc[:, None] - tc[None]))
    assert cheb.min() > gap
    train_blocks = set(zip((tr // 10).tolist(), (tc // 10).tolist(), strict=True))
    test_blocks = set(zip((sr // 10).tolist(), (sc // 10).tolist(), strict=True))
    assert not train_blocks & test_blocks
    again = spatial_split(labels, 5, seed=0, block_size=10, gap=gap)
    np.testing.assert_array_equal(split.train, again.train)
    np.testing.assert_array_equal(split.test, again.test)
    assert any("neither shots nor test" in w for w in split.warnings)


def test_spatial_split_never_takes_a_class_s_only_block():
    table = ClassTable([{"id": 1, "name": "big"}, {"id": 2, "name": "tiny"}])
    rows = np.concatenate([np.repeat(np.arange(0, 50, 2), 10), [1, 1]])
    cols = np.concatenate([np.tile(np.arange(0, 60, 6), 25), [1, 3]])
    ids = np.concatenate([np.ones(250, int), [2, 2]])
    labels = LabelSet(rows, cols, ids, table, LabelReport("mem", "vector"), GRID)
    split = spatial_split(labels, 4, seed=1, block_size=8, gap=0)
    assert (labels.class_ids[split.train] == 2).sum() == 0
    assert (labels.class_ids[split.test] == 2).sum() == 2
    assert any("tiny" in w for w in split.warnings)


# -- scenes for unlabelled sampling and statistics -----------------------------------------


@pytest.fixture
def scene_path(tmp_path):
    rng = np.random.default_rng(0)
    data = np.empty((3, 50, 60), np.float32)
    data[0] = rng.uniform(10, 20, (50, 60))
    data[1] = 7.0  # constant band
    data[2] = rng.normal(100, 5, (50, 60))
    data[0, :, :20] = np.nan  # left third invalid
    return write_tif(tmp_path / "hsi.tif", data, block=16)


def test_unlabelled_pixels_are_valid_distinct_spread_and_seeded(scene_path):
    with Scene.open(scene_path) as scene:
        r, c = sample_unlabelled(scene, 400, seed=5, cell_size=10)
        assert r.size == 400 and r.dtype == np.int64
        assert len(set(zip(r.tolist(), c.tolist(), strict=True))) == 400
        assert scene.valid_at(r, c).all() and c.min() >= 20
        # Spread: each 10 x 10 cell of the valid area (20 cells of 100 px) gets its share.
        cells = np.bincount((r // 10) * 6 + c // 10, minlength=30).reshape(5, 6)
        assert cells[:, :2].sum() == 0 and cells[:, 2:].min() >= 19 and cells.max() <= 21
        r2, c2 = sample_unlabelled(scene, 400, seed=5, cell_size=10)
        np.testing.assert_array_equal(r, r2)
        np.testing.assert_array_equal(c, c2)
        r3, _ = sample_unlabelled(scene, 400, seed=6, cell_size=10)
        assert not np.array_equal(r, r3)


def test_unlabelled_exclusion_and_shortage(scene_path, caplog):
    with Scene.open(scene_path) as scene:
        ex_r, ex_c = np.mgrid[0:50, 20:40]
        r, c = sample_unlabelled(scene, 300, seed=0, exclude=(ex_r.ravel(), ex_c.ravel()))
        assert c.min() >= 40 and r.size == 300
        with caplog.at_level(logging.WARNING, logger="diffclip"):
            r, c = sample_unlabelled(scene, 5000, seed=0)
        assert r.size == 50 * 40 and "only 2000 usable pixels" in caplog.text


def test_band_stats_percentiles_meanstd_and_constant_bands():
    rng = np.random.default_rng(1)
    v = np.stack([rng.uniform(0, 100, 20000), np.full(20000, 3.0)], axis=1)
    s = band_stats(v)
    p2, p98 = np.percentile(v[:, 0], [2, 98])
    assert s.center[0] == pytest.approx((p2 + p98) / 2)
    assert s.scale[0] == pytest.approx((p98 - p2) / 2)
    assert s.center[1] == 3.0 and s.scale[1] == 1.0
    m = band_stats(v, method="meanstd")
    assert m.center[0] == pytest.approx(v[:, 0].mean()) and m.scale[0] == pytest.approx(
        v[:, 0].std())
    x = np.array([[[p98, np.nan]], [[3.0, 3.0]]])  # (C=2, 1, 2)
    out = s.apply(x)
    assert out.dtype == np.float32 and out.shape == (2, 1, 2)
    assert out[0, 0, 0] == pytest.approx(1.0) and out[0, 0, 1] == 0.0
    np.testing.assert_array_equal(out[1], 0.0)
    batch = np.broadcast_to(x.transpose(1, 0, 2)[:, :, None], (4, 2, 3, 2))  # (N, C, w, w)
    np.testing.assert_array_equal(s.apply(batch, axis=1)[2, :, 1], out[:, 0])
    with pytest.raises(ValueError):
        s.apply(np.zeros((3, 2, 2)))
    # Nearly constant band (a few outliers): falls back to half the range, not 1e-6.
    spiky = np.zeros((1000, 1))
    spiky[:5] = 10.0
    assert band_stats(spiky).scale[0] == pytest.approx(5.0)


def test_scene_stats_json_round_trip_and_compute(scene_path, tmp_path):
    lid = write_tif(tmp_path / "l.tif", np.full((1, 50, 60), 4.0, np.float32))
    with Scene.open(scene_path, lid) as scene:
        stats = compute_stats(scene, seed=0, n_samples=1000)
        again = compute_stats(scene, seed=0, n_samples=1000)
    np.testing.assert_array_equal(stats.hsi.center, again.hsi.center)
    assert 14 < stats.hsi.center[0] < 16 and 4 < stats.hsi.scale[0] < 5
    assert stats.hsi.center[1] == 7.0 and stats.lidar.center[0] == 4.0
    data = json.loads(json.dumps(stats.to_dict()))
    back = SceneStats.from_dict(data)
    assert back == stats and back != SceneStats(stats.hsi, None)
    np.testing.assert_array_equal(back.hsi.center, stats.hsi.center)
    np.testing.assert_array_equal(back.lidar.scale, stats.lidar.scale)
    assert back.hsi.method == "percentile"
    with pytest.raises(ValueError):
        BandStats(np.zeros(2), np.array([1.0, 0.0]))


def test_compute_stats_on_a_scene_without_valid_pixels(tmp_path):
    path = write_tif(tmp_path / "nan.tif", np.full((2, 8, 8), np.nan, np.float32))
    with Scene.open(path) as scene, pytest.raises(InputError, match="no valid pixel"):
        compute_stats(scene, seed=0)


def test_salinas_stats_are_deterministic(salinas_dir):
    with Scene.open(salinas_dir / "hsi.tif") as scene:
        a = compute_stats(scene, seed=1, n_samples=500)
        b = compute_stats(scene, seed=1, n_samples=500)
    assert a.hsi.bands == 204 and a.lidar is None
    np.testing.assert_array_equal(a.hsi.center, b.hsi.center)
    assert (a.hsi.scale > 0).all()


def test_synthetic_scene_end_to_end(tmp_path):
    from scenes import make_scene, write_scene

    from diffclip_cli.io.labels import read_labels
    from diffclip_cli.sampling.windows import read_windows

    syn = make_scene(height=40, width=36, hsi_bands=6, lidar_bands=2, seed=2)
    paths = write_scene(syn, tmp_path, hsi_dtype="int16")
    with Scene.open(paths["hsi"], paths["lidar"]) as scene:
        block = scene.read(scene.grid.full_window())
        np.testing.assert_allclose(block.hsi, syn.hsi, atol=1e-4)  # int16 * 1e-4 scale
        np.testing.assert_array_equal(block.lidar, syn.lidar)
        assert scene.band_names["lidar"] == ["DSM", "intensity 1"]
        labels = read_labels(paths["labels"], scene.grid, classes=paths["classes"])
        np.testing.assert_array_equal(labels.to_raster(), syn.labels)
        assert labels.classes.names == syn.class_names
        split = sample_shots(labels.drop_invalid(scene), 3, seed=0)
        stats = compute_stats(scene, seed=0, n_samples=400)
        batch = read_windows(scene, labels.rows[split.train], labels.cols[split.train],
                             size=5, stats=stats)
    assert batch.hsi.shape == (3 * len(syn.class_names), 6, 5, 5)
    assert batch.lidar.shape == (3 * len(syn.class_names), 2, 5, 5)
    assert np.abs(batch.hsi).max() < 5  # normalised to about [-1, 1]
