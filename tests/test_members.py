"""Several fine-tunings averaged (``finetune.members``): stored, rebuilt, averaged, and through
the real commands."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
import yaml
from tinyscene import CLASSES, invoke

from diffclip_cli.errors import ModelError
from diffclip_cli.infer.engine import TileEngine
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.modalities import Modalities
from diffclip_cli.model.archive import load_model, save_model
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.config import load_preset
from diffclip_cli.model.modelfile import (
    MEMBERS_KEY,
    build_classifier,
    build_classifiers,
    bundle_from_classifier,
)
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.prompts import build_prompts
from diffclip_cli.model.text import Vocabulary
from diffclip_cli.sampling.normalise import BandStats, SceneStats
from diffclip_cli.sampling.tiles import Tile, TileData

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = load_preset("tiny")
TABLE = ClassTable([{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)])


def _members(n: int) -> list[DiffCLIPClassifier]:
    prompts = build_prompts(CLASSES, template="p4")
    out = []
    for seed in range(n):
        net = DiffCLIPNet(TINY.model, hsi_bands=6, lidar_bands=1, seed=0)
        out.append(DiffCLIPClassifier(net, vocabulary=Vocabulary.build(prompts),
                                      prompts=prompts, seed=seed).eval())
    return out


def _stats() -> SceneStats:
    return SceneStats(BandStats(np.zeros(6), np.ones(6)), BandStats(np.zeros(1), np.ones(1)))


def test_an_ensemble_file_holds_and_rebuilds_every_member(tmp_path):
    members = _members(3)
    bundle = bundle_from_classifier(members, preset=TINY, stats=_stats(), classes=TABLE,
                                    template="p4")
    assert len(bundle.extras[MEMBERS_KEY]) == 2
    back = load_model(save_model(bundle, tmp_path / "m.pt"))
    rebuilt = build_classifiers(back)
    assert len(rebuilt) == 3
    for a, b in zip(members, rebuilt, strict=True):
        for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert k == k2 and torch.equal(v, v2)
    # the heads differ (each member its own seed); member 0 is the bundle's own weights
    assert not torch.equal(rebuilt[0].image_projection.weight, rebuilt[1].image_projection.weight)
    assert torch.equal(build_classifier(back).image_projection.weight,
                       rebuilt[0].image_projection.weight)
    # a single classifier keeps the form older files have
    single = bundle_from_classifier(members[0], preset=TINY, stats=_stats(), classes=TABLE,
                                    template="p4")
    assert MEMBERS_KEY not in single.extras and len(build_classifiers(single)) == 1


def test_damaged_members_are_a_model_error():
    members = _members(2)
    bundle = bundle_from_classifier(members, preset=TINY, stats=_stats(), classes=TABLE,
                                    template="p4")
    bundle.extras[MEMBERS_KEY] = ["not a state dict"]
    with pytest.raises(ModelError, match="members"):
        build_classifiers(bundle)
    other = DiffCLIPClassifier(DiffCLIPNet(TINY.model, hsi_bands=6, lidar_bands=1, seed=0),
                               vocabulary=Vocabulary.build(["a x.", "b y."]),
                               prompts=["a x.", "b y."])
    with pytest.raises(ModelError, match="share prompts"):
        bundle_from_classifier([members[0], other], preset=TINY, stats=_stats(),
                               classes=TABLE, template="p4")


def test_the_engine_averages_its_members_on_windows_and_tiles():
    members = _members(3)
    rng = np.random.default_rng(0)
    w = TINY.model.window
    hsi = rng.normal(size=(7, 6, w, w)).astype(np.float32)
    lidar = rng.normal(size=(7, 1, w, w)).astype(np.float32)
    each = [TileEngine(m).predict_windows(hsi, lidar) for m in members]
    both = TileEngine(members).predict_windows(hsi, lidar)
    np.testing.assert_allclose(both, np.mean(each, axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(both.sum(axis=1), 1.0, atol=1e-5)
    halo = w // 2
    arrays = Modalities(rng.normal(size=(6, 6 + 2 * halo, 5 + 2 * halo)).astype(np.float32),
                        rng.normal(size=(1, 6 + 2 * halo, 5 + 2 * halo)).astype(np.float32))
    tile = TileData(Tile(0, 0, 6, 5, halo), arrays, np.ones((6, 5), bool))
    each_t = [TileEngine(m).predict_tile(tile) for m in members]
    np.testing.assert_allclose(TileEngine(members).predict_tile(tile),
                               np.mean(each_t, axis=0), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        TileEngine([])


def test_fewshot_with_members_through_the_commands(tiny, tmp_path):
    preset = TINY.to_dict()
    preset["finetune"].update(members=2, epochs=5, milestones=[3])
    preset["pretrain"]["epochs"] = 1
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(preset))
    models = []
    for name in ("a.pt", "b.pt"):
        out = tmp_path / name
        invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", tiny.labels, "--shots", 3,
               "--preset", path, "--pretrain-samples", 60, "--seed", 4, "-o", out, "-q", code=0)
        models.append(load_model(out))
    a, b = models
    assert len(a.extras[MEMBERS_KEY]) == 1
    assert a.preset_config.finetune.members == 2
    # deterministic: the same members from the same seed
    for x, y in zip(build_classifiers(a), build_classifiers(b), strict=True):
        assert all(torch.equal(v, y.state_dict()[k]) for k, v in x.state_dict().items())
    # classify maps with the members' mean
    probs = tmp_path / "p.tif"
    invoke("classify", tiny.hsi, tiny.lidar, "--model", tmp_path / "a.pt", "-o",
           tmp_path / "map.tif", "--probabilities", probs, "-q", code=0)
    with rasterio.open(probs) as src:
        p = src.read()
    valid = p[0] >= 0  # nodata -1
    assert valid.sum() > 0.9 * valid.size
    np.testing.assert_allclose(p[:, valid].sum(axis=0), 1.0, atol=1e-4)
    # ... the mean of what each member gives alone
    from diffclip_cli.io.raster import Scene
    from diffclip_cli.report.scoring import predict_pixels

    rows, cols = np.nonzero(valid)
    with Scene.open(tiny.hsi, [tiny.lidar]) as scene:
        both = predict_pixels(scene, a, rows, cols)
        each = [predict_pixels(scene, a, rows, cols, classifier=m)
                for m in build_classifiers(a)]
    np.testing.assert_allclose(both, np.mean(each, axis=0), rtol=0, atol=1e-5)
    np.testing.assert_allclose(both.T, p[:, rows, cols], rtol=0, atol=1e-4)
