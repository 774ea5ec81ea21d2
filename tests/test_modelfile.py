"""Model files: round trips, refusal of code and of newer formats, input checks."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from model_windows import scene_windows

from diffclip_cli.errors import ModelError, OutputError
from diffclip_cli.io.atomic import TEMP_PREFIX
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.model.archive import load_model, save_model
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.config import ModelConfig, Preset, load_preset
from diffclip_cli.model.modelfile import (
    FORMAT_TAG,
    FORMAT_VERSION,
    ModelBundle,
    build_classifier,
    build_network,
    bundle_from_classifier,
    bundle_from_network,
)
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.prompts import build_prompts
from diffclip_cli.model.text import Vocabulary
from diffclip_cli.sampling.normalise import SceneStats
from diffclip_cli.train.finetune import finetune
from diffclip_cli.train.pretrain import pretrain

PRESET = load_preset("tiny").with_overrides(**{"pretrain.epochs": 1, "finetune.epochs": 3})
STORED_STATS = {"hsi": {"center": [0.1] * 6, "scale": [1.0] * 6, "method": "percentile"},
                "lidar": {"center": [0.0], "scale": [2.0], "method": "percentile"}}
STATS = SceneStats.from_dict(STORED_STATS)


def _classifier(lidar: bool) -> tuple[DiffCLIPClassifier, ClassTable, torch.Tensor, torch.Tensor]:
    sw = scene_windows(size=24, bands=6, lidar_bands=1 if lidar else 0)
    classes = ClassTable({"id": k + 1, "name": n} for k, n in enumerate(sw.scene.class_names))
    net = DiffCLIPNet(PRESET.model, hsi_bands=6, lidar_bands=1 if lidar else 0, seed=1)
    pretrain(net, sw.data(sw.unlabelled(64, seed=0)), PRESET.pretrain, seed=1)
    prompts = build_prompts(classes.names, template="p1")
    clf = DiffCLIPClassifier(net, vocabulary=Vocabulary.build(prompts), seed=1)
    train, test = sw.few_shot(2, seed=0)
    finetune(clf, sw.data(train, labels=True), prompts, PRESET.finetune, seed=1)
    held = sw.data(test[:50])
    return clf, classes, held.windows.hsi, held.windows.lidar


@pytest.fixture(scope="module")
def trained():
    return _classifier(lidar=True)


def _bundle(clf, classes, **kw) -> ModelBundle:
    return bundle_from_classifier(
        clf, preset=PRESET, stats=STATS, classes=classes, template="p1",
        band_names={"hsi": [f"b{i}" for i in range(6)], "lidar": ["DSM"]},
        provenance={"seed": 1, "shots": 2, "inputs": {"hsi": "hsi.tif"}}, **kw)


def test_round_trip_gives_identical_probabilities(trained, tmp_path):
    clf, classes, hsi, lidar = trained
    extras = {"student": {"w": torch.arange(6.0)}, "note": "x", "n": [1, 2.5, None]}
    path = save_model(_bundle(clf, classes, extras=extras), tmp_path / "m.pt")
    assert not list(tmp_path.glob(TEMP_PREFIX + "*"))
    bundle = load_model(path)
    assert bundle.kind == "classifier" and bundle.format_version == FORMAT_VERSION
    assert bundle.class_table == classes and bundle.prompts == clf.prompts
    assert bundle.scene_stats == STATS and bundle.band_names["lidar"] == ["DSM"]
    assert bundle.stats == STORED_STATS  # the stored form
    assert bundle.provenance["seed"] == 1 and "version" in bundle.provenance
    restored = bundle.preset_config
    assert restored.name == "tiny"
    assert (restored.model, restored.pretrain, restored.finetune) == (
        PRESET.model, PRESET.pretrain, PRESET.finetune)
    assert torch.equal(bundle.extras["student"]["w"], torch.arange(6.0))
    assert bundle.extras["n"] == [1, 2.5, None]
    again = build_classifier(bundle)
    assert torch.equal(again.predict_proba(hsi, lidar), clf.predict_proba(hsi, lidar))
    with pytest.raises(OutputError, match="exists"):
        save_model(bundle, path)
    save_model(bundle, path, overwrite=True)


def test_a_model_file_is_parsed_once_into_typed_objects(trained, tmp_path):
    clf, classes, _, _ = trained
    bundle = load_model(save_model(_bundle(clf, classes), tmp_path / "m.pt"))
    assert isinstance(bundle.preset_config, Preset) and bundle.preset == "tiny"
    assert bundle.config is bundle.preset_config.model  # no re-parsing at each access
    assert isinstance(bundle.scene_stats, SceneStats) and bundle.scene_stats == STATS
    assert isinstance(bundle.class_table, ClassTable) and bundle.class_table == classes
    assert isinstance(bundle.vocabulary, Vocabulary)
    assert bundle.vocabulary.tokens == clf.vocabulary.tokens
    # the stored plain forms are views of the typed objects
    assert bundle.model_config == PRESET.model.to_dict() and bundle.classes == \
        classes.to_records()
    assert (bundle.pretrain_config, bundle.finetune_config) == (
        PRESET.pretrain.to_dict(), PRESET.finetune.to_dict())


def test_a_loaded_model_is_written_back_unchanged(trained, tmp_path):
    clf, classes, _, _ = trained
    first = save_model(_bundle(clf, classes, extras={"note": "x"}), tmp_path / "a.pt")
    again = save_model(load_model(first), tmp_path / "b.pt")
    a, b = (torch.load(p, weights_only=True) for p in (first, again))
    assert a["metadata"] == b["metadata"] and a["digest"] == b["digest"]
    assert a["extras"] == b["extras"] and a["state_dict"].keys() == b["state_dict"].keys()


def _old_format(payload: dict) -> list[str]:
    """Turn a payload into what an early diffclip wrote: format 1, no digest, no wavelengths,
    statistics without their method, a model configuration without the later fields."""
    meta = json.loads(payload["metadata"])
    dropped = [k for k in ("masking", "diffusion", "noise_steps", "pixel_readout")
               if meta["model_config"][k] == getattr(ModelConfig(), k)]
    for key in dropped:
        del meta["model_config"][key]
    del meta["wavelengths"]
    for stats in meta["stats"].values():
        del stats["method"]
    payload["metadata"] = json.dumps(meta, sort_keys=True)
    payload["format_version"] = 1
    del payload["digest"]
    return dropped


def test_an_old_format_model_file_loads_into_the_typed_objects(trained, tmp_path):
    clf, classes, hsi, lidar = trained
    payload = torch.load(save_model(_bundle(clf, classes), tmp_path / "new.pt"),
                         weights_only=True)
    dropped = _old_format(payload)
    assert dropped  # the tiny preset keeps the defaults of the later fields
    torch.save(payload, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt")
    assert old.format_version == 1 and old.wavelengths is None
    assert old.config == PRESET.model and old.preset_config.pretrain == PRESET.pretrain
    assert old.scene_stats == STATS and old.scene_stats.hsi.method == "percentile"
    assert old.class_table == classes and old.vocabulary is not None
    assert torch.equal(build_classifier(old).predict_proba(hsi, lidar),
                       clf.predict_proba(hsi, lidar))
    # re-saved, it is a current file with the same meaning (the defaults written out)
    resaved = load_model(save_model(old, tmp_path / "resaved.pt"))
    assert resaved.format_version == FORMAT_VERSION and resaved.config == old.config
    assert all(k in resaved.model_config for k in dropped)


def test_hsi_only_model_end_to_end(tmp_path):
    clf, classes, hsi, lidar = _classifier(lidar=False)
    assert lidar is None and len(classes) == 2
    bundle = bundle_from_classifier(clf, preset=PRESET, stats=STATS, classes=classes,
                                    template="p1")
    assert bundle.lidar_bands == 0 and bundle.band_names["lidar"] == []
    loaded = load_model(save_model(bundle, tmp_path / "hsi.pt"))
    proba = build_classifier(loaded).predict_proba(hsi)
    assert proba.shape == (50, 2) and torch.equal(proba, clf.predict_proba(hsi))
    loaded.check_inputs(6, 0)
    with pytest.raises(ModelError, match="HSI alone but 1 LiDAR channel was given"):
        loaded.check_inputs(6, 1, path="hsi.pt")


def test_pretrained_bundle_rebuilds_the_network(trained, tmp_path):
    net = trained[0].net
    bundle = bundle_from_network(net, preset=PRESET, stats=STATS)
    loaded = load_model(save_model(bundle, tmp_path / "pre.pt"))
    assert loaded.kind == "pretrained" and loaded.classes is None
    x, li = trained[2], trained[3]
    with torch.no_grad():
        assert torch.equal(build_network(loaded).features(x, li), net.eval().features(x, li))
    with pytest.raises(ModelError, match="fine-tune"):
        build_classifier(loaded)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    zipped = tmp_path / "evil.pt"
    torch.save({"format": FORMAT_TAG, "format_version": 1, "x": _Evil(str(marker))}, zipped)
    raw = tmp_path / "evil-raw.pt"
    raw.write_bytes(pickle.dumps(_Evil(str(marker)), protocol=2))
    for path in (zipped, raw):
        with pytest.raises(ModelError, match="refused") as err:
            load_model(path)
        assert str(path) in str(err.value)
        assert not marker.exists()


def test_newer_format_and_non_models_are_refused(trained, tmp_path):
    clf, classes, _, _ = trained
    newer = _bundle(clf, classes)
    newer.format_version = FORMAT_VERSION + 1
    path = save_model(newer, tmp_path / "new.pt")
    with pytest.raises(ModelError, match=r"newer diffclip.*upgrade"):
        load_model(path)
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"GIF89a not a model at all")
    with pytest.raises(ModelError, match="not a diffclip model"):
        load_model(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ModelError, match="not a diffclip model"):
        load_model(other)
    with pytest.raises(ValueError, match="extras"):
        save_model(_bundle(clf, classes, extras={"bad": object()}), tmp_path / "x.pt")


def test_band_mismatch_messages_name_both_counts(trained):
    bundle = _bundle(trained[0], trained[1])
    bundle.check_inputs(6, 1)
    with pytest.raises(ModelError) as err:
        bundle.check_inputs(144, 1, path="model.pt")
    text = str(err.value)
    assert text.startswith("model.pt: ") and "6 HSI bands" in text and "144" in text
    with pytest.raises(ModelError, match=r"needs LiDAR \(1 channel\) but none was given"):
        bundle.check_inputs(6, 0)
    with pytest.raises(ModelError, match="1 LiDAR channel but the scene has 2"):
        bundle.check_inputs(6, 2)
