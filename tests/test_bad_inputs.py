"""Every mistake a new user can make ends in one sentence, a documented exit code,
no traceback (unless -v), and no output file that looks complete when it is not.

Everything goes through the real commands (typer's CliRunner, or a real subprocess where a
signal must be delivered). The models are built without training (an untrained network is
a valid model file), so the module stays cheap; only the resume test trains for real.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterdata import write_tif
from rasterio.transform import from_origin
from shapely.geometry import Point, box
from tinyscene import (
    BANDS,
    NAN_PIXEL,
    NODATA_PIXEL,
    TRANSFORM,
    H,
    W,
    error_line,
    invoke,
    no_temp_files,
    pixel_point,
    runner,
    untrained_models,
    write_points,
)

from diffclip_cli.cli import app
from diffclip_cli.errors import (
    GridError,
    InputError,
    Interrupted,
    LabelError,
    ModelError,
    OutputError,
)
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.archive import load_model, save_model
from diffclip_cli.model.device import DeviceError
from diffclip_cli.model.modelfile import FORMAT_TAG, FORMAT_VERSION

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------- broken input files
BROKEN_RASTERS = ["missing.tif", "dir.tif", "text.tif", "empty.tif", "truncated.tif"]


@pytest.mark.parametrize("which", ["hsi", "lidar"])
@pytest.mark.parametrize("name", BROKEN_RASTERS)
def test_broken_raster_inputs(tiny, tmp_path, which, name):
    bad = tiny.broken / name
    hsi, lidar = (bad, tiny.lidar) if which == "hsi" else (tiny.hsi, bad)
    out = tmp_path / "map.tif"
    r = invoke("classify", hsi, lidar, "--model", tiny.model, "-o", out,
               code=InputError.exit_code)
    line = error_line(r)
    assert str(bad) in line and ("HSI" if which == "hsi" else "LiDAR") in line
    assert not out.exists() and no_temp_files(tmp_path)


@pytest.mark.parametrize(("name", "words"), [
    ("missing.tif", "not found"),
    ("dir.tif", "directory"),
    ("text.tif", "not a readable map raster"),
    ("empty.tif", "empty"),
    ("truncated.tif", "truncated"),
    ("whole.tif", "not a class map"),  # e.g. the HSI given instead of the map
])
def test_broken_maps_to_evaluate(tiny, tmp_path, name, words):
    out = tmp_path / "report.json"
    line = error_line(invoke("evaluate", tiny.broken / name, "--labels", tiny.labels, "-o",
                             out, code=InputError.exit_code))
    assert str(tiny.broken / name) in line and words in line
    assert not out.exists()


@pytest.mark.parametrize(("name", "code", "words"), [
    ("missing.gpkg", InputError.exit_code, "not found"),
    ("dir.gpkg", InputError.exit_code, "directory"),
    ("text.gpkg", InputError.exit_code, "not a readable vector file"),
    ("text.tif", InputError.exit_code, "not a readable label raster"),
    ("truncated.tif", InputError.exit_code, "truncated"),
    ("empty.gpkg", LabelError.exit_code, "empty"),
    ("empty.tif", LabelError.exit_code, "empty"),
])
def test_broken_label_files(tiny, tmp_path, name, code, words):
    out = tmp_path / "model.pt"
    r = invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", tiny.broken / name, "--shots", 2,
               "--pretrained", tiny.pretrained, "-o", out, code=code)
    line = error_line(r)
    assert str(tiny.broken / name) in line and words in line
    assert not out.exists()


@pytest.mark.parametrize(("name", "words"), [
    ("missing.pt", "not found"),
    ("dir.pt", "directory"),
    ("text.pt", "not a diffclip model"),
    ("empty.pt", "empty"),
    ("truncated.pt", "truncated"),
])
@pytest.mark.parametrize("command", ["classify", "info"])
def test_broken_model_files(tiny, tmp_path, name, words, command):
    bad = tiny.broken / name
    args = (["classify", tiny.hsi, tiny.lidar, "--model", bad, "-o", tmp_path / "m.tif"]
            if command == "classify" else ["info", bad])
    line = error_line(invoke(*args, code=ModelError.exit_code))
    assert str(bad) in line and words in line
    assert "code" not in line  # a broken file is not mistaken for a malicious one


@pytest.mark.parametrize(("name", "words"), [
    ("missing.csv", "not found"),
    ("dir.csv", "directory"),
    ("binary.csv", "not a text file"),
    ("empty.csv", "no scene"),
    ("dir.yaml", "directory"),
])
def test_broken_manifests(tiny, name, words):
    line = error_line(invoke("batch", tiny.broken / name, code=InputError.exit_code))
    assert str(tiny.broken / name) in line and words in line


@pytest.fixture(scope="module")
def label_raster(tiny) -> Path:
    """Class ids 1..2 on the scene's grid, as a label GeoTIFF."""
    data = np.zeros((H, W), np.uint8)
    data[:10, :10] = 1
    data[12:, :10] = 2
    return write_tif(tiny.folder / "labels.tif", data, transform=TRANSFORM)


