"""End to end through the command line: fewshot -> classify -> evaluate -> batch -> info."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import rasterio
from scenes import UNCOVERED_COLUMNS
from typer.testing import CliRunner

from diffclip_cli.cli import app
from diffclip_cli.cli.app import main
from diffclip_cli.errors import BatchError, InputError, ModelError, OutputError

runner = CliRunner()


def invoke(*args: object, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="module")
def trained(messy, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    model = folder / "model.pt"
    result = invoke("fewshot", messy.hsi, messy.lidar, "--labels", messy.labels, "--shots", 5,
                    "--preset", "tiny", "--pretrain-samples", 600, "--fast-steps", 300, "-o",
                    model, "-q")
    return folder, model, result


def test_fewshot_writes_model_and_held_out_report(trained):
    folder, model, _ = trained
    assert model.is_file()
    report = json.loads((folder / "model.report.json").read_text())
    assert {"overall_accuracy", "average_accuracy", "kappa", "confusion_matrix",
            "class_names"} <= set(report)
    assert report["overall_accuracy"] >= 0.85
    # string class names from the vector file, sorted into ids 1..K
    assert report["class_names"] == sorted(report["class_names"])
    assert (folder / "model.report.md").is_file() and (folder / "model.report.png").is_file()


def test_classify_map_is_on_the_hsi_grid_with_nodata_and_colours(messy, trained, tmp_path):
    _, model, _ = trained
    out = tmp_path / "map.tif"
    conf = tmp_path / "conf.tif"
    invoke("classify", messy.hsi, messy.lidar, "-o", out, "--model", model, "--confidence",
           conf, "--quicklook", tmp_path / "map.png", "--tile-size", 20, "-q")
    with rasterio.open(messy.hsi) as hsi, rasterio.open(out) as m:
        assert m.crs == hsi.crs and m.transform == hsi.transform
        assert (m.height, m.width) == (hsi.height, hsi.width)
        assert m.dtypes[0] == "uint8" and m.nodata == 0
        colours = m.colormap(1)
        data = m.read(1)
    names = json.loads((tmp_path / "map.tif.json").read_text())["classes"]
    for record in names:
        assert colours[record["id"]][:3] == tuple(record["color"])
    w = data.shape[1]
    # NaN pixels and pixels LiDAR does not reach are nodata; the rest is classified
    for r, c in ((5, 7), (20, 30)):
        assert data[r, c] == 0
    assert (data[:, w - UNCOVERED_COLUMNS + 1:] == 0).all()
    inner = data[:, : w - UNCOVERED_COLUMNS - 2]
    assert (inner > 0).sum() == inner.size - 2  # only the two NaN pixels inside
    # neighbours of a NaN pixel are still classified
    assert data[5, 8] > 0 and data[4, 7] > 0
    with rasterio.open(conf) as c:
        cdata = c.read(1)
    assert np.all(cdata[data == 0] == -1)
    assert np.all((cdata[data > 0] > 0) & (cdata[data > 0] <= 1))
    assert (tmp_path / "map.png").stat().st_size > 1000


def test_evaluate_matches_by_name_and_counts(messy, trained, tmp_path):
    _, model, _ = trained
    out = tmp_path / "map.tif"
    invoke("classify", messy.hsi, messy.lidar, "-o", out, "--model", model, "-q")
    report_path = tmp_path / "eval.json"
    invoke("evaluate", out, "--labels", messy.labels, "-o", report_path, "-q")
    report = json.loads(report_path.read_text())
    cm = np.asarray(report["confusion_matrix"])
    # every label point inside the raster is scored (rows = reference classes)
    assert cm.sum() + report.get("n_unclassified", 0) == report["n_pixels"]
    assert report["n_pixels"] == len(range(0, 48, 2)) * len(range(0, 56, 2))
    assert report["overall_accuracy"] >= 0.8
    assert (tmp_path / "eval.md").is_file() and (tmp_path / "eval.png").is_file()


def test_refuses_to_overwrite_and_leaves_file_untouched(messy, trained, tmp_path):
    _, model, _ = trained
    out = tmp_path / "map.tif"
    out.write_bytes(b"precious")
    result = invoke("classify", messy.hsi, messy.lidar, "-o", out, "--model", model,
                    code=OutputError.exit_code)
    assert "--overwrite" in result.output
    assert out.read_bytes() == b"precious"
    invoke("classify", messy.hsi, messy.lidar, "-o", out, "--model", model, "--overwrite",
           "-q")
    with rasterio.open(out) as m:
        assert m.count == 1


def test_cog_and_creation_options(messy, trained, tmp_path):
    _, model, _ = trained
    out = tmp_path / "map_cog.tif"
    invoke("classify", messy.hsi, messy.lidar, "-o", out, "--model", model, "--cog", "--co",
           "COMPRESS=ZSTD", "-q")
    with rasterio.open(out) as m:
        assert m.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert m.compression.name.upper() == "ZSTD"
        assert m.colormap(1)


def test_exit_codes_for_common_mistakes(messy, trained, tmp_path):
    _, model, _ = trained
    r = invoke("classify", tmp_path / "nope.tif", "-o", tmp_path / "m.tif", "--model", model,
               code=InputError.exit_code)
    assert "nope.tif" in r.output and "Traceback" not in r.output
    r = invoke("classify", messy.hsi, "-o", tmp_path / "m.tif", "--model", model,
               code=ModelError.exit_code)
    assert "LiDAR" in r.output
    r = invoke("classify", messy.hsi, messy.lidar, "-o", tmp_path / "m.tif", "--model",
               tmp_path / "missing.pt", code=ModelError.exit_code)
    assert "missing.pt" in r.output
    invoke("classify", messy.hsi, "--bogus-option", code=2)
    assert not (tmp_path / "m.tif").exists()


def test_batch_runs_good_scenes_despite_a_broken_one(messy, trained, tmp_path):
    _, model, _ = trained
    broken = tmp_path / "broken.tif"
    broken.write_text("not a raster")
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(
        "name,hsi,lidar,output,labels\n"
        f"good,{messy.hsi},{messy.lidar},good_map.tif,{messy.labels}\n"
        f"bad,{broken},,bad_map.tif,\n"
        f"good2,{messy.hsi},{messy.lidar},good2_map.tif,\n")
    result = invoke("batch", manifest, "--model", model, code=BatchError.exit_code)
    assert "1 of 3 scenes failed" in " ".join(result.output.split())
    assert (tmp_path / "good_map.tif").is_file() and (tmp_path / "good2_map.tif").is_file()
    assert not (tmp_path / "bad_map.tif").exists()
    assert (tmp_path / "good_map.report.json").is_file()
    assert "failed" in (tmp_path / "bad_map.tif.log").read_text()
    assert os.path.getsize(tmp_path / "good_map.tif.log") > 0


def test_batch_yaml_manifest(messy, trained, tmp_path):
    _, model, _ = trained
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(f"- hsi: {messy.hsi}\n  lidar: [{messy.lidar}]\n  output: a.tif\n")
    invoke("batch", manifest, "--model", model, "-q")
    assert (tmp_path / "a.tif").is_file()


def test_fast_path_is_built_by_fewshot_and_agrees_with_the_faithful_map(messy, trained,
                                                                        tmp_path):
    _, model, _ = trained
    invoke("classify", messy.hsi, messy.lidar, "-o", tmp_path / "faithful.tif", "--model",
           model, "-q")
    invoke("classify", messy.hsi, messy.lidar, "-o", tmp_path / "fast.tif", "--model", model,
           "--fast", "-q")
    with rasterio.open(tmp_path / "faithful.tif") as a, rasterio.open(tmp_path / "fast.tif") as b:
        faithful, fast = a.read(1), b.read(1)
        assert b.tags()["DIFFCLIP_VERSION"] and a.profile["transform"] == b.profile["transform"]
    # same nodata pixels; labels agree on most pixels even after a short distillation
    np.testing.assert_array_equal(faithful == 0, fast == 0)
    valid = faithful > 0
    assert (faithful[valid] == fast[valid]).mean() >= 0.85
    sidecar = json.loads((tmp_path / "fast.tif.json").read_text())
    assert sidecar["metadata"]["engine"] == "fast"


def test_info_describes_the_model(trained):
    _, model, _ = trained
    result = invoke("info", model, "--json")
    data = json.loads(result.output)
    assert data["kind"] == "classifier"
    assert data["hsi_bands"] == 12 and data["lidar_bands"] == 1
    assert data["band_names"]["lidar"] == ["DSM"]
    assert all(c["prompt"] and c["name"].lower() in c["prompt"] for c in data["classes"])
    assert data["provenance"]["shots"] == 5
    assert data["fast_path"] is True
    invoke("info", model)







def test_a_reader_that_stops_early_ends_the_command_quietly(trained, monkeypatch, capsys):
    """``diffclip info MODEL | head -3``: the pipe closes while the command writes, which
    ends as click and GDAL's tools do (quietly, exit 1), not with an internal error."""
    def hang_up(*args, **kwargs):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr("diffclip_cli.cli.commands.info.console.print", hang_up)
    with pytest.raises(SystemExit) as stop:
        main(["info", str(trained[1])])
    assert stop.value.code == 1
    assert capsys.readouterr().err == ""
