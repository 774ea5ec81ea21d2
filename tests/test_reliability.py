"""Never destroy an input, never trust a damaged model, never leave a corrupt file.

Every case runs through the real commands (typer's CliRunner), on the tiny scene and the
untrained models of ``tinyscene`` (the fixture ``tiny``; an untrained network is a valid model
file); only the resume cases train, for one epoch of the ``tiny`` preset.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterdata import write_tif
from tinyscene import (
    BANDS,
    TRANSFORM,
    error_line,
    invoke,
    no_temp_files,
    pixel_point,
)

from diffclip_cli.errors import InputError, LabelError, ModelError, OutputError
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.archive import _digest, load_model, save_model
from diffclip_cli.model.config import load_preset
from diffclip_cli.workflows.pretrain import pretrain_scene

USAGE = 2
DEV_FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def scene(tiny, tmp_path):
    """Private copies of the inputs (the tests try to destroy them)."""
    hsi = shutil.copy(tiny.hsi, tmp_path / "hsi.tif")
    lidar = shutil.copy(tiny.lidar, tmp_path / "lidar.tif")
    model = shutil.copy(tiny.model, tmp_path / "m.pt")
    labels = tmp_path / "labels.gpkg"
    for part in tiny.folder.glob("labels.gpkg*"):
        shutil.copy(part, tmp_path / part.name)
    return {"hsi": Path(hsi), "lidar": Path(lidar), "model": Path(model), "labels": labels,
            "pretrained": tiny.pretrained}


def _digests(*paths: Path) -> list[bytes]:
    return [p.read_bytes() for p in paths]


# ----------------------------------------------------------- 1. outputs never replace inputs
@pytest.mark.parametrize(("target", "extra"), [
    ("hsi", []),
    ("lidar", []),
    ("model", []),
    ("hsi.aux.xml", []),           # a side file GDAL reads with the HSI
    ("lidar.json", []),
    ("quicklook=map", []),         # the quicklook is the map itself
    ("confidence=map.json", []),   # the confidence raster is the map's sidecar
    ("quicklook=confidence", []),
])
def test_classify_refuses_an_output_that_is_an_input_or_another_output(scene, tmp_path,
                                                                        target, extra):
    hsi, lidar, model = scene["hsi"], scene["lidar"], scene["model"]
    names = {"hsi": hsi, "lidar": lidar, "model": model,
             "hsi.aux.xml": Path(f"{hsi}.aux.xml"), "lidar.json": Path(f"{lidar}.json")}
    out, more = tmp_path / "map.tif", []
    if "=" in target:
        option, what = target.split("=")
        paths = {"map": out, "map.json": Path(f"{out}.json"),
                 "confidence": tmp_path / "conf.tif"}
        if what == "confidence":
            more = ["--confidence", paths["confidence"]]
        more += [f"--{option}", paths[what]]
    else:
        out = names[target]
    before = _digests(hsi, lidar, model)
    line = error_line(invoke("classify", hsi, lidar, "--model", model, "-o", out, *more,
                             "--overwrite", *extra, code=OutputError.exit_code))
    assert "same file" in line or "input" in line or "side file" in line, line
    assert _digests(hsi, lidar, model) == before
    assert not (tmp_path / "map.tif").exists() and no_temp_files(tmp_path)


def test_an_output_reached_through_a_link_is_still_an_input(scene, tmp_path):
    hsi = scene["hsi"]
    hard = tmp_path / "hard.tif"
    os.link(hsi, hard)
    soft = tmp_path / "soft.tif"
    soft.symlink_to(hsi)
    before = hsi.read_bytes()
    for out in (hard, soft, tmp_path / "sub" / ".." / "hsi.tif"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        line = error_line(invoke("classify", hsi, scene["lidar"], "--model", scene["model"],
                                 "-o", out, "--overwrite", code=OutputError.exit_code))
        assert "is also an input" in line and "the HSI" in line
    assert hsi.read_bytes() == before


def test_fewshot_refuses_to_write_its_model_over_the_lidar_before_training(scene, monkeypatch):
    monkeypatch.setattr("diffclip_cli.workflows.fewshot.fewshot_scene",
                        lambda *a, **k: pytest.fail("training started"))
    before = scene["lidar"].read_bytes()
    line = error_line(invoke("fewshot", scene["hsi"], scene["lidar"], "--labels",
                             scene["labels"], "--shots", 2, "-o", scene["lidar"], "--overwrite",
                             code=OutputError.exit_code))
    assert "is also an input: a LiDAR raster" in line and "even with --overwrite" in line
    assert scene["lidar"].read_bytes() == before


def test_fewshot_refuses_its_report_over_the_labels(scene, tmp_path, monkeypatch):
    """-o labels.pt would write labels.report.json...; -o x.pt over the pretrained model."""
    monkeypatch.setattr("diffclip_cli.workflows.fewshot.fewshot_scene",
                        lambda *a, **k: pytest.fail("training started"))
    pretrained = shutil.copy(scene["pretrained"], tmp_path / "p.pt")
    line = error_line(invoke("fewshot", scene["hsi"], scene["lidar"], "--labels",
                             scene["labels"], "--shots", 2, "--pretrained", pretrained,
                             "-o", pretrained, "--overwrite", code=OutputError.exit_code))
    assert "the pretrained model" in line


def test_evaluate_refuses_a_report_over_the_maps_sidecar(tiny, tmp_path):
    the_map = tmp_path / "map.tif"
    invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model, "-o", the_map, "-q",
           code=0)
    sidecar = Path(f"{the_map}.json")
    before = sidecar.read_bytes()
    line = error_line(invoke("evaluate", the_map, "--labels", tiny.labels, "-o", the_map,
                             "--overwrite", code=OutputError.exit_code))
    assert "side file of an input" in line and str(sidecar) in line
    assert sidecar.read_bytes() == before


def test_pretrain_refuses_to_write_over_its_input(scene):
    before = scene["hsi"].read_bytes()
    line = error_line(invoke("pretrain", scene["hsi"], "-o", scene["hsi"], "--overwrite",
                             "--preset", "tiny", code=OutputError.exit_code))
    assert "is also an input: the HSI" in line
    assert scene["hsi"].read_bytes() == before


def test_pretrain_with_the_default_budget_refuses_its_input_before_calibrating(scene,
                                                                              monkeypatch):
    """Without --preset a CPU run plans (times real steps) first: the refusal comes before."""
    monkeypatch.setattr("diffclip_cli.workflows.pretrain.plan_training",
                        lambda *a, **k: pytest.fail("calibration started"))
    monkeypatch.setattr("diffclip_cli.workflows.pretrain.run_stage1",
                        lambda *a, **k: pytest.fail("training started"))
    before = scene["hsi"].read_bytes()
    line = error_line(invoke("pretrain", scene["hsi"], "-o", scene["hsi"], "--overwrite",
                             "--time-budget", "1m", code=OutputError.exit_code))
    assert "is also an input: the HSI" in line
    assert scene["hsi"].read_bytes() == before


def test_batch_refuses_a_scene_writing_another_scenes_input_before_any_work(scene, tmp_path):
    manifest = tmp_path / "scenes.csv"
    manifest.write_text("name,hsi,lidar,output\n"
                        f"a,{scene['hsi']},{scene['lidar']},{tmp_path / 'a.tif'}\n"
                        f"b,{scene['hsi']},{scene['lidar']},{scene['lidar']}\n")
    before = scene["lidar"].read_bytes()
    line = error_line(invoke("batch", manifest, "--model", scene["model"], "--overwrite",
                             code=OutputError.exit_code))
    assert "scene 'b'" in line and "input" in line
    assert scene["lidar"].read_bytes() == before and not (tmp_path / "a.tif").exists()


# ----------------------------------------------------------------- 2. damaged model files
def _flip_weight_bytes(model: Path, out: Path) -> None:
    """Copy ``model`` with a few bytes flipped inside its largest weight record."""
    with zipfile.ZipFile(model) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)
    data = bytearray(model.read_bytes())
    name_len, extra_len = np.frombuffer(bytes(data[info.header_offset + 26:
                                                   info.header_offset + 30]), "<u2")
    start = info.header_offset + 30 + int(name_len) + int(extra_len)  # the record's bytes
    for k in range(8):
        data[start + 16 + k] ^= 0x5A
    out.write_bytes(bytes(data))


@pytest.mark.parametrize("command", ["classify", "info"])
def test_flipped_bytes_in_the_weights_are_refused(tiny, tmp_path, command):
    bad = tmp_path / "flipped.pt"
    _flip_weight_bytes(tiny.model, bad)
    args = (["classify", tiny.hsi, tiny.lidar, "--model", bad, "-o", tmp_path / "m.tif"]
            if command == "classify" else ["info", bad])
    line = error_line(invoke(*args, code=ModelError.exit_code))
    assert str(bad) in line and "damaged" in line and "checksum" in line
    assert not (tmp_path / "m.tif").exists()


def _resave_payload(model: Path, out: Path, change) -> None:
    """Rewrite a model file's payload (a valid archive) after ``change(payload)``."""
    payload = torch.load(model, weights_only=True)
    change(payload)
    torch.save(payload, out)


