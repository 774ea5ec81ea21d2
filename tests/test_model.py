"""Presets and the image side: configuration, masking, diffusion, shapes, seeding."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from diffclip_cli.errors import ModelError
from diffclip_cli.model.config import (
    ModelConfig,
    PretrainConfig,
    list_presets,
    load_preset,
    presets_dir,
)
from diffclip_cli.model.network import DiffCLIPNet, random_masking
from diffclip_cli.model.rng import make_generator

TINY = load_preset("tiny").model


def test_paper_preset_is_the_briefs_recipe():
    p = load_preset("paper")
    m = p.model
    assert (m.window, m.stem_hidden, m.dim, m.depth, m.heads, m.mlp_ratio) == (11, 128, 128, 4,
                                                                               8, 2.0)
    assert (m.decoder_depth, m.decoder_dim, m.decoder_heads) == (3, 128, 8)
    assert (m.embed_dim, m.text_width, m.text_layers, m.text_heads, m.context_length) == (
        128, 128, 3, 8, 77)
    assert (m.mask_ratio, m.masked_loss_weight) == (0.7, 0.1)
    assert (m.timesteps, m.beta_start, m.beta_end) == (1000, 1e-4, 0.02)
    assert m.template == "p4"
    t = p.pretrain
    assert (t.lr, t.weight_decay, t.t0, t.t_mult, t.epochs, t.batch_size) == (1e-4, 1e-4, 5, 2,
                                                                              400, 128)
    assert t.augment and t.crops_for(11) == (9, 11)
    f = p.finetune
    assert (f.lr, f.weight_decay, f.milestones, f.gamma, f.epochs) == (1e-4, 1e-5, (100, 131),
                                                                       0.1, 150)
    assert m.tokens == 121


def test_presets_listed_with_cards_and_unknown_name_lists_them():
    names = list_presets()
    assert {"paper", "tiny"} <= set(names)
    for name in names:
        assert (presets_dir() / f"{name}.md").is_file(), f"model card of {name} missing"
        assert load_preset(name).name == name
    tiny = load_preset("tiny")
    assert tiny.model.window < 11 and tiny.model.dim < 128 and tiny.pretrain.epochs < 50
    with pytest.raises(ModelError, match=r"paper.*tiny"):
        load_preset("no-such-preset")


def test_preset_from_file_and_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  window: 7\n  dim: 64\n  heads: 4\npretrain:\n  crop_sizes: [5, 7]\n")
    p = load_preset(path)
    assert p.name == "mine" and p.model.window == 7 and p.model.depth == 4
    q = p.with_overrides(**{"pretrain.epochs": 3}, finetune={"epochs": 2})
    assert q.pretrain.epochs == 3 and q.finetune.epochs == 2 and q.model == p.model
    assert dataclasses.replace(q.model, depth=1).depth == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  windw: 7\n")
    with pytest.raises(ModelError, match="windw") as err:
        load_preset(bad)
    assert "bad.yaml" in str(err.value)
    with pytest.raises(ModelError, match="crop_sizes"):
        p.with_overrides(**{"pretrain.crop_sizes": [9]})


@pytest.mark.parametrize(("field", "value", "words"), [
    ("window", 6, "odd"),
    ("mask_ratio", 1.0, "between 0 and 1"),
    ("mask_ratio", 0.0, "between 0 and 1"),
    ("heads", 5, "divisible"),
    ("dim", 30, "multiple of 4"),
    ("template", "p9", "template"),
    ("noise_steps", 1001, "noise_steps"),
    ("noise_steps", -1, "noise_steps"),
])
def test_invalid_values_are_refused_with_reasons(field, value, words):
    with pytest.raises(ModelError, match=words):
        dataclasses.replace(TINY, **{field: value})
    with pytest.raises(ModelError, match="unknown"):
        TINY.with_overrides(no_such_field=1)
    with pytest.raises(ModelError, match="batch_size"):
        PretrainConfig(batch_size=0)


def test_masking_keeps_exactly_the_unmasked_tokens():
    tokens = torch.randn(6, 25, 8)
    kept, mask, ids = random_masking(tokens, 7, generator=make_generator(1, "t"))
    assert mask.shape == (6, 25) and (~mask).sum(1).tolist() == [7] * 6
    assert torch.equal(kept, tokens[~mask].view(6, 7, 8))
    assert torch.equal(ids, (~mask).nonzero()[:, 1].view(6, 7))
    assert not torch.equal(mask[0], mask[1])


def _replay_tokens(net, hsi, lidar, gen_state):
    """Redraw pretrain_loss's timesteps and noise from the same generator state."""
    gen = torch.Generator()
    gen.set_state(gen_state)
    c = net.config
    t = torch.randint(0, c.timesteps, (hsi.shape[0],), generator=gen)
    noised = {m: net.q_sample(x, t, torch.randn(x.shape, generator=gen))
              for m, x in (("hsi", hsi), ("lidar", lidar))}
    return {m: net.tokens(x, m) for m, x in noised.items()}


