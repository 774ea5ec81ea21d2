"""The Python API on arrays (``diffclip_cli.load_model`` / ``diffclip_cli.predict``) and its
equality with ``diffclip classify``."""

from __future__ import annotations

import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
from tinyscene import CLASSES, NAN_PIXEL, NODATA_PIXEL, invoke

import diffclip_cli
from diffclip_cli.errors import GridError, ModelError
from diffclip_cli.io.arrays import scene_arrays
from diffclip_cli.io.raster import Scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _read(path):
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.fixture(scope="module")
def cli_map(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "map.tif"
    invoke("classify", tiny.hsi, tiny.lidar, "-o", out, "--model", tiny.model,
           "--probabilities", out.with_name("p.tif"), "--tile-size", "16", code=0)
    return out


def _open(tiny, chunks=None):
    kw = {} if chunks is None else {"chunks": chunks}
    return (rioxarray.open_rasterio(tiny.hsi, **kw), rioxarray.open_rasterio(tiny.lidar, **kw))


def test_the_cli_map_equals_predict_on_arrays_read_by_rioxarray(tiny, cli_map):
    model = diffclip_cli.load_model(tiny.model)
    hsi, lidar = _open(tiny, chunks={"y": 10, "x": 12})
    classes = diffclip_cli.predict(model, hsi, lidar, tile_size=16)
    assert isinstance(classes.data, da.Array)
    np.testing.assert_array_equal(classes.values, _read(cli_map))
    # invalid pixels (NaN in one band, the file's nodata in another) are 0 in both
    assert classes.values[NAN_PIXEL] == 0 and classes.values[NODATA_PIXEL] == 0


def test_a_dask_backed_input_gives_a_lazy_result_that_reads_nothing(tiny, monkeypatch):
    reads = []
    real = Scene.read_bands
    monkeypatch.setattr(Scene, "read_bands",
                        lambda self, *a, **k: reads.append(a) or real(self, *a, **k))
    model = diffclip_cli.load_model(tiny.model)
    with Scene.open(tiny.hsi, tiny.lidar) as scene:
        arrays = scene_arrays(scene, chunks=16)
        result = diffclip_cli.predict(model, arrays.hsi, arrays.lidar, probabilities=True)
        for name in ("classes", "confidence", "probabilities"):
            assert isinstance(result[name].data, da.Array), name
        assert reads == []  # nothing computed yet
        classes = result["classes"].compute()
    assert reads  # ... until asked for
    assert classes.dtype == np.uint8


def test_numpy_input_is_computed_and_equals_the_cli_map(tiny, cli_map):
    model = diffclip_cli.load_model(tiny.model)
    hsi, lidar = _open(tiny)
    hsi_np = hsi.values.astype(np.float32)
    hsi_np[hsi_np == hsi.rio.nodata] = np.nan
    classes = diffclip_cli.predict(model, hsi_np, lidar.values.astype(np.float32))
    assert isinstance(classes.data, np.ndarray)
    assert classes.dims == ("y", "x") and classes.rio.crs is None
    np.testing.assert_array_equal(classes.values, _read(cli_map))
    # an in-memory DataArray: computed too, georeferenced
    result = diffclip_cli.predict(model, hsi.load(), lidar.load())
    assert isinstance(result.data, np.ndarray)
    np.testing.assert_array_equal(result.values, _read(cli_map))


def test_result_carries_coordinates_crs_classes_and_probabilities(tiny, cli_map, tmp_path):
    model = diffclip_cli.load_model(tiny.model)
    hsi, lidar = _open(tiny, chunks={"y": 16, "x": 16})
    ds = diffclip_cli.predict(model, hsi, lidar, probabilities=True)
    assert isinstance(ds, xr.Dataset)
    classes = ds["classes"]
    np.testing.assert_array_equal(classes["x"], hsi["x"])
    np.testing.assert_array_equal(classes["y"], hsi["y"])
    assert classes.rio.crs == hsi.rio.crs
    assert classes.rio.transform() == hsi.rio.transform()
    assert classes.rio.nodata == 0
    assert list(classes.attrs["class_names"]) == CLASSES
    assert len(classes.attrs["class_colors"]) == len(CLASSES)
    assert all(c.startswith("#") and len(c) == 7 for c in classes.attrs["class_colors"])
    assert list(ds["probabilities"]["class"].values) == CLASSES
    probs = ds["probabilities"].values
    with rasterio.open(cli_map.with_name("p.tif")) as src:
        np.testing.assert_array_equal(np.nan_to_num(probs, nan=-1.0), src.read())
    assert np.isnan(probs[:, NAN_PIXEL[0], NAN_PIXEL[1]]).all()
    np.testing.assert_array_equal(ds["confidence"].values, np.fmax.reduce(probs, axis=0))
    # straight to a GeoTIFF with rioxarray: same grid and values as the command's map
    classes.rio.to_raster(tmp_path / "api.tif")
    with rasterio.open(tmp_path / "api.tif") as a, rasterio.open(cli_map) as b:
        assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
        np.testing.assert_array_equal(a.read(1), b.read(1))


def test_the_same_graph_on_a_distributed_cluster_through_the_command(tiny, cli_map, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        invoke("classify", tiny.hsi, tiny.lidar, "-o", tmp_path / "d.tif", "--model",
               tiny.model, "--tile-size", "16", "--scheduler", cluster.scheduler_address,
               code=0)
    np.testing.assert_array_equal(_read(tmp_path / "d.tif"), _read(cli_map))


def test_bad_inputs_are_clear_errors(tiny, messy):
    model = diffclip_cli.load_model(tiny.model)
    hsi, lidar = _open(tiny)
    with pytest.raises(ModelError, match="LiDAR"):
        diffclip_cli.predict(model, hsi)  # the model reads LiDAR
    with pytest.raises(ModelError, match="band"):
        diffclip_cli.predict(model, hsi[:5], lidar)
    # another grid cannot be co-registered without georeferencing on both sides
    bare = xr.DataArray(lidar.values[:, :-2], dims=("band", "y", "x"))
    with pytest.raises(GridError, match="no georeferencing"):
        diffclip_cli.predict(model, hsi, bare)
    no_crs = lidar.drop_vars("spatial_ref").rio.write_transform(lidar.rio.transform())
    assert no_crs.rio.crs is None
    with pytest.raises(GridError, match="CRS"):
        diffclip_cli.predict(model, hsi, no_crs)
    with pytest.raises(TypeError, match="DataArray"):
        diffclip_cli.predict(model, hsi.values.tolist(), lidar)
    with pytest.raises(ValueError, match="band, y, x"):
        diffclip_cli.predict(model, hsi.expand_dims("time"), lidar)
    with pytest.raises(ValueError, match="at least 16"):
        diffclip_cli.predict(model, hsi, lidar, tile_size=8)
    with pytest.raises(ModelError, match="pretrained"):
        diffclip_cli.predict(diffclip_cli.load_model(tiny.pretrained), hsi, lidar)
    with pytest.raises(ModelError, match="not found"):
        diffclip_cli.load_model(tiny.folder / "missing.pt")


def test_importing_the_package_loads_no_heavy_library():
    code = ("import sys, diffclip_cli\n"
            "heavy = [m for m in ('torch', 'xarray', 'dask', 'rasterio', 'rioxarray')\n"
            "         if m in sys.modules]\n"
            "print(','.join(heavy))\n"
            "assert callable(diffclip_cli.predict) and callable(diffclip_cli.load_model)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


def test_lidar_on_another_grid_is_co_registered_as_the_command_does(messy, tmp_path):
    """The messy scene's LiDAR is in Web Mercator at 3 m and stops short of the east edge."""
    from diffclip_cli.io.classes import ClassTable
    from diffclip_cli.model.archive import save_model
    from diffclip_cli.model.classifier import DiffCLIPClassifier
    from diffclip_cli.model.config import load_preset
    from diffclip_cli.model.modelfile import bundle_from_classifier
    from diffclip_cli.model.network import DiffCLIPNet
    from diffclip_cli.model.prompts import build_prompts
    from diffclip_cli.model.text import Vocabulary
    from diffclip_cli.sampling.normalise import compute_stats

    names = ["a", "b", "c"]
    preset = load_preset("tiny")
    with Scene.open(messy.hsi, [messy.lidar]) as scene:
        stats = compute_stats(scene, seed=0, n_samples=500)
        net = DiffCLIPNet(preset.model, hsi_bands=scene.hsi_bands, lidar_bands=1, seed=3)
    prompts = build_prompts(names, template="p4")
    clf = DiffCLIPClassifier(net, vocabulary=Vocabulary.build(prompts), prompts=prompts, seed=3)
    table = ClassTable([{"id": i + 1, "name": n} for i, n in enumerate(names)])
    model = save_model(bundle_from_classifier(clf.eval(), preset=preset, stats=stats,
                                              classes=table, template="p4"),
                       tmp_path / "m.pt")
    out = tmp_path / "map.tif"
    invoke("classify", messy.hsi, messy.lidar, "--model", model, "-o", out,
           "--probabilities", tmp_path / "p.tif", "--tile-size", 16, code=0)
    hsi = rioxarray.open_rasterio(messy.hsi, chunks={"y": 16, "x": 16})
    lidar = rioxarray.open_rasterio(messy.lidar)
    assert lidar.rio.crs != hsi.rio.crs and lidar.shape[1:] != hsi.shape[1:]
    got = diffclip_cli.predict(diffclip_cli.load_model(model), hsi, lidar, probabilities=True,
                               tile_size=16).compute()
    with rasterio.open(tmp_path / "p.tif") as src:
        cli_probs = src.read()
    valid = cli_probs[0] >= 0
    # the pixels the LiDAR does not reach are nodata in both
    np.testing.assert_array_equal(np.isfinite(got["probabilities"].values[0]), valid)
    assert not valid[:, -3:].any() and valid[:, :40].mean() > 0.95
    np.testing.assert_allclose(got["probabilities"].values[:, valid], cli_probs[:, valid],
                               rtol=0, atol=1e-4)
    np.testing.assert_array_equal(got["classes"].values, _read(out))
