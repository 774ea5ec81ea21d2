"""The workflows as library functions: option objects checked once, the device resolved once."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import rasterio
import torch

from diffclip_cli.data import salinas_a_dir
from diffclip_cli.errors import DeviceError, OutputError, OverrideError, UsageError
from diffclip_cli.model.archive import load_model
from diffclip_cli.model.config import load_preset
from diffclip_cli.sampling.shots import Split
from diffclip_cli.workflows.classify import (
    ClassifyOptions,
    RunOptions,
    WriteOptions,
    run_classify,
)
from diffclip_cli.workflows.demo import DemoOptions, run_demo
from diffclip_cli.workflows.fewshot import FewshotOptions, FewshotRequest, FewshotSettings
from diffclip_cli.workflows.pretrain import PretrainOptions, checkpoint_path, run_pretrain

TINY = load_preset("tiny").with_overrides(**{"pretrain.epochs": 1})


@pytest.mark.parametrize("bad", [{"samples": 0}, {"budget": 0.0}, {"budget": float("nan")}])
def test_pretrain_options_refuse_values_out_of_range(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        PretrainOptions(preset=TINY, **bad)


@pytest.mark.parametrize("budget", [0.0, -60.0, float("nan")])
@pytest.mark.parametrize("make", [
    lambda budget: PretrainOptions(preset=TINY, budget=budget),
    lambda budget: FewshotOptions(labels="l.gpkg", shots=2, preset=TINY, budget=budget),
], ids=["pretrain", "fewshot"])
def test_every_training_option_object_checks_its_budget_the_same_way(make, budget):
    """The shared TrainingOptions base checks the budget once for both trainings (fewshot's
    options did not check it before)."""
    with pytest.raises(ValueError, match="budget must be a positive number of seconds"):
        make(budget)
    assert make(90.0).budget == 90.0


def test_pretrain_from_python_saves_the_model_and_drops_the_checkpoint(tiny, tmp_path,
                                                                      one_torch_thread):
    out = tmp_path / "p.pt"
    result = run_pretrain(tiny.hsi, [tiny.lidar], out,
                          options=PretrainOptions(preset=TINY, samples=32, seed=2,
                                                  device="cpu"))
    assert len(result.history) == 1 and result.plan is None
    assert load_model(out).kind == "pretrained"
    assert not checkpoint_path(out).exists()


def test_an_unknown_device_is_refused_before_any_output(tiny, tmp_path):
    out = tmp_path / "p.pt"
    with pytest.raises(DeviceError, match="unknown device 'tpu9'"):
        run_pretrain(tiny.hsi, [tiny.lidar], out,
                     options=PretrainOptions(preset=TINY, samples=32, device="tpu9"))
    assert not list(tmp_path.iterdir())


def test_demo_options_refuse_no_shots():
    with pytest.raises(ValueError, match="shots"):
        DemoOptions(preset=TINY, shots=0)


def test_demo_refuses_an_existing_output_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr("diffclip_cli.workflows.demo.fewshot_scene",
                        lambda *a, **k: pytest.fail("training started"))
    started = []
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "report.md").write_text("an older report")
    with pytest.raises(OutputError, match="already exists"):
        run_demo(tmp_path / "d", options=DemoOptions(preset=TINY, shots=2, device="cpu"),
                 on_start=started.append)
    assert started == [] and (tmp_path / "d" / "report.md").read_text() == "an older report"
    (tmp_path / "f").write_text("a file")
    with pytest.raises(OutputError, match="not a folder"):
        run_demo(tmp_path / "f", options=DemoOptions(preset=TINY, shots=2, device="cpu"))


def test_demo_from_python_writes_every_output(tmp_path, one_torch_thread):
    started, plans = [], []
    out = tmp_path / "d"
    outcome = run_demo(out, options=DemoOptions(preset=TINY, preset_name="my tiny", shots=3,
                                                seed=1, device=torch.device("cpu")),
                       on_start=started.append, on_plan=plans.append)
    assert started == [salinas_a_dir()] and len(plans) == 1
    assert outcome.report is outcome.result.report and outcome.report.n_pixels > 0
    assert (outcome.model, outcome.map, outcome.quicklook) == (
        out / "model.pt", out / "map.tif", out / "map.png")
    assert all(p.is_file() for p in (outcome.model, outcome.map, outcome.quicklook,
                                     *outcome.report_paths.values()))
    with rasterio.open(outcome.map) as m:
        assert outcome.valid_pixels == int((m.read(1) > 0).sum()) > 0
    report = json.loads(outcome.report_paths["json"].read_text())
    assert report["metadata"]["preset"] == "my tiny" and report["metadata"]["shots"] == 3


@pytest.mark.parametrize(("bad", "words"), [
    ({"tile_size": 15}, "tile_size must be at least 16, not 15"),
    ({"batch_size": 0}, "batch_size must be at least 1, not 0"),
    ({"threads": 0}, "threads must be at least 1, not 0"),
    ({"precision": "fp16"}, "precision must be one of fp32, bf16, not 'fp16'"),
])
def test_run_options_refuse_values_out_of_range(bad, words):
    with pytest.raises(ValueError, match=words):
        RunOptions(**bad)


def test_write_options_keep_checked_creation_options_as_a_mapping():
    options = WriteOptions(creation_options=["compress=ZSTD", " zstd_level = 3"])
    assert options.creation_options == {"COMPRESS": "ZSTD", "ZSTD_LEVEL": "3"}
    assert WriteOptions().creation_options == {}
    with pytest.raises(ValueError, match="NOPE"):
        WriteOptions(creation_options={"COMPRESS": "NOPE"})


def test_classify_hands_its_option_objects_down_with_the_device_resolved(tiny, tmp_path,
                                                                       monkeypatch):
    """What is written and how it runs reach classify_scene as the objects built, so an
    option added to them needs no other change; only the device is resolved on the way."""
    from diffclip_cli.workflows import classify as workflow

    seen = {}
    real = workflow.classify_scene

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(workflow, "classify_scene", spy)
    write = WriteOptions(confidence=tmp_path / "c.tif", creation_options={"COMPRESS": "LZW"})
    run = RunOptions(tile_size=16, batch_size=64, device="cpu", threads=1)
    summary = run_classify(tiny.hsi, [tiny.lidar], tmp_path / "m.tif",
                           options=ClassifyOptions(model=tiny.model, write=write, run=run))
    assert seen["write"] is write
    assert seen["run"] == RunOptions(tile_size=16, batch_size=64, device=torch.device("cpu"),
                                     threads=1)
    assert summary.confidence == tmp_path / "c.tif" and summary.engine == "faithful"
    assert summary.to_dict()["confidence"] == str(tmp_path / "c.tif")
    with rasterio.open(tmp_path / "m.tif") as m:
        assert m.compression is not None and m.compression.name == "lzw"
    assert ClassifyOptions(model=tiny.model).run.device == "auto"  # as the commands default


def test_fewshot_options_refuse_architecture_overrides_with_a_pretrained_model(tmp_path):
    pretrained = tmp_path / "p.pt"
    with pytest.raises(OverrideError, match="fixes the architecture, its window") as refused:
        FewshotOptions(labels="l.gpkg", shots=2, pretrained=pretrained,
                       overrides={"finetune.epochs": 3, "model.window": 7})
    assert (refused.value.key, refused.value.value) == ("model.window", 7)
    # the fine-tuning recipe is the run's own, and without a pretrained model any field is
    assert FewshotOptions(labels="l.gpkg", shots=2, pretrained=pretrained,
                          overrides={"finetune.epochs": 3}).overrides == {"finetune.epochs": 3}
    assert FewshotOptions(labels="l.gpkg", shots=2, preset=TINY,
                          overrides={"model.window": 7}).pretrained is None


def test_fewshot_options_hand_every_shared_setting_to_the_request_unchanged(tmp_path):
    """Each few-shot option is declared once (FewshotSettings): the file-level options and
    the scene-level request have every field of it, and request() copies them all."""
    shared = {"shots": 3, "pretrain_samples": 77, "template": "p2", "split": "spatial",
              "evaluate": False, "fast": True, "fast_steps": 9, "batch_size": 64, "seed": 5,
              "device": "cpu", "budget": 120.0, "pinned": ("finetune_epochs",)}
    assert set(shared) == {f.name for f in dataclasses.fields(FewshotSettings)}
    options = FewshotOptions(labels="l.gpkg", preset=TINY, descriptions=tmp_path / "d.csv",
                             overwrite=True, **shared)
    request = options.request(TINY, None)
    assert isinstance(request, FewshotRequest)
    assert {k: getattr(request, k) for k in shared} == shared
    assert request.descriptions == tmp_path / "d.csv" and request.pretrained is None
    assert request.samples == 77 and request.distill is not None
    assert request.distill.steps == 9


@pytest.mark.parametrize(("bad", "option"), [({"split": "diagonal"}, "--split"),
                                             ({"template": "p9"}, "--prompt")])
def test_a_python_request_is_checked_like_the_command(bad, option):
    """The split and the prompt template are checked in one place, for the command and for
    Python callers of fewshot_scene alike; the error names the command's option."""
    with pytest.raises(UsageError) as refused:
        FewshotRequest(shots=2, preset=TINY, **bad)
    assert refused.value.option == option
    with pytest.raises(UsageError):
        FewshotOptions(labels="l.gpkg", shots=2, preset=TINY, **bad)


def test_p5_needs_descriptions_only_where_they_cannot_come_later():
    """Options on files know whether a descriptions file or a classes table is there; a
    request on a scene may have descriptions in its labels' classes table."""
    with pytest.raises(UsageError, match="p5 builds prompts from class descriptions"):
        FewshotOptions(labels="l.gpkg", shots=2, preset=TINY, template="p5")
    assert FewshotRequest(shots=2, preset=TINY, template="p5").template == "p5"


def test_shots_are_checked_unless_the_split_is_given():
    with pytest.raises(ValueError, match="shots must be at least 1"):
        FewshotRequest(shots=0, preset=TINY)
    given = Split(train=np.arange(2), test=np.arange(2, 4))
    assert FewshotRequest(shots=0, preset=TINY, split=given).split is given