@pytest.mark.parametrize(("name", "words"), [
    ("missing.csv", "not found"),
    ("dir.csv", "directory"),
    ("binary.csv", "not a text file"),
    ("empty.csv", "no rows"),
])
def test_broken_classes_tables(tiny, label_raster, tmp_path, name, words):
    r = invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", label_raster, "--classes",
               tiny.broken / name, "--shots", 2, "--pretrained", tiny.pretrained,
               "-o", tmp_path / "m.pt", code=InputError.exit_code)
    line = error_line(r)
    assert str(tiny.broken / name) in line and words in line
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize(("name", "words"), [
    ("missing.csv", "not found"),
    ("dir.csv", "directory"),
    ("binary.csv", "not a text file"),
    ("empty.csv", "needs columns"),
])
def test_broken_descriptions_fail_before_any_training(tiny, tmp_path, name, words,
                                                      monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training started before the descriptions were checked")

    monkeypatch.setattr("diffclip_cli.workflows.fewshot.pretrain_scene", no_training)
    r = invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", tiny.labels, "--shots", 2,
               "--preset", "tiny", "--descriptions", tiny.broken / name,
               "-o", tmp_path / "m.pt", code=InputError.exit_code)
    line = error_line(r)
    assert str(tiny.broken / name) in line and words in line


def test_descriptions_naming_unknown_classes_fail_before_training(tiny, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setattr("diffclip_cli.workflows.fewshot.pretrain_scene",
                        lambda *a, **k: pytest.fail("training started"))
    desc = tmp_path / "desc.csv"
    desc.write_text("class,description\nlava,hot rock\n")
    r = invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", tiny.labels, "--shots", 2,
               "--preset", "tiny", "--descriptions", desc, "-o", tmp_path / "m.pt",
               code=LabelError.exit_code)
    assert "lava" in error_line(r)


# --------------------------------------------------------------------------- grids
def test_hsi_without_crs_and_lidar_with_one(tiny, tmp_path):
    bare = write_tif(tmp_path / "bare.tif", tiny.hsi_data, transform=TRANSFORM, crs=None,
                     nodata=-9999)
    for hsi, lidar, lacking in ((bare, tiny.lidar, bare), (tiny.hsi, bare, bare)):
        r = invoke("classify", hsi, lidar, "--model", tiny.model, "-o",
                   tmp_path / "m.tif", code=GridError.exit_code)
        line = error_line(r)
        assert str(lacking) in line and "no CRS" in line and "EPSG:32615" in line


def test_lidar_that_does_not_overlap(tiny, tmp_path):
    with rasterio.open(tiny.lidar) as src:
        dsm = src.read()
    far = write_tif(tmp_path / "far.tif", dsm, transform=from_origin(600000, 4100000, 2, 2))
    r = invoke("classify", tiny.hsi, far, "--model", tiny.model, "-o", tmp_path / "m.tif",
               code=GridError.exit_code)
    line = error_line(r)
    assert "does not overlap" in line and str(far) in line
    assert not (tmp_path / "m.tif").exists()