def test_encoder_sees_exactly_the_visible_noised_tokens_per_modality():
    net = DiffCLIPNet(TINY, hsi_bands=6, lidar_bands=2, seed=0).eval()
    hsi, lidar = torch.randn(4, 6, 5, 5), torch.randn(4, 2, 5, 5)
    seen = []
    encode = net.encode
    net.encode = lambda x: seen.append(x.detach()) or encode(x)
    gen = make_generator(3, "pretrain")
    state = gen.get_state()
    out = net.pretrain_loss(hsi, lidar, generator=gen)
    with torch.no_grad():
        expect = _replay_tokens(net, hsi, lidar, state)
    keep = TINY.kept_tokens
    sequences = seen[0].split(4, dim=0)
    for m, seq in zip(("hsi", "lidar"), sequences, strict=True):
        mask = out.masks[m].view(4, -1)
        assert (~mask).sum(1).tolist() == [keep] * 4
        assert torch.allclose(seq[:, 1:], expect[m][~mask].view(4, keep, -1), atol=1e-6)
    # Independent masks per modality, one timestep per sample.
    assert not torch.equal(out.masks["hsi"], out.masks["lidar"])
    assert out.timesteps.shape == (4,)
    assert torch.isfinite(out.loss) and set(out.losses) == {"hsi", "lidar"}
    assert out.predictions["lidar"].shape == (4, 2, 5, 5)


def test_diffusion_schedule_and_loss_weighting():
    net = DiffCLIPNet(TINY, hsi_bands=3, seed=0)
    assert net.sqrt_abar[0] == pytest.approx((1 - 1e-4) ** 0.5)
    assert bool((net.sqrt_abar[1:] < net.sqrt_abar[:-1]).all())
    assert float(net.sqrt_abar[-1]) < 0.01  # x_T is almost pure noise
    x = torch.randn(2, 3, 5, 5)
    t = torch.tensor([0, TINY.timesteps - 1])
    noise = torch.randn_like(x)
    xt = net.q_sample(x, t, noise)
    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])

    assert corr(xt[0], x[0]) > 0.99 and corr(xt[1], noise[1]) > 0.99
    # The masked part of the loss is down-weighted: with lambda = 0 the loss changes.
    g = make_generator(0, "x")
    a = net.pretrain_loss(x, generator=g).loss
    net0 = DiffCLIPNet(dataclasses.replace(TINY, masked_loss_weight=0.0), hsi_bands=3, seed=0)
    b = net0.pretrain_loss(x, generator=make_generator(0, "x")).loss
    assert float(b.detach()) < float(a.detach())


