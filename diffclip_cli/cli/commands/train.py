"""``diffclip pretrain`` and ``diffclip fewshot``: the two training stages.

Each command parses its options into the option object of its workflow
(:mod:`diffclip_cli.workflows.pretrain`, :mod:`diffclip_cli.workflows.fewshot`), calls it and
prints what it returns.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from diffclip_cli.cli.app import app
from diffclip_cli.cli.common import (
    StageProgress,
    interruptible,
    preset_option,
    start,
)
from diffclip_cli.cli.console import console, err_console
from diffclip_cli.cli.options import (
    DEFAULT_MODEL,
    BatchSizeOpt,
    ClassesOpt,
    ClassFieldOpt,
    DeviceOpt,
    HsiArg,
    LabelFilesOpt,
    LayerOpt,
    LidarArg,
    OverwriteOpt,
    QuietOpt,
    SeedOpt,
    VerboseOpt,
)
from diffclip_cli.sampling.defaults import DEFAULT_PRETRAIN_SAMPLES
from diffclip_cli.train.budget import (
    DEFAULT_CPU_BUDGET_S,
    DEFAULT_CPU_PRESET,
    DEFAULT_CUDA_PRESET,
    default_recipe,
    format_seconds,
    parse_duration,
)

if TYPE_CHECKING:
    from diffclip_cli.errors import UsageError
    from diffclip_cli.model.config import Preset
    from diffclip_cli.train.budget import Plan

log = logging.getLogger("diffclip")

_MODEL = "Model"
_DEFAULT_RECIPE = (f"default: {DEFAULT_CPU_PRESET} within {format_seconds(DEFAULT_CPU_BUDGET_S)}"
                   f" on a CPU, {DEFAULT_CUDA_PRESET} on CUDA")

PresetOpt = Annotated[
    str | None,
    typer.Option("--preset", help="Model preset (paper, tiny, ...) or a preset YAML file "
                 f"({_DEFAULT_RECIPE}).", rich_help_panel=_MODEL, show_default=False),
]
TimeBudgetOpt = Annotated[
    str | None,
    typer.Option("--time-budget", metavar="DURATION",
                 help="Fit the training into this time on this machine: minutes (10) or a "
                 "duration (90s, 10m, 1h30m). The schedule is sized from a few timed steps; "
                 "options you set explicitly are kept. Default: "
                 f"{format_seconds(DEFAULT_CPU_BUDGET_S)} on a CPU without --preset, none "
                 "otherwise.", rich_help_panel=_MODEL, show_default=False),
]
WindowOpt = Annotated[
    int | None,
    typer.Option("--window", min=3, help="Window size in pixels (odd); default the preset's.",
                 rich_help_panel=_MODEL, show_default=False),
]
MaskRatioOpt = Annotated[
    float | None,
    typer.Option("--mask-ratio", min=0.01, max=0.99,
                 help="Share of tokens masked in pretraining; default the preset's (0.7).",
                 rich_help_panel=_MODEL, show_default=False),
]
_SAMPLES_HELP = "Unlabelled windows drawn over the scene for pretraining."
_EPOCHS_HELP = "Pretraining epochs; default the preset's."
_SAMPLES_DEFAULT = f" Default {DEFAULT_PRETRAIN_SAMPLES:,} (fewer to fit a time budget)."
_NOT_PRETRAINED = " Not with --pretrained, which skips pretraining."
_ENCODERS_HELP = ("Independent pretrainings; the fine-tunings start from them in turn "
                  "(default the preset's, 1; fewer to fit a time budget).")
PretrainSamplesOpt = Annotated[
    int | None, typer.Option("--pretrain-samples", min=1,
                             help=_SAMPLES_HELP + _SAMPLES_DEFAULT + _NOT_PRETRAINED,
                             rich_help_panel=_MODEL, show_default=False)
]
PretrainEncodersOpt = Annotated[
    int | None, typer.Option("--pretrain-encoders", min=1,
                             help=_ENCODERS_HELP + _NOT_PRETRAINED, rich_help_panel=_MODEL,
                             show_default=False)
]
EncodersOpt = Annotated[
    int | None, typer.Option("--encoders", min=1, help=_ENCODERS_HELP, rich_help_panel=_MODEL,
                             show_default=False)
]
PretrainEpochsOpt = Annotated[
    int | None,
    typer.Option("--pretrain-epochs", min=1, help=_EPOCHS_HELP + _NOT_PRETRAINED,
                 rich_help_panel=_MODEL,
                 show_default=False),
]
SamplesOpt = Annotated[
    int | None, typer.Option("--samples", min=1, help=_SAMPLES_HELP + _SAMPLES_DEFAULT,
                             rich_help_panel=_MODEL, show_default=False)
]
EpochsOpt = Annotated[
    int | None,
    typer.Option("--epochs", min=1, help=_EPOCHS_HELP, rich_help_panel=_MODEL,
                 show_default=False),
]


def _budget(text: str | None) -> float | None:
    """``--time-budget`` in seconds (a usage error, exit 2, when it is not a duration)."""
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--time-budget") from None


def _pinned(**given: object) -> tuple[str, ...]:
    """The recipe fields set explicitly (a budget never changes them)."""
    return tuple(name for name, value in given.items() if value is not None)


class _PlanPrinter:
    """Prints the plan line before training (unless ``-q``) and warns when it is long."""

    def __init__(self, *, level: int, budget: float | None, device: str, shorten: str
                 ) -> None:
        self.level, self.budget, self.device, self.shorten = level, budget, device, shorten

    def __call__(self, plan: Plan) -> None:
        """Print ``plan``."""
        if self.level >= 0:
            err_console.print(plan.line(), highlight=False, soft_wrap=True)
        if not plan.fits:
            log.warning("even the shortest schedule is estimated at %s, over the %s budget; "
                        "give a longer --time-budget or a smaller --preset",
                        format_seconds(plan.total_s), format_seconds(plan.budget_s or 0))
        elif (plan.budget_s is None and self.device != "cuda"
              and plan.total_s > DEFAULT_CPU_BUDGET_S):
            log.warning("this recipe is estimated to take %s on this %s; shorten it with "
                        "--time-budget (e.g. --time-budget %s sizes the schedule to fit)%s",
                        format_seconds(plan.total_s), self.device,
                        format_seconds(DEFAULT_CPU_BUDGET_S).replace(" ", ""), self.shorten)


def _overrides(*, window: int | None = None, mask_ratio: float | None = None,
               pretrain_epochs: int | None = None, finetune_epochs: int | None = None,
               pretrain_encoders: int | None = None) -> dict[str, Any]:
    """The preset fields the options set explicitly, e.g. ``{"model.window": 7}``."""
    given = {"model.window": window, "model.mask_ratio": mask_ratio,
             "pretrain.epochs": pretrain_epochs, "finetune.epochs": finetune_epochs,
             "pretrain.encoders": pretrain_encoders}
    return {key: value for key, value in given.items() if value is not None}


def _overridden(preset: Preset, overrides: dict[str, Any]) -> Preset:
    """``preset`` with ``overrides``; one that does not fit is a usage error of its option."""
    from diffclip_cli.errors import OverrideError
    from diffclip_cli.workflows.common import override_preset

    try:
        return override_preset(preset, overrides)
    except OverrideError as exc:
        raise _usage_error(exc) from None


def _usage_error(exc: UsageError) -> Exception:
    """The library's usage error as the command's: a bad value of the option it comes from.

    An override names its preset field (:data:`_OPTION_OF` gives the option), other usage
    errors their option where the library knows it; one without stays as it is.
    """
    from diffclip_cli.errors import OverrideError

    if isinstance(exc, OverrideError):
        return typer.BadParameter(str(exc), param_hint=_OPTION_OF[exc.key])
    if exc.option is None:
        return exc
    return typer.BadParameter(f"{exc.message}: {exc.hint}" if exc.hint else exc.message,
                              param_hint=exc.option)


def _preset(name: str, *, window: int | None = None, mask_ratio: float | None = None,
            pretrain_epochs: int | None = None, finetune_epochs: int | None = None,
            pretrain_encoders: int | None = None) -> Preset:
    """The preset ``name`` with the options' overrides."""
    return _overridden(preset_option(name), _overrides(
        window=window, mask_ratio=mask_ratio, pretrain_epochs=pretrain_epochs,
        finetune_epochs=finetune_epochs, pretrain_encoders=pretrain_encoders))


