"""Training that fits a time budget: measured step costs, a schedule sized to fit, the plan.

Three parts:

* the defaults (:data:`DEFAULT_CPU_PRESET`, :data:`DEFAULT_CPU_BUDGET_S`,
  :func:`default_recipe`): what ``diffclip fewshot`` trains without recipe options;
* pure arithmetic: a :class:`Recipe` (windows, epochs, steps of every stage), the
  :class:`StepCosts` measured on this machine, :func:`stage_seconds` (what a recipe costs) and
  :func:`fit_recipe` (the one place that decides what to shorten first to fit a budget);
* :class:`Plan`: the recipe chosen, its estimate and the one line printed before training.

The step costs are measured, not looked up: :func:`diffclip_cli.train.calibrate.plan_training` times
a few real steps of each stage on the actual scene, model and device and hands them to
:func:`fit_recipe`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diffclip_cli.model.config import Preset
from diffclip_cli.progress import ProgressEvent
from diffclip_cli.sampling import PIXEL_CHUNK

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_CPU_BUDGET_S",
    "DEFAULT_CPU_PRESET",
    "DEFAULT_CUDA_PRESET",
    "DISTILL_PASSES",
    "RECIPE_FIELDS",
    "Floors",
    "Plan",
    "PlanFn",
    "Recipe",
    "StepCosts",
    "StepTimer",
    "default_recipe",
    "describe_timing",
    "device_text",
    "distill_steps_for",
    "fit_recipe",
    "format_seconds",
    "parse_duration",
    "scaled_preset",
    "stage_seconds",
]

#: The preset ``fewshot`` uses on a CPU (or MPS) when none is given: the best recipe that fits
#: :data:`DEFAULT_CPU_BUDGET_S` there. Switch it here when a better CPU preset ships.
DEFAULT_CPU_PRESET = "cpu"
#: The preset ``fewshot`` uses on a CUDA GPU when none is given (without a budget).
DEFAULT_CUDA_PRESET = "paper"
#: The time budget of ``fewshot`` on a CPU when neither a preset nor a budget is given.
DEFAULT_CPU_BUDGET_S = 600.0

#: Fast-path distillation: optimiser visits per training pixel. 6000 steps of 256 pixels on the
#: 7,373 training pixels of the fast-path benchmark scene (120 x 120, 8,192 pixels sampled, 10 %
#: held out) met the agreement target of docs/fast.md (99.1 %); 3000 did not (98.8 %).
DISTILL_PASSES = 209

#: The recipe fields a budget may change (and a caller may pin).
RECIPE_FIELDS = ("pretrain_encoders", "pretrain_windows", "pretrain_epochs", "finetune_epochs",
                 "distill_steps")


def parse_duration(text: str) -> float:
    """Seconds in a duration: plain minutes (``"10"``, ``"2.5"``) or ``1h30m``, ``90s``, ``10m``.

    Units ``h``, ``m``/``min``, ``s`` (any combination, largest first, spaces allowed).

    Raises:
        ValueError: not a duration, or not positive.
    """
    raw = str(text).strip().lower().replace(" ", "")
    number = r"(\d+(?:\.\d*)?|\.\d+)"
    if re.fullmatch(number, raw):
        seconds = float(raw) * 60.0
    else:
        match = re.fullmatch(rf"(?:{number}h)?(?:{number}(?:min|m))?(?:{number}s)?", raw)
        if not raw or match is None:
            raise ValueError(f"{text!r} is not a duration; give minutes (10) or e.g. 90s, 10m, "
                             "1h30m")
        h, m, s = (float(g) if g else 0.0 for g in match.groups())
        seconds = 3600.0 * h + 60.0 * m + s
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


def format_seconds(seconds: float) -> str:
    """``"40 s"`` under a minute, else whole minutes (``"8 min"``)."""
    if seconds < 59.5:
        return f"{max(1, round(seconds))} s"
    return f"{round(seconds / 60):,} min"


def default_recipe(device_type: str, preset: str | None, budget_s: float | None
                   ) -> tuple[str, float | None]:
    """The preset and budget ``fewshot`` trains with, from what the user gave.

    Without a preset: on CUDA :data:`DEFAULT_CUDA_PRESET` (with the given budget, if any);
    elsewhere :data:`DEFAULT_CPU_PRESET` with the given budget or
    :data:`DEFAULT_CPU_BUDGET_S`. An explicit preset keeps its recipe unless a budget is given.

    Args:
        device_type: ``"cpu"``, ``"cuda"`` or ``"mps"`` (``torch.device.type``).
        preset: the preset asked for, or ``None``.
        budget_s: the budget asked for in seconds, or ``None``.

    Returns:
        ``(preset, budget_s)``.
    """
    if preset is not None:
        return preset, budget_s
    if device_type == "cuda":
        return DEFAULT_CUDA_PRESET, budget_s
    return DEFAULT_CPU_PRESET, DEFAULT_CPU_BUDGET_S if budget_s is None else budget_s


def distill_steps_for(train_pixels: int, batch_pixels: int) -> int:
    """Fast-path optimiser steps for ``train_pixels`` training pixels.

    :data:`DISTILL_PASSES` visits each, so the cost follows the scene (all its valid pixels,
    up to the size of the pixel sample).
    """
    return max(1, math.ceil(DISTILL_PASSES * max(0, train_pixels) / max(1, batch_pixels)))


@dataclass(frozen=True)
class Recipe:
    """The amounts of work of one training run (``0`` windows or steps: the stage is skipped).

    Attributes:
        pretrain_windows: unlabelled windows of stage 1.
        pretrain_epochs: stage-1 epochs.
        pretrain_batch: stage-1 windows per step.
        finetune_windows: labelled windows of stage 2.
        finetune_epochs: stage-2 epochs.
        finetune_batch: stage-2 windows per step.
        distill_steps: fast-path optimiser steps.
        distill_pixels: pixels the teacher labels for the fast path.
        score_pixels: held-out pixels scored at the end.
        members: fine-tunings averaged (each costs the fine-tuning and a forward pass per
            scored pixel).
        pretrain_encoders: independent stage-1 runs (each costs the whole stage 1: its own
            windows read, its own steps).
    """

    pretrain_windows: int = 0
    pretrain_epochs: int = 0
    pretrain_batch: int = 1
    finetune_windows: int = 0
    finetune_epochs: int = 0
    finetune_batch: int = 1
    distill_steps: int = 0
    distill_pixels: int = 0
    score_pixels: int = 0
    members: int = 1
    pretrain_encoders: int = 1

    @property
    def pretrain_steps(self) -> int:
        """Stage-1 optimiser steps (every encoder's)."""
        if self.pretrain_windows <= 0:
            return 0
        return (max(1, self.pretrain_encoders) * self.pretrain_epochs
                * math.ceil(self.pretrain_windows / self.pretrain_batch))

    @property
    def finetune_steps(self) -> int:
        """Stage-2 optimiser steps (every member's)."""
        if self.finetune_windows <= 0:
            return 0
        return (self.members * self.finetune_epochs
                * math.ceil(self.finetune_windows / self.finetune_batch))

    def to_dict(self) -> dict[str, int]:
        """Plain JSON types."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StepCosts:
    """Seconds of the unit operations, measured on this scene, model and device.

    Attributes:
        pretrain_step: one stage-1 step of a full batch (``Recipe.pretrain_batch`` windows).
        finetune_step: one stage-2 step, on average over an epoch of the training windows.
        distill_step: one fast-path optimiser step.
        window_read: reading and normalising one window from the rasters.
        infer_pixel: one member of the faithful classifier on one read window (the
            teacher's labels of the fast path, the held-out score).
        infer_read: reading and normalising one pixel's window for inference, beyond
            :attr:`infer_chunk`.
        infer_chunk: the fixed cost of one read of up to :data:`PIXEL_CHUNK` scattered
            pixels (their blocks, and with spatial context its projection and smoothing).
        distill_read: reading the fast path's training patches (once).
        setup: already spent before the plan (statistics, calibration).
    """

    pretrain_step: float = 0.0
    finetune_step: float = 0.0
    distill_step: float = 0.0
    window_read: float = 0.0
    infer_pixel: float = 0.0
    infer_read: float = 0.0
    infer_chunk: float = 0.0
    distill_read: float = 0.0
    setup: float = 0.0

    def to_dict(self) -> dict[str, float]:
        """Plain JSON types (rounded)."""
        return {k: float(f"{v:.4g}") for k, v in dataclasses.asdict(self).items()}


def stage_seconds(recipe: Recipe, costs: StepCosts) -> dict[str, float]:
    """Estimated seconds per stage.

    Keys ``setup``, ``pretrain``, ``finetune``, ``fast path``, ``evaluate`` (0 without work).

    Each training stage costs its window reads plus its optimiser steps (a short last batch
    counts as a step); the fast path the teacher's labels, the patch reads and its steps;
    scoring one faithful inference per pixel. Faithful inference of ``n`` scattered pixels
    costs a fixed read per chunk of :data:`PIXEL_CHUNK` pixels, a read per pixel and one
    forward pass per pixel and member.
    """
    r, c = recipe, costs
    pre = fine = 0.0
    if r.pretrain_steps > 0:
        pre = (max(1, r.pretrain_encoders) * r.pretrain_windows * c.window_read
               + r.pretrain_steps * c.pretrain_step)
    if r.finetune_steps > 0:
        fine = r.finetune_windows * c.window_read + r.finetune_steps * c.finetune_step
    fast = 0.0

    def infer(n: int) -> float:
        return (math.ceil(n / PIXEL_CHUNK) * c.infer_chunk
                + n * (c.infer_read + c.infer_pixel * max(1, r.members)))

    if r.distill_steps > 0:
        fast = infer(r.distill_pixels) + c.distill_read + r.distill_steps * c.distill_step
    return {"setup": c.setup, "pretrain": pre, "finetune": fine, "fast path": fast,
            "evaluate": infer(r.score_pixels)}


@dataclass(frozen=True)
class Floors:
    """How far :func:`fit_recipe` shortens each part before the next (never above the recipe's).

    Attributes:
        pretrain_epochs: stage-1 epochs kept while windows are cut.
        pretrain_windows: stage-1 windows kept while the other parts are cut.
        distill_share: the fast path's share of the budget, at most.
        distill_steps: fast-path steps kept while fine-tuning is cut.
        finetune_share: fine-tuning epochs kept, as a share of the recipe's, when nothing else
            is left to cut.
    """

    pretrain_epochs: int = 5
    pretrain_windows: int = 300
    distill_share: float = 0.25
    distill_steps: int = 300
    finetune_share: float = 0.25


def _cut(recipe: Recipe, costs: StepCosts, budget_s: float, name: str, floor: int) -> Recipe:
    """Lower ``name`` (not below ``floor``) just enough to fit, using that the cost is linear."""
    value = getattr(recipe, name)
    floor = min(value, max(0, floor))
    over = sum(stage_seconds(recipe, costs).values()) - budget_s
    if over <= 0 or value <= floor:
        return recipe
    unit = (sum(stage_seconds(recipe, costs).values())
            - sum(stage_seconds(dataclasses.replace(recipe, **{name: value - 1}),
                                costs).values()))
    if unit <= 0:
        return recipe
    return dataclasses.replace(recipe, **{name: max(floor, value - math.ceil(over / unit))})


def fit_recipe(full: Recipe, costs: StepCosts, budget_s: float, *,
               pinned: Collection[str] = (), floors: Floors = Floors()) -> tuple[Recipe, bool]:
    """The recipe that fits ``budget_s``, cutting what costs least accuracy first.

    The priorities, in order (each part is cut just enough, down to its floor, before the
    next is touched; fields in ``pinned`` are never changed):

    1. the fast path's steps, to at most ``floors.distill_share`` of the budget (its teacher
       labels included); they already follow the scene (:func:`distill_steps_for`);
    2. further stage-1 encoders (``pretrain.encoders``), down to one: each costs a whole
       stage 1, and what they buy depends on the scene (docs/model.md, "Several encoders");
    3. pretraining epochs, to ``floors.pretrain_epochs``;
    4. pretraining windows, to ``floors.pretrain_windows``;
    5. fast-path steps, to ``floors.distill_steps``;
    6. fine-tuning epochs (cheap, and what matters most), to ``floors.finetune_share`` of the
       recipe's: only when the budget is tiny.

    Args:
        full: the recipe as asked (the preset's, with the scene's counts).
        costs: the measured step costs.
        budget_s: the budget in seconds (everything: set-up, training, fast path, scoring).
        pinned: :data:`RECIPE_FIELDS` the user set explicitly.
        floors: how far each part may be cut.

    Returns:
        ``(recipe, fits)``: ``fits`` is ``False`` when even the floors exceed the budget (the
        recipe returned is then the floors).
    """
    r = full
    free = [f for f in RECIPE_FIELDS if f not in set(pinned)]
    if "distill_steps" in free and r.distill_steps > 0 and costs.distill_step > 0:
        fast = stage_seconds(r, costs)["fast path"] - r.distill_steps * costs.distill_step
        room = floors.distill_share * budget_s - fast
        cap = max(min(floors.distill_steps, r.distill_steps),
                  math.floor(room / costs.distill_step))
        r = dataclasses.replace(r, distill_steps=min(r.distill_steps, cap))
    order = [("pretrain_encoders", 1),
             ("pretrain_epochs", floors.pretrain_epochs),
             ("pretrain_windows", floors.pretrain_windows),
             ("distill_steps", floors.distill_steps),
             ("finetune_epochs", math.ceil(floors.finetune_share * full.finetune_epochs))]
    for name, floor in order:
        if name in free:
            r = _cut(r, costs, budget_s, name, max(1, floor))
    return r, sum(stage_seconds(r, costs).values()) <= budget_s


def scaled_preset(preset: Preset, recipe: Recipe) -> Preset:
    """``preset`` with ``recipe``'s epochs (and stage-1 encoders).

    The fine-tuning milestones keep their share of the epochs (a change of the recipe's
    learning-rate schedules belongs here too).
    """
    overrides: dict[str, Any] = {}
    if recipe.pretrain_epochs != preset.pretrain.epochs and recipe.pretrain_windows > 0:
        overrides["pretrain.epochs"] = recipe.pretrain_epochs
    if recipe.pretrain_encoders != preset.pretrain.encoders and recipe.pretrain_windows > 0:
        overrides["pretrain.encoders"] = recipe.pretrain_encoders
    old = preset.finetune.epochs
    if recipe.finetune_epochs != old and recipe.finetune_windows > 0:
        scale = recipe.finetune_epochs / max(1, old)
        overrides["finetune.epochs"] = recipe.finetune_epochs
        overrides["finetune.milestones"] = sorted({max(1, round(m * scale))
                                                   for m in preset.finetune.milestones})
    return preset.with_overrides(**overrides) if overrides else preset


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def device_text(device: torch.device, threads: int) -> str:
    """``"cpu (2 threads)"``, ``"cuda (NVIDIA H200)"``: a resolved device in words."""
    if device.type == "cuda":
        try:
            import torch

            return f"{device} ({torch.cuda.get_device_name(device)})"
        except Exception:  # a name is nice to have, never worth failing for
            return str(device)
    return f"{device} ({threads} thread{'s' if threads != 1 else ''})"


@dataclass(frozen=True)
class Plan:
    """The schedule chosen before training and what it is estimated to cost.

    Attributes:
        recipe: what will run.
        full: the recipe as asked, before fitting a budget.
        costs: the measured step costs.
        budget_s: the budget, or ``None`` (the recipe as asked).
        fits: the estimate is within the budget (always ``True`` without one).
        device: where it runs, in words (``cpu (2 threads)``).
        pinned: recipe fields the user set (never changed).
    """

    recipe: Recipe
    full: Recipe
    costs: StepCosts
    budget_s: float | None
    fits: bool
    device: str
    pinned: tuple[str, ...] = ()

    @property
    def seconds(self) -> dict[str, float]:
        """Estimated seconds per stage (see :func:`stage_seconds`)."""
        return stage_seconds(self.recipe, self.costs)

    @property
    def total_s(self) -> float:
        """Estimated seconds in all."""
        return sum(self.seconds.values())

    @property
    def shortened(self) -> bool:
        """The budget changed the recipe."""
        return self.recipe != self.full

    def line(self) -> str:
        """The plan in one line.

        E.g. ``Plan: pretrain 1,200 windows x 40 epochs (~6 min), fine-tune 150 epochs
        (~1 min), fast path 2,000 steps (~1 min): estimated 8 min in total on cpu
        (2 threads).``
        """
        r, s = self.recipe, self.seconds
        parts = []
        if r.pretrain_windows > 0 and r.pretrain_epochs > 0:
            encoders = f"{r.pretrain_encoders} x " if r.pretrain_encoders > 1 else ""
            parts.append(f"pretrain {encoders}{_count(r.pretrain_windows, 'window')} x "
                         f"{_count(r.pretrain_epochs, 'epoch')} "
                         f"(~{format_seconds(s['pretrain'])})")
        if r.finetune_windows > 0 and r.finetune_epochs > 0:
            times = f"{r.members} x " if r.members > 1 else ""
            parts.append(f"fine-tune {times}{_count(r.finetune_epochs, 'epoch')} "
                         f"(~{format_seconds(s['finetune'])})")
        if r.distill_steps > 0:
            parts.append(f"fast path {_count(r.distill_steps, 'step')} "
                         f"(~{format_seconds(s['fast path'])})")
        if r.score_pixels > 0:
            parts.append(f"scoring {r.score_pixels:,} held-out pixels "
                         f"(~{format_seconds(s['evaluate'])})")
        text = (f"Plan: {', '.join(parts) or 'nothing to train'}: estimated "
                f"{format_seconds(self.total_s)} in total on {self.device}")
        if self.budget_s is not None:
            text += f", budget {format_seconds(self.budget_s)}"
            if not self.fits:
                text += " (does not fit even at the shortest schedule)"
        return text + "."

    def options(self) -> str:
        """The command-line options that repeat this schedule without a budget."""
        r = self.recipe
        out = []
        if r.pretrain_windows > 0:
            out += [f"--pretrain-samples {r.pretrain_windows}",
                    f"--pretrain-epochs {r.pretrain_epochs}"]
            if self.full.pretrain_encoders > 1:
                out.append(f"--pretrain-encoders {r.pretrain_encoders}")
        out.append(f"--finetune-epochs {r.finetune_epochs}")
        if r.distill_steps > 0:
            out.append(f"--fast-steps {r.distill_steps}")
        return " ".join(out)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, for the model's provenance."""
        return {
            "line": self.line(),
            "budget_s": None if self.budget_s is None else round(self.budget_s, 1),
            "fits": self.fits,
            "device": self.device,
            "recipe": self.recipe.to_dict(),
            "full_recipe": self.full.to_dict(),
            "pinned": list(self.pinned),
            "estimated_s": {k: round(v, 1) for k, v in self.seconds.items()},
            "estimated_total_s": round(self.total_s, 1),
            "step_costs_s": self.costs.to_dict(),
            "options": self.options(),
        }


def describe_timing(plan: Mapping[str, Any] | None, seconds: Mapping[str, Any] | None
                    ) -> str | None:
    """``"estimated 8 min, took 7 min"`` from a provenance's ``plan`` and ``seconds``."""
    if not plan and not seconds:
        return None
    parts = []
    if plan and plan.get("estimated_total_s") is not None:
        parts.append(f"estimated {format_seconds(float(plan['estimated_total_s']))}")
        if plan.get("budget_s") is not None:
            parts[-1] += f" (budget {format_seconds(float(plan['budget_s']))})"
    if seconds and seconds.get("total") is not None:
        parts.append(f"took {format_seconds(float(seconds['total']))}")
    return ", ".join(parts) or None


class StepTimer:
    """Collects the time of each step of a run: a :class:`~diffclip_cli.progress.Progress`.

    Example::

        timer = StepTimer()
        pretrain(..., progress=timer)
        seconds_per_step = timer.per_step(skip=1)
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._last = clock()
        self.steps: list[float] = []

    def __call__(self, event: ProgressEvent, /) -> None:
        """Record the time since the previous step (``event`` is not needed)."""
        now = self._clock()
        self.steps.append(now - self._last)
        self._last = now

    def per_step(self, *, skip: int = 2) -> float:
        """The mean step time after the first ``skip`` steps.

        The first steps of a process pay one-off costs (kernel selection, allocations): a
        warm-up of two steps or more. The mean, not the median, of the rest: on a shared
        machine the slow steps are part of what a run costs.

        Raises:
            ValueError: no step was recorded.
        """
        if not self.steps:
            raise ValueError("no step was timed")
        kept = self.steps[skip:] or self.steps[-1:]
        return float(statistics.fmean(kept))


#: Called once with the :class:`Plan`, before any training.
PlanFn = Callable[[Plan], None]
