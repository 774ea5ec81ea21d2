"""``diffclip pretrain`` and ``diffclip fewshot``: the two training stages."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from diffclip_cli.cli.app import app
from diffclip_cli.cli.common import (
    StageProgress,
    fewshot_scene,
    interruptible,
    open_scene,
    preset_option,
    read_label_file,
    start,
    warn_if_out_of_distribution,
)
from diffclip_cli.cli.console import console, err_console
from diffclip_cli.cli.options import (
    DEFAULT_MODEL,
    BatchSizeOpt,
    ClassesOpt,
    ClassFieldOpt,
    DeviceOpt,
    HsiArg,
    LabelsOpt,
    LayerOpt,
    LidarArg,
    OverwriteOpt,
    QuietOpt,
    SeedOpt,
    VerboseOpt,
)
from diffclip_cli.errors import ModelError
from diffclip_cli.io.atomic import check_collisions, output_set
from diffclip_cli.sampling.defaults import DEFAULT_PRETRAIN_SAMPLES

if TYPE_CHECKING:
    from diffclip_cli.model.config import Preset

_MODEL = "Model"

PresetOpt = Annotated[
    str,
    typer.Option("--preset", help="Model preset (paper, tiny, ...) or a preset YAML file.",
                 rich_help_panel=_MODEL),
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
PretrainSamplesOpt = Annotated[
    int, typer.Option("--pretrain-samples", min=1, help=_SAMPLES_HELP, rich_help_panel=_MODEL)
]
PretrainEpochsOpt = Annotated[
    int | None,
    typer.Option("--pretrain-epochs", min=1, help=_EPOCHS_HELP, rich_help_panel=_MODEL,
                 show_default=False),
]
SamplesOpt = Annotated[
    int, typer.Option("--samples", min=1, help=_SAMPLES_HELP, rich_help_panel=_MODEL)
]
EpochsOpt = Annotated[
    int | None,
    typer.Option("--epochs", min=1, help=_EPOCHS_HELP, rich_help_panel=_MODEL,
                 show_default=False),
]


def _preset(name: str, *, window: int | None = None, mask_ratio: float | None = None,
            pretrain_epochs: int | None = None, finetune_epochs: int | None = None) -> Preset:
    overrides: dict[str, Any] = {}
    if window is not None:
        overrides["model.window"] = window
    if mask_ratio is not None:
        overrides["model.mask_ratio"] = mask_ratio
    if pretrain_epochs is not None:
        overrides["pretrain.epochs"] = pretrain_epochs
    if finetune_epochs is not None:
        overrides["finetune.epochs"] = finetune_epochs
    preset = preset_option(name)
    for key, value in overrides.items():  # one at a time, to name the option at fault
        try:
            preset = preset.with_overrides(**{key: value})
        except ModelError as exc:
            raise typer.BadParameter(f"{value} does not fit the preset {preset.name!r}: "
                                     f"{exc.message}" + (f"; {exc.hint}" if exc.hint else ""),
                                     param_hint=_OPTION_OF[key]) from None
    return preset


#: The command-line option of each preset override.
_OPTION_OF = {"model.window": "--window", "model.mask_ratio": "--mask-ratio",
              "pretrain.epochs": "--epochs/--pretrain-epochs",
              "finetune.epochs": "--finetune-epochs"}


def _check_prompt(prompt: str | None, descriptions: Path | None, classes: Path | None
                  ) -> None:
    """Refuse an unknown prompt template as a usage error, before any work."""
    from diffclip_cli.model.prompts import TEMPLATES

    if prompt is None or prompt in TEMPLATES:
        return
    if prompt == "p5":
        if descriptions is None and classes is None:
            raise typer.BadParameter("p5 builds prompts from class descriptions: pass "
                                     "--descriptions FILE or a --classes table with a "
                                     "description column", param_hint="--prompt")
        return
    if "{class}" not in prompt:
        raise typer.BadParameter(f"unknown prompt template {prompt!r}: use p1, p2, p3, p4, p5 "
                                 "or a text containing {class}", param_hint="--prompt")


@app.command(rich_help_panel="Train")
def pretrain(
    hsi: HsiArg,
    lidar: LidarArg = None,
    output: Annotated[Path, typer.Option("-o", "--output",
                                         help="The pretrained model file to write.")] = Path(
        "diffclip-pretrained.pt"),
    samples: SamplesOpt = DEFAULT_PRETRAIN_SAMPLES,
    epochs: EpochsOpt = None,
    mask_ratio: MaskRatioOpt = None,
    window: WindowOpt = None,
    preset: PresetOpt = "paper",
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

    No labels are used. A checkpoint (OUTPUT.ckpt) is written after every epoch; if the run is
    stopped, the same command with --resume continues it. The model file holds the network,
    the normalisation statistics and the band names; give it to `fewshot --pretrained`.
    """
    from diffclip_cli.model.device import resolve_device
    from diffclip_cli.model.modelfile import save_model
    from diffclip_cli.pipeline import pretrain_scene

    level = start(verbose, quiet)
    checkpoint = output.with_name(output.name + ".ckpt")
    inputs = {"the HSI": hsi, "a LiDAR raster": lidar}
    # The checkpoint is rewritten every epoch (and resumed from), so it is not in the set.
    check_collisions({"model": output, "checkpoint": checkpoint}, inputs=inputs)
    config = _preset(preset, window=window, mask_ratio=mask_ratio, pretrain_epochs=epochs)
    dev = str(resolve_device(device))
    with interruptible(), output_set({"model": output}, inputs=inputs, overwrite=overwrite), \
            open_scene(hsi, lidar) as scene, StageProgress(enabled=level >= 0) as progress:
        result = pretrain_scene(scene, preset=config, samples=samples, seed=seed,
                                checkpoint=checkpoint, resume=resume, device=dev,
                                progress=progress)
        save_model(result.bundle, output, overwrite=overwrite)
    with contextlib.suppress(FileNotFoundError):
        checkpoint.unlink()
    last = result.history[-1]["loss"] if result.history else float("nan")
    console.print(f"Pretrained model: {output}  ({len(result.history)} epochs, final loss "
                  f"{last:.4f}, {result.seconds:.0f} s)")


