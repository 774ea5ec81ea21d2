"""GIS conventions through the commands: class matching in evaluate, names and colours GIS
software reads, GDAL dataset names as inputs, wavelengths, creation options and extensions."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import zipfile
from xml.etree import ElementTree

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import torch
from gdalread import band_info
from rasterdata import write_tif
from rasterio.windows import Window
from typer.testing import CliRunner

from diffclip_cli.cli import app
from diffclip_cli.errors import InputError, LabelError, ModelError, OutputError
from diffclip_cli.io.classes import DEFAULT_PALETTE, ClassInfo, ClassTable
from diffclip_cli.io.grid import Grid
from diffclip_cli.io.maps import MapWriter
from diffclip_cli.io.raster import band_wavelengths, is_gdal_name
from diffclip_cli.io.sidecars import class_colormap
from diffclip_cli.model.archive import _digest, load_model
from diffclip_cli.report.baseline import Baseline
from diffclip_cli.report.metrics import AccuracyReport
from diffclip_cli.report.quicklook import nice_length, quicklook_figure
from diffclip_cli.report.render import baseline_verdict, confusion_figure

runner = CliRunner()


def invoke(*args: object, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


# ----------------------------------------------------------------- evaluate: class matching
#: What fewshot makes of vector labels with names: ids 1..K in sorted name order.
MAP_CLASSES = ClassTable([{"id": 1, "name": "asphalt"}, {"id": 2, "name": "meadow"},
                          {"id": 3, "name": "water"}])
#: The user's own numbering of the same classes in a label raster.
USER_IDS = {"water": 1, "asphalt": 2, "meadow": 3}


@pytest.fixture
def named_map_and_id_labels(tmp_path):
    """A perfect diffclip map (ids by name order) and a label raster numbered otherwise."""
    h, w = 12, 15
    truth = np.zeros((h, w), np.int64)
    truth[:, 5:10] = 1
    truth[:, 10:] = 2  # 0: asphalt, 1: meadow, 2: water
    names = ["asphalt", "meadow", "water"]
    map_ids = np.asarray([MAP_CLASSES.by_id(k + 1).id for k in range(3)])[truth]
    user_ids = np.asarray([USER_IDS[n] for n in names])[truth]
    labels = write_tif(tmp_path / "labels.tif", user_ids.astype(np.uint8), nodata=0)
    with rasterio.open(labels) as ds:
        grid = Grid(ds.width, ds.height, ds.transform, ds.crs)
    map_path = tmp_path / "map.tif"
    with MapWriter(map_path, grid, MAP_CLASSES) as writer:
        writer.write(Window(0, 0, w, h), map_ids.astype(np.uint8))
    classes_csv = tmp_path / "classes.csv"
    classes_csv.write_text("id,name\n" + "".join(f"{i},{n}\n" for n, i in USER_IDS.items()))
    return map_path, labels, classes_csv


def test_evaluate_refuses_to_match_a_named_map_to_id_labels_silently(named_map_and_id_labels,
                                                                      tmp_path):
    map_path, labels, _ = named_map_and_id_labels
    r = invoke("evaluate", map_path, "--labels", labels, "-o", tmp_path / "e.json",
               code=LabelError.exit_code)
    assert "--classes" in r.output and "--match-ids" in r.output
    assert "asphalt" in r.output
    assert not (tmp_path / "e.json").exists()


def test_evaluate_with_a_classes_table_matches_by_name(named_map_and_id_labels, tmp_path):
    map_path, labels, classes_csv = named_map_and_id_labels
    invoke("evaluate", map_path, "--labels", labels, "--classes", classes_csv, "-o",
           tmp_path / "e.json", "-q")
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["overall_accuracy"] == 1.0
    assert report["metadata"]["matched_by"] == "name"
    assert dict(zip(report["class_ids"], report["class_names"], strict=True)) == {
        i: n for n, i in USER_IDS.items()}


def test_evaluate_match_ids_is_explicit_and_uses_the_map_names(named_map_and_id_labels,
                                                               tmp_path):
    map_path, labels, _ = named_map_and_id_labels
    invoke("evaluate", map_path, "--labels", labels, "--match-ids", "-o",
           tmp_path / "e.json", "-q")
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["metadata"]["matched_by"] == "id"
    assert report["overall_accuracy"] == 0.0  # the ids really differ
    # reference ids named by the map's class table, not "class 1"
    assert report["class_names"] == ["asphalt", "meadow", "water"]


def test_evaluate_a_map_of_id_classes_matches_id_labels(named_map_and_id_labels, tmp_path):
    # a model trained on a label raster without classes table names its classes "class <id>"
    _, labels, _ = named_map_and_id_labels
    with rasterio.open(labels) as ds:
        data, grid = ds.read(1), Grid(ds.width, ds.height, ds.transform, ds.crs)
    table = ClassTable([{"id": i, "name": f"class {i}"} for i in (1, 2, 3)])
    with MapWriter(tmp_path / "ids.tif", grid, table) as writer:
        writer.write(Window(0, 0, grid.width, grid.height), data)
    r = invoke("evaluate", tmp_path / "ids.tif", "--labels", labels, "-o", tmp_path / "e.json")
    assert "classes matched by id" in r.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["overall_accuracy"] == 1.0 and report["metadata"]["matched_by"] == "id"


def test_evaluate_a_map_without_class_table_warns_that_ids_are_matched(
        named_map_and_id_labels, tmp_path, caplog):
    _, labels, _ = named_map_and_id_labels
    with rasterio.open(labels) as ds:
        data = ds.read(1)
    plain = write_tif(tmp_path / "other_tool.tif", data, nodata=0)
    caplog.set_level("WARNING", logger="diffclip")
    r = invoke("evaluate", plain, "--labels", labels, "-o", tmp_path / "e.json")
    assert "no class table" in r.output + caplog.text
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["overall_accuracy"] == 1.0


# ------------------------------------------------------------- a trained model for the rest
@pytest.fixture(scope="module")
def model(messy, tmp_path_factory):
    path = tmp_path_factory.mktemp("gis_model") / "model.pt"
    invoke("fewshot", messy.hsi, messy.lidar, "--labels", messy.labels, "--shots", 5,
           "--preset", "tiny", "--pretrain-samples", 200, "--no-fast", "-o", path, "-q")
    return path


# ------------------------------------------------------- class names and colours in GIS files
@pytest.mark.parametrize("cog", [False, True])
def test_map_carries_gdal_categories_rat_and_a_qgis_style(messy, model, tmp_path, cog):
    out = tmp_path / "map.tif"
    invoke("classify", messy.hsi, messy.lidar, "-o", out, "--model", model, "-q",
           *(["--cog"] if cog else []))
    classes = json.loads((tmp_path / "map.tif.json").read_text())["classes"]
    assert (tmp_path / "map.tif.aux.xml").is_file()
    info = band_info(out)
    # Categories: indexed by pixel value, 0 (nodata) unnamed
    assert info.categories[0] == ""
    for c in classes:
        assert info.categories[c["id"]] == c["name"]
    assert len(info.categories) == max(c["id"] for c in classes) + 1
    # RAT: one row per class, with the usages GIS software looks for
    names = [col[0] for col in info.rat_columns]
    usages = {col[0]: col[2] for col in info.rat_columns}
    assert usages["Value"] == 5 and usages["Class"] == 2  # GFU_MinMax, GFU_Name
    assert (usages["Red"], usages["Green"], usages["Blue"]) == (6, 7, 8)
    rows = [dict(zip(names, row, strict=True)) for row in info.rat_rows]
    assert [(int(r["Value"]), r["Class"]) for r in rows] == [(c["id"], c["name"])
                                                             for c in classes]
    assert [tuple(int(r[k]) for k in ("Red", "Green", "Blue")) for r in rows] == [
        tuple(c["color"]) for c in classes]
    # QGIS style beside the map: paletted renderer with names and colours
    root = ElementTree.parse(tmp_path / "map.qml").getroot()
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "paletted"
    entries = [(int(e.get("value")), e.get("label"), e.get("color"))
               for e in renderer.iter("paletteEntry")]
    assert entries == [(c["id"], c["name"], "#{:02x}{:02x}{:02x}".format(*c["color"]))
                       for c in classes]


# ------------------------------------------------------------------ GDAL dataset names as inputs
@pytest.fixture(scope="module")
def reference_map(messy, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("gis_ref") / "map.tif"
    invoke("classify", messy.hsi, messy.lidar, "-o", out, "--model", model, "-q")
    with rasterio.open(out) as ds:
        return ds.read(1)


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_classify_reads_an_hsi_inside_a_zip_by_its_vsizip_name(messy, model, reference_map,
                                                               tmp_path, monkeypatch):
    archive = tmp_path / "hsi.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(messy.hsi, "hsi.tif")
    # absolute: /vsizip/ + /abs/path (a double slash GDAL needs and a Path would fold)
    name = f"/vsizip/{archive}/hsi.tif"
    assert "//" in name
    invoke("classify", name, messy.lidar, "-o", tmp_path / "abs.tif", "--model", model, "-q")
    assert np.array_equal(_read(tmp_path / "abs.tif"), reference_map)
    # relative, as in the issue: /vsizip/hsi.zip/hsi.tif
    monkeypatch.chdir(tmp_path)
    invoke("classify", "/vsizip/hsi.zip/hsi.tif", messy.lidar, "-o", "rel.tif", "--model",
           model, "-q")
    assert np.array_equal(_read(tmp_path / "rel.tif"), reference_map)
    sidecar = json.loads((tmp_path / "rel.tif.json").read_text())
    assert sidecar["metadata"]["inputs"]["hsi"] == "/vsizip/hsi.zip/hsi.tif"
    r = invoke("classify", "/vsizip/hsi.zip/missing.tif", messy.lidar, "-o", "x.tif",
               "--model", model, code=InputError.exit_code)
    assert "/vsizip/hsi.zip/missing.tif" in r.output and "not found" not in r.output


def test_netcdf_variables_by_name_and_a_multi_variable_file_lists_them(messy, model,
                                                                       reference_map, tmp_path):
    # a LiDAR NetCDF with two variables (GDAL writes one per band): Band1 (DSM), Band2
    with rasterio.open(messy.lidar) as ds:
        profile = ds.profile | {"count": 2}
        dsm = ds.read(1)
    two = tmp_path / "two.tif"
    with rasterio.open(two, "w", **profile) as ds:
        ds.write(np.stack([dsm, dsm * 0 + 1]))
    nc = tmp_path / "lidar.nc"
    rasterio.shutil.copy(two, nc, driver="netCDF")
    r = invoke("classify", messy.hsi, nc, "-o", tmp_path / "m.tif", "--model", model,
               code=InputError.exit_code)
    line = " ".join(r.output.split())
    assert "2 subdatasets" in line and "Band1" in line and "Band2" in line
    assert "has no bands" not in line
    invoke("classify", messy.hsi, f"NETCDF:{nc}:Band1", "-o", tmp_path / "m.tif", "--model",
           model, "-q")
    assert np.array_equal(_read(tmp_path / "m.tif"), reference_map)


def test_an_envi_header_stands_for_its_data_file(messy, model, reference_map, tmp_path):
    rasterio.shutil.copy(messy.hsi, tmp_path / "hsi.img", driver="ENVI")
    assert (tmp_path / "hsi.hdr").is_file()
    invoke("classify", tmp_path / "hsi.hdr", messy.lidar, "-o", tmp_path / "m.tif", "--model",
           model, "-q")
    assert np.array_equal(_read(tmp_path / "m.tif"), reference_map)
    (tmp_path / "hsi.img").unlink()
    r = invoke("classify", tmp_path / "hsi.hdr", messy.lidar, "-o", tmp_path / "n.tif",
               "--model", model, code=InputError.exit_code)
    assert "ENVI header" in r.output and "hsi.img" in r.output


def test_evaluate_reads_map_and_label_raster_by_gdal_names(named_map_and_id_labels,
                                                            tmp_path):
    map_path, labels, classes_csv = named_map_and_id_labels
    archive = tmp_path / "refs.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(labels, "labels.tif")
        z.write(map_path, "map.tif")  # without its side files: the class table is in its tags
    invoke("evaluate", f"/vsizip/{archive}/map.tif", "--labels",
           f"/vsizip/{archive}/labels.tif", "--classes", classes_csv, "-o", tmp_path / "e.json",
           "-q")
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["overall_accuracy"] == 1.0 and report["metadata"]["matched_by"] == "name"


def test_gdal_names_are_told_from_paths(tmp_path, monkeypatch):
    for name in ("/vsizip/a.zip/b.tif", "/vsis3/bucket/key.tif", "NETCDF:x.nc:var",
                 'HDF5:"x.h5"://cube', "https://example.com/x.tif"):
        assert is_gdal_name(name)
    for name in ("hsi.tif", "/data/hsi.tif", "C:/data/hsi.tif", "./a:b.tif"):
        assert not is_gdal_name(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ab:c.tif").write_bytes(b"")  # an existing file is a path, whatever its name
    assert not is_gdal_name("ab:c.tif")


def test_a_pretrain_checkpoint_records_gdal_names_verbatim(tmp_path):
    """The resume fingerprint keeps a GDAL name as given; a plain path is resolved, sized."""
    from types import SimpleNamespace

    from diffclip_cli.train.pretrain import input_identity

    plain = tmp_path / "lidar.tif"
    plain.write_bytes(b"12345")
    scene = SimpleNamespace(hsi_path="/vsizip//data/scene.zip/hsi.tif",
                            lidar_paths=["NETCDF:l.nc:z", plain])
    assert input_identity(scene)["files"] == [
        {"path": "/vsizip//data/scene.zip/hsi.tif", "size": None},
        {"path": "NETCDF:l.nc:z", "size": None},
        {"path": str(plain.resolve()), "size": 5}]


# ------------------------------------------------------------------------------- wavelengths
WAVELENGTHS = [400.0 + 10 * i for i in range(12)]  # the messy scene has 12 HSI bands


def _envi_copy(src, dst_img, wavelengths, units):
    """An ENVI copy of a raster with a wavelength list in its header, as sensors deliver."""
    rasterio.shutil.copy(src, dst_img, driver="ENVI")
    header = dst_img.with_suffix(".hdr")
    with open(header, "a") as f:
        f.write(f"wavelength units = {units}\n")
        f.write("wavelength = {" + ", ".join(f"{w:g}" for w in wavelengths) + "}\n")
    return header


@pytest.fixture(scope="module")
def spectral(messy, tmp_path_factory):
    """An HSI GeoTIFF whose band descriptions carry wavelengths, and a model trained on it."""
    folder = tmp_path_factory.mktemp("spectral")
    with rasterio.open(messy.hsi) as ds:
        profile, data = ds.profile, ds.read()
    hsi = folder / "hsi_nm.tif"
    with rasterio.open(hsi, "w", **profile) as ds:
        ds.write(data)
        ds.descriptions = tuple(f"{w:g} nm" for w in WAVELENGTHS)
    path = folder / "model.pt"
    invoke("fewshot", hsi, messy.lidar, "--labels", messy.labels, "--shots", 5, "--preset",
           "tiny", "--pretrain-samples", 200, "--no-fast", "-o", path, "-q")
    return hsi, path


def test_wavelengths_are_read_stored_and_compared_at_classify_time(messy, spectral, tmp_path):
    hsi, model = spectral
    info = json.loads(invoke("info", model, "--json").output)
    assert info["wavelengths_nm"] == WAVELENGTHS
    # the same bands in micrometres from an ENVI header: accepted, the same map
    same = _envi_copy(hsi, tmp_path / "same.img", [w / 1000 for w in WAVELENGTHS],
                      "Micrometers")
    invoke("classify", same, messy.lidar, "-o", tmp_path / "same.tif", "--model", model, "-q")
    invoke("classify", hsi, messy.lidar, "-o", tmp_path / "ref.tif", "--model", model, "-q")
    assert np.array_equal(_read(tmp_path / "same.tif"), _read(tmp_path / "ref.tif"))
    # another band subset of the same count: refused, naming the wavelengths
    shifted = _envi_copy(hsi, tmp_path / "other.img", [w + 50 for w in WAVELENGTHS],
                         "Nanometers")
    r = invoke("classify", shifted, messy.lidar, "-o", tmp_path / "other.tif", "--model",
               model, code=ModelError.exit_code)
    line = " ".join(r.output.split())
    assert "400-510 nm" in line and "450-560 nm" in line and "band 1 is at 450 nm" in line
    assert not (tmp_path / "other.tif").exists()


def test_band_names_that_differ_without_wavelengths_only_warn(messy, model, reference_map,
                                                              tmp_path, caplog):
    # the module's model was trained on band_1..band_12 (no wavelengths); an ENVI scene with
    # wavelengths has the same count: mapped, with a warning that names the difference
    header = _envi_copy(messy.hsi, tmp_path / "hsi.img", WAVELENGTHS, "Nanometers")
    caplog.set_level("WARNING", logger="diffclip")
    r = invoke("classify", header, messy.lidar, "-o", tmp_path / "m.tif", "--model", model)
    text = " ".join((r.output + caplog.text).split())
    assert "wavelengths are unknown" in text and "400-510 nm" in text
    assert np.array_equal(_read(tmp_path / "m.tif"), reference_map)
    # no wavelengths on either side, other band names: a warning naming the first difference
    with rasterio.open(messy.hsi) as ds:
        profile, data = ds.profile, ds.read()
    renamed = tmp_path / "renamed.tif"
    with rasterio.open(renamed, "w", **profile) as ds:
        ds.write(data)
        ds.descriptions = tuple(f"channel {i}" for i in range(1, 13))
    caplog.clear()
    r = invoke("classify", renamed, messy.lidar, "-o", tmp_path / "n.tif", "--model", model)
    text = " ".join((r.output + caplog.text).split())
    assert "band names differ from the model's (12 of 12; band 1 is 'channel 1'" in text
    assert "wavelengths are unknown" not in text


@pytest.mark.parametrize("version", [1, 2])
def test_model_files_without_wavelengths_still_load(spectral, tmp_path, version):
    """Format 1 (no digest) and format 2 files written before wavelengths were stored."""
    _, model = spectral
    payload = torch.load(model, weights_only=True)
    meta = json.loads(payload["metadata"])
    assert meta["wavelengths"] == WAVELENGTHS
    del meta["wavelengths"]  # as written before diffclip stored them
    payload["metadata"] = json.dumps(meta)
    if version == 1:  # before model files carried a digest
        payload["format_version"] = 1
        del payload["digest"]
    else:  # with the digest of that metadata, as such a diffclip wrote it
        payload["digest"] = _digest(payload["metadata"], payload["state_dict"],
                                    payload["extras"])
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    bundle = load_model(old)
    assert bundle.wavelengths is None
    bundle.check_inputs(12, 1, wavelengths=WAVELENGTHS, band_names=bundle.band_names["hsi"])


def test_the_model_digest_covers_the_wavelengths(spectral, tmp_path):
    """Wavelengths changed after the file was written (digest kept) make it a damaged file."""
    _, model = spectral
    payload = torch.load(model, weights_only=True)
    meta = json.loads(payload["metadata"])
    meta["wavelengths"] = [w + 50 for w in meta["wavelengths"]]
    payload["metadata"] = json.dumps(meta)
    edited = tmp_path / "edited.pt"
    torch.save(payload, edited)
    with pytest.raises(ModelError, match="damaged: its metadata do not match the checksum"):
        load_model(edited)


@pytest.mark.parametrize(("tags", "descriptions", "expected"), [
    ({"IMAGERY": {"CENTRAL_WAVELENGTH_UM": "0.45"}}, None, 450.0),
    ({"": {"wavelength": "1.2", "wavelength_units": "micrometers"}}, None, 1200.0),
    ({"": {"wavelength": "700"}}, None, 700.0),
    ({}, "Band 3 (0.55 Micrometers)", 550.0),
    ({}, "reflectance at 865.5nm", 865.5),
    ({}, "band_1", None),
])
def test_wavelength_sources(tmp_path, tags, descriptions, expected):
    path = write_tif(tmp_path / "one.tif", np.ones((1, 2, 2), np.float32),
                     descriptions=[descriptions])
    with rasterio.open(path, "r+") as ds:
        for ns, items in tags.items():
            ds.update_tags(1, ns=ns or None, **items)
    with rasterio.open(path) as ds:
        found = band_wavelengths(ds)
    assert found == (None if expected is None else [expected])


# ------------------------------------------------- creation options and output extensions
@pytest.mark.parametrize(("options", "words"), [
    (["BOGUS=1"], "does not support creation option BOGUS"),
    (["COMPRESS=FOO"], "'FOO' is an unexpected value for COMPRESS"),
    (["BLOCKXSIZE=abc"], "'abc' is an unexpected value for BLOCKXSIZE"),
])
@pytest.mark.parametrize("cog", [False, True])
def test_unknown_creation_options_are_errors_that_name_valid_ones(messy, model, tmp_path,
                                                                   options, words, cog):
    args = [a for o in options for a in ("--co", o)]
    r = invoke("classify", messy.hsi, messy.lidar, "-o", tmp_path / "m.tif", "--model", model,
               *args, *(["--cog"] if cog else []), code=2)
    text = " ".join(r.output.replace("│", " ").split())
    assert words in text and "COMPRESS, PREDICTOR" in text
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["map.img", "map.jp2", "map.vrt"])
def test_an_output_named_like_another_format_is_refused(messy, model, tmp_path, name):
    r = invoke("classify", messy.hsi, messy.lidar, "-o", tmp_path / name, "--model", model,
               code=OutputError.exit_code)
    line = " ".join(r.output.split())
    assert f"ends in {name[3:]}" in line and ".tif, .tiff" in line
    invoke("classify", messy.hsi, messy.lidar, "-o", tmp_path / "m.tif", "--confidence",
           tmp_path / name, "--model", model, code=OutputError.exit_code)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ a fast command line
def test_the_cli_imports_no_heavy_library_until_a_command_runs():
    code = ("import sys\n"
            "from diffclip_cli.cli import app, main\n"
            "import typer.main\n"
            "typer.main.get_command(app)\n"  # builds every command and its options
            "heavy = [m for m in ('torch', 'rasterio', 'geopandas', 'matplotlib', 'pandas')\n"
            "         if m in sys.modules]\n"
            "print(','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
    # and --version / --help really run without them
    for args in (["--version"], ["--help"], ["classify", "--help"]):
        code = ("import sys\nfrom diffclip_cli.cli import main\n"
                f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
                "assert 'torch' not in sys.modules and 'rasterio' not in sys.modules\n")
        subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)


# ------------------------------------------------------------------ the classical baselines
def test_every_fewshot_report_scores_the_per_pixel_and_spatial_baselines(model):
    report = json.loads(model.with_name("model.report.json").read_text())
    pixel, spatial = report["baselines"]
    assert pixel["name"] == "per-pixel baseline" and "random forest" in pixel["method"]
    assert spatial["name"] == "spectral-spatial baseline" and "SVM" in spatial["method"]
    assert set(spatial["scales"]) <= {1.0, 2.0, 4.0, 8.0, 16.0}
    assert spatial["cv"] in ("leave-one-out", "10-fold")
    markdown = model.with_name("model.report.md").read_text()
    assert "## Baselines" in markdown
    for base in (pixel, spatial):
        # the same held-out pixels as the model's report
        assert base["n_pixels"] == report["n_pixels"]
        assert np.asarray(base["confusion_matrix"]).sum() == report["n_pixels"]
        assert base["better_than_model"] == (
            base["overall_accuracy"] > report["overall_accuracy"])
        assert base["verdict"] in markdown


def test_fewshot_says_plainly_when_the_baseline_is_better(messy, tmp_path):
    # one epoch of each stage: DiffCLIP barely trained; the scene's spectra separate the
    # classes, so a random forest on pixel values wins
    r = invoke("fewshot", messy.hsi, messy.lidar, "--labels", messy.labels, "--shots", 5,
               "--preset", "tiny", "--pretrain-samples", 50, "--pretrain-epochs", 1,
               "--finetune-epochs", 1, "--no-fast", "-o", tmp_path / "weak.pt", "-q")
    report = json.loads((tmp_path / "weak.report.json").read_text())
    assert report["baselines"][0]["better_than_model"] is True
    assert "The per-pixel baseline is better than DiffCLIP" in " ".join(r.output.split())
    assert "better than DiffCLIP" in (tmp_path / "weak.report.md").read_text()


def test_baseline_verdict_names_the_better_one():
    classes = ClassTable([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    truth = np.array([1, 1, 2, 2])
    good = AccuracyReport.from_labels(truth, truth, classes)
    poor = AccuracyReport.from_labels(truth, np.array([1, 2, 2, 1]), classes)
    assert baseline_verdict(good, poor).startswith("DiffCLIP is better than the per-pixel")
    assert baseline_verdict(poor, good).startswith("The per-pixel baseline is better")
    assert "as accurate as" in baseline_verdict(good, good)
    assert baseline_verdict(poor, good, name="spectral-spatial baseline").startswith(
        "The spectral-spatial baseline is better")


# ----------------------------------------------------------------------------- report polish
def test_report_png_title_fits_above_the_heatmap_and_colour_bar():
    classes = ClassTable([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    report = AccuracyReport.from_labels(np.array([1, 1, 2, 2]), np.array([1, 2, 2, 2]), classes)
    title = ("Held-out accuracy: 123456 labelled pixels not used for training "
             "(5 shots per class, seed 0)")
    fig = confusion_figure(report, title=title,
                           baselines=[Baseline("per-pixel baseline", "a forest", report)])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig._suptitle.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
    for ax in fig.axes:  # the heatmap and the colour bar
        assert box.y0 >= ax.get_window_extent(renderer).y1
    text = fig._suptitle.get_text()
    assert "seed 0)" in text and "OA 75.00 %" in text and "baseline" in text


def test_reports_have_a_csv_confusion_matrix(model, named_map_and_id_labels, tmp_path):
    map_path, labels, classes_csv = named_map_and_id_labels
    invoke("evaluate", map_path, "--labels", labels, "--classes", classes_csv, "-o",
           tmp_path / "e.json", "-q")
    for stem in (tmp_path / "e", model.with_name("model.report")):
        report = json.loads(stem.with_name(stem.name + ".json").read_text())
        with open(stem.with_name(stem.name + ".csv"), newline="") as f:
            rows = list(csv.reader(f))
        ids = [str(i) for i in report["class_ids"]]
        assert rows[0] == ["reference_id", "reference_name", *ids, "unclassified"]
        assert [r[:2] for r in rows[1:]] == [[i, n] for i, n in zip(
            ids, report["class_names"], strict=True)]
        assert [[int(v) for v in r[2:-1]] for r in rows[1:]] == report["confusion_matrix"]
        assert [int(r[-1]) for r in rows[1:]] == report["unclassified"]


def test_quicklook_has_coordinates_crs_and_a_scale_bar(messy, model, tmp_path):
    out = tmp_path / "map.tif"
    invoke("classify", messy.hsi, messy.lidar, "-o", out, "--model", model, "--quicklook",
           tmp_path / "map.png", "-q")
    assert (tmp_path / "map.png").stat().st_size > 1000
    fig = quicklook_figure(out, None, max_size=560)
    fig.canvas.draw()
    with rasterio.open(out) as ds:
        bounds = ds.bounds
    (ax,) = fig.axes
    xs = [float(t.get_text().replace("\u2212", "-")) for t in ax.get_xticklabels()]
    ys = [float(t.get_text().replace("\u2212", "-")) for t in ax.get_yticklabels()]
    assert len(xs) >= 2 and all(bounds.left < x < bounds.right for x in xs)
    assert len(ys) >= 2 and all(bounds.bottom < y < bounds.top for y in ys)
    assert ax.get_xlim() == (bounds.left, bounds.right)
    texts = [t.get_text() for t in fig.texts]
    assert "EPSG:32615" in texts
    # the scale bar: 56 px x 2 m = 112 m wide map, a quarter of it is 28 m -> a 20 m bar
    assert "20 m" in texts


def test_scale_bar_lengths_are_round():
    assert [nice_length(v) for v in (0.7, 1, 3, 7.5, 28, 140, 2600)] == [
        0.5, 1, 2, 5, 20, 100, 2000]


def test_classes_without_colours_get_the_default_palette():
    table = ClassTable([ClassInfo(4, "grass"), ClassInfo(7, "water", color=(0, 0, 255)),
                        {"id": 9, "name": "road"}])
    assert [c.color for c in table] == [DEFAULT_PALETTE[0], (0, 0, 255), DEFAULT_PALETTE[2]]
    assert class_colormap(table)[4][:3] == DEFAULT_PALETTE[0]