def test_partial_overlap_classifies_the_covered_part(tiny, tmp_path):
    with rasterio.open(tiny.lidar) as src:
        dsm = src.read()
    half = write_tif(tmp_path / "half.tif", dsm[:, :, : W // 2], transform=TRANSFORM)
    out = tmp_path / "m.tif"
    r = invoke("classify", tiny.hsi, half, "--model", tiny.model, "-o", out,
               "--tile-size", 16, code=0)
    assert "covers only about 50.0 %" in r.output
    with rasterio.open(out) as m:
        data = m.read(1)
    assert (data[:, W // 2:] == 0).all()
    covered = data[:, : W // 2]
    assert (covered > 0).sum() == covered.size - 2  # all but the NaN and nodata pixels


# ------------------------------------------------------------------------ model fit
def test_band_count_differs_from_the_model(tiny, tmp_path):
    fewer = write_tif(tmp_path / "five.tif", tiny.hsi_data[:5], transform=TRANSFORM,
                      nodata=-9999)
    line = error_line(invoke("classify", fewer, tiny.lidar, "--model", tiny.model, "-o",
                             tmp_path / "m.tif", code=ModelError.exit_code))
    assert str(tiny.model) in line and f"{BANDS} HSI bands" in line and "has 5" in line


def test_lidar_missing_when_the_model_needs_it(tiny, tmp_path):
    line = error_line(invoke("classify", tiny.hsi, "--model", tiny.model, "-o",
                             tmp_path / "m.tif", code=ModelError.exit_code))
    assert str(tiny.model) in line and "needs LiDAR" in line


def test_lidar_given_to_an_hsi_only_model(tiny, tmp_path):
    line = error_line(invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model_hsi,
                             "-o", tmp_path / "m.tif", code=ModelError.exit_code))
    assert str(tiny.model_hsi) in line and "HSI alone" in line


def test_a_pretrained_model_cannot_classify(tiny, tmp_path):
    line = error_line(invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.pretrained,
                             "-o", tmp_path / "m.tif", code=ModelError.exit_code))
    assert "pretrained model without classes" in line and "fewshot --pretrained" in line


def test_every_library_entry_point_refuses_a_pretrained_model_with_the_one_check(tiny,
                                                                               tmp_path):
    """classify_scene, predict, make_engine and the fast path all ask require_classes."""
    from diffclip_cli.infer.classify import classify_scene
    from diffclip_cli.infer.fast import load_student
    from diffclip_cli.infer.predict import make_engine, predict
    from diffclip_cli.report.scoring import evaluate_pixels

    bundle = load_model(tiny.pretrained)
    with pytest.raises(ModelError) as expected:
        bundle.require_classes()
    lidar = np.zeros((1, H, W), np.float32)
    with Scene.open(tiny.hsi, [tiny.lidar]) as scene:
        calls = {
            "classify_scene": lambda: classify_scene(scene, bundle, tmp_path / "m.tif"),
            "predict": lambda: predict(bundle, tiny.hsi_data, lidar),
            "make_engine": lambda: make_engine(bundle),
            "load_student": lambda: load_student(bundle),
            "evaluate_pixels": lambda: evaluate_pixels(scene, bundle, None),
        }
        for name, call in calls.items():
            with pytest.raises(ModelError) as refused:
                call()
            assert str(refused.value) == str(expected.value), name
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- labels
def test_labels_without_features(tiny, tmp_path):
    path = tmp_path / "none.geojson"
    path.write_text('{"type": "FeatureCollection", "features": []}')
    line = error_line(invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", path, "--shots", 2,
                             "--pretrained", tiny.pretrained, "-o", tmp_path / "m.pt",
                             code=LabelError.exit_code))
    assert "no features" in line


@pytest.mark.parametrize(("extra", "words"), [
    (["--class-field", "klass"], "has no field 'klass' (fields: kind, note)"),
    ([], "no class field found (fields: kind, note)"),
])
def test_unknown_class_field_lists_the_fields(tiny, tmp_path, extra, words):
    path = tmp_path / "odd.gpkg"
    gpd.GeoDataFrame({"kind": ["a", "b"], "note": ["x", "y"]},
                     geometry=[pixel_point(1, 1), pixel_point(3, 3)],
                     crs="EPSG:32615").to_file(path)
    line = error_line(invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", path, "--shots", 2,
                             "--pretrained", tiny.pretrained, "-o", tmp_path / "m.pt",
                             *extra, code=LabelError.exit_code))
    assert words in line


def test_no_label_inside_the_raster(tiny, tmp_path):
    path = tmp_path / "far.gpkg"
    gpd.GeoDataFrame({"landcover": ["grass"]}, geometry=[Point(0, 0)],
                     crs="EPSG:32615").to_file(path)
    line = error_line(invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", path, "--shots", 2,
                             "--pretrained", tiny.pretrained, "-o", tmp_path / "m.pt",
                             code=LabelError.exit_code))
    assert "no label falls inside the raster" in line


