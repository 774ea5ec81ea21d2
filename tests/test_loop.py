"""The shared training loop: events, records, the warm-up + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from diffclip_cli.progress import ProgressEvent, counting
from diffclip_cli.train.loop import Step, WarmupCosineLR, train_epochs, train_steps


def _model() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1)


def test_warmup_cosine_is_the_formula_to_the_bit():
    """The distillation's hand-written schedule, as it was before it became a scheduler."""
    lr, steps = 3e-3, 97
    warmup = max(1, steps // 20)
    opt = torch.optim.Adam(_model().parameters(), lr=lr)
    schedule = WarmupCosineLR(opt, warmup=warmup, steps=steps)
    for step in range(steps):
        if step < warmup:
            want = lr * (step + 1) / warmup
        else:
            want = lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
        assert opt.param_groups[0]["lr"] == want
        opt.step()
        schedule.step()
    assert opt.param_groups[0]["lr"] == 0.0  # past the end: 0, not a division by zero
    one = torch.optim.Adam(_model().parameters(), lr=lr)
    single = WarmupCosineLR(one, warmup=1, steps=1)
    one.step()
    single.step()
    with pytest.raises(ValueError):
        WarmupCosineLR(one, warmup=0, steps=1)


def test_epochs_report_every_step_and_each_epoch_record_last():
    model = _model()
    x, y = torch.randn(10, 3), torch.randn(10, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    events: list[ProgressEvent] = []
    saved: list[int] = []

    def forward(idx: torch.Tensor) -> Step:
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        return Step(loss, len(idx), {"seen": float(len(idx))})

    history = train_epochs(model, forward, samples=10, batch_size=4, epochs=2, optimizer=opt,
                           scheduler=sched, generator=torch.Generator().manual_seed(0),
                           stage="toy", progress=events.append,
                           extras=lambda: {"extra": 1.0},
                           end_epoch=lambda h: saved.append(len(events)))
    assert [(e.stage, e.done, e.total) for e in events] == [("toy", i, 6) for i in range(1, 7)]
    assert [e.record for e in events] == [None, None, history[0], None, None, history[1]]
    assert saved == [2, 5]  # the epoch's hook runs before its last event
    assert [r["lr"] for r in history] == [0.1, 0.05]
    assert list(history[0]) == ["epoch", "loss", "seen", "extra", "lr", "seconds"]
    assert history[0]["seen"] == 1.0
    assert not model.training


def test_steps_skip_empty_batches_but_count_them():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    events: list[ProgressEvent] = []
    history = train_steps(model, lambda step: None, steps=4, optimizer=opt, stage="toy",
                          progress=events.append, every=2)
    assert torch.equal(model.weight, before)
    assert [e.done for e in events] == [1, 2, 3, 4]
    assert [e.loss for e in events] == [None] * 4
    assert history == [{"step": 2, "loss": 0.0, "lr": 0.1}, {"step": 4, "loss": 0.0, "lr": 0.1}]


def test_counting_reports_pixels_as_events():
    events: list[ProgressEvent] = []
    count = counting(events.append, "evaluate")
    assert count is not None
    count(5, 10)
    assert events == [ProgressEvent("evaluate", 5, 10)]
    assert counting(None, "evaluate") is None
