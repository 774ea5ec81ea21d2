"""The training stages as library functions: stage 1, stage 2, their plan and scoring."""

import numpy as np
import pytest
from scenes import make_scene, write_scene

from diffclip_cli.errors import ModelError
from diffclip_cli.infer.engine import TileEngine
from diffclip_cli.io.labels import read_labels
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.archive import load_model, save_model
from diffclip_cli.model.config import load_preset
from diffclip_cli.model.device import DeviceError, resolve_device
from diffclip_cli.model.modelfile import build_classifier
from diffclip_cli.report.scoring import predict_pixels
from diffclip_cli.sampling.tiles import iter_tiles, read_tile
from diffclip_cli.sampling.windows import read_windows
from diffclip_cli.workflows.fewshot import FewshotRequest, fewshot_scene
from diffclip_cli.workflows.pretrain import pretrain_scene

TINY = load_preset("tiny")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    scene = make_scene(height=48, width=48, hsi_bands=16, patch_size=20, seed=0)
    return write_scene(scene, tmp_path_factory.mktemp("scene"), hsi_dtype="int16")


@pytest.fixture(scope="module")
def result(files):
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        labels = read_labels(files["labels"], scene.grid, classes=files["classes"])
        return fewshot_scene(scene, labels, FewshotRequest(
            shots=5, preset=TINY, pretrain_samples=800, seed=0))


def test_fewshot_learns_and_reports_held_out_pixels(result):
    assert result.split.train.size == 20
    assert result.report is not None
    # every labelled pixel not trained on is scored, and only those
    assert result.report.n_pixels == len(result.labels) - 20
    assert result.report.overall_accuracy >= 0.9
    assert result.bundle.kind == "classifier"
    assert result.bundle.provenance["shots"] == 5
    assert result.bundle.class_table.names == result.labels.classes.names


def test_fewshot_is_deterministic(files, result):
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        labels = read_labels(files["labels"], scene.grid, classes=files["classes"])
        again = fewshot_scene(scene, labels, FewshotRequest(
            shots=5, preset=TINY, pretrain_samples=800, seed=0, evaluate=False))
    for key, value in result.bundle.state_dict.items():
        assert np.array_equal(value.numpy(), again.bundle.state_dict[key].numpy()), key


def test_tile_engine_equals_window_predictions(files, result, tmp_path):
    path = save_model(result.bundle, tmp_path / "m.pt")
    bundle = load_model(path)
    engine = TileEngine(build_classifier(bundle))
    stats = bundle.scene_stats
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        for tile in iter_tiles(scene.grid, tile_size=20, halo=engine.window // 2):
            probs = engine.predict_tile(read_tile(scene, tile, stats=stats))
            rows, cols = np.nonzero(np.ones(tile.shape, bool))
            ref = predict_pixels(scene, bundle, rows + tile.row, cols + tile.col)
            np.testing.assert_allclose(probs[:, rows, cols].T, ref, atol=1e-5)
            win = read_windows(scene, rows + tile.row, cols + tile.col, size=engine.window,
                               stats=stats)
            np.testing.assert_array_equal(engine.predict_windows(win.hsi, win.lidar), ref)


def test_pretrained_model_reused_and_band_mismatch_refused(files, tmp_path):
    with Scene.open(files["hsi"], [files["lidar"]]) as scene:
        stage1 = pretrain_scene(scene, preset=TINY.with_overrides(**{"pretrain.epochs": 2}),
                                samples=200, seed=1)
        labels = read_labels(files["labels"], scene.grid, classes=files["classes"])
        res = fewshot_scene(scene, labels, FewshotRequest(
            shots=3, preset=TINY, pretrained=stage1.bundle, seed=1, evaluate=False))
        assert res.bundle.scene_stats == stage1.bundle.scene_stats
        assert res.pretrain_history == []
    with Scene.open(files["hsi"]) as hsi_only, pytest.raises(ModelError, match="LiDAR"):
        fewshot_scene(hsi_only, labels,
                      FewshotRequest(shots=3, preset=TINY, pretrained=stage1.bundle))


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu9")


def test_scoring_a_pretrained_model_is_a_model_error(tiny):
    from diffclip_cli.report.scoring import evaluate_pixels

    with Scene.open(tiny.hsi, [tiny.lidar]) as scene:
        labels = read_labels(tiny.labels, scene.grid)
        with pytest.raises(ModelError, match="without classes"):
            evaluate_pixels(scene, load_model(tiny.pretrained), labels)
    assert load_model(tiny.model).require_classes().names