def test_conflicting_labels_are_dropped_and_reported(tiny, tmp_path):
    x0, y0 = TRANSFORM.c, TRANSFORM.f
    path = tmp_path / "overlap.gpkg"
    gpd.GeoDataFrame({"landcover": ["grass", "water"]},
                     geometry=[box(x0, y0 - 12, x0 + 12, y0), box(x0 + 6, y0 - 18, x0 + 18,
                                                                   y0 - 6)],
                     crs="EPSG:32615").to_file(path)
    out = tmp_path / "report.json"
    with rasterio.open(tiny.hsi) as src:  # a map to evaluate: every pixel 'grass' (id 1)
        profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": 0}
    the_map = tmp_path / "map.tif"
    with rasterio.open(the_map, "w", **profile) as dst:
        dst.write(np.ones((1, H, W), np.uint8))
    r = invoke("evaluate", the_map, "--labels", path, "-o", out, code=0)
    assert "9 pixels claimed by different classes were dropped (grass / water: 9)" in \
        " ".join(r.output.split())
    path2 = tmp_path / "same.gpkg"
    write_points(path2, [("grass", 2, 2), ("water", 2, 2)])
    line = error_line(invoke("evaluate", the_map, "--labels", path2, "-o", out,
                             "--overwrite", code=LabelError.exit_code))
    assert "every labelled pixel is claimed by two different classes" in line


def test_small_classes_zero_pixels_and_one_pixel(tiny, tmp_path):
    """Class 3 has 1 pixel, class 4 (water) 4 pixels, class 5 (road) none, with --shots 5."""
    data = np.zeros((H, W), np.uint8)
    data[:8, :8] = 1
    data[14:22, :8] = 2
    data[20, 20] = 3
    data[15:17, 15:17] = 4
    labels = write_tif(tmp_path / "labels.tif", data, transform=TRANSFORM)
    table = tmp_path / "classes.csv"
    table.write_text("id,name\n1,grass\n2,trees\n3,roof\n4,water\n5,road\n")
    model = tmp_path / "m.pt"
    r = invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", labels, "--classes", table,
               "--shots", 5, "--pretrained", tiny.pretrained, "--finetune-epochs", 1,
               "-o", model, code=0)
    text = " ".join(r.output.split())
    assert "left out of the model, so never mapped: 'roof' (1 labelled pixel), 'road' " \
           "(0 labelled pixels)" in text
    bundle = load_model(model)
    assert bundle.class_table is not None
    assert bundle.class_table.names == ["grass", "trees", "water"]
    assert bundle.class_table.ids == [1, 2, 4]  # ids are kept
    assert bundle.provenance["train_pixels_per_class"] == {"grass": 5, "trees": 5, "water": 2}
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert report["class_names"] == ["grass", "trees", "water"]


def test_more_shots_than_pixels_warns_and_keeps_test_pixels(tiny, tmp_path):
    data = np.zeros((H, W), np.uint8)
    data[:3, :3] = 1  # 9 pixels
    data[20:, 20:] = 2  # 32 pixels
    labels = write_tif(tmp_path / "labels.tif", data, transform=TRANSFORM)
    r = invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", labels, "--shots", 10,
               "--pretrained", tiny.pretrained, "--finetune-epochs", 1, "-o",
               tmp_path / "m.pt", code=0)
    text = " ".join(r.output.split())
    assert "class 'class 1' has only 9 labelled pixels; it gives 4 shots instead of 10" in text
    assert text.count("has only 9 labelled pixels") == 1  # said once
    counts = load_model(tmp_path / "m.pt").provenance["train_pixels_per_class"]
    assert counts == {"class 1": 4, "class 2": 10}