def test_weights_that_do_not_match_the_stored_digest_are_refused(tiny, tmp_path):
    """The archive is intact (its CRCs are right), but a weight differs from the digest."""
    bad = tmp_path / "tampered.pt"

    def change(payload):
        key = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
        payload["state_dict"][key] = payload["state_dict"][key] + 1e-3

    _resave_payload(tiny.model, bad, change)
    line = error_line(invoke("classify", tiny.hsi, tiny.lidar, "--model", bad, "-o",
                             tmp_path / "m.tif", code=ModelError.exit_code))
    assert "weights do not match the checksum stored in it" in line


def test_a_format_2_file_without_its_digest_is_refused(tiny, tmp_path):
    bad = tmp_path / "nodigest.pt"
    _resave_payload(tiny.model, bad, lambda p: p.pop("digest"))
    line = error_line(invoke("info", bad, code=ModelError.exit_code))
    assert "integrity digest is missing" in line


def test_a_format_1_file_without_a_digest_still_loads(tiny, tmp_path):
    old = tmp_path / "old.pt"

    def change(payload):
        payload.pop("digest")
        payload["format_version"] = 1

    _resave_payload(tiny.model, old, change)
    invoke("info", old, code=0)


def _damaged_bundle(tiny, tmp_path, change) -> Path:
    bundle = load_model(tiny.model)
    change(bundle)
    return save_model(bundle, tmp_path / "damaged.pt")  # a valid digest of damaged content


