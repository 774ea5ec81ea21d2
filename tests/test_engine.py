"""TileEngine (the optimised faithful path) against the classifier's own predict_proba."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from model_windows import extract

from diffclip_cli.errors import ModelError
from diffclip_cli.infer.engine import TileEngine, tile_windows
from diffclip_cli.modalities import Modalities
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.config import load_preset
from diffclip_cli.model.inference import InferenceModel, onednn_available
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.text import Vocabulary
from diffclip_cli.sampling.tiles import Tile, TileData

PROMPTS = [f"a patch of class{i}" for i in range(6)]


def random_classifier(preset: str, hsi_bands: int, lidar_bands: int, seed: int = 0,
                      **model: object) -> DiffCLIPClassifier:
    """A classifier whose every weight is random, BatchNorm statistics and norms included,
    so folding and precomputed constants are exercised (not identity maps). ``model``
    overrides fields of the preset's model configuration."""
    config = dataclasses.replace(load_preset(preset).model, **model)
    net = DiffCLIPNet(config, hsi_bands=hsi_bands, lidar_bands=lidar_bands, seed=seed)
    clf = DiffCLIPClassifier(net, vocabulary=Vocabulary.build(PROMPTS), prompts=PROMPTS,
                             seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mod in clf.net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0.0, 0.3, generator=gen)
                mod.running_var.uniform_(0.5, 1.5, generator=gen)
            if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                mod.weight.uniform_(0.5, 1.5, generator=gen)
                mod.bias.normal_(0.0, 0.1, generator=gen)
            if isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.normal_(0.0, 0.05, generator=gen)
        for p in clf.net.cls_token.values():
            p.normal_(0.0, 1.0, generator=gen)
        clf.logit_scale.fill_(3.0)
    return clf.eval()


@pytest.fixture(scope="module")
def tiny() -> DiffCLIPClassifier:
    return random_classifier("tiny", 12, 2)


@pytest.fixture(scope="module")
def tiny_hsi() -> DiffCLIPClassifier:
    return random_classifier("tiny", 9, 0, seed=3)


@pytest.fixture(scope="module")
def tiny_pixel() -> DiffCLIPClassifier:
    return random_classifier("tiny", 12, 2, seed=11, pixel_readout=True)


@pytest.fixture(scope="module")
def tiny_pixel_hsi() -> DiffCLIPClassifier:
    return random_classifier("tiny", 9, 0, seed=13, pixel_readout=True)


@pytest.fixture(scope="module")
def paper() -> DiffCLIPClassifier:
    return random_classifier("paper", 144, 1, seed=5)


@pytest.fixture(scope="module")
def paper_hsi() -> DiffCLIPClassifier:
    return random_classifier("paper", 48, 0, seed=7)