@pytest.mark.parametrize(("cells", "words"), [
    ([(1, 1, 1), (2, 5, 5)], "no class has enough labelled pixels to train on"),
    ([(1, 1, 1), (1, 2, 2), (2, 5, 5)], "only the class 'class 1' has enough"),
])
def test_too_few_pixels_for_a_map(tiny, tmp_path, cells, words):
    data = np.zeros((H, W), np.uint8)
    for k, r, c in cells:
        data[r, c] = k
    labels = write_tif(tmp_path / "labels.tif", data, transform=TRANSFORM)
    line = error_line(invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", labels, "--shots",
                             5, "--pretrained", tiny.pretrained, "-o", tmp_path / "m.pt",
                             code=LabelError.exit_code))
    assert words in line and "at least 2 labelled pixels" in line
    assert not (tmp_path / "m.pt").exists()


# ------------------------------------------------------------------ nodata and small scenes
@pytest.fixture(scope="module")
def the_map(tiny) -> np.ndarray:
    out = tiny.folder / "map.tif"
    invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model, "-o", out,
           "--tile-size", 16, "-q", code=0)
    with rasterio.open(out) as m:
        return m.read(1)


@pytest.mark.parametrize("pixel", [NAN_PIXEL, NODATA_PIXEL])
def test_nan_and_nodata_pixels_become_nodata_and_neighbours_are_classified(the_map, pixel):
    r, c = pixel
    assert the_map[r, c] == 0
    assert (the_map[r - 1:r + 2, c - 1:c + 2] > 0).sum() == 8
    assert (the_map > 0).sum() == H * W - 2


def test_an_all_nodata_tile(tiny, tmp_path):
    hsi = tiny.hsi_data.copy()
    hsi[:, :16, :16] = -9999
    path = write_tif(tmp_path / "hole.tif", hsi, transform=TRANSFORM, nodata=-9999)
    out = tmp_path / "m.tif"
    invoke("classify", path, tiny.lidar, "--model", tiny.model, "-o", out, "--tile-size", 16,
           "-q", code=0)
    with rasterio.open(out) as m:
        data = m.read(1)
    assert (data[:16, :16] == 0).all()
    assert (data[16:, 16:] > 0).all() and (data[:16, 16:] > 0).all()


@pytest.fixture(scope="module")
def empty_scene(tiny) -> Path:
    return write_tif(tiny.folder / "nothing.tif", np.full((BANDS, H, W), -9999, np.float32),
                     transform=TRANSFORM, nodata=-9999)


@pytest.mark.parametrize("command", ["pretrain", "fewshot"])
def test_a_scene_without_any_valid_pixel_fails_before_training(tiny, empty_scene, tmp_path,
                                                              command):
    out = tmp_path / "m.pt"
    extra = ["--labels", tiny.labels, "--shots", 2] if command == "fewshot" else []
    line = error_line(invoke(command, empty_scene, tiny.lidar, *extra, "--preset", "tiny",
                             "-o", out, code=InputError.exit_code))
    assert str(empty_scene) in line and "no valid pixel" in line
    assert not out.exists()


def test_classifying_a_scene_without_any_valid_pixel_warns(tiny, empty_scene, tmp_path):
    out = tmp_path / "m.tif"
    r = invoke("classify", empty_scene, tiny.lidar, "--model", tiny.model, "-o", out,
               code=0)
    assert "no pixel of the scene is valid" in " ".join(r.output.split())
    with rasterio.open(out) as m:
        assert (m.read(1) == 0).all()


@pytest.mark.parametrize("size", [1, 2, 3])
def test_scenes_smaller_than_the_window(tiny, tmp_path, size):
    """11 x 11 windows on a 1 x 1 .. 3 x 3 scene: reflect padding repeats, every pixel mapped."""
    hsi = write_tif(tmp_path / "hsi.tif", tiny.hsi_data[:, 1:1 + size, 1:1 + size],
                    transform=TRANSFORM, nodata=-9999)
    with Scene.open(hsi) as scene:
        _, model = untrained_models(scene, tmp_path, window=11)
    out = tmp_path / "m.tif"
    invoke("classify", hsi, "--model", model, "-o", out, "-q", code=0)
    with rasterio.open(out) as m:
        assert (m.read(1) > 0).all()