def _damaged_metadata(tiny, tmp_path, change) -> Path:
    """The model file after ``change(metadata, weights)`` of its stored form, saved with a
    valid digest of the damaged content (so the checks after the digest's see it)."""
    payload = torch.load(tiny.model, weights_only=True)
    metadata = json.loads(payload["metadata"])
    change(metadata, payload["state_dict"])
    payload["metadata"] = json.dumps(metadata, sort_keys=True)
    payload["digest"] = _digest(payload["metadata"], payload["state_dict"], payload["extras"])
    torch.save(payload, tmp_path / "damaged.pt")
    return tmp_path / "damaged.pt"


@pytest.mark.parametrize(("change", "words"), [
    (lambda m, w: m["stats"]["hsi"].update(center=m["stats"]["hsi"]["center"][:3],
                                           scale=m["stats"]["hsi"]["scale"][:3]),
     "HSI statistics cover 3 bands, not the model's 8"),
    (lambda m, w: m["stats"].pop("hsi"), "normalisation statistics are unreadable"),
    (lambda m, w: m["stats"]["hsi"].update(scale=[0.0] * 8), "scale finite and positive"),
    (lambda m, w: m["prompts"].pop(), "4 classes but 3 prompts"),
    (lambda m, w: m["classes"].append({"id": 9, "name": "extra"}), "5 classes but 4 prompts"),
    (lambda m, w: w.__setitem__("prompt_ids", w["prompt_ids"] + 10_000),
     "prompt token ids fall outside its vocabulary"),
    (lambda m, w: w.__setitem__("prompt_ids", w["prompt_ids"][:2]),
     "prompt token ids have shape"),
    (lambda m, w: m["band_names"]["hsi"].pop(), "band names do not match"),
    (lambda m, w: m["model_config"].update(window=4), "model configuration is invalid"),
    (lambda m, w: m["pretrain_config"].update(crop_sizes=[7]),
     "configurations do not fit together"),
])
def test_damaged_metadata_is_a_model_error(tiny, tmp_path, change, words):
    bad = _damaged_metadata(tiny, tmp_path, change)
    for args in (["info", bad], ["classify", tiny.hsi, tiny.lidar, "--model", bad, "-o",
                                 tmp_path / "m.tif"]):
        line = error_line(invoke(*args, code=ModelError.exit_code))
        assert "damaged" in line and words in line, line


def test_weights_that_do_not_fit_the_configuration_name_the_model(tiny, tmp_path):
    """Consistent metadata, digest right, but a weight of the wrong shape."""
    def change(bundle):
        key = next(k for k, v in bundle.state_dict.items()
                   if v.ndim == 2 and v.is_floating_point())
        bundle.state_dict[key] = bundle.state_dict[key][:, :1].clone()

    bad = _damaged_bundle(tiny, tmp_path, change)
    line = error_line(invoke("classify", tiny.hsi, tiny.lidar, "--model", bad, "-o",
                             tmp_path / "m.tif", code=ModelError.exit_code))
    assert line.startswith(f"Error: {bad}: ") and "do not fit the stored configuration" in line
    assert not (tmp_path / "m.tif").exists() and no_temp_files(tmp_path)


def test_unknown_configuration_field_says_a_newer_diffclip_made_it(tiny, tmp_path):
    bad = _damaged_metadata(tiny, tmp_path,
                            lambda m, w: m["model_config"].update(rotary_embedding=True))
    line = error_line(invoke("info", bad, code=ModelError.exit_code))
    assert "rotary_embedding" in line and "a newer diffclip made it" in line
    assert "upgrade diffclip" in line


def test_fast_without_a_fast_path_names_the_model(tiny, tmp_path):
    line = error_line(invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model,
                             "-o", tmp_path / "m.tif", "--fast", code=ModelError.exit_code))
    assert line.startswith(f"Error: {tiny.model}: ") and "no fast path" in line


