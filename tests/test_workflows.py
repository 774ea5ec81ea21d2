"""The workflows as library functions: option objects checked once, the device resolved once."""

from __future__ import annotations

import pytest

from diffclip_cli.errors import DeviceError
from diffclip_cli.model.config import load_preset
from diffclip_cli.model.modelfile import load_model
from diffclip_cli.workflows.pretrain import PretrainOptions, checkpoint_path, run_pretrain

TINY = load_preset("tiny").with_overrides(**{"pretrain.epochs": 1})


@pytest.mark.parametrize("bad", [{"samples": 0}, {"budget": 0.0}, {"budget": float("nan")}])
def test_pretrain_options_refuse_values_out_of_range(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        PretrainOptions(preset=TINY, **bad)


def test_pretrain_from_python_saves_the_model_and_drops_the_checkpoint(tiny, tmp_path,
                                                                      one_torch_thread):
    out = tmp_path / "p.pt"
    result = run_pretrain(tiny.hsi, [tiny.lidar], out,
                          options=PretrainOptions(preset=TINY, samples=32, seed=2,
                                                  device="cpu"))
    assert len(result.history) == 1 and result.plan is None
    assert load_model(out).kind == "pretrained"
    assert not checkpoint_path(out).exists()


def test_an_unknown_device_is_refused_before_any_output(tiny, tmp_path):
    out = tmp_path / "p.pt"
    with pytest.raises(DeviceError, match="unknown device 'tpu9'"):
        run_pretrain(tiny.hsi, [tiny.lidar], out,
                     options=PretrainOptions(preset=TINY, samples=32, device="tpu9"))
    assert not list(tmp_path.iterdir())
