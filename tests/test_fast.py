"""The fast path: distillation, the student's tile/window equivalence, model files, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scenes import make_scene, write_scene

from diffclip_cli.errors import ModelError
from diffclip_cli.infer.fast import FastEngine, has_fast_path
from diffclip_cli.io.labels import read_labels
from diffclip_cli.io.raster import Scene
from diffclip_cli.modalities import Modalities
from diffclip_cli.model.archive import load_model, save_model
from diffclip_cli.model.config import load_preset
from diffclip_cli.model.student import (
    EXTRAS_KEY,
    StudentConfig,
    StudentNet,
    default_layout,
    student_from_extras,
    student_to_extras,
)
from diffclip_cli.report.scoring import predict_pixels
from diffclip_cli.sampling.tiles import Tile, TileData, iter_tiles, read_tile
from diffclip_cli.sampling.windows import extract_windows, read_windows
from diffclip_cli.train.distill import (
    DistillConfig,
    _holdout,
    _sample_pixels,
    add_fast_path,
    distill_student,
)
from diffclip_cli.workflows.fewshot import FewshotRequest, fewshot_scene

TINY = load_preset("tiny").with_overrides(**{"pretrain.epochs": 5})
PIXELS = 2000
#: A smaller student and schedule than the defaults keep the tests quick.
SMALL = {"hidden": 32, "heads": 4, "steps": 600, "holdout": 0.2}


# Small tensors: one thread is faster and does not stall on a busy shared CPU.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    scene = make_scene(height=48, width=48, hsi_bands=12, patch_size=12, seed=3)
    return write_scene(scene, tmp_path_factory.mktemp("fast"), hsi_dtype="int16")


@pytest.fixture(scope="module")
def teacher(files):
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        labels = read_labels(files["labels"], scene.grid, classes=files["classes"])
        return fewshot_scene(scene, labels, FewshotRequest(
            shots=5, preset=TINY, pretrain_samples=400, seed=0, evaluate=False))


@pytest.fixture(scope="module")
def distilled(files, teacher):
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        return distill_student(scene, teacher.bundle, classifier=teacher.classifier, seed=0,
                               pixels=PIXELS, **SMALL)


def test_distillation_copies_the_teacher_on_held_out_pixels(files, teacher, distilled):
    student, report = distilled
    assert report.pixels == PIXELS
    assert report.heldout_pixels == round(0.2 * PIXELS)
    assert report.train_pixels + report.heldout_pixels == PIXELS
    assert report.initial_agreement < 0.9  # an untrained student does not already agree
    assert report.agreement >= 0.95
    assert report.kl < 0.2
    assert report.history[-1]["step"] == SMALL["steps"]
    assert report.history[-1]["loss"] < report.history[0]["loss"]
    assert student.window == TINY.model.window
    # on every pixel of the scene (most never seen in training), labels mostly agree too
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        rows, cols = np.nonzero(np.ones(scene.grid.shape, bool))
        ref = predict_pixels(scene, teacher.bundle, rows, cols, classifier=teacher.classifier)
        win = read_windows(scene, rows, cols, size=student.window,
                           stats=teacher.bundle.scene_stats)
    fast = FastEngine(student).predict_windows(win.hsi, win.lidar)
    np.testing.assert_allclose(fast.sum(1), 1.0, atol=1e-5)
    assert (fast.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_tiles_equal_windows_including_borders(files, teacher, distilled):
    student, _ = distilled
    engine = FastEngine(student)
    stats = teacher.bundle.scene_stats
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        # 48 = 3 x 13 + 9: full and partial tiles touch every border
        for tile in iter_tiles(scene.grid, tile_size=13, halo=engine.window // 2):
            data = read_tile(scene, tile, stats=stats)
            probs = engine.predict_tile(data)
            assert probs.shape == (engine.num_classes, *tile.shape)
            rows, cols = np.nonzero(np.ones(tile.shape, bool))
            win = read_windows(scene, rows + tile.row, cols + tile.col, size=engine.window,
                               stats=stats)
            np.testing.assert_allclose(probs[:, rows, cols].T,
                                       engine.predict_windows(win.hsi, win.lidar), atol=1e-5)
        # strips of a few rows give the same tile
        tile = Tile(0, 0, 48, 48, engine.window // 2)
        data = read_tile(scene, tile, stats=stats)
        whole = engine.predict_tile(data)
        np.testing.assert_allclose(FastEngine(student, batch_size=50).predict_tile(data), whole,
                                   atol=1e-5)
        # larger windows (e.g. the teacher's) are cropped to the student's
        win = read_windows(scene, np.array([0, 20, 47]), np.array([47, 20, 0]),
                           size=engine.window + 4, stats=stats)
        np.testing.assert_allclose(engine.predict_windows(win.hsi, win.lidar),
                                   whole[:, [0, 20, 47], [47, 20, 0]].T, atol=1e-5)
    with pytest.raises(ValueError, match="halo"):
        engine.predict_tile(TileData(Tile(0, 0, 4, 4, 0),
                                     data.arrays.map(lambda a: a[:, :4, :4]),
                                     np.ones((4, 4), bool)))


def test_invalid_pixels_are_zero_and_do_not_change_valid_ones():
    cfg = StudentConfig(hsi_bands=5, lidar_bands=0, num_classes=3, hidden=8, heads=2,
                        dilations=(1, 2), pool=5)
    engine = FastEngine(StudentNet(cfg, seed=1))
    half = engine.window // 2
    rng = np.random.default_rng(0)
    image = rng.standard_normal((5, 17, 19)).astype(np.float32)
    padded = np.pad(image, ((0, 0), (half, half), (half, half)), mode="reflect")
    valid = rng.random((17, 19)) > 0.3
    tile = Tile(0, 0, 17, 19, half)
    probs = engine.predict_tile(TileData(tile, Modalities(padded), valid))
    assert np.all(probs[:, ~valid] == 0)
    rows, cols = np.nonzero(valid)
    ref = engine.predict_windows(extract_windows(image, rows, cols, engine.window), None)
    np.testing.assert_allclose(probs[:, rows, cols].T, ref, atol=1e-5)
    nothing = engine.predict_tile(TileData(tile, Modalities(padded), np.zeros((17, 19), bool)))
    assert not nothing.any()


def test_model_file_round_trip_gives_identical_fast_predictions(files, teacher, tmp_path):
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        bundle = add_fast_path(scene, teacher.bundle, classifier=teacher.classifier, seed=0,
                               pixels=600, **{**SMALL, "steps": 5})
        stats = bundle.scene_stats
        data = read_tile(scene, Tile(0, 0, 48, 48, TINY.model.window // 2), stats=stats)
    assert EXTRAS_KEY not in teacher.bundle.extras  # the input bundle is left alone
    assert has_fast_path(bundle) and not has_fast_path(teacher.bundle)
    summary = bundle.provenance["fast_path"]
    assert summary["pixels"] == 600 and 0.0 <= summary["agreement_heldout"] <= 1.0
    assert bundle.extras[EXTRAS_KEY]["provenance"] == summary
    loaded = load_model(save_model(bundle, tmp_path / "m.pt"))  # weights_only load
    assert loaded.provenance["fast_path"] == summary
    np.testing.assert_array_equal(FastEngine(loaded).predict_tile(data),
                                  FastEngine(bundle).predict_tile(data))
    # the faithful weights are untouched by the fast path
    for key, value in teacher.bundle.state_dict.items():
        assert torch.equal(loaded.state_dict[key], value)


def test_distillation_is_deterministic(files, teacher):
    short = {**SMALL, "steps": 60}
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        runs = [distill_student(scene, teacher.bundle, classifier=teacher.classifier,
                                seed=seed, pixels=PIXELS, **short) for seed in (0, 0, 1)]
    (first, r1), (again, r2), (other, _) = runs
    for key, value in again.state_dict().items():
        assert torch.equal(value, first.state_dict()[key]), key
    assert r1.agreement == r2.agreement and r1.history == r2.history
    assert not torch.equal(other.state_dict()["head.weight"], first.state_dict()["head.weight"])


def test_pixels_come_in_blocks_and_blocks_are_held_out_whole(files):
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        rows, cols, group = _sample_pixels(scene, 900, block=3, seed=0)
        every = _sample_pixels(scene, 10**6, block=3, seed=0)
    assert np.unique(rows * 48 + cols).size == rows.size  # distinct pixels
    assert 0.8 * 900 <= rows.size <= 900 + 9
    for g in np.unique(group):
        r, c = rows[group == g], cols[group == g]
        assert r.max() - r.min() <= 2 and c.max() - c.min() <= 2
    held = _holdout(group, 0.25, seed=0)
    for g in np.unique(group):
        assert held[group == g].all() or not held[group == g].any()
    assert 0.2 <= held.mean() <= 0.3
    assert every[0].size == 48 * 48  # a small scene gives every valid pixel


def test_models_without_a_student_are_refused_with_the_fix(teacher):
    with pytest.raises(ModelError, match="re-run diffclip fewshot"):
        FastEngine(teacher.bundle)
    with pytest.raises(ModelError, match="no fast path"):
        student_from_extras({})
    bundle = teacher.bundle  # a pretrained (not fine-tuned) model is refused too
    other = type(bundle)(**{**bundle.__dict__, "kind": "pretrained"})
    with pytest.raises(ModelError, match="pretrained"):
        FastEngine(other)
    # a student that does not fit the model's classes is refused
    wrong = StudentNet(StudentConfig(hsi_bands=bundle.hsi_bands,
                                     lidar_bands=bundle.lidar_bands, num_classes=9))
    bad = type(bundle)(**{**bundle.__dict__, "extras": {EXTRAS_KEY: student_to_extras(wrong)}})
    with pytest.raises(ModelError, match="9 classes"):
        FastEngine(bad)
    assert not has_fast_path(bad)


def test_configurations_round_trip_and_validate():
    for window in (1, 3, 5, 7, 9, 11, 13):
        dilations, pool = default_layout(window)
        cfg = StudentConfig(hsi_bands=4, lidar_bands=1, num_classes=2, dilations=dilations,
                            pool=pool)
        assert cfg.window == window
        assert StudentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        default_layout(4)
    with pytest.raises(ModelError, match="unknown"):
        StudentConfig.from_dict({**cfg.to_dict(), "depth": 3})
    with pytest.raises(ModelError, match="multiple of heads"):
        StudentConfig(hsi_bands=4, lidar_bands=0, num_classes=2, hidden=10, heads=4)
    with pytest.raises(ModelError, match="pool"):
        StudentConfig(hsi_bands=4, lidar_bands=0, num_classes=2, pool=4)
    cfg = DistillConfig(pixels=100, dilations=[1, 2])
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ModelError, match=r"unknown DistillConfig fields \[.pixel.\]"):
        DistillConfig.from_dict({"pixel": 3})
    with pytest.raises(ValueError):
        DistillConfig(holdout=1.0)