# ------------------------------------------------------- 3. complete outputs, failed writes
@needs_dev_full
def test_a_write_failing_at_close_leaves_no_output(tiny, tmp_path, monkeypatch):
    """GDAL fails to write the confidence raster (the only float32 output) when it closes it,
    as on a full disk (the symbolic link to /dev/full): rasterio does not raise there.
    """
    from diffclip_cli.io import maps

    real_open = maps.rasterio.open
    opened: list[str] = []

    def fake_open(path, mode="r", **kwargs):
        if mode == "w":
            opened.append(str(path))
            if kwargs.get("dtype") == "float32":
                os.unlink(path)
                os.symlink(DEV_FULL, path)
        return real_open(path, mode, **kwargs)

    monkeypatch.setattr(maps.rasterio, "open", fake_open)
    out, conf = tmp_path / "map.tif", tmp_path / "conf.tif"
    line = error_line(invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model,
                             "-o", out, "--confidence", conf, code=OutputError.exit_code))
    assert "could not be written" in line or "disk is full" in line
    assert str(conf) in line and "GDAL" in line
    assert len(opened) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@needs_dev_full
def test_the_map_failing_last_takes_the_finished_outputs_with_it(tiny, tmp_path,
                                                                  monkeypatch):
    """The map is finished after the confidence raster: before, conf.tif was left behind."""
    from diffclip_cli.io import maps

    real_open = maps.rasterio.open

    def fake_open(path, mode="r", **kwargs):
        if mode == "w" and kwargs.get("dtype") == "uint8":
            os.unlink(path)
            os.symlink(DEV_FULL, path)
        return real_open(path, mode, **kwargs)

    monkeypatch.setattr(maps.rasterio, "open", fake_open)
    out, conf = tmp_path / "map.tif", tmp_path / "conf.tif"
    conf.write_bytes(b"an older confidence raster")
    error_line(invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model, "-o", out,
                      "--confidence", conf, "--overwrite", code=OutputError.exit_code))
    assert conf.read_bytes() == b"an older confidence raster"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf.tif"]


def test_a_failing_tile_write_names_its_own_output(tiny, tmp_path, monkeypatch):
    """The map's write fails while the confidence raster is open too: the map is named."""
    from diffclip_cli.io import maps

    real_open = maps.rasterio.open

    class FailingWrites:
        def __init__(self, ds):
            self._ds = ds

        def __getattr__(self, name):
            return getattr(self._ds, name)

        def write(self, *args, **kwargs):
            raise rasterio.errors.RasterioIOError("Write error: No space left on device")

    def fake_open(path, mode="r", **kwargs):
        ds = real_open(path, mode, **kwargs)
        return FailingWrites(ds) if mode == "w" and kwargs.get("dtype") == "uint8" else ds

    monkeypatch.setattr(maps.rasterio, "open", fake_open)
    out = tmp_path / "map.tif"
    line = error_line(invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model,
                             "-o", out, "--confidence", tmp_path / "conf.tif",
                             "--probabilities", tmp_path / "p.tif", code=OutputError.exit_code))
    assert line.startswith(f"Error: {out}: the disk is full")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _tiny_disk(size: str, folder: Path, *command: object) -> tuple[int, str, list[str]]:
    """Run ``python -m diffclip_cli COMMAND`` with a real ``size`` tmpfs mounted on ``folder``.

    The tmpfs lives in a private mount namespace (``unshare -rm``, no root needed where user
    namespaces are allowed): returns the exit code, stderr and what the tmpfs held at the end.
    """
    script = ('mount -t tmpfs -o size="$1" tmpfs "$2" || exit 99; shift 2; "$@"; rc=$?; '
              'echo "LISTING:$(ls -A "$0")"; exit $rc')
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script, str(folder), size, str(folder),
                        sys.executable, "-m", "diffclip_cli", *map(str, command)],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    listing = r.stdout.rsplit("LISTING:", 1)[-1].split()
    return r.returncode, r.stderr, listing


