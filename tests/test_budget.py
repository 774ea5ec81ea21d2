"""Training within a time budget: the arithmetic, the plan line, the defaults, the commands.

The arithmetic is tested with given step costs (no timing here): the schedule fits, and what is
cut first is what the priorities of ``fit_recipe`` say.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time

import numpy as np
import pytest
import yaml
from scenes import make_scene, write_scene
from typer.testing import CliRunner

from diffclip_cli.cli import app
from diffclip_cli.cli.commands.train import _PlanPrinter
from diffclip_cli.io.labels import read_labels
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.archive import load_model
from diffclip_cli.model.config import load_preset
from diffclip_cli.progress import ProgressEvent
from diffclip_cli.train.budget import (
    DEFAULT_CPU_BUDGET_S,
    DEFAULT_CPU_PRESET,
    DEFAULT_CUDA_PRESET,
    Floors,
    Plan,
    Recipe,
    StepCosts,
    StepTimer,
    default_recipe,
    describe_timing,
    distill_steps_for,
    fit_recipe,
    format_seconds,
    parse_duration,
    scaled_preset,
    stage_seconds,
)
from diffclip_cli.workflows.fewshot import FewshotRequest, fewshot_scene, plan_fewshot

runner = CliRunner()
TINY = load_preset("tiny")

#: A paper-like recipe on a Trento-sized scene, and step costs of a 2-core CPU.
FULL = Recipe(pretrain_windows=2000, pretrain_epochs=400, pretrain_batch=128,
              finetune_windows=48, finetune_epochs=150, finetune_batch=128,
              distill_steps=6000, distill_pixels=8192, score_pixels=99_552)
COSTS = StepCosts(pretrain_step=1.0, finetune_step=0.4, distill_step=0.02,
                  window_read=1e-4, infer_pixel=1e-3, distill_read=1.0, setup=5.0)


def total(recipe: Recipe, costs: StepCosts = COSTS) -> float:
    return sum(stage_seconds(recipe, costs).values())


# ---------------------------------------------------------------------------- durations
@pytest.mark.parametrize(("text", "seconds"), [
    ("10", 600.0), ("2.5", 150.0), ("90s", 90.0), ("10m", 600.0), ("10min", 600.0),
    ("1h", 3600.0), ("1h30m", 5400.0), ("1h 30m 15s", 5415.0), (" 45S ", 45.0),
    ("0.5h", 1800.0)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "10x", "m", "1m1h", "-5", "0", "0m", "10 m s",
                                  "1.2.3", "h30"])
def test_parse_duration_refuses_what_is_not_a_positive_duration(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_format_seconds():
    assert [format_seconds(s) for s in (0.2, 40, 59.4, 60, 89, 91, 480, 7260)] == \
        ["1 s", "40 s", "59 s", "1 min", "1 min", "2 min", "8 min", "121 min"]


# --------------------------------------------------------------------------- arithmetic
def test_stage_seconds_counts_every_stage():
    s = stage_seconds(FULL, COSTS)
    assert s["pretrain"] == pytest.approx(2000 * 1e-4 + 400 * 16 * 1.0)  # 16 steps an epoch
    assert s["finetune"] == pytest.approx(48 * 1e-4 + 150 * 0.4)
    assert s["fast path"] == pytest.approx(8192 * 1e-3 + 1.0 + 6000 * 0.02)
    assert s["evaluate"] == pytest.approx(99.552)
    assert s["setup"] == 5.0
    nothing = Recipe()
    assert sum(stage_seconds(nothing, COSTS).values()) == 5.0


def test_a_recipe_that_fits_is_left_alone():
    recipe, fits = fit_recipe(FULL, COSTS, budget_s=total(FULL) + 1)
    assert fits and recipe == FULL


def test_pretraining_epochs_are_cut_first():
    budget = 600.0
    recipe, fits = fit_recipe(FULL, COSTS, budget)
    assert fits and total(recipe) <= budget
    assert recipe.finetune_epochs == FULL.finetune_epochs  # kept full
    assert recipe.pretrain_windows == FULL.pretrain_windows  # epochs go first
    assert Floors().pretrain_epochs <= recipe.pretrain_epochs < FULL.pretrain_epochs
    # cut just enough: one more epoch would not fit
    more = dataclasses.replace(recipe, pretrain_epochs=recipe.pretrain_epochs + 1)
    assert total(more) > budget
    # the fast path keeps to its share of the budget
    assert stage_seconds(recipe, COSTS)["fast path"] <= Floors().distill_share * budget


def test_further_encoders_cost_a_whole_stage_1_each_and_are_cut_before_epochs():
    four = dataclasses.replace(FULL, pretrain_encoders=4)
    one = stage_seconds(FULL, COSTS)
    assert stage_seconds(four, COSTS)["pretrain"] == pytest.approx(4 * one["pretrain"])
    assert stage_seconds(four, COSTS)["finetune"] == one["finetune"]
    # a budget where two encoders of the full recipe fit, but not three
    budget = total(dataclasses.replace(FULL, pretrain_encoders=2)) + 1
    recipe, fits = fit_recipe(four, COSTS, budget)
    assert fits and recipe == dataclasses.replace(FULL, pretrain_encoders=2)
    # where one does not fit either, down to one encoder, then the epochs as before
    recipe, fits = fit_recipe(four, COSTS, 600.0)
    assert fits and recipe.pretrain_encoders == 1
    assert recipe == fit_recipe(FULL, COSTS, 600.0)[0]
    # pinned, they stay
    recipe, _ = fit_recipe(four, COSTS, 600.0, pinned=("pretrain_encoders",))
    assert recipe.pretrain_encoders == 4 and recipe.pretrain_epochs < FULL.pretrain_epochs
    # the preset follows the recipe, and the plan line says how many
    preset = TINY.with_overrides(**{"pretrain.encoders": 4})
    assert scaled_preset(preset, dataclasses.replace(four, pretrain_encoders=2)
                         ).pretrain.encoders == 2
    plan = Plan(recipe=four, full=four, costs=COSTS, budget_s=None, fits=True, device="cpu")
    assert "pretrain 4 x 2,000 windows x 400 epochs" in plan.line()
    cut = Plan(recipe=dataclasses.replace(four, pretrain_encoders=1), full=four, costs=COSTS,
               budget_s=600.0, fits=True, device="cpu")
    assert "--pretrain-encoders 1" in cut.options()  # repeats the schedule without a budget
    assert "--pretrain-encoders" not in Plan(recipe=FULL, full=FULL, costs=COSTS,
                                             budget_s=None, fits=True, device="cpu").options()


def test_then_windows_down_to_their_floor_then_fast_path_then_fine_tuning():
    floors = Floors()
    epochs_at_floor = dataclasses.replace(FULL, pretrain_epochs=floors.pretrain_epochs)
    # a budget where 5 epochs of 2000 windows do not fit, but 5 epochs of 300 windows do
    budget = total(dataclasses.replace(epochs_at_floor, pretrain_windows=1000)) - 60
    recipe, fits = fit_recipe(FULL, COSTS, budget)
    assert fits and total(recipe) <= budget
    assert recipe.pretrain_epochs == floors.pretrain_epochs
    assert floors.pretrain_windows <= recipe.pretrain_windows < 2000
    assert recipe.finetune_epochs == FULL.finetune_epochs
    # smaller: windows at their floor, then the fast path's steps, fine-tuning still full
    floor = dataclasses.replace(epochs_at_floor, pretrain_windows=floors.pretrain_windows)
    budget = total(dataclasses.replace(floor, distill_steps=1000))
    recipe, fits = fit_recipe(FULL, COSTS, budget)
    assert fits and recipe.pretrain_windows == floors.pretrain_windows
    assert floors.distill_steps <= recipe.distill_steps <= 1000
    assert recipe.finetune_epochs == FULL.finetune_epochs
    # tiny: fine-tuning is cut last, to its floor; below that nothing fits
    budget = total(dataclasses.replace(floor, distill_steps=floors.distill_steps)) - 30
    recipe, fits = fit_recipe(FULL, COSTS, budget)
    assert fits and recipe.distill_steps == floors.distill_steps
    assert recipe.finetune_epochs < FULL.finetune_epochs
    recipe, fits = fit_recipe(FULL, COSTS, budget_s=10.0)
    assert not fits
    assert recipe.pretrain_epochs == floors.pretrain_epochs
    assert recipe.pretrain_windows == floors.pretrain_windows
    assert recipe.distill_steps == floors.distill_steps
    assert recipe.finetune_epochs == np.ceil(floors.finetune_share * FULL.finetune_epochs)


def test_pinned_fields_are_never_changed():
    pinned = ("pretrain_epochs", "distill_steps")
    recipe, _ = fit_recipe(FULL, COSTS, 600.0, pinned=pinned)
    assert recipe.pretrain_epochs == 400 and recipe.distill_steps == 6000
    assert recipe.pretrain_windows < FULL.pretrain_windows


def test_floors_never_raise_a_small_recipe():
    small = dataclasses.replace(FULL, pretrain_windows=100, pretrain_epochs=3,
                                distill_steps=50)
    recipe, _ = fit_recipe(small, COSTS, 1.0)
    assert (recipe.pretrain_windows, recipe.pretrain_epochs, recipe.distill_steps) == \
        (100, 3, 50)


def test_fast_path_steps_follow_the_scene():
    # the fast-path benchmark scene: 8192 pixels sampled, 10 % held out, at least 6000 steps
    assert 6000 <= distill_steps_for(7373, 256) <= 6100
    assert distill_steps_for(2000, 256) < distill_steps_for(7373, 256)
    assert distill_steps_for(0, 256) == 1


def test_scaled_preset_scales_fine_tuning_milestones():
    recipe = Recipe(pretrain_windows=10, pretrain_epochs=3, pretrain_batch=64,
                    finetune_windows=20, finetune_epochs=30, finetune_batch=32)
    preset = scaled_preset(TINY, recipe)
    assert preset.pretrain.epochs == 3 and preset.finetune.epochs == 30
    assert list(preset.finetune.milestones) == [20, 26]  # 40 and 52 of 60
    same = Recipe(pretrain_windows=10, pretrain_epochs=TINY.pretrain.epochs,
                  finetune_windows=5, finetune_epochs=TINY.finetune.epochs)
    assert scaled_preset(TINY, same) == TINY


def test_default_recipe():
    assert default_recipe("cpu", None, None) == (DEFAULT_CPU_PRESET, DEFAULT_CPU_BUDGET_S)
    assert default_recipe("mps", None, 90.0) == (DEFAULT_CPU_PRESET, 90.0)
    assert default_recipe("cuda", None, None) == (DEFAULT_CUDA_PRESET, None)
    assert default_recipe("cuda", None, 60.0) == (DEFAULT_CUDA_PRESET, 60.0)
    assert default_recipe("cpu", "paper", None) == ("paper", None)
    assert default_recipe("cpu", "paper", 60.0) == ("paper", 60.0)


def test_step_timer_takes_the_mean_after_the_warm_up():
    ticks = iter([0.0, 5.0, 8.0, 9.5, 10.0, 11.0])
    timer = StepTimer(clock=lambda: next(ticks))
    for step in range(5):
        timer(ProgressEvent("pretrain", step + 1, 5))
    assert timer.steps == [5.0, 3.0, 1.5, 0.5, 1.0]
    assert timer.per_step() == 1.0
    assert timer.per_step(skip=10) == 1.0  # never empty: the last step
    with pytest.raises(ValueError):
        StepTimer().per_step()


# ----------------------------------------------------------------------------- the plan
def _plan(budget: float | None = None, fits: bool = True, **changes: int) -> Plan:
    recipe = Recipe(pretrain_windows=1200, pretrain_epochs=40, pretrain_batch=128,
                    finetune_windows=48, finetune_epochs=150, finetune_batch=128,
                    distill_steps=2000, distill_pixels=0, score_pixels=0)
    recipe = dataclasses.replace(recipe, **changes)
    # 6 min of pretraining, 1 min of fine-tuning, 1 min of fast path
    costs = StepCosts(pretrain_step=360 / (40 * 10), finetune_step=60 / 150,
                      distill_step=60 / 2000)
    return Plan(recipe=recipe, full=recipe, costs=costs, budget_s=budget, fits=fits,
                device="cpu (2 threads)")


def test_plan_line():
    assert _plan().line() == (
        "Plan: pretrain 1,200 windows x 40 epochs (~6 min), fine-tune 150 epochs (~1 min), "
        "fast path 2,000 steps (~1 min): estimated 8 min in total on cpu (2 threads).")
    line = _plan(600.0, pretrain_epochs=1, distill_steps=0, score_pixels=5000).line()
    assert re.fullmatch(r"Plan: pretrain 1,200 windows x 1 epoch \(~9 s\), fine-tune 150 "
                        r"epochs \(~1 min\), scoring 5,000 held-out pixels \(~1 s\): "
                        r"estimated 1 min in total on cpu \(2 threads\), budget 10 min\.",
                        line), line
    assert "does not fit" in _plan(60.0, fits=False).line()
    assert _plan().options() == ("--pretrain-samples 1200 --pretrain-epochs 40 "
                                 "--finetune-epochs 150 --fast-steps 2000")


def test_plan_to_dict_is_json_and_describes_the_timing():
    data = json.loads(json.dumps(_plan(600.0).to_dict()))
    assert data["estimated_total_s"] == pytest.approx(480.0)
    assert data["recipe"]["pretrain_windows"] == 1200 and data["budget_s"] == 600.0
    assert describe_timing(data, {"total": 452.0}) == \
        "estimated 8 min (budget 10 min), took 8 min"
    assert describe_timing(None, {"pretrain": 3.0}) is None


def test_long_recipe_on_a_cpu_warns_how_to_shorten_it(caplog):
    logger = logging.getLogger("diffclip")
    logger.addHandler(caplog.handler)
    try:
        caplog.set_level(logging.WARNING, logger="diffclip")
        long_plan = _plan(pretrain_epochs=4000)
        _PlanPrinter(level=-1, budget=None, device="cpu", shorten="")(long_plan)
        assert "estimated to take" in caplog.text and "--time-budget" in caplog.text
        caplog.clear()
        _PlanPrinter(level=-1, budget=None, device="cuda", shorten="")(long_plan)
        _PlanPrinter(level=-1, budget=None, device="cpu", shorten="")(_plan())
        assert caplog.text == ""
        _PlanPrinter(level=-1, budget=60.0, device="cpu", shorten="")(_plan(60.0, fits=False))
        assert "over the 1 min budget" in caplog.text
    finally:
        logger.removeHandler(caplog.handler)


# ------------------------------------------------------------------------- the pipeline
def test_fewshot_scene_plans_within_a_budget_and_records_it(tmp_path):
    files = write_scene(make_scene(height=32, width=32, hsi_bands=8, patch_size=12, seed=0),
                        tmp_path, hsi_dtype="int16")
    plans = []
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        labels = read_labels(files["labels"], scene.grid, classes=files["classes"])
        result = fewshot_scene(scene, labels, FewshotRequest(
            shots=3, preset=TINY, pretrain_samples=400, seed=0, fast=True, budget=30.0,
            pinned=("distill_steps",)), on_plan=plans.append)
    plan = result.plan
    assert plans == [plan] and plan is not None and plan.budget_s == 30.0
    r = plan.recipe
    assert r.pretrain_windows <= 400 and r.pretrain_epochs <= TINY.pretrain.epochs
    assert r.finetune_windows == 12 and r.score_pixels == result.split.test.size
    assert r.distill_steps == plan.full.distill_steps == distill_steps_for(
        result.bundle.provenance["fast_path"]["train_pixels"], 256)
    assert all(v >= 0 for v in plan.costs.to_dict().values())
    assert plan.costs.pretrain_step > 0 and plan.costs.infer_pixel > 0
    prov = result.bundle.provenance
    assert prov["plan"]["line"] == plan.line()
    assert prov["seconds"]["total"] == pytest.approx(result.timings["total"], abs=0.1)
    assert prov["fast_path"]["config"]["steps"] == r.distill_steps
    assert prov["pretrain_samples"] == r.pretrain_windows
    assert result.bundle.preset_config.pretrain.epochs == r.pretrain_epochs


def test_plan_fewshot_plans_without_training(tmp_path):
    files = write_scene(make_scene(height=24, width=24, hsi_bands=6, patch_size=10, seed=1),
                        tmp_path, hsi_dtype="int16")
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        labels = read_labels(files["labels"], scene.grid, classes=files["classes"])
        plan = plan_fewshot(scene, labels, FewshotRequest(
            shots=2, preset=TINY, pretrain_samples=2000))
    assert plan.recipe == plan.full and plan.fits and plan.budget_s is None
    # the scene has 576 pixels: pretraining draws all of them, not 2000
    assert plan.recipe.pretrain_windows == 24 * 24 and plan.recipe.distill_steps == 0
    assert plan.recipe.finetune_epochs == TINY.finetune.epochs
    assert plan.total_s > 0 and "fast path" not in plan.line()


def test_scoring_estimate_counts_a_reads_fixed_cost_per_chunk_not_per_pixel():
    costs = StepCosts(infer_pixel=1e-3, infer_read=1e-4, infer_chunk=2.0)
    recipe = Recipe(score_pixels=5000, members=4)
    # two reads of up to 4,096 pixels, each pixel read once and run through four members
    assert stage_seconds(recipe, costs)["evaluate"] == pytest.approx(2 * 2.0 + 5000 * 4.1e-3)
    assert stage_seconds(Recipe(members=4), costs)["evaluate"] == 0.0


def test_calibration_separates_a_reads_fixed_cost(tmp_path, monkeypatch):
    # A read that costs 0.4 s whatever its size (as the spatial context's smoothing does):
    # charged once per read, not to every pixel (it made a 1-minute run plan 12 minutes).
    import diffclip_cli.train.calibrate as calibrate

    real = calibrate.read_windows

    def slow_read(*args, **kwargs):
        time.sleep(0.4)
        return real(*args, **kwargs)

    monkeypatch.setattr(calibrate, "read_windows", slow_read)
    files = write_scene(make_scene(height=40, width=40, hsi_bands=6, patch_size=10, seed=1),
                        tmp_path, hsi_dtype="int16")
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        labels = read_labels(files["labels"], scene.grid, classes=files["classes"])
        plan = plan_fewshot(scene, labels, FewshotRequest(
            shots=2, preset=TINY, pretrain_samples=200))
    c = plan.costs
    assert 0.3 < c.infer_chunk < 0.6
    assert c.infer_read < 0.01 and 0 < c.infer_pixel < 0.01
    n = plan.recipe.score_pixels
    assert n > 1000  # the held-out pixels, one read
    assert plan.seconds["evaluate"] < 0.4 + n * 0.02


# ---------------------------------------------------------------------------- commands
@pytest.mark.parametrize("command", ["fewshot", "pretrain"])
@pytest.mark.parametrize("value", ["soon", "0", "-3m", "10x"])
def test_bad_time_budget_is_a_usage_error(messy, tmp_path, command, value):
    extra = ["--labels", messy.labels, "--shots", 2] if command == "fewshot" else []
    r = runner.invoke(app, [str(a) for a in [command, messy.hsi, messy.lidar, *extra,
                                             "--time-budget", value, "-o", tmp_path / "m.pt"]])
    assert r.exit_code == 2, r.output
    assert "--time-budget" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "m.pt").exists()


def test_fewshot_default_on_a_cpu_uses_the_cpu_preset_and_budget(messy, tmp_path):
    model = tmp_path / "m.pt"
    r = runner.invoke(app, [str(a) for a in [
        "fewshot", messy.hsi, messy.lidar, "--labels", messy.labels, "--shots", 3,
        "--device", "cpu", "--pretrain-samples", 200, "--pretrain-epochs", 2,
        "--finetune-epochs", 5, "--fast-steps", 20, "-o", model]])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("Plan: ")]
    assert len(lines) == 1, r.output
    assert re.search(r"estimated \d+ (s|min) in total on cpu \(\d+ threads?\), budget 10 min\.$",
                     lines[0]), lines[0]
    assert "pretrain 200 windows x 2 epochs" in lines[0]  # pinned by the options
    # the cpu preset averages four fine-tunings
    assert "fine-tune 4 x 5 epochs" in lines[0] and "fast path 20 steps" in lines[0]
    assert r.output.index("Plan: ") < r.output.index("Pretraining (steps)")
    bundle = load_model(model)
    assert bundle.preset == DEFAULT_CPU_PRESET
    plan = bundle.provenance["plan"]
    assert plan["budget_s"] == DEFAULT_CPU_BUDGET_S and plan["line"] == lines[0]
    assert sorted(plan["pinned"]) == ["distill_steps", "finetune_epochs", "pretrain_epochs",
                                      "pretrain_windows"]
    assert bundle.provenance["seconds"]["total"] > 0
    info = runner.invoke(app, ["info", str(model)])
    assert info.exit_code == 0, info.output
    text = " ".join(info.output.split())
    assert "plan" in text and "estimated" in text and "took" in text
    data = json.loads(runner.invoke(app, ["info", str(model), "--json"]).output)
    assert data["provenance"]["plan"]["estimated_total_s"] > 0


def test_pretrain_with_a_time_budget_prints_and_records_its_plan(messy, tmp_path):
    out = tmp_path / "pre.pt"
    r = runner.invoke(app, [str(a) for a in [
        "pretrain", messy.hsi, messy.lidar, "--preset", "tiny", "--time-budget", "20s",
        "--samples", 300, "-o", out]])
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("Plan: "))
    assert line.startswith("Plan: pretrain 300 windows x ") and "budget 20 s." in line
    plan = load_model(out).provenance["plan"]
    assert plan["recipe"]["pretrain_windows"] == 300
    assert plan["recipe"]["pretrain_epochs"] <= TINY.pretrain.epochs


def test_one_thread_is_chosen_only_when_clearly_faster(monkeypatch):
    import os

    import torch

    from diffclip_cli.train.calibrate import _fastest_threads, restores_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))  # only this process
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        busy = {2: 1.0, 1: 0.3}  # a busy machine: one thread is faster
        assert _fastest_threads(lambda: busy[torch.get_num_threads()], torch.device("cpu")) == 0.3
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        idle = {2: 1.0, 1: 0.9}  # not clearly faster: keep torch's threads
        assert _fastest_threads(lambda: idle[torch.get_num_threads()], torch.device("cpu")) == 1.0
        assert torch.get_num_threads() == 2
        assert _fastest_threads(lambda: busy[torch.get_num_threads()], torch.device("cuda")) == 1.0
        assert torch.get_num_threads() == 2

        @restores_threads
        def lowers() -> int:
            torch.set_num_threads(1)
            return 7

        assert lowers() == 7 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_fewshot_on_a_pretrained_model_keeps_its_preset(messy, tmp_path):
    own = tmp_path / "own.yaml"  # a recipe no shipped preset has
    own.write_text(yaml.safe_dump(TINY.with_overrides(**{"finetune.lr": 0.00123}).to_dict()))
    pre = tmp_path / "pre.pt"
    r = runner.invoke(app, [str(a) for a in [
        "pretrain", messy.hsi, messy.lidar, "--preset", own, "--samples", 64, "--epochs",
        1, "-o", pre, "-q"]])
    assert r.exit_code == 0, r.output
    model = tmp_path / "m.pt"
    r = runner.invoke(app, [str(a) for a in [
        "fewshot", messy.hsi, messy.lidar, "--labels", messy.labels, "--shots", 2,
        "--pretrained", pre, "--finetune-epochs", 3, "--no-fast", "--device", "cpu", "-o",
        model]])
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("Plan: "))
    assert line.startswith("Plan: fine-tune 3 epochs") and "pretrain " not in line
    bundle = load_model(model)
    assert bundle.preset == "tiny"  # the name in own.yaml
    assert bundle.preset_config.finetune.lr == 0.00123  # not the CPU default's recipe


def test_one_thread_when_other_jobs_take_the_cores(monkeypatch):
    """The timed comparison sees one moment; a load average above what the cores leave free
    means other jobs run now, and torch's threads would wait for each other."""
    import os

    import torch

    from diffclip_cli.train.calibrate import _cores_taken, _fastest_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(os, "getloadavg", lambda: (2.2, 2.0, 2.0))  # one other job
        assert _cores_taken(2) and not _cores_taken(1)
        torch.set_num_threads(2)
        quiet_now = {2: 0.5, 1: 1.0}  # two threads faster at the moment of timing
        cpu = torch.device("cpu")
        assert _fastest_threads(lambda: quiet_now[torch.get_num_threads()], cpu) == 1.0
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(os, "getloadavg", lambda: (1.1, 1.0, 1.0))
        assert not _cores_taken(2)
        torch.set_num_threads(2)
        assert _fastest_threads(lambda: quiet_now[torch.get_num_threads()], cpu) == 0.5
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