@app.command(rich_help_panel="Train")
def fewshot(
    hsi: HsiArg,
    lidar: LidarArg = None,
    labels: LabelsOpt = ...,  # type: ignore[assignment]
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
    pretrain_samples: PretrainSamplesOpt = DEFAULT_PRETRAIN_SAMPLES,
    pretrain_epochs: PretrainEpochsOpt = None,
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
    preset: PresetOpt = "paper",
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
        "(default 6000).", rich_help_panel=_MODEL, show_default=False)] = None,
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
    to the model (MODEL.report.json/.md/.csv/.png) with a per-pixel baseline scored on the
    same pixels. `diffclip classify` then uses the model.
    """
    from diffclip_cli.model.device import resolve_device
    from diffclip_cli.model.modelfile import load_model, save_model
    from diffclip_cli.model.prompts import read_descriptions
    from diffclip_cli.pipeline import BASELINE_METHOD
    from diffclip_cli.report.render import (
        baseline_verdict,
        report_paths,
        rich_table,
        write_report,
    )

    level = start(verbose, quiet)
    if split not in ("random", "spatial"):
        raise typer.BadParameter("use random or spatial", param_hint="--split")
    _check_prompt("p5" if descriptions is not None and prompt is None else prompt,
                  descriptions, classes)
    _preset(preset, window=window, pretrain_epochs=pretrain_epochs, finetune_epochs=epochs)
    report_stem = output.with_name(output.stem + ".report")
    outputs = {"model": output, "report": list(report_paths(report_stem).values())}
    inputs = {"the HSI": hsi, "a LiDAR raster": lidar, "the labels": labels,
              "the classes table": classes, "the descriptions": descriptions,
              "the pretrained model": pretrained}
    # Every output checked before any work; all renamed into place together at the end.
    with output_set(outputs, inputs=inputs, overwrite=overwrite):
        # Read now: a bad descriptions file must fail before hours of training, not after.
        if descriptions is not None:
            read_descriptions(descriptions)
        prompt = "p5" if descriptions is not None and prompt is None else prompt
        config = _preset(preset, window=window, pretrain_epochs=pretrain_epochs,
                         finetune_epochs=epochs)
        base = load_model(pretrained) if pretrained is not None else None
        dev = str(resolve_device(device))
        with interruptible(), open_scene(hsi, lidar) as scene:
            if base is not None and pretrained is not None:
                warn_if_out_of_distribution(scene, base, model=pretrained)
            label_set = read_label_file(labels, scene, classes=classes, class_field=class_field,
                                        layer=layer)
            with StageProgress(enabled=level >= 0) as progress:
                result = fewshot_scene(
                    scene, label_set, shots=shots, preset=config, pretrained=base,
                    pretrain_samples=pretrain_samples, template=prompt,
                    descriptions=descriptions, split=split, seed=seed, device=dev,
                    batch_size=batch_size, progress=progress,
                    provenance={"labels": str(labels),
                                "pretrained_file": None if pretrained is None else str(pretrained)})
                bundle = result.bundle
                if fast:
                    from diffclip_cli.train.distill import add_fast_path

                    options = {} if fast_steps is None else {"steps": fast_steps}
                    bundle = add_fast_path(scene, bundle, classifier=result.classifier, seed=seed,
                                           device=dev, batch_size=batch_size, progress=progress,
                                           **options)
            save_model(bundle, output, overwrite=overwrite)
        console.print(f"Model: {output}")
        if result.report is None:
            err_console.print("No labelled pixel was left for an accuracy report.")
            return
        title = (f"Held-out accuracy: {result.report.n_pixels} labelled pixels not used for "
                 f"training ({shots} shots per class, seed {seed})")
        paths = write_report(result.report, report_stem, overwrite=overwrite, title=title,
                             metadata={"model": str(output), "shots": shots, "seed": seed,
                                       "split": split, "labels": str(labels)},
                             baseline=result.baseline, baseline_method=BASELINE_METHOD)
        if level >= 0:
            console.print(rich_table(result.report, title=title))
        if result.baseline is not None:
            console.print(baseline_verdict(result.report, result.baseline), highlight=False,
                          soft_wrap=True)
        console.print("Report: " + ", ".join(str(p) for p in paths.values()))