def test_pretraining_on_a_scene_smaller_than_the_window(tiny, tmp_path):
    hsi = write_tif(tmp_path / "hsi.tif", tiny.hsi_data[:, 1:4, 1:4], transform=TRANSFORM,
                    nodata=-9999)
    invoke("pretrain", hsi, "-o", tmp_path / "p.pt", "--preset", "tiny", "--window", 11,
           "--epochs", 1, "--samples", 9, "-q", code=0)
    assert load_model(tmp_path / "p.pt").config.window == 11


# --------------------------------------------------------------------------- outputs
def test_existing_output_is_left_untouched(tiny, tmp_path):
    out = tmp_path / "map.tif"
    out.write_bytes(b"precious")
    line = error_line(invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model,
                             "-o", out, code=OutputError.exit_code))
    assert "already exists" in line and "--overwrite" in line
    assert out.read_bytes() == b"precious"


def test_output_folder_missing(tiny, tmp_path):
    out = tmp_path / "nowhere" / "map.tif"
    line = error_line(invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model,
                             "-o", out, code=OutputError.exit_code))
    assert "does not exist" in line and not out.parent.exists()


def test_output_folder_not_writable(tiny, tmp_path, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:  # a real read-only folder (root may write anywhere)
        folder.chmod(0o500)
    else:
        real = os.access
        monkeypatch.setattr("diffclip_cli.io.atomic.os.access",
                            lambda p, mode: False if Path(p) == folder else real(p, mode))
    try:
        line = error_line(invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model,
                                 "-o", folder / "map.tif", code=OutputError.exit_code))
    finally:
        folder.chmod(0o700)
    assert "not writable" in line and not list(folder.iterdir())


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    rasterio.errors.RasterioIOError("map.tif: Write error: No space left on device"),
])
def test_disk_full_while_writing_the_map(tiny, tmp_path, monkeypatch, failure):
    from diffclip_cli.io.maps import RasterWriter

    calls = []
    original = RasterWriter.write

    def write(self, window, array):
        calls.append(window)
        if len(calls) == 2:
            raise failure
        return original(self, window, array)

    monkeypatch.setattr(RasterWriter, "write", write)
    out = tmp_path / "map.tif"
    line = error_line(invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model, "-o",
                             out, "--confidence", tmp_path / "conf.tif", "--tile-size", 16,
                             code=OutputError.exit_code))
    assert "disk is full" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no map, sidecar or temp file


def test_disk_full_while_saving_a_model(tiny, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        Path(args[1]).write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("diffclip_cli.model.archive.torch.save", full)
    out = tmp_path / "m.pt"
    line = error_line(invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", tiny.labels,
                             "--shots", 2, "--pretrained", tiny.pretrained,
                             "--finetune-epochs", 1, "-o", out, "-q",
                             code=OutputError.exit_code))
    assert str(out) in line and "disk is full" in line
    assert not out.exists() and no_temp_files(tmp_path)