@pytest.fixture(scope="module")
def tiny_disks():
    """Skip unless a private tmpfs can be mounted here."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare")
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            "mount -t tmpfs -o size=4k tmpfs /tmp"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot mount a private tmpfs here")


@pytest.mark.parametrize("size", ["4k", "8k", "24k"])  # map, sidecar, confidence: 3 pages
def test_a_really_full_disk_while_classifying_leaves_nothing(tiny, tmp_path, tiny_disks,
                                                             size):
    folder = tmp_path / "disk"
    folder.mkdir()
    code, err, listing = _tiny_disk(size, folder, "classify", tiny.hsi, tiny.lidar,
                                    "--model", tiny.model, "-o", folder / "map.tif",
                                    "--confidence", folder / "conf.tif",
                                    "--probabilities", folder / "p.tif", "--tile-size", 16,
                                    "-q")
    assert code == OutputError.exit_code, err
    assert "the disk is full, so it was not written" in err and "Traceback" not in err
    # one sentence: not libtiff's own "_tiffWriteProc: No space left on device." beside it
    assert err.strip().count("\n") == 0 and "_tiff" not in err, err
    assert listing == []


def test_a_really_full_disk_while_saving_a_model(tiny, tmp_path, tiny_disks):
    folder = tmp_path / "disk"
    folder.mkdir()
    code, err, listing = _tiny_disk("64k", folder, "fewshot", tiny.hsi, tiny.lidar,
                                    "--labels", tiny.labels, "--shots", 2, "--pretrained",
                                    tiny.pretrained, "--finetune-epochs", 1, "--no-fast",
                                    "-o", folder / "m.pt", "-q")
    assert code == OutputError.exit_code, err
    assert f"{folder / 'm.pt'}: the disk is full" in err and "Internal error" not in err
    assert listing == []


def test_a_failing_quicklook_leaves_no_map(tiny, tmp_path, monkeypatch):
    """The quicklook is written last; the disk fills up there: the map goes too."""
    from diffclip_cli.report import quicklook

    class FullDisk:
        def savefig(self, *args, **kwargs):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(quicklook, "_figure", lambda *a, **k: FullDisk())
    out = tmp_path / "map.tif"
    line = error_line(invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model,
                             "-o", out, "--quicklook", tmp_path / "q.png",
                             code=OutputError.exit_code))
    assert "disk is full" in line and "q.png" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@needs_dev_full
def test_torch_failing_to_save_a_model_is_an_output_error(tiny, tmp_path,
                                                          monkeypatch):
    """torch.save raises RuntimeError (not OSError) when the disk fills up."""
    real_save = torch.save

    def save_to_full_disk(obj, path, *args, **kwargs):
        os.unlink(path)
        os.symlink(DEV_FULL, path)
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr("diffclip_cli.model.archive.torch.save", save_to_full_disk)
    out = tmp_path / "m.pt"
    line = error_line(invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", tiny.labels,
                             "--shots", 2, "--pretrained", tiny.pretrained,
                             "--finetune-epochs", 1, "-o", out, "-q",
                             code=OutputError.exit_code))
    assert str(out) in line and "could not be written" in line and "torch" in line
    assert not out.exists() and no_temp_files(tmp_path)
    assert not list(tmp_path.glob("m.report.*"))


# ------------------------------------------------------------- 4. resume only the same data
@pytest.fixture
def checkpoint_of_another_scene(tiny, tmp_path):
    """A checkpoint made on another scene with the same band counts, and that scene."""
    other = write_tif(tmp_path / "other.tif", np.random.default_rng(5).random(
        tiny.hsi_data.shape).astype(np.float32) * 100, transform=TRANSFORM)
    out = tmp_path / "p.pt"
    preset = load_preset("tiny").with_overrides(**{"pretrain.epochs": 1})
    with Scene.open(other, [tiny.lidar]) as scene:
        pretrain_scene(scene, preset=preset, samples=32, seed=0,
                       checkpoint=Path(f"{out}.ckpt"))
    return other, out


def test_resume_refuses_a_checkpoint_of_another_scene(tiny, checkpoint_of_another_scene):
    other, out = checkpoint_of_another_scene
    line = error_line(invoke("pretrain", tiny.hsi, tiny.lidar, "-o", out, "--resume",
                             "--preset", "tiny", "--epochs", 1, "--samples", 32,
                             code=ModelError.exit_code))
    assert "made from other input files" in line and str(other) in line
    assert str(tiny.hsi) in line and "cannot resume" in line
    assert Path(f"{out}.ckpt").exists() and not out.exists()


def test_resume_refuses_a_checkpoint_whose_input_changed(tiny, checkpoint_of_another_scene):
    other, out = checkpoint_of_another_scene
    with rasterio.open(other, "r+") as ds:  # same path, same size, other values
        ds.write(ds.read()[:, :, ::-1].copy())
    line = error_line(invoke("pretrain", other, tiny.lidar, "-o", out, "--resume",
                             "--preset", "tiny", "--epochs", 1, "--samples", 32,
                             code=ModelError.exit_code))
    assert "made from other input data (the input files' content differs)" in line


def test_resume_with_other_settings_says_which(tiny, checkpoint_of_another_scene):
    other, out = checkpoint_of_another_scene
    line = error_line(invoke("pretrain", other, tiny.lidar, "-o", out, "--resume",
                             "--preset", "tiny", "--epochs", 1, "--samples", 32, "--seed", 4,
                             code=ModelError.exit_code))
    assert "made with another seed," in line


def test_resume_continues_its_own_checkpoint(tiny, checkpoint_of_another_scene):
    other, out = checkpoint_of_another_scene
    r = invoke("pretrain", other, tiny.lidar, "-o", out, "--resume", "--preset", "tiny",
               "--epochs", 1, "--samples", 32, code=0)
    assert "resuming pretraining" in r.output and out.exists()


def test_resume_refuses_a_damaged_checkpoint(tiny, checkpoint_of_another_scene):
    other, out = checkpoint_of_another_scene
    ckpt = Path(f"{out}.ckpt")
    _flip_weight_bytes(ckpt, ckpt)
    line = error_line(invoke("pretrain", other, tiny.lidar, "-o", out, "--resume",
                             "--preset", "tiny", "--epochs", 1, "--samples", 32,
                             code=ModelError.exit_code))
    assert str(ckpt) in line and "checkpoint is damaged" in line and "start over" in line


def test_a_checkpoint_that_cannot_be_saved_is_an_output_error(tiny, tmp_path,
                                                              monkeypatch):
    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs "
                           "534")

    monkeypatch.setattr("diffclip_cli.model.archive.torch.save", full)
    out = tmp_path / "p.pt"
    line = error_line(invoke("pretrain", tiny.hsi, tiny.lidar, "-o", out, "--preset", "tiny",
                             "--epochs", 1, "--samples", 32, code=OutputError.exit_code))
    assert f"{out}.ckpt" in line and "torch could not write the file" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --------------------------------------------------------- 5. ids and names in one field
def _mixed_labels(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.gpkg"
    values = ["1", "asphalt road", "2", "asphalt road", "1", "2"]
    cells = [(2, 2), (2, 20), (20, 2), (20, 20), (4, 4), (22, 4)]
    gpd.GeoDataFrame({"landcover": values}, geometry=[pixel_point(r, c) for r, c in cells],
                     crs="EPSG:32615").to_file(path)
    return path


def test_a_field_mixing_ids_and_names_is_refused(tiny, tmp_path):
    line = error_line(invoke("fewshot", tiny.hsi, tiny.lidar, "--labels",
                             _mixed_labels(tmp_path), "--shots", 1, "--pretrained",
                             tiny.pretrained, "-o", tmp_path / "m.pt",
                             code=LabelError.exit_code))
    assert "mixes integer class ids (1, 2) and class names ('asphalt road')" in line
    assert "--classes" in line


def test_a_field_mixing_ids_and_names_maps_the_ids_through_the_classes(tiny, tmp_path):
    table = tmp_path / "classes.csv"
    table.write_text("id,name\n1,grass\n2,trees\n3,asphalt road\n")
    out = tmp_path / "m.pt"
    invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", _mixed_labels(tmp_path),
           "--classes", table, "--shots", 1, "--pretrained", tiny.pretrained,
           "--finetune-epochs", 1, "-o", out, "-q", code=0)
    assert [c.name for c in load_model(out).class_table] == ["grass", "trees", "asphalt road"]


# ----------------------------------------------------------- 6. options are usage errors
@pytest.mark.parametrize(("args", "option"), [
    (["--prompt", "p9"], "--prompt"),
    (["--prompt", "p5"], "--prompt"),
    (["--split", "diagonal"], "--split"),
    (["--seed", "-1"], "--seed"),
    (["--window", "4"], "--window"),
    (["--time-budget", "soon"], "--time-budget"),
    (["--window", "7", "--preset", "tiny"], None),  # valid: passes on to the work
])
def test_fewshot_options_are_checked_before_work(tiny, tmp_path, monkeypatch, args,
                                                 option):
    monkeypatch.setattr("diffclip_cli.workflows.fewshot.fewshot_scene",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("work started")))
    r = invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", tiny.labels, "--shots", 2,
               "-o", tmp_path / "m.pt", *args, code=USAGE if option else 1)
    if option:
        assert option in r.output and "Traceback" not in r.output
        assert "Internal error" not in r.output
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("preset", [[], ["--preset", "tiny"]])
@pytest.mark.parametrize("window", [5, 7])
def test_window_with_a_pretrained_model_is_a_usage_error(tiny, tmp_path, monkeypatch,
                                                         preset, window):
    """The pretrained model fixes the architecture: --window was silently dropped,
    even when it equals the pretrained model's own window (5), with or without --preset."""
    monkeypatch.setattr("diffclip_cli.workflows.fewshot.fewshot_scene",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("work started")))
    assert load_model(tiny.pretrained).config.window == 5
    r = invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", tiny.labels, "--shots", 2,
               "--pretrained", tiny.pretrained, "--window", window, *preset, "-o",
               tmp_path / "m.pt", code=USAGE)
    text = " ".join(r.output.replace("│", " ").split())
    assert (f"Invalid value for --window: {window} cannot be used with a pretrained model: "
            "the pretrained model fixes the architecture, its window included") in text
    assert "Traceback" not in r.output and not list(tmp_path.iterdir())


