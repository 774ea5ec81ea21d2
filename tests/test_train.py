"""Both training stages on a synthetic scene: learning, determinism, resume, the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_windows import SceneWindows, scene_windows

from diffclip_cli.errors import LabelError, ModelError
from diffclip_cli.modalities import Modalities
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.config import load_preset
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.prompts import build_prompts
from diffclip_cli.model.rng import make_generator
from diffclip_cli.model.text import Vocabulary
from diffclip_cli.progress import ProgressEvent
from diffclip_cli.train.data import WindowData
from diffclip_cli.train.finetune import class_contrastive_loss, finetune
from diffclip_cli.train.pretrain import centre_crop_resize, pretrain

TINY = load_preset("tiny")
SEED = 0


def _run(sw: SceneWindows, *, lidar: bool, seed: int = SEED) -> dict:
    """Pretrain on unlabelled windows, fine-tune on 5 shots per class, score the rest."""
    net = DiffCLIPNet(TINY.model, hsi_bands=sw.hsi.shape[0],
                      lidar_bands=sw.lidar.shape[0] if lidar else 0, seed=seed)
    pre = pretrain(net, sw.data(sw.unlabelled(1000, seed=seed), lidar=lidar), TINY.pretrain,
                   seed=seed)
    prompts = build_prompts(sw.scene.class_names, template=TINY.model.template)
    clf = DiffCLIPClassifier(net, vocabulary=Vocabulary.build(prompts), seed=seed)
    train, test = sw.few_shot(5, seed=seed)
    fine = finetune(clf, sw.data(train, labels=True, lidar=lidar), prompts, TINY.finetune,
                    seed=seed)
    held_out = sw.data(test, labels=True, lidar=lidar)
    proba = clf.predict_proba(held_out.windows.hsi, held_out.windows.lidar)
    oa = float((proba.argmax(1) == held_out.labels).float().mean())
    return {"pretrain": pre, "finetune": fine, "oa": oa, "clf": clf, "held_out": held_out,
            "proba": proba}


@pytest.fixture(scope="module")
def scene() -> SceneWindows:
    return scene_windows()


@pytest.fixture(scope="module")
def both(scene) -> dict:
    return _run(scene, lidar=True)


def test_pretraining_loss_falls(both):
    losses = [r["loss"] for r in both["pretrain"]]
    assert len(losses) == TINY.pretrain.epochs
    assert np.mean(losses[-3:]) < 0.75 * losses[0]
    assert {"loss_hsi", "loss_lidar", "lr"} <= set(both["pretrain"][0])


def test_five_shots_map_the_scene(both):
    assert both["finetune"][-1]["train_accuracy"] == 1.0
    assert both["finetune"][-1]["loss"] < both["finetune"][0]["loss"]
    assert both["oa"] >= 0.90


def test_lidar_separates_what_hsi_alone_cannot(scene, both):
    hsi_only = _run(scene, lidar=False)
    # Two of the four classes differ from the other two only in height.
    assert hsi_only["oa"] < 0.75
    assert both["oa"] > hsi_only["oa"] + 0.15
    pred = hsi_only["proba"].argmax(1)
    labels = hsi_only["held_out"].labels
    height = torch.tensor(scene.scene.height_of)
    assert float((height[pred] == height[labels]).float().mean()) < 0.8


def test_prediction_is_deterministic(both):
    clf, held = both["clf"], both["held_out"]
    again = clf.predict_proba(held.windows.hsi, held.windows.lidar)
    assert torch.equal(again, both["proba"])
    assert not clf.training


def _small(scene: SceneWindows, n: int = 96) -> WindowData:
    return scene.data(scene.unlabelled(n, seed=1))


def test_same_seed_same_weights(scene):
    cfg = TINY.with_overrides(**{"pretrain.epochs": 2, "finetune.epochs": 3})
    data = _small(scene)
    train, _ = scene.few_shot(3, seed=2)
    labelled = scene.data(train, labels=True)
    prompts = build_prompts(scene.scene.class_names, template="p1")
    states = []
    for seed in (5, 5, 6):
        net = DiffCLIPNet(cfg.model, hsi_bands=16, lidar_bands=1, seed=seed)
        pretrain(net, data, cfg.pretrain, seed=seed)
        clf = DiffCLIPClassifier(net, vocabulary=Vocabulary.build(prompts), seed=seed)
        finetune(clf, labelled, prompts, cfg.finetune, seed=seed)
        states.append(clf.state_dict())
    a, b, c = states
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


class _KilledError(RuntimeError):
    pass


def test_resume_ends_bit_for_bit_where_an_uninterrupted_run_ends(scene, tmp_path):
    cfg = TINY.pretrain.with_overrides(epochs=4, batch_size=32)
    data = _small(scene)

    def net() -> DiffCLIPNet:
        return DiffCLIPNet(TINY.model, hsi_bands=16, lidar_bands=1, seed=3)

    full = net()
    full_history = pretrain(full, data, cfg, seed=3)

    def kill_after_two(event: ProgressEvent) -> None:
        if event.record is not None and event.record["epoch"] == 2:
            raise _KilledError

    ckpt = tmp_path / "run.ckpt"
    first = net()
    with pytest.raises(_KilledError):
        pretrain(first, data, cfg, seed=3, checkpoint=ckpt, progress=kill_after_two)
    assert ckpt.is_file()
    resumed = net()  # a fresh process: nothing carried over but the checkpoint
    seen = []
    history = pretrain(resumed, data, cfg, seed=3, checkpoint=ckpt, resume=True,
                       progress=lambda e: seen.append(e.record and e.record["epoch"]))
    per_epoch = -(-len(data) // 32)
    assert [e for e in seen if e] == [3, 4] and len(seen) == 2 * per_epoch
    assert [r["loss"] for r in history] == [r["loss"] for r in full_history]
    want, got = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    with pytest.raises(ModelError, match="another seed"):
        pretrain(net(), data, cfg, seed=4, checkpoint=ckpt, resume=True)


def test_augmentation_crops_both_modalities_alike():
    hsi = torch.randn(64, 3, 5, 5)
    lidar = hsi[:, :1].clone()
    out_h, out_l = centre_crop_resize(hsi, lidar, (3, 5), generator=make_generator(0, "a"))
    assert torch.equal(out_h[:, :1], out_l)
    same = (out_h == hsi).flatten(1).all(1)
    assert 0 < int(same.sum()) < 64  # some samples kept (size 5), some cropped (size 3)
    cropped = out_h[~same]
    centre = hsi[~same][:, :, 1:4, 1:4]
    resized = torch.nn.functional.interpolate(centre, size=(5, 5), mode="bilinear",
                                              align_corners=False)
    assert torch.allclose(cropped, resized)


def test_same_class_images_are_never_negatives():
    labels = torch.tensor([0, 0, 1, 2, 1])
    gen = make_generator(0, "test/logits")
    for _ in range(20):
        logits = torch.randn(5, 3, generator=gen).mul(5).requires_grad_()
        loss, i2t, t2i = class_contrastive_loss(logits, labels)
        loss.backward()
        assert torch.isclose(loss, (i2t + t2i) / 2)
        # Raising the scores of all images of a class with their own prompt always helps.
        for k in labels.unique():
            assert float(logits.grad[labels == k, k].sum()) < 0
    # Two identical windows of one class get identical gradients: nothing pushes them apart.
    logits = torch.tensor([[2.0, 0.0, -1.0], [2.0, 0.0, -1.0], [0.0, 3.0, 0.0],
                           [0.0, 0.0, 1.0], [1.0, 2.0, 0.0]], requires_grad=True)
    class_contrastive_loss(logits, labels)[0].backward()
    assert torch.equal(logits.grad[0], logits.grad[1])
    # Perfectly separated: image->text vanishes, text->image is log(positives) per class.
    rows = torch.arange(5)
    perfect = torch.full((5, 3), -50.0)
    perfect[rows, labels] = 50.0
    _, i2t, t2i = class_contrastive_loss(perfect, labels)
    assert float(i2t) < 1e-6
    assert float(t2i) == pytest.approx((np.log(2) + np.log(2) + 0.0) / 3, abs=1e-5)


def test_training_refuses_bad_inputs(scene):
    net = DiffCLIPNet(TINY.model, hsi_bands=16, lidar_bands=1, seed=0)
    data = _small(scene, 8)
    with pytest.raises(ModelError, match="LiDAR"):
        pretrain(net, WindowData(Modalities(data.windows.hsi)), TINY.pretrain, seed=0)
    with pytest.raises(ModelError, match="16"):
        pretrain(net, WindowData(Modalities(data.windows.hsi[:, :4], data.windows.lidar)),
                 TINY.pretrain, seed=0)
    prompts = build_prompts(scene.scene.class_names, template="p1")
    clf = DiffCLIPClassifier(net, vocabulary=Vocabulary.build(prompts), seed=0)
    with pytest.raises(LabelError, match="labelled"):
        finetune(clf, data, prompts, TINY.finetune, seed=0)
    bad = WindowData(data.windows, torch.full((8,), 7))
    with pytest.raises(LabelError, match=r"0\.\.3"):
        finetune(clf, bad, prompts, TINY.finetune, seed=0)


def test_progress_is_reported_after_every_optimiser_step(scene):
    """Progress bars move within an epoch: one call per step, counted over the whole run."""
    net = DiffCLIPNet(TINY.model, hsi_bands=scene.hsi.shape[0], seed=SEED)
    data = scene.data(scene.unlabelled(150, seed=SEED), lidar=False)
    events: list[ProgressEvent] = []
    cfg = TINY.pretrain.with_overrides(epochs=2, batch_size=64)
    history = pretrain(net, data, cfg, seed=SEED, progress=events.append)
    steps = [(e.stage, e.done, e.total) for e in events]
    assert steps == [("pretrain", i, 6) for i in range(1, 7)]  # 3 steps (64 + 64 + 22) x 2
    # the last step of each epoch carries the epoch's record, every step its loss
    assert [e.record for e in events] == [None, None, history[0], None, None, history[1]]
    assert all(isinstance(e.loss, float) for e in events)
    prompts = build_prompts(scene.scene.class_names, template=TINY.model.template)
    clf = DiffCLIPClassifier(net, vocabulary=Vocabulary.build(prompts), seed=SEED)
    train, _ = scene.few_shot(5, seed=SEED)
    events.clear()
    finetune(clf, scene.data(train, labels=True, lidar=False), prompts,
             TINY.finetune.with_overrides(epochs=3, batch_size=8, milestones=[2]), seed=SEED,
             progress=events.append)
    per_epoch = -(-len(train) // 8)
    assert per_epoch > 1
    steps = [(e.stage, e.done, e.total) for e in events]
    assert steps == [("finetune", i, 3 * per_epoch) for i in range(1, 3 * per_epoch + 1)]
