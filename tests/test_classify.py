"""Whole-scene classification: tiling, outputs, failures and the distributed path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import rasterio
from scenes import make_scene, write_scene

from diffclip_cli.errors import ModelError, OutputError
from diffclip_cli.infer.classify import (
    CONFIDENCE_NODATA,
    DEFAULT_TILE_SIZE,
    TILE_BYTES,
    RunOptions,
    WriteOptions,
    auto_tile_size,
    classify_scene,
)
from diffclip_cli.io.atomic import TEMP_PREFIX
from diffclip_cli.io.labels import read_labels
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.config import load_preset
from diffclip_cli.report.scoring import predict_pixels
from diffclip_cli.workflows.fewshot import FewshotRequest, fewshot_scene

TINY = load_preset("tiny").with_overrides(**{"pretrain.epochs": 3, "finetune.epochs": 20})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scene")
    files = write_scene(make_scene(height=45, width=38, hsi_bands=10, seed=2), folder)
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        labels = read_labels(files["labels"], scene.grid, classes=files["classes"])
        result = fewshot_scene(scene, labels, FewshotRequest(
            shots=4, preset=TINY, pretrain_samples=300, seed=0, evaluate=False))
    return files, result.bundle


def _read(path):
    with rasterio.open(path) as src:
        return src.read()


def test_map_does_not_depend_on_tiling_and_matches_pixel_predictions(setup, tmp_path):
    files, bundle = setup
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        a = classify_scene(scene, bundle, tmp_path / "a.tif",
                           write=WriteOptions(probabilities=tmp_path / "pa.tif"),
                           run=RunOptions(tile_size=16))
        b = classify_scene(scene, bundle, tmp_path / "b.tif",
                           write=WriteOptions(probabilities=tmp_path / "pb.tif"),
                           run=RunOptions(tile_size=64))
        rows, cols = np.nonzero(np.ones(scene.grid.shape, bool))
        probs = predict_pixels(scene, bundle, rows, cols)
    assert a.tiles == 9 and b.tiles == 1
    np.testing.assert_array_equal(_read(tmp_path / "a.tif"), _read(tmp_path / "b.tif"))
    pa, pb = _read(tmp_path / "pa.tif"), _read(tmp_path / "pb.tif")
    np.testing.assert_allclose(pa, pb, atol=1e-5)
    np.testing.assert_allclose(pa[:, rows, cols].T, probs, atol=1e-5)
    ids = np.asarray(bundle.class_table.ids)
    np.testing.assert_array_equal(_read(tmp_path / "a.tif")[0][rows, cols],
                                  ids[probs.argmax(1)])
    assert sum(a.class_pixels.values()) == a.valid_pixels == 45 * 38


def _reference_map(scene, bundle, tile_size):
    """The map the tile loop before the dask graph wrote: tiles read with their halo,
    normalised, run through the TileEngine, argmax -> class ids (0 where invalid)."""
    from diffclip_cli.infer.engine import TileEngine
    from diffclip_cli.model.modelfile import build_classifier
    from diffclip_cli.sampling.tiles import iter_tiles, read_tile

    engine = TileEngine(build_classifier(bundle))
    stats = bundle.scene_stats
    ids = np.asarray(bundle.class_table.ids, dtype=np.uint8)
    labels = np.zeros(scene.grid.shape, np.uint8)
    probs = np.full((len(ids), *scene.grid.shape), CONFIDENCE_NODATA, np.float32)
    for tile in iter_tiles(scene.grid, tile_size=tile_size, halo=engine.window // 2):
        data = read_tile(scene, tile, stats=stats)
        p = engine.predict_tile(data)
        labels[tile.slices] = np.where(data.valid, ids[p.argmax(0)], 0)
        probs[(slice(None), *tile.slices)] = np.where(data.valid[None], p, CONFIDENCE_NODATA)
    return labels, probs


@pytest.mark.parametrize("tile_size", [16, 20, 64])
def test_map_is_identical_to_the_tile_loop_it_replaced(setup, tmp_path, tile_size):
    files, bundle = setup
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        labels, probs = _reference_map(scene, bundle, tile_size)
        classify_scene(scene, bundle, tmp_path / "m.tif",
                       write=WriteOptions(probabilities=tmp_path / "p.tif"),
                       run=RunOptions(tile_size=tile_size))
    np.testing.assert_array_equal(_read(tmp_path / "m.tif")[0], labels)
    np.testing.assert_array_equal(_read(tmp_path / "p.tif"), probs)


def test_failure_midway_leaves_no_output(setup, tmp_path, monkeypatch):
    files, bundle = setup
    import diffclip_cli.infer.predict as mod

    calls = {"n": 0}
    real = mod._tile_probabilities

    def flaky(*args, block_info=None, **kwargs):  # dask passes block_info by name
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(*args, block_info=block_info, **kwargs)

    monkeypatch.setattr(mod, "_tile_probabilities", flaky)
    out = tmp_path / "map.tif"
    with Scene.open(files["hsi"], [files["lidar"]]) as scene, pytest.raises(RuntimeError):
        classify_scene(scene, bundle, out, write=WriteOptions(confidence=tmp_path / "c.tif"),
                       run=RunOptions(tile_size=16))
    assert list(tmp_path.iterdir()) == []
    assert not list(tmp_path.glob(TEMP_PREFIX + "*"))


def test_outputs_must_differ_and_pretrained_models_are_refused(setup, tmp_path):
    files, bundle = setup
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        with pytest.raises(OutputError, match="are the same file"):
            classify_scene(scene, bundle, tmp_path / "m.tif",
                           write=WriteOptions(confidence=tmp_path / "m.tif"))
        pretrained = dataclasses.replace(bundle, kind="pretrained", class_table=None)
        with pytest.raises(ModelError, match="pretrained"):
            classify_scene(scene, pretrained, tmp_path / "m.tif")
    assert not (tmp_path / "m.tif").exists()


def test_confidence_is_top_probability(setup, tmp_path):
    files, bundle = setup
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        classify_scene(scene, bundle, tmp_path / "m.tif",
                       write=WriteOptions(confidence=tmp_path / "c.tif",
                                          probabilities=tmp_path / "p.tif"),
                       run=RunOptions(tile_size=20))
    conf, probs = _read(tmp_path / "c.tif")[0], _read(tmp_path / "p.tif")
    np.testing.assert_allclose(conf, probs.max(0), atol=1e-6)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert conf.min() > CONFIDENCE_NODATA


@pytest.mark.parametrize("processes", [False, True])
def test_distributed_run_equals_local_run(setup, tmp_path, processes):
    """The same graph on a distributed cluster gives the local scheduler's map; with worker
    processes the scene and the model travel pickled (files re-opened by path there)."""
    distributed = pytest.importorskip("distributed")
    files, bundle = setup
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        classify_scene(scene, bundle, tmp_path / "local.tif",
                       write=WriteOptions(probabilities=tmp_path / "pl.tif",
                                          confidence=tmp_path / "cl.tif"),
                       run=RunOptions(tile_size=16))
        with distributed.LocalCluster(n_workers=1 + processes, threads_per_worker=1,
                                      processes=processes, dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            result = classify_scene(scene, bundle, tmp_path / "dist.tif",
                                    write=WriteOptions(probabilities=tmp_path / "pd.tif",
                                                       confidence=tmp_path / "cd.tif"),
                                    run=RunOptions(tile_size=16, scheduler=client))
    assert result.tiles == 9 and result.valid_pixels == 45 * 38
    np.testing.assert_array_equal(_read(tmp_path / "local.tif"), _read(tmp_path / "dist.tif"))
    np.testing.assert_array_equal(_read(tmp_path / "pl.tif"), _read(tmp_path / "pd.tif"))
    np.testing.assert_array_equal(_read(tmp_path / "cl.tif"), _read(tmp_path / "cd.tif"))


def test_memory_tiles_in_flight_are_bounded_with_a_bounded_gdal_cache(
        setup, tmp_path, monkeypatch):
    """Memory stays bounded: few tiles are computed and not yet written at any time (not the
    scene), and GDAL's block cache (5 % of the RAM by default, kept full of blocks read) is at
    most GDAL_CACHE_MAX while the scene is read."""
    import threading

    from rasterio.env import get_gdal_config

    import diffclip_cli.infer.classify as mod
    import diffclip_cli.infer.predict as pmod

    if not isinstance(get_gdal_config("GDAL_CACHEMAX"), int):
        pytest.skip("this rasterio cannot set GDAL's block cache size")
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    files, bundle = setup
    lock = threading.Lock()
    state = {"computed": 0, "written": 0}
    ahead, caches = [], []
    real_tile, real_set, real_read = (pmod._tile_probabilities, mod._Sink.__setitem__,
                                      Scene.read_bands)

    def tile(*args, block_info=None, **kwargs):
        out = real_tile(*args, block_info=block_info, **kwargs)
        with lock:
            state["computed"] += 1
            ahead.append(state["computed"] - state["written"])
        return out

    def setitem(self, key, value):
        real_set(self, key, value)
        with lock:
            state["written"] += 1

    def read(self, *args, **kwargs):
        caches.append(get_gdal_config("GDAL_CACHEMAX"))
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(pmod, "_tile_probabilities", tile)
    monkeypatch.setattr(mod._Sink, "__setitem__", setitem)
    monkeypatch.setattr(Scene, "read_bands", read)
    outer = 4 * mod.GDAL_CACHE_MAX
    with rasterio.Env(GDAL_CACHEMAX=outer), \
            Scene.open(files["hsi"], [files["lidar"]]) as scene:
        result = classify_scene(scene, bundle, tmp_path / "m.tif", run=RunOptions(tile_size=16))
        assert get_gdal_config("GDAL_CACHEMAX") == outer  # restored
    assert result.tiles == state["computed"] == state["written"] == 9
    assert max(ahead) <= 3, ahead
    assert set(caches) == {mod.GDAL_CACHE_MAX}


def test_memory_gdal_cache_left_alone_when_set_in_the_environment(monkeypatch):
    from rasterio.env import get_gdal_config

    import diffclip_cli.infer.classify as mod

    if not isinstance(get_gdal_config("GDAL_CACHEMAX"), int):
        pytest.skip("this rasterio cannot set GDAL's block cache size")
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    with rasterio.Env(GDAL_CACHEMAX=4 * mod.GDAL_CACHE_MAX):
        with mod._bounded_gdal_cache(mod.GDAL_CACHE_MAX):
            assert get_gdal_config("GDAL_CACHEMAX") == mod.GDAL_CACHE_MAX
        monkeypatch.setenv("GDAL_CACHEMAX", "256")
        with mod._bounded_gdal_cache(mod.GDAL_CACHE_MAX):
            assert get_gdal_config("GDAL_CACHEMAX") == 4 * mod.GDAL_CACHE_MAX


@pytest.mark.parametrize(("channels", "edge"), [(1, 256), (48, 256), (65, 192), (145, 128),
                                                (204, 96), (100_000, 64)])
def test_auto_tile_size_bounds_a_tile_by_its_bands(channels, edge):
    assert auto_tile_size(channels) == edge
    assert edge % 32 == 0 and 64 <= edge <= DEFAULT_TILE_SIZE
    # Within the byte budget unless at the 64 px floor, and the next size up would not fit.
    assert edge == 64 or 4 * channels * edge**2 <= TILE_BYTES
    assert edge == DEFAULT_TILE_SIZE or 4 * channels * (edge + 32) ** 2 > TILE_BYTES
