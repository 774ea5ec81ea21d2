"""Spatial context: the same numbers tile by tile as on the whole scene, chosen from the shots,
stored with the model, and through the real commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import yaml
from rasterdata import write_tif
from tinyscene import invoke

from diffclip_cli.io.labels import read_labels
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.archive import load_model, save_model
from diffclip_cli.model.config import load_preset
from diffclip_cli.model.modelfile import build_network, bundle_from_network
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.report.baseline import SpatialChoice, spectral_spatial_svm
from diffclip_cli.sampling.context import (
    compute_context,
    context_halo,
    model_inputs,
    read_context,
    scene_projection,
    smooth_stack,
)
from diffclip_cli.sampling.normalise import SceneStats, compute_stats
from diffclip_cli.sampling.shots import sample_shots
from diffclip_cli.sampling.tiles import iter_tiles, read_tile
from diffclip_cli.sampling.windows import extract_windows, read_windows
from diffclip_cli.train.spatial import choose_context

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCALES = (1.0, 2.5)


@pytest.fixture(scope="module")
def two_modality(tmp_path_factory):
    """A 37 x 45 scene, 5 HSI bands (one NaN pixel) and a 2-channel LiDAR on the same grid."""
    folder = tmp_path_factory.mktemp("ctx")
    rng = np.random.default_rng(3)
    hsi = rng.normal(size=(5, 37, 45)).astype(np.float32).cumsum(axis=2)
    hsi[2, 5, 6] = np.nan
    lidar = rng.normal(size=(2, 37, 45)).astype(np.float32).cumsum(axis=1)
    return write_tif(folder / "hsi.tif", hsi), write_tif(folder / "lidar.tif", lidar)


def _context_stats(scene: Scene) -> SceneStats:
    return compute_context(scene, compute_stats(scene, seed=0, n_samples=500), SCALES,
                           n_components=3, samples=800)


def test_context_stats_round_trip_and_count_their_channels(two_modality):
    with Scene.open(*two_modality) as scene:
        stats = _context_stats(scene)
    assert stats.context is not None and stats.context.scales == SCALES
    assert stats.context_bands() == (3 * 2, 2 * 2)
    back = SceneStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert back == stats
    # statistics without context keep the form older model files have
    assert "context" not in SceneStats(stats.hsi, stats.lidar).to_dict()


def test_tiles_and_windows_give_the_whole_scenes_model_inputs(two_modality):
    halo = 2
    with Scene.open(*two_modality) as scene:
        stats = _context_stats(scene)
        k = context_halo(SCALES) + halo
        whole = scene.read(scene.grid.full_window())
        ref = model_inputs(whole.hsi.copy(), whole.lidar.copy(), whole.valid, stats=stats,
                           pad=((k, k), (k, k)))
        assert ref.hsi.shape == (5 + 6, 37 + 2 * halo, 45 + 2 * halo)
        assert ref.lidar is not None and ref.lidar.shape == (2 + 4, 37 + 2 * halo, 45 + 2 * halo)
        for tile in iter_tiles(scene.grid, tile_size=16, halo=halo):
            data = read_tile(scene, tile, stats=stats)
            sl = (slice(None), slice(tile.row, tile.row + tile.height + 2 * halo),
                  slice(tile.col, tile.col + tile.width + 2 * halo))
            np.testing.assert_allclose(data.arrays.hsi, ref.hsi[sl], rtol=0, atol=1e-5)
            np.testing.assert_allclose(data.arrays.lidar, ref.lidar[sl], rtol=0, atol=1e-5)
        rng = np.random.default_rng(1)
        rows = np.concatenate([rng.integers(0, 37, 40), [0, 36, 5]])
        cols = np.concatenate([rng.integers(0, 45, 40), [44, 0, 6]])
        got = read_windows(scene, rows, cols, size=5, stats=stats, tile_size=12)
    want = np.stack([ref.hsi[:, r:r + 5, c:c + 5] for r, c in zip(rows, cols, strict=True)])
    np.testing.assert_allclose(got.hsi, want, rtol=0, atol=1e-5)
    # the mirrored border is the mirror of the inputs (what extract_windows pads with)
    core = ref.hsi[:, halo:-halo, halo:-halo]
    np.testing.assert_allclose(got.hsi, extract_windows(core, rows, cols, 5), rtol=0, atol=1e-4)
    # the context channels are the smoothed components, normalised like bands
    assert np.abs(got.hsi[:, 5:]).mean() < 2.0 and got.hsi[:, 5:].std() > 0.05


def test_smoothing_ignores_nodata_pixels():
    channels = np.ones((1, 9, 9), np.float32)
    channels[0, 4, 4] = 1e6  # garbage where the pixel is invalid
    valid = np.ones((9, 9), bool)
    valid[4, 4] = False
    out = smooth_stack(channels, valid, (1.0,))
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)
    assert smooth_stack(channels, np.zeros((9, 9), bool), (1.0,)).max() == 0.0


def test_a_model_with_context_saves_loads_and_reads_its_channels(two_modality, tmp_path):
    preset = load_preset("tiny")
    with Scene.open(*two_modality) as scene:
        stats = _context_stats(scene)
        net = DiffCLIPNet(preset.model, hsi_bands=5, lidar_bands=2, seed=0,
                          context_bands=stats.context_bands())
        batch = read_windows(scene, np.array([3, 30]), np.array([4, 40]),
                             size=preset.model.window, stats=stats)
    path = save_model(bundle_from_network(net, preset=preset, stats=stats), tmp_path / "m.pt")
    bundle = load_model(path)
    assert bundle.hsi_bands == 5 and bundle.scene_stats == stats
    rebuilt = build_network(bundle)
    import torch

    with torch.no_grad():
        a = net.eval().features(torch.from_numpy(batch.hsi), torch.from_numpy(batch.lidar))
        b = rebuilt.features(torch.from_numpy(batch.hsi), torch.from_numpy(batch.lidar))
    assert torch.equal(a, b)


# ----------------------------------------------------------- the choice, from the shots
def _fields_scene(folder, *, speckle: bool, seed: int = 0):
    """Four classes, 12 bands, 64 x 64 pixels.

    ``speckle=False``: the classes are 16 x 16 fields and each pixel's spectrum is its class
    mean under noise twice the classes' separation (a field's average is what tells them
    apart). ``speckle=True``: each pixel draws its own class, with a tenth of that noise.
    """
    rng = np.random.default_rng(seed)
    h = w = 64
    if speckle:
        cls = rng.integers(0, 4, (h, w))
    else:
        blocks = rng.integers(0, 4, (4, 4))
        blocks[0, :] = [0, 1, 2, 3]  # every class has a field
        cls = np.kron(blocks, np.ones((16, 16), int))
    means = rng.normal(size=(4, 12)) * 0.5
    noise = (0.1 if speckle else 2.0) * rng.normal(size=(12, h, w))
    hsi = (means[cls].transpose(2, 0, 1) + noise + 10).astype(np.float32)
    hsi_path = write_tif(folder / "hsi.tif", hsi)
    labels = write_tif(folder / "labels.tif", (cls + 1).astype(np.uint8), nodata=0)
    table = folder / "classes.csv"
    table.write_text("id,name\n1,alpha\n2,beta\n3,gamma\n4,delta\n")
    return hsi_path, labels, table


@pytest.mark.parametrize("speckle", [False, True])
def test_the_shots_choose_context_where_fields_are_wide_and_none_where_not(tmp_path, speckle):
    hsi, labels_path, table = _fields_scene(tmp_path, speckle=speckle)
    config = load_preset("tiny").model.with_overrides(context_scales=[1, 2, 4],
                                                      context_components=4)
    with Scene.open(hsi) as scene:
        labels = read_labels(labels_path, scene.grid, classes=table)
        split = sample_shots(labels, 5, seed=0)
        stats = compute_stats(scene, seed=0)
        picked = choose_context(scene, stats, config, labels.rows[split.train],
                                labels.cols[split.train], labels.class_ids[split.train])
        # the baseline with its choice against the bands alone, on the test pixels
        projection = scene_projection(scene, stats, n_components=4)
        train = read_context(scene, labels.rows[split.train], labels.cols[split.train],
                             stats=stats, projection=projection, scales=(1.0, 2.0, 4.0))
        test = read_context(scene, labels.rows[split.test], labels.cols[split.test],
                            stats=stats, projection=projection, scales=(1.0, 2.0, 4.0))
    truth = labels.class_ids[split.test]
    chosen, _ = spectral_spatial_svm(train, labels.class_ids[split.train], test,
                                     scales=(1.0, 2.0, 4.0))
    bands_only, _ = spectral_spatial_svm((train[0], train[1][:, :0]),
                                         labels.class_ids[split.train], (test[0], test[1][:, :0]),
                                         scales=())
    acc, acc_bands = (chosen == truth).mean(), (bands_only == truth).mean()
    if speckle:
        assert picked.stats.context is None and picked.choice is not None
        assert picked.choice.scales == () and acc_bands > 0.95
    else:
        assert picked.stats.context is not None and picked.choice is not None
        assert picked.stats.context.scales == picked.choice.scales != ()
        # once the context wins, the network reads every candidate scale, whichever prefix
        # the cross-validation preferred
        assert picked.choice.scales == (1.0, 2.0, 4.0)
        assert acc > acc_bands + 0.3 and acc > 0.8


@pytest.mark.parametrize(("gained", "given"), [(20, (1.0, 2.0, 4.0)), (2, ())])
def test_a_winning_context_gives_every_scale_not_the_best_prefix(tmp_path, monkeypatch,
                                                                  gained, given):
    """Cross-validation preferring a smaller prefix (up to 2 px) decides whether, not which:
    beyond chance the network reads every candidate scale, within chance none."""
    hsi, labels_path, table = _fields_scene(tmp_path, speckle=False)
    config = load_preset("tiny").model.with_overrides(context_scales=[1, 2, 4],
                                                      context_components=4)
    n = 40
    bands = np.zeros(n, bool)
    best = np.zeros(n, bool)
    best[:gained] = True  # the shots the prefix up to 2 px gets right and the bands do not

    def prefers_two(train, y, test, *, scales):
        return None, SpatialChoice(scales=(1.0, 2.0), scores={0.0: 0.0, 2.0: gained / n},
                                   folds="leave-one-out",
                                   outcomes={0.0: bands, 2.0: best})

    monkeypatch.setattr("diffclip_cli.train.spatial.spectral_spatial_svm", prefers_two)
    with Scene.open(hsi) as scene:
        labels = read_labels(labels_path, scene.grid, classes=table)
        split = sample_shots(labels, 5, seed=0)
        picked = choose_context(scene, compute_stats(scene, seed=0), config,
                                labels.rows[split.train], labels.cols[split.train],
                                labels.class_ids[split.train])
    assert picked.choice is not None and picked.choice.scales == given
    if given:
        assert picked.stats.context is not None and picked.stats.context.scales == given
        assert picked.to_dict()["cv_accuracy"] == {"0.0": 0.0, "2.0": gained / n}
    else:
        assert picked.stats.context is None


def test_a_preset_without_candidates_compares_nothing(two_modality):
    with Scene.open(*two_modality) as scene:
        stats = compute_stats(scene, seed=0, n_samples=300)
        picked = choose_context(scene, stats, load_preset("paper").model, np.array([1, 2]),
                                np.array([1, 2]), np.array([1, 2]))
    assert picked.choice is None and picked.stats.context is None
    assert picked.to_dict() == {"scales": []}


def test_fewshot_and_classify_with_context_through_the_commands(tmp_path):
    hsi, labels, table = _fields_scene(tmp_path, speckle=False)
    preset = load_preset("tiny").to_dict()
    preset["model"].update(context_scales=[1, 2, 4], context_components=4)
    preset["pretrain"]["epochs"] = 2
    preset["finetune"]["epochs"] = 20
    preset_file = tmp_path / "ctx.yaml"
    preset_file.write_text(yaml.safe_dump(preset))
    model = tmp_path / "model.pt"
    invoke("fewshot", hsi, "--labels", labels, "--classes", table, "--shots", 5,
           "--preset", preset_file, "--pretrain-samples", 200, "-o", model, "-q", code=0)
    bundle = load_model(model)
    assert bundle.scene_stats.context is not None
    assert bundle.provenance["context"]["scales"] == list(bundle.scene_stats.context.scales)
    report = json.loads(model.with_name("model.report.json").read_text())
    assert report["overall_accuracy"] > 0.6
    assert [b["name"] for b in report["baselines"]] == ["per-pixel baseline",
                                                        "spectral-spatial baseline"]
    maps = []
    for tile in (16, 40):
        out = tmp_path / f"map{tile}.tif"
        invoke("classify", hsi, "--model", model, "-o", out, "--probabilities",
               tmp_path / f"p{tile}.tif", "--tile-size", tile, "-q", code=0)
        with rasterio.open(tmp_path / f"p{tile}.tif") as src:
            maps.append(src.read())
    # the context reaches across tiles: the same probabilities whatever the tile size
    np.testing.assert_allclose(maps[0], maps[1], rtol=0, atol=2e-5)