#: The command-line option of each preset override.
_OPTION_OF = {"model.window": "--window", "model.mask_ratio": "--mask-ratio",
              "pretrain.epochs": "--epochs/--pretrain-epochs",
              "pretrain.encoders": "--encoders/--pretrain-encoders",
              "pretrain.samples": "--pretrain-samples",
              "finetune.epochs": "--finetune-epochs"}


@app.command(rich_help_panel="Train")
def pretrain(
    hsi: HsiArg,
    lidar: LidarArg = None,
    output: Annotated[Path, typer.Option("-o", "--output",
                                         help="The pretrained model file to write.")] = Path(
        "diffclip-pretrained.pt"),
    samples: SamplesOpt = None,
    epochs: EpochsOpt = None,
    encoders: EncodersOpt = None,
    mask_ratio: MaskRatioOpt = None,
    window: WindowOpt = None,
    preset: PresetOpt = None,
    time_budget: TimeBudgetOpt = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run from its checkpoint (OUTPUT.ckpt); "
        "ends where an uninterrupted run with the same seed ends.")] = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Stage 1: masked-diffusion pretraining on the scene's own unlabelled pixels.

    No labels are used. A plan (windows, epochs, estimated time) is printed first. A checkpoint
    (OUTPUT.ckpt) is written after every epoch; if the run is stopped, the same command with
    --resume continues it (with the schedule it started with). The model file holds the
    network, the normalisation statistics and the band names; give it to
    `fewshot --pretrained`.
    """
    from diffclip_cli.model.device import resolve_device
    from diffclip_cli.workflows.pretrain import PretrainOptions, run_pretrain

    level = start(verbose, quiet)
    budget = _budget(time_budget)
    dev = resolve_device(device)
    name, budget = default_recipe(dev.type, preset, budget)
    options = PretrainOptions(
        preset=_preset(name, window=window, mask_ratio=mask_ratio, pretrain_epochs=epochs,
                       pretrain_encoders=encoders),
        samples=samples, resume=resume, seed=seed, device=dev, budget=budget,
        overwrite=overwrite, pinned=_pinned(pretrain_windows=samples, pretrain_epochs=epochs,
                                            pretrain_encoders=encoders))
    printer = _PlanPrinter(level=level, budget=budget, device=dev.type,
                           shorten=" or fewer --samples/--epochs")
    with interruptible(), StageProgress(enabled=level >= 0) as progress:
        result = run_pretrain(hsi, lidar, output, options=options, progress=progress,
                              on_plan=printer)
    last = result.history[-1]["loss"] if result.history else float("nan")
    estimate = "" if result.plan is None else \
        f", estimated {format_seconds(result.plan.total_s)}"
    console.print(f"Pretrained model: {output}  ({len(result.history)} epochs, final loss "
                  f"{last:.4f}, {format_seconds(result.seconds)}{estimate})")


@app.command(rich_help_panel="Train")
def fewshot(
    hsi: HsiArg,
    lidar: LidarArg = None,
    labels: LabelFilesOpt = ...,  # type: ignore[assignment]
    shots: Annotated[int, typer.Option("--shots", "-k", min=1,
                                       help="Labelled pixels per class to train on.")] = ...,  # type: ignore[assignment]
    classes: ClassesOpt = None,
    class_field: ClassFieldOpt = None,
    layer: LayerOpt = None,
    output: Annotated[Path, typer.Option("-o", "--output",
                                         help="The model file to write.")] = DEFAULT_MODEL,
    pretrained: Annotated[Path | None, typer.Option(
        "--pretrained", help="A model from `diffclip pretrain` (skips stage 1).",
        rich_help_panel=_MODEL, show_default=False)] = None,
    pretrain_samples: PretrainSamplesOpt = None,
    pretrain_epochs: PretrainEpochsOpt = None,
    pretrain_encoders: PretrainEncodersOpt = None,
    epochs: Annotated[int | None, typer.Option(
        "--finetune-epochs", min=1, help="Fine-tuning epochs; default the preset's.",
        rich_help_panel=_MODEL, show_default=False)] = None,
    prompt: Annotated[str | None, typer.Option(
        "--prompt", help="Prompt template: p1..p4 (the paper's), p5 (class descriptions) or "
        "a text with {class}; default the preset's (p4).", rich_help_panel=_MODEL,
        show_default=False)] = None,
    descriptions: Annotated[Path | None, typer.Option(
        "--descriptions", help="Class descriptions for p5: CSV class,description, YAML or "
        "JSON.", rich_help_panel=_MODEL, show_default=False)] = None,
    preset: PresetOpt = None,
    time_budget: TimeBudgetOpt = None,
    window: WindowOpt = None,
    split: Annotated[str, typer.Option(
        "--split", help="random (the paper's protocol) or spatial (test pixels away from the "
        "shots).")] = "random",
    fast: Annotated[bool, typer.Option(
        "--fast/--no-fast", help="Also distil the fast path for `classify --fast` (a small "
        "student trained on the classifier's own predictions).",
        rich_help_panel=_MODEL)] = True,
    fast_steps: Annotated[int | None, typer.Option(
        "--fast-steps", min=1, help="Optimiser steps of the fast-path distillation "
        "(default: about 200 visits of each of its training pixels, 6,019 steps for 8,192 "
        "pixels; fewer to fit a time budget).", rich_help_panel=_MODEL,
        show_default=False)] = None,
    batch_size: BatchSizeOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Stage 2: few-shot, language-supervised fine-tuning (after stage 1 unless --pretrained).

    SHOTS labelled pixels per class are drawn at random (with --seed); every other labelled
    pixel is held out and only used for the accuracy report, which is printed and saved next
    to the model (MODEL.report.json/.md/.csv/.png) with two baselines scored on the same
    pixels (a per-pixel random forest and a spectral-spatial SVM). `diffclip classify` then
    uses the model.

    Before training, a plan line gives the schedule and its estimated time. On a CPU without
    --preset the cpu recipe is sized to a 10-minute budget; --time-budget sets another.
    """
    from diffclip_cli.errors import UsageError
    from diffclip_cli.model.device import resolve_device
    from diffclip_cli.report.render import baseline_verdicts, rich_table
    from diffclip_cli.workflows.fewshot import FewshotOptions, run_fewshot

    level = start(verbose, quiet)
    budget = _budget(time_budget)
    prompt = "p5" if descriptions is not None and prompt is None else prompt
    dev = resolve_device(device)
    name, budget = default_recipe(dev.type, preset, budget)
    overrides = _overrides(window=window, pretrain_epochs=pretrain_epochs,
                           finetune_epochs=epochs, pretrain_encoders=pretrain_encoders)
    config = None  # (None: the pretrained model's recipe, read by the workflow)
    if pretrained is None or preset is not None:
        config = _overridden(preset_option(name), overrides)
    try:  # --split, --prompt; --window with --pretrained (it fixes the architecture)
        options = FewshotOptions(
            labels=tuple(labels), shots=shots, classes=classes, class_field=class_field,
            layer=layer, pretrained=pretrained, preset=config, overrides=overrides,
            pretrain_samples=pretrain_samples, template=prompt, descriptions=descriptions,
            split=split, fast=fast, fast_steps=fast_steps, batch_size=batch_size, seed=seed,
            device=dev, budget=budget, overwrite=overwrite,
            pinned=_pinned(pretrain_windows=pretrain_samples, pretrain_epochs=pretrain_epochs,
                           finetune_epochs=epochs, distill_steps=fast_steps,
                           pretrain_encoders=pretrain_encoders))
    except UsageError as exc:  # --split, --prompt; --window etc. with --pretrained
        raise _usage_error(exc) from None
    printer = _PlanPrinter(level=level, budget=budget, device=dev.type,
                           shorten=" or fewer --pretrain-samples/--pretrain-epochs")
    try:
        with interruptible(), StageProgress(enabled=level >= 0) as progress:
            outcome = run_fewshot(hsi, lidar, output, options=options, progress=progress,
                                  on_plan=printer)
    except UsageError as exc:  # --window etc. against the pretrained model's recipe
        raise _usage_error(exc) from None
    result = outcome.result
    took = format_seconds(result.timings["total"])
    estimate = "" if result.plan is None else \
        f", estimated {format_seconds(result.plan.total_s)}"
    console.print(f"Model: {output}  (trained in {took}{estimate})")
    if result.report is None:
        err_console.print("No labelled pixel was left for an accuracy report.")
        return
    if level >= 0:
        console.print(rich_table(result.report, title=outcome.title))
    for verdict in baseline_verdicts(result.report, result.baselines):
        console.print(verdict, highlight=False, soft_wrap=True)
    console.print("Report: " + ", ".join(str(p) for p in outcome.report_paths.values()))
