"""Several stage-1 encoders (``pretrain.encoders``): trained, stored, rebuilt, spread over the
fine-tuning members, and through the real commands."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import yaml
from tinyscene import invoke

from diffclip_cli.errors import ModelError
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.archive import load_model, save_model
from diffclip_cli.model.config import load_preset
from diffclip_cli.model.modelfile import (
    ENCODERS_KEY,
    MEMBERS_KEY,
    build_classifiers,
    build_networks,
    bundle_from_networks,
)
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.progress import ProgressEvent
from diffclip_cli.sampling.normalise import BandStats, SceneStats
from diffclip_cli.train.finetune import member_start
from diffclip_cli.workflows.pretrain import encoder_checkpoint, pretrain_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = load_preset("tiny")
TWO = TINY.with_overrides(**{"pretrain.epochs": 2, "pretrain.encoders": 2})


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_several_encoders_are_trained_stored_and_rebuilt(tiny, tmp_path):
    events: list[ProgressEvent] = []
    with Scene.open(tiny.hsi, [tiny.lidar]) as scene:
        first = pretrain_scene(scene, preset=TWO, samples=60, seed=3, progress=events.append)
        again = pretrain_scene(scene, preset=TWO, samples=60, seed=3)
        one = pretrain_scene(scene, preset=TWO.with_overrides(**{"pretrain.encoders": 1}),
                             samples=60, seed=3)
    a, b = first.networks
    assert first.network is a and not _same(a, b)  # their own seeds
    # deterministic, and encoder 0 is what a single-encoder run trains
    assert all(_same(x, y) for x, y in zip(first.networks, again.networks, strict=True))
    assert _same(a, one.network) and len(one.networks) == 1
    assert ENCODERS_KEY not in one.bundle.extras  # one encoder: the file as before
    # progress counts both encoders' steps, once, in order
    steps = [e for e in events if e.stage == "pretrain"]
    assert [e.done for e in steps] == list(range(1, len(steps) + 1))
    assert {e.total for e in steps} == {len(steps)}
    assert [h["encoder"] for h in first.history] == [1, 1, 2, 2]  # two epochs each
    assert first.bundle.provenance["encoders"] == 2
    back = load_model(save_model(first.bundle, tmp_path / "p.pt"))
    rebuilt = build_networks(back)
    assert len(rebuilt) == 2 and all(
        _same(x, y) for x, y in zip(first.networks, rebuilt, strict=True))


def test_members_start_from_the_encoders_in_turn():
    nets = [DiffCLIPNet(TINY.model, hsi_bands=6, lidar_bands=1, seed=s) for s in range(2)]
    starts = [member_start(nets, m, 4) for m in range(4)]
    # copies for the first two members, the originals for the last to use each encoder
    assert starts[0] is not nets[0] and _same(starts[0], nets[0])
    assert starts[1] is not nets[1] and _same(starts[1], nets[1])
    assert starts[2] is nets[0] and starts[3] is nets[1]
    # more encoders than members: each member its own, every one the original
    assert [member_start(nets, m, 1) for m in range(1)] == [nets[0]]


def test_damaged_or_mismatched_encoders_are_refused():
    nets = [DiffCLIPNet(TINY.model, hsi_bands=6, lidar_bands=1, seed=s) for s in range(2)]
    stats = SceneStats(BandStats(np.zeros(6), np.ones(6)), BandStats(np.zeros(1), np.ones(1)))
    bundle = bundle_from_networks(nets, preset=TINY, stats=stats)
    assert len(build_networks(bundle)) == 2
    bundle.extras[ENCODERS_KEY] = ["not a state dict"]
    with pytest.raises(ModelError, match="encoders"):
        build_networks(bundle)
    other = DiffCLIPNet(TINY.model, hsi_bands=5, lidar_bands=1, seed=0)
    with pytest.raises(ValueError, match="architecture and inputs"):
        bundle_from_networks([nets[0], other], preset=TINY, stats=stats)
    with pytest.raises(ValueError, match="at least one"):
        bundle_from_networks([], preset=TINY, stats=stats)


def test_encoders_must_be_at_least_one():
    with pytest.raises(ModelError, match="encoders"):
        TINY.with_overrides(**{"pretrain.encoders": 0})


def test_encoders_through_the_commands(tiny, tmp_path):
    preset = TINY.to_dict()  # one encoder: --encoders asks for two
    preset["pretrain"]["epochs"] = 2
    preset["finetune"].update(members=2, epochs=3, milestones=[2])
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(preset))
    pre = tmp_path / "pre.pt"
    invoke("pretrain", tiny.hsi, tiny.lidar, "--preset", path, "--samples", 60, "--seed", 2,
           "--encoders", 2, "-o", pre, "-q", code=0)
    bundle = load_model(pre)
    assert len(build_networks(bundle)) == 2 and bundle.preset_config.pretrain.encoders == 2
    # every encoder's checkpoint is gone once the model is in place
    assert not any(p.name.startswith("pre.pt.ckpt") for p in tmp_path.iterdir())
    assert encoder_checkpoint(tmp_path / "pre.pt.ckpt", 1) == tmp_path / "pre.pt.ckpt.2"
    # fine-tuning spreads the members over the encoders: the same file without its second
    # encoder gives the same first member and another second one
    single = copy.deepcopy(bundle)
    del single.extras[ENCODERS_KEY]
    save_model(single, tmp_path / "single.pt")
    out = {}
    for name in ("pre.pt", "single.pt"):
        model = tmp_path / f"fs-{name}"
        invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", tiny.labels, "--shots", 3,
               "--pretrained", tmp_path / name, "--seed", 4, "-o", model, "-q", code=0)
        out[name] = build_classifiers(load_model(model))
    assert len(load_model(tmp_path / "fs-pre.pt").extras[MEMBERS_KEY]) == 1
    both, alone = out["pre.pt"], out["single.pt"]
    assert _same(both[0], alone[0])
    assert not _same(both[1].net, alone[1].net)


def test_fewshot_pretrain_encoders_option(tiny, tmp_path):
    preset = TINY.to_dict()
    preset["pretrain"]["epochs"] = 1
    preset["finetune"].update(members=3, epochs=2, milestones=[1])
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(preset))
    out = tmp_path / "m.pt"
    r = invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", tiny.labels, "--shots", 3,
               "--preset", path, "--pretrain-samples", 40, "--pretrain-encoders", 3,
               "--no-fast", "-o", out, code=0)
    assert "Plan: pretrain 3 x 40 windows x 1 epoch" in r.output
    model = load_model(out)
    assert model.preset_config.pretrain.encoders == 3
    assert len(model.extras[MEMBERS_KEY]) == 2
    # with --pretrained there is no stage 1 to run several times: a usage error
    r = invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", tiny.labels, "--shots", 3,
               "--pretrained", tiny.pretrained, "--pretrain-encoders", 2, "-o",
               tmp_path / "x.pt", code=2)
    assert "--pretrain-encoders" in r.output
    assert not (tmp_path / "x.pt").exists()