@pytest.mark.parametrize(("args", "option"), [
    (["--pretrain-epochs", "3"], "--epochs/--pretrain-epochs"),
    (["--pretrain-samples", "300"], "--pretrain-samples"),
])
def test_stage1_options_with_a_pretrained_model_are_a_usage_error(tiny, tmp_path, monkeypatch,
                                                                   args, option):
    """A pretrained model skips stage 1: its options would be silently ignored."""
    monkeypatch.setattr("diffclip_cli.workflows.fewshot.fewshot_scene",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("work started")))
    r = invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", tiny.labels, "--shots", 2,
               "--pretrained", tiny.pretrained, *args, "-o", tmp_path / "m.pt", code=USAGE)
    text = " ".join(r.output.replace("│", " ").split())
    assert (f"Invalid value for {option}: {args[1]} cannot be used with a pretrained model: "
            "stage 1 (pretraining) is skipped") in text
    assert "Traceback" not in r.output and not list(tmp_path.iterdir())


def test_p5_takes_its_descriptions_from_a_classes_table(tiny, tmp_path):
    """p5 without --descriptions is fine when the --classes table describes the classes."""
    data = np.zeros((24, 28), np.uint8)
    data[:10, :10] = 1
    data[12:, :10] = 2
    labels = write_tif(tmp_path / "labels.tif", data, transform=TRANSFORM)
    table = tmp_path / "classes.csv"
    table.write_text("id,name,description\n1,grass,low green cover\n2,trees,tall canopy\n")
    invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", labels, "--classes", table,
           "--prompt", "p5", "--shots", 2, "--pretrained", tiny.pretrained,
           "--finetune-epochs", 1, "-o", tmp_path / "m.pt", "-q", code=0)
    assert load_model(tmp_path / "m.pt").prompts[0].startswith("grass: low green cover")