def scene_arrays(bands: int, lidar: int, shape: tuple[int, int], seed: int
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    hsi = rng.standard_normal((bands, *shape), dtype=np.float32)
    li = rng.standard_normal((lidar, *shape), dtype=np.float32) if lidar else None
    return hsi, li


def tile_of(hsi: np.ndarray, lidar: np.ndarray | None, valid: np.ndarray, tile: Tile
            ) -> TileData:
    """A tile plus halo cut from the whole scene reflect-padded by the halo (as read_tile)."""
    k = tile.halo

    def cut(a: np.ndarray) -> np.ndarray:
        padded = np.pad(a, ((0, 0), (k, k), (k, k)), mode="reflect")
        return padded[:, tile.row:tile.row + tile.height + 2 * k,
                      tile.col:tile.col + tile.width + 2 * k].copy()

    return TileData(tile, Modalities(cut(hsi), None if lidar is None else cut(lidar)),
                    valid[tile.slices].copy())


def reference(clf: DiffCLIPClassifier, hsi: np.ndarray, lidar: np.ndarray | None,
              rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """predict_proba on windows extracted independently of the engine."""
    w = clf.config.window
    h = torch.from_numpy(extract(hsi, rows, cols, w))
    li = None if lidar is None else torch.from_numpy(extract(lidar, rows, cols, w))
    return clf.predict_proba(h, li).numpy()


def check_tiles(clf: DiffCLIPClassifier, engine: TileEngine, tiles: list[Tile],
                shape: tuple[int, int], *, atol: float, seed: int = 0) -> None:
    bands = clf.net.hsi_bands
    hsi, lidar = scene_arrays(bands, clf.net.lidar_bands, shape, seed)
    valid = np.random.default_rng(seed).random(shape) > 0.2
    for tile in tiles:
        data = tile_of(hsi, lidar, valid, tile)
        probs = engine.predict_tile(data)
        assert probs.shape == (len(PROMPTS), tile.height, tile.width)
        assert probs.dtype == np.float32
        rows, cols = np.nonzero(data.valid)
        ref = reference(clf, hsi, lidar, rows + tile.row, cols + tile.col)
        np.testing.assert_allclose(probs[:, rows, cols].T, ref, rtol=0, atol=atol)
        assert np.all(probs[:, ~data.valid] == 0)
        np.testing.assert_allclose(probs[:, rows, cols].sum(axis=0), 1, atol=1e-5)


# Tiles touching every scene border, an inner tile and a ragged last tile.
TINY_TILES = [Tile(0, 0, 7, 9, 2), Tile(7, 9, 6, 5, 2), Tile(13, 14, 4, 3, 2), Tile(0, 14, 3, 3, 2)]


@pytest.mark.parametrize("onednn", [None, False])
def test_tiny_tiles_equal_reference(tiny, onednn):
    engine = TileEngine(tiny, batch_size=16, onednn=onednn)
    check_tiles(tiny, engine, TINY_TILES, (17, 17), atol=1e-5)


def test_tiny_hsi_only_tiles_equal_reference(tiny_hsi):
    check_tiles(tiny_hsi, TileEngine(tiny_hsi, batch_size=16), TINY_TILES, (17, 17),
                atol=1e-5, seed=1)


@pytest.mark.parametrize("onednn", [None, False])
def test_pixel_readout_tiles_equal_reference(tiny_pixel, tiny_pixel_hsi, onednn):
    """The centre-neighbourhood readout (model.pixel_readout) is computed by the engine as by
    the network, with and without LiDAR."""
    assert tiny_pixel.net.feature_dim == 4 * tiny_pixel.config.dim
    check_tiles(tiny_pixel, TileEngine(tiny_pixel, batch_size=16, onednn=onednn), TINY_TILES,
                (17, 17), atol=2e-6, seed=4)
    check_tiles(tiny_pixel_hsi, TileEngine(tiny_pixel_hsi, batch_size=16, onednn=onednn),
                TINY_TILES, (17, 17), atol=2e-6, seed=5)


def test_pixel_readout_reads_the_centre_neighbourhood(tiny_pixel):
    """The centre 3 x 3 pixels reach the classifier directly: changing one of them moves the
    HSI pixel part of the features, changing a pixel outside it does not (only the class
    token, through attention), and LiDAR's pixel part stays put."""
    w = tiny_pixel.config.window
    d = tiny_pixel.config.dim
    gen = torch.Generator().manual_seed(0)
    hsi = torch.randn(4, 12, w, w, generator=gen)
    lidar = torch.randn(4, 2, w, w, generator=gen)
    inside, outside = hsi.clone(), hsi.clone()
    inside[:, :, w // 2 + 1, w // 2 - 1] += 3.0
    outside[:, :, 0, 0] += 3.0
    with torch.no_grad():
        feats = tiny_pixel.net.features(hsi, lidar)
        moved = tiny_pixel.net.features(inside, lidar)
        far = tiny_pixel.net.features(outside, lidar)
    assert float((moved[:, d:2 * d] - feats[:, d:2 * d]).abs().max()) > 0.1
    torch.testing.assert_close(far[:, d:2 * d], feats[:, d:2 * d])
    assert float((far[:, :d] - feats[:, :d]).abs().max()) > 1e-3
    torch.testing.assert_close(moved[:, 3 * d:], feats[:, 3 * d:])


def test_paper_size_tiles_equal_reference(paper):
    tiles = [Tile(0, 0, 6, 5, 5), Tile(14, 15, 4, 5, 5)]  # top-left and bottom-right corners
    check_tiles(paper, TileEngine(paper, batch_size=24), tiles, (18, 20), atol=1e-5, seed=2)


def test_paper_size_hsi_only_tiles_equal_reference(paper_hsi):
    tiles = [Tile(5, 0, 5, 6, 5), Tile(0, 11, 5, 5, 5)]
    check_tiles(paper_hsi, TileEngine(paper_hsi, batch_size=24, onednn=False), tiles, (12, 16),
                atol=1e-5, seed=3)


def test_predictions_are_deterministic(tiny):
    hsi, lidar = scene_arrays(12, 2, (20, 20), 4)
    data = tile_of(hsi, lidar, np.ones((20, 20), bool), Tile(4, 4, 12, 12, 2))
    first = TileEngine(tiny).predict_tile(data)
    engine = TileEngine(tiny)
    assert np.array_equal(engine.predict_tile(data), first)
    assert np.array_equal(engine.predict_tile(data), first)


def test_windows_equal_tile_and_batch_size_does_not_matter(tiny):
    hsi, lidar = scene_arrays(12, 2, (16, 16), 5)
    valid = np.random.default_rng(5).random((16, 16)) > 0.3
    data = tile_of(hsi, lidar, valid, Tile(2, 3, 11, 10, 2))
    base = TileEngine(tiny, batch_size=32).predict_tile(data)
    for batch_size in (1, 7, 1000):
        other = TileEngine(tiny, batch_size=batch_size).predict_tile(data)
        np.testing.assert_allclose(other, base, rtol=0, atol=1e-6)
    win_hsi, win_lidar, rows, cols = tile_windows(data, tiny.config.window)
    for batch_size in (5, 64):
        windows = TileEngine(tiny, batch_size=batch_size).predict_windows(win_hsi, win_lidar)
        assert windows.shape == (rows.size, len(PROMPTS)) and windows.dtype == np.float32
        np.testing.assert_allclose(windows, base[:, rows, cols].T, rtol=0, atol=1e-6)


def test_tile_embeds_each_pixel_once_and_bounds_batches(tiny, monkeypatch):
    embedded: list[int] = []
    batches: list[int] = []
    embed, encode = InferenceModel.embed, InferenceModel.encode

    def count_embed(self, modality, pixels):
        embedded.append(pixels.shape[0])
        return embed(self, modality, pixels)

    def count_encode(self, sequences):
        batches.append(sequences.shape[0])
        return encode(self, sequences)

    monkeypatch.setattr(InferenceModel, "embed", count_embed)
    monkeypatch.setattr(InferenceModel, "encode", count_encode)
    hsi, lidar = scene_arrays(12, 2, (30, 30), 6)
    data = tile_of(hsi, lidar, np.ones((30, 30), bool), Tile(0, 0, 30, 30, 2))
    TileEngine(tiny, batch_size=50).predict_tile(data)
    # Stems and token embedding: once per pixel of the padded tile and modality, not per window.
    assert sum(embedded) == 2 * 34 * 34
    # Both modalities of at most batch_size windows per forward pass.
    assert max(batches) == 2 * 50 and sum(batches) == 2 * 900


def test_empty_tile_and_errors(tiny, tiny_hsi):
    engine = TileEngine(tiny)
    hsi, lidar = scene_arrays(12, 2, (9, 9), 7)
    empty = tile_of(hsi, lidar, np.zeros((9, 9), bool), Tile(0, 0, 9, 9, 2))
    assert np.array_equal(engine.predict_tile(empty), np.zeros((6, 9, 9), np.float32))
    assert engine.predict_windows(np.zeros((0, 12, 5, 5), np.float32),
                                  np.zeros((0, 2, 5, 5), np.float32)).shape == (0, 6)
    with pytest.raises(ValueError, match="halo"):
        engine.predict_tile(tile_of(hsi, lidar, np.ones((9, 9), bool), Tile(0, 0, 9, 9, 3)))
    good = tile_of(hsi, lidar, np.ones((9, 9), bool), Tile(0, 0, 9, 9, 2))
    with pytest.raises(ValueError, match="core plus the halo"):
        engine.predict_tile(TileData(good.tile, Modalities(good.arrays.hsi,
                                                           good.arrays.lidar[:, 1:]),
                                     good.valid))
    with pytest.raises(ModelError, match="LiDAR"):
        engine.predict_tile(tile_of(hsi, None, np.ones((9, 9), bool), Tile(0, 0, 9, 9, 2)))
    with pytest.raises(ModelError, match="without LiDAR"):
        TileEngine(tiny_hsi).predict_tile(
            tile_of(hsi[:9], lidar, np.ones((9, 9), bool), Tile(0, 0, 9, 9, 2)))
    with pytest.raises(ModelError, match="hsi windows"):
        engine.predict_windows(np.zeros((3, 11, 5, 5), np.float32),
                               np.zeros((3, 2, 5, 5), np.float32))
    with pytest.raises(ValueError, match="precision"):
        TileEngine(tiny, precision="fp16")


def test_weight_changes_are_picked_up():
    clf = random_classifier("tiny", 12, 2, seed=11)
    engine = TileEngine(clf)
    hsi, lidar = scene_arrays(12, 2, (8, 8), 8)
    data = tile_of(hsi, lidar, np.ones((8, 8), bool), Tile(0, 0, 8, 8, 2))
    before = engine.predict_tile(data)
    with torch.no_grad():
        clf.net.stems["hsi"][1].running_mean.add_(0.5)
        clf.net.blocks[0].attn.qkv.weight.mul_(1.5)
    after = engine.predict_tile(data)
    assert not np.allclose(after, before, atol=1e-4)
    rows, cols = np.nonzero(np.ones((8, 8), bool))
    np.testing.assert_allclose(after[:, rows, cols].T,
                               reference(clf, hsi, lidar, rows, cols), rtol=0, atol=1e-5)


def test_threads_option_is_scoped(tiny):
    hsi, lidar = scene_arrays(12, 2, (8, 8), 9)
    data = tile_of(hsi, lidar, np.ones((8, 8), bool), Tile(0, 0, 8, 8, 2))
    before = torch.get_num_threads()
    probs = TileEngine(tiny, threads=1).predict_tile(data)
    assert torch.get_num_threads() == before
    np.testing.assert_allclose(probs, TileEngine(tiny).predict_tile(data), rtol=0, atol=1e-6)


@pytest.mark.parametrize("onednn", [None, False])
def test_bf16_is_close_to_fp32(tiny, onednn):
    if onednn is None and not onednn_available(torch.bfloat16):
        pytest.skip("no oneDNN bfloat16 kernels here")
    hsi, lidar = scene_arrays(12, 2, (16, 16), 10)
    data = tile_of(hsi, lidar, np.ones((16, 16), bool), Tile(0, 0, 16, 16, 2))
    fp32 = TileEngine(tiny).predict_tile(data)
    bf16 = TileEngine(tiny, precision="bf16", onednn=onednn).predict_tile(data)
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16.sum(axis=0), 1, atol=1e-5)
    np.testing.assert_allclose(bf16, fp32, rtol=0, atol=2e-2)
    assert (bf16.argmax(0) == fp32.argmax(0)).mean() > 0.95


@pytest.mark.parametrize(("precision", "onednn", "attention", "chunk", "atol"), [
    ("fp32", None, "explicit", 16, 1e-5),
    ("fp32", False, "fused", None, 1e-5),   # the CUDA arrangement, in float32
    ("bf16", False, "fused", None, 2e-2),   # the CUDA arrangement (bfloat16 default there)
    ("bf16", False, "explicit", 3, 2e-2),
])
def test_inference_model_arrangements_equal_reference(tiny, precision, onednn, attention, chunk,
                                                      atol):
    model = InferenceModel(tiny, precision=precision, onednn=onednn, attention=attention)
    model.attention_chunk = chunk
    hsi, lidar = scene_arrays(12, 2, (9, 9), 12)
    rows, cols = np.nonzero(np.ones((9, 9), bool))
    w = tiny.config.window
    with torch.inference_mode():
        got = model.predict_windows({"hsi": torch.from_numpy(extract(hsi, rows, cols, w)),
                                     "lidar": torch.from_numpy(extract(lidar, rows, cols, w))})
    np.testing.assert_allclose(got.numpy(), reference(tiny, hsi, lidar, rows, cols), rtol=0,
                               atol=atol)
    with pytest.raises(ValueError, match="attention"):
        InferenceModel(tiny, attention="flash")