def test_noise_steps_limits_the_timesteps_drawn_and_keeps_the_signal():
    # The paper draws t from all 1000 steps; noise_steps: 100 draws only 0..99, where
    # abar_t >= 0.89 and the noised window still correlates with the clean one.
    x = torch.randn(512, 3, 5, 5)
    paper = DiffCLIPNet(TINY, hsi_bands=3, seed=0)
    limited = DiffCLIPNet(dataclasses.replace(TINY, noise_steps=100), hsi_bands=3, seed=0)
    t_paper = paper.pretrain_loss(x, generator=make_generator(0, "t")).timesteps
    t_limited = limited.pretrain_loss(x, generator=make_generator(0, "t")).timesteps
    assert int(t_limited.max()) < 100 <= int(t_paper.max())
    assert int(t_paper.max()) > 900 and len(t_limited.unique()) > 50
    assert float(limited.sqrt_abar[99] ** 2) > 0.89 > float(paper.sqrt_abar[200] ** 2)
    # Same schedule buffers: only the range of t changes.
    assert torch.equal(paper.sqrt_abar, limited.sqrt_abar)
    cpu = load_preset("cpu")
    assert cpu.model.noise_steps == 100 and load_preset("paper").model.noise_steps == 0
    assert dataclasses.replace(cpu.model, noise_steps=0, pixel_readout=False, context_scales=(),
                               context_components=30) == load_preset("tiny").model


def test_any_channel_counts_and_hsi_only():
    for hsi_bands, lidar_bands in ((1, 0), (7, 0), (5, 3)):
        net = DiffCLIPNet(TINY, hsi_bands=hsi_bands, lidar_bands=lidar_bands, seed=0).eval()
        x = torch.randn(3, hsi_bands, 5, 5)
        li = torch.randn(3, lidar_bands, 5, 5) if lidar_bands else None
        feats = net.features(x, li)
        assert feats.shape == (3, TINY.dim * (2 if lidar_bands else 1))
        out = net.pretrain_loss(x, li, generator=make_generator(0, "x"))
        assert torch.isfinite(out.loss)
    with pytest.raises(ModelError, match="needs LiDAR"):
        DiffCLIPNet(TINY, hsi_bands=4, lidar_bands=1).features(torch.randn(2, 4, 5, 5))
    with pytest.raises(ModelError, match="without LiDAR"):
        DiffCLIPNet(TINY, hsi_bands=4).features(torch.randn(2, 4, 5, 5),
                                                torch.randn(2, 1, 5, 5))
    with pytest.raises(ModelError, match=r"\(N, 4, 5, 5\)"):
        DiffCLIPNet(TINY, hsi_bands=4).features(torch.randn(2, 3, 5, 5))


def test_shared_encoder_batches_modalities_without_mixing_them():
    net = DiffCLIPNet(TINY, hsi_bands=4, lidar_bands=1, seed=0).eval()
    hsi, lidar = torch.randn(5, 4, 5, 5), torch.randn(5, 1, 5, 5)
    with torch.no_grad():
        both = net.features(hsi, lidar)
        other = net.features(hsi, torch.randn(5, 1, 5, 5))
        single = net.features(hsi[:1], lidar[:1])
    d = TINY.dim
    # The HSI half does not depend on the LiDAR input, and samples are independent.
    assert torch.allclose(both[:, :d], other[:, :d], atol=1e-6)
    assert not torch.allclose(both[:, d:], other[:, d:])
    assert torch.allclose(both[:1], single, atol=1e-5)


def test_seeded_initialisation_leaves_global_rng_alone():
    before = torch.random.get_rng_state()
    a = DiffCLIPNet(TINY, hsi_bands=4, lidar_bands=1, seed=7).state_dict()
    b = DiffCLIPNet(TINY, hsi_bands=4, lidar_bands=1, seed=7).state_dict()
    c = DiffCLIPNet(TINY, hsi_bands=4, lidar_bands=1, seed=8).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])


def test_config_is_plain_and_round_trips():
    d = ModelConfig().to_dict()
    assert ModelConfig.from_dict(d) == ModelConfig()
    assert all(isinstance(v, (int, float, str, bool, list)) for v in d.values())