@pytest.mark.parametrize("co", ["BLOCKXSIZE=7", "PREDICTOR=9", "COMPRESS=NOPE", "FOO=BAR"])
def test_an_invalid_creation_option_is_a_usage_error(tiny, tmp_path, co):
    r = invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model, "-o",
               tmp_path / "m.tif", "--co", co, code=USAGE)
    assert "--co" in r.output and "GDAL refuses" in r.output
    text = " ".join(r.output.replace("│", " ").split())
    assert any(part in text for part in co.split("=")) or "multiples of 16" in text
    assert "Internal error" not in r.output and not list(tmp_path.iterdir())
    invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model, "-o", tmp_path / "m.tif",
           "--co", "COMPRESS=ZSTD", "--co", "BLOCKXSIZE=32", "--co", "BLOCKYSIZE=32", "-q",
           code=0)


@pytest.mark.parametrize("command", ["pretrain", "fewshot", "demo"])
def test_an_unknown_preset_is_a_usage_error(tiny, tmp_path, command):
    args = {"pretrain": ["pretrain", tiny.hsi, "-o", tmp_path / "p.pt"],
            "fewshot": ["fewshot", tiny.hsi, tiny.lidar, "--labels", tiny.labels,
                        "--shots", 2, "-o", tmp_path / "m.pt"],
            "demo": ["demo", "-o", tmp_path / "d"]}[command]
    r = invoke(*args, "--preset", "papr", code=USAGE)
    assert "--preset" in r.output and "papr" in r.output and "paper" in r.output
    assert not (tmp_path / "d").exists() or not list((tmp_path / "d").iterdir())


def test_an_invalid_window_for_pretrain_is_a_usage_error(tiny, tmp_path):
    r = invoke("pretrain", tiny.hsi, "-o", tmp_path / "p.pt", "--window", 6, "--preset",
               "tiny", code=USAGE)
    assert "--window" in r.output and "odd" in r.output


# ------------------------------------------------- 7. every output checked before work
def test_demo_refuses_existing_outputs_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr("diffclip_cli.workflows.demo.fewshot_scene",
                        lambda *a, **k: pytest.fail("training started"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "map.png").write_bytes(b"old quicklook")
    line = error_line(invoke("demo", "-o", tmp_path / "d", code=OutputError.exit_code))
    assert "map.png" in line and "already exists" in line


def test_batch_checks_a_scenes_report_before_classifying_it(scene, tmp_path):
    manifest = tmp_path / "scenes.csv"
    out = tmp_path / "a.tif"
    manifest.write_text(f"name,hsi,lidar,output,labels\na,{scene['hsi']},{scene['lidar']},"
                        f"{out},{scene['labels']}\n")
    (tmp_path / "a.report.md").write_text("an older report")
    invoke("batch", manifest, "--model", scene["model"], code=8)
    assert not out.exists()
    assert (tmp_path / "a.report.md").read_text() == "an older report"


# ------------------------------------------------------------------- 8. clearer messages
def test_duplicate_ids_in_a_classes_table_name_the_lines(tiny, tmp_path):
    table = tmp_path / "classes.csv"
    table.write_text("id,name\n1,grass\n2,trees\n2,water\n")
    data = np.zeros((24, 28), np.uint8)
    data[:8, :8] = 1
    data[14:, :8] = 2
    labels = write_tif(tmp_path / "labels.tif", data, transform=TRANSFORM)
    line = error_line(invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", labels,
                             "--classes", table, "--shots", 2, "--pretrained",
                             tiny.pretrained, "-o", tmp_path / "m.pt",
                             code=LabelError.exit_code))
    assert str(table) in line and "the class id 2 appears on lines 3 and 4" in line
    assert "own id" in line