# -------------------------------------------------------------------- interruptions
def _run_until(args: list[str], marker: str, sig: int) -> tuple[int, str]:
    """Run ``python -m diffclip_cli ARGS``; send ``sig`` once stderr shows ``marker``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as one_torch_thread, for the same results
    # As from a terminal: a shell starts background jobs with SIGINT ignored, and a child
    # would inherit that from a test run started with `&` (the Ctrl-C case never ran).
    proc = subprocess.Popen([sys.executable, "-m", "diffclip_cli", *args],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            proc.send_signal(sig)
            break
    seen.append(proc.stderr.read())
    return proc.wait(timeout=120), "".join(seen)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupting_classify_leaves_nothing(tiny, tmp_path_factory, sig):
    folder = tmp_path_factory.mktemp("interrupt")
    big = tiny.folder / "big.tif"
    if not big.exists():  # large enough that no engine finishes before the signal arrives
        rng = np.random.default_rng(0)
        write_tif(big, rng.random((BANDS, 768, 768), dtype=np.float32), block=256)
    out = folder / "map.tif"
    code, err = _run_until(["classify", str(big), "--model", str(tiny.model_hsi), "-o",
                            str(out), "--confidence", str(folder / "conf.tif"),
                            "--tile-size", "64"], "Classifying pixels:", sig)
    assert "Classifying pixels:" in err, err
    assert code == Interrupted.exit_code, err
    assert "Stopped:" in err and "Traceback" not in err
    assert sorted(p.name for p in folder.iterdir()) == []


def test_killed_pretraining_resumes_to_the_same_model(tiny, tmp_path):
    args = ["pretrain", str(tiny.hsi), str(tiny.lidar), "--preset", "tiny", "--epochs", "4",
            "--samples", "128", "--seed", "3"]
    reference = tmp_path / "reference.pt"
    invoke(*args, "-o", reference, "-q", code=0)
    out = tmp_path / "resumed.pt"
    ckpt = tmp_path / "resumed.pt.ckpt"
    code, err = _run_until([*args, "-o", str(out)], "Pretraining (steps): 5 of 8",
                           signal.SIGTERM)
    assert code == Interrupted.exit_code, err
    assert not out.exists() and ckpt.is_file() and no_temp_files(tmp_path)
    assert torch.load(ckpt, weights_only=True)["epoch"] in (2, 3)
    r = invoke(*args, "-o", out, "--resume", code=0)
    assert "resuming pretraining" in r.output
    assert not ckpt.exists()
    a, b = load_model(reference).state_dict, load_model(out).state_dict
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------- untrusted models
class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("packing", ["torch", "pickle"])
@pytest.mark.parametrize("command", ["classify", "info"])
def test_model_carrying_code_is_refused_without_running_it(tiny, tmp_path, packing, command):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    if packing == "torch":
        torch.save({"format": FORMAT_TAG, "format_version": 1, "x": _Evil(str(marker))}, evil)
    else:
        evil.write_bytes(pickle.dumps({"format": FORMAT_TAG, "x": _Evil(str(marker))},
                                      protocol=pickle.HIGHEST_PROTOCOL))
    args = (["classify", tiny.hsi, tiny.lidar, "--model", evil, "-o", tmp_path / "m.tif"]
            if command == "classify" else ["info", evil])
    line = error_line(invoke(*args, code=ModelError.exit_code))
    assert str(evil) in line and "refused" in line and "holds code" in line
    assert not marker.exists()


def test_model_from_a_newer_diffclip(tiny, tmp_path):
    bundle = load_model(tiny.model)
    bundle.format_version = FORMAT_VERSION + 1
    newer = save_model(bundle, tmp_path / "newer.pt")
    for args in (["info", newer], ["classify", tiny.hsi, tiny.lidar, "--model", newer,
                                   "-o", tmp_path / "m.tif"]):
        line = error_line(invoke(*args, code=ModelError.exit_code))
        assert "made by a newer diffclip" in line and "upgrade" in line


# ------------------------------------------------------------- command-line behaviour
def test_verbose_shows_the_traceback(tiny, tmp_path):
    r = invoke("classify", tmp_path / "nope.tif", "--model", tiny.model, "-o",
               tmp_path / "m.tif", "-v", code=InputError.exit_code)
    assert "Traceback" in r.output and "Error: " in r.output


def test_internal_errors_print_one_line(tiny, monkeypatch):
    def broken(path):
        raise RuntimeError("something broke\nwith a second line of detail")

    monkeypatch.setattr("diffclip_cli.model.archive.load_model", broken)
    r = invoke("info", tiny.model, code=1)
    line = error_line(r, prefix="Internal error:")
    assert line == ("Internal error: RuntimeError: something broke; run again with -v for the "
                    "traceback and please report it.")
    assert len(r.output.strip().splitlines()) == 1
    r = invoke("info", tiny.model, "-v", code=1)
    assert "Traceback" in r.output and "please report it with the traceback above" in r.output


@pytest.mark.parametrize("args", [[], ["--bogus"], ["classify"], ["classify", "x.tif"],
                                  ["fewshot", "x.tif", "--shots", "0"]])
def test_usage_errors_exit_2(args):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_cuda(tiny, tmp_path):
    line = error_line(invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model, "-o",
                             tmp_path / "m.tif", "--device", "cuda",
                             code=DeviceError.exit_code))
    assert DeviceError.exit_code == 2
    assert "no CUDA GPU is available" in line and "--device cpu" in line
    assert not (tmp_path / "m.tif").exists()