def test_a_latin1_classes_table_says_it_is_not_utf8(tiny, tmp_path):
    table = tmp_path / "classes.csv"
    table.write_bytes("id,name\n1,prairie\n2,forêt\n".encode("latin-1"))
    data = np.zeros((24, 28), np.uint8)
    data[:8, :8] = 1
    labels = write_tif(tmp_path / "labels.tif", data, transform=TRANSFORM)
    line = error_line(invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", labels,
                             "--classes", table, "--shots", 2, "--pretrained",
                             tiny.pretrained, "-o", tmp_path / "m.pt",
                             code=InputError.exit_code))
    assert "not UTF-8" in line and "line 3" in line and "save it as UTF-8" in line


# ------------------------------------------------------------- 9. two writers, one output
def test_an_output_written_by_another_run_meanwhile_is_not_replaced(tiny, tmp_path,
                                                                     monkeypatch):
    from diffclip_cli.workflows import classify as command

    real = command.classify_scene
    out = tmp_path / "map.tif"

    def other_run_finishes_first(*args, **kwargs):
        result = real(*args, **kwargs)
        out.write_bytes(b"the other run's map")
        return result

    monkeypatch.setattr(command, "classify_scene", other_run_finishes_first)
    line = error_line(invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model,
                             "-o", out, code=OutputError.exit_code))
    assert "written by another process while this run was working" in line
    assert out.read_bytes() == b"the other run's map"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif"]


def test_with_overwrite_an_output_replaced_meanwhile_is_not_replaced_again(tiny, tmp_path,
                                                                           monkeypatch):
    from diffclip_cli.workflows import classify as command

    real = command.classify_scene
    out = tmp_path / "map.tif"
    out.write_bytes(b"yesterday's map")

    def other_run_finishes_first(*args, **kwargs):
        result = real(*args, **kwargs)
        out.write_bytes(b"the other run's map, written just now")
        return result

    monkeypatch.setattr(command, "classify_scene", other_run_finishes_first)
    error_line(invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model, "-o", out,
                      "--overwrite", code=OutputError.exit_code))
    assert out.read_bytes() == b"the other run's map, written just now"


def test_two_threads_committing_one_output(tmp_path):
    """Without --overwrite exactly one of two simultaneous writers wins; the other fails."""
    from diffclip_cli.io.atomic import atomic_path

    out = tmp_path / "x.json"
    barrier = threading.Barrier(2)
    results: list[str] = []

    def writer(text: str) -> None:
        try:
            with atomic_path(out) as tmp:
                tmp.write_text(text)
                barrier.wait()
            results.append("ok")
        except OutputError as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results)[1] == "ok" and "another process" in sorted(results)[0]
    assert out.read_text() in ("a", "b") and no_temp_files(tmp_path)


# ---------------------------------------------------------- 10. out-of-distribution scenes
def test_a_scene_in_other_units_than_the_models_warns(tiny, tmp_path):
    scaled = write_tif(tmp_path / "reflectance.tif",
                       np.where(tiny.hsi_data == -9999, -9999, tiny.hsi_data * 1e-4)
                       .astype(np.float32), transform=TRANSFORM, nodata=-9999)
    r = invoke("classify", scaled, tiny.lidar, "--model", tiny.model, "-o",
               tmp_path / "m.tif", code=0)
    text = " ".join(r.output.split())
    assert f"the values of {BANDS} of {BANDS} HSI bands are far from those the model" in text
    assert "band_1 (scene" in text and "units and scale" in text
    r = invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model, "-o",
               tmp_path / "n.tif", code=0)
    assert "far from those the model" not in r.output


def test_fewshot_on_a_pretrained_model_warns_about_other_units(tiny, tmp_path):
    scaled = write_tif(tmp_path / "dn.tif",
                       np.where(tiny.hsi_data == -9999, -9999, tiny.hsi_data * 1e4)
                       .astype(np.float32), transform=TRANSFORM, nodata=-9999)
    r = invoke("fewshot", scaled, tiny.lidar, "--labels", tiny.labels, "--shots", 2,
               "--pretrained", tiny.pretrained, "--finetune-epochs", 1, "-o",
               tmp_path / "m.pt", code=0)
    text = " ".join(r.output.split())
    assert f"HSI bands are far from those the model {tiny.pretrained} was trained on" in text


def test_a_normal_run_writes_all_its_outputs(tiny, tmp_path):
    """A normal run still writes the map and its side files together (nothing else).

    The map's side files: its sidecar JSON, the GDAL categories/RAT (.aux.xml) and the QGIS
    style (.qml) of docs/maps.md.
    """
    out = tmp_path / "map.tif"
    invoke("classify", tiny.hsi, tiny.lidar, "--model", tiny.model, "-o", out,
           "--confidence", tmp_path / "c.tif", "--quicklook", tmp_path / "q.png", "-q", code=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif", "map.qml", "map.tif",
                                                          "map.tif.aux.xml", "map.tif.json",
                                                          "q.png"]
    assert json.loads(Path(f"{out}.json").read_text())["map"] == "map.tif"
