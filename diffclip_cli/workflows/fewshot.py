"""The fewshot workflow: a scene and its labels to a model file (with its fast path) and report.

What ``diffclip fewshot`` runs: every output checked before any work, the descriptions and the
pretrained model read before training, stage 1 unless a pretrained model is given, stage 2,
the fast path's distillation, the model saved, then the held-out accuracy report (with the
per-pixel baseline) written beside it; all renamed into place together at the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffclip_cli.errors import OverrideError
from diffclip_cli.model.prompts import check_template
from diffclip_cli.pipeline import FewshotResult, PlanFn, fewshot_scene
from diffclip_cli.progress import Progress
from diffclip_cli.sampling.defaults import DEFAULT_PRETRAIN_SAMPLES
from diffclip_cli.sampling.shots import check_split
from diffclip_cli.workflows.common import (
    TrainingOptions,
    open_scene,
    override_preset,
    read_label_file,
    warn_if_out_of_distribution,
)

if TYPE_CHECKING:

    from diffclip_cli.model.config import Preset

__all__ = ["FewshotOptions", "FewshotOutcome", "report_stem", "run_fewshot"]



@dataclass(frozen=True, kw_only=True)
class FewshotOptions(TrainingOptions):
    """What to train on and how: labels, shots, recipe, prompts, fast path, execution.

    Attributes:
        labels: labelled pixels, a vector file or a label raster.
        shots: labelled pixels per class to train on.
        classes: a classes table naming a label raster's ids (and describing classes).
        class_field: the vector attribute holding classes (default: guessed).
        layer: the layer of a multi-layer vector file.
        pretrained: a model from stage 1 (skips it); ``None`` runs stage 1 first.
        preset: the recipe, overrides applied; ``None`` trains with the pretrained model's
            own recipe, with ``overrides`` applied to it.
        overrides: preset fields set explicitly (``{"model.window": 7}``); applied to the
            pretrained model's recipe when ``preset`` is ``None`` (else already in ``preset``).
            With a pretrained model, none of the architecture (``model.*``): it is the
            pretrained model's.
        pretrain_samples: unlabelled windows for stage 1 (``None``: the default).
        prompt: prompt template ``p1``..``p5`` or a text with ``{class}`` (``None``: the
            preset's).
        descriptions: class descriptions for ``p5`` (CSV, YAML or JSON).
        split: ``random`` (the paper's protocol) or ``spatial``.
        fast: also distil the fast path.
        fast_steps: optimiser steps of the distillation (``None``: by the recipe).
        batch_size: windows per forward pass (``None``: by device).

    With the :class:`~diffclip_cli.workflows.common.TrainingOptions` fields (seed, device,
    budget, pinned, overwrite).

    Raises:
        OverrideError: an override of the architecture (``model.*``) with a pretrained
            model, which fixes it, or of stage 1 (``pretrain.*``, ``pretrain_samples``),
            which it skips (a ``ValueError``).
        UsageError: an unknown split or prompt template (``p5`` with nothing to describe
            the classes included).
        ValueError: an option out of its range (a budget that is not positive included), or
            neither a preset nor a pretrained model.
    """

    labels: str | Path
    shots: int
    classes: Path | None = None
    class_field: str | None = None
    layer: str | None = None
    pretrained: Path | None = None
    preset: Preset | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    pretrain_samples: int | None = None
    prompt: str | None = None
    descriptions: Path | None = None
    split: str = "random"
    fast: bool = True
    fast_steps: int | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.shots < 1:
            raise ValueError(f"shots must be at least 1, not {self.shots}")
        check_split(self.split)
        check_template(self.prompt,
                       descriptions=self.descriptions is not None or self.classes is not None)
        if self.preset is None and self.pretrained is None:
            raise ValueError("give a preset, or a pretrained model whose recipe to use")
        if self.pretrained is not None:
            for key, value in self.overrides.items():
                if key.startswith("model."):
                    raise OverrideError.fixed_by_pretrained(key, value)
                if key.startswith("pretrain."):
                    raise OverrideError.skipped_by_pretrained(key, value)
            if self.pretrain_samples is not None:
                raise OverrideError.skipped_by_pretrained("pretrain.samples",
                                                          self.pretrain_samples)
        for name in ("pretrain_samples", "fast_steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")


@dataclass(frozen=True)
class FewshotOutcome:
    """What :func:`run_fewshot` wrote.

    Attributes:
        result: what the training produced (model bundle, report, baseline, timings, plan).
        title: the report's title (``None`` without a report).
        report_paths: the report files by format (empty when no labelled pixel was left
            for a report).
    """

    result: FewshotResult
    title: str | None = None
    report_paths: dict[str, Path] = field(default_factory=dict)


def report_stem(output: Path) -> Path:
    """``model.pt`` -> ``model.report`` (the stem of the report's .json/.md/.csv/.png)."""
    return output.with_name(output.stem + ".report")


def run_fewshot(hsi: str | Path, lidar: list[str] | list[Path] | None, output: Path, *,
                options: FewshotOptions, progress: Progress | None = None,
                on_plan: PlanFn | None = None) -> FewshotOutcome:
    """Train a few-shot model of a scene; save it and its held-out accuracy report.

    Args:
        hsi: the hyperspectral raster (path or GDAL dataset name).
        lidar: LiDAR rasters stacked as channels, or ``None``.
        output: the model file; the report is written beside it (:func:`report_stem`).
        options: what to train on and how.
        progress: called with every training and scoring event.
        on_plan: called with the schedule before training.

    Raises:
        OverrideError: an override does not fit the pretrained model's recipe.
        DeviceError: the device is unknown or not available here.
        DiffclipError: an input cannot be used, an output would replace an input, ...
    """
    from diffclip_cli.io.atomic import output_set
    from diffclip_cli.model.device import resolve_device
    from diffclip_cli.model.modelfile import load_model, save_model
    from diffclip_cli.model.prompts import read_descriptions
    from diffclip_cli.report.render import report_paths, write_report

    pretrained, overwrite = options.pretrained, options.overwrite
    device = resolve_device(options.device)
    stem = report_stem(output)
    outputs: dict[str, Any] = {"model": output, "report": list(report_paths(stem).values())}
    inputs = {"the HSI": hsi, "a LiDAR raster": lidar, "the labels": options.labels,
              "the classes table": options.classes, "the descriptions": options.descriptions,
              "the pretrained model": pretrained}
    # Every output checked before any work; all renamed into place together at the end.
    with output_set(outputs, inputs=inputs, overwrite=overwrite):
        # Read now: a bad descriptions file must fail before hours of training, not after.
        if options.descriptions is not None:
            read_descriptions(options.descriptions)
        base = load_model(pretrained) if pretrained is not None else None
        if options.preset is not None:
            config = options.preset
        elif base is not None:  # fine-tune with the pretrained model's recipe
            config = override_preset(base.preset_config, options.overrides)
        else:  # (FewshotOptions refuses this combination)
            raise ValueError("give a preset, or a pretrained model whose recipe to use")
        with open_scene(hsi, lidar) as scene:
            if base is not None and pretrained is not None:
                warn_if_out_of_distribution(scene, base, model=pretrained)
            label_set = read_label_file(options.labels, scene, classes=options.classes,
                                        class_field=options.class_field, layer=options.layer)
            fast: bool | dict[str, Any] = options.fast
            if options.fast and options.fast_steps is not None:
                fast = {"steps": options.fast_steps}
            result = fewshot_scene(
                scene, label_set, shots=options.shots, preset=config, pretrained=base,
                pretrain_samples=(DEFAULT_PRETRAIN_SAMPLES if options.pretrain_samples is None
                                  else options.pretrain_samples),
                template=options.prompt, descriptions=options.descriptions,
                split=options.split, seed=options.seed, device=device,
                batch_size=options.batch_size, progress=progress, fast=fast,
                budget=options.budget, pinned=options.pinned, on_plan=on_plan,
                provenance={"labels": str(options.labels),
                            "pretrained_file": None if pretrained is None else str(pretrained)})
            save_model(result.bundle, output, overwrite=overwrite)
        if result.report is None:
            return FewshotOutcome(result)
        title = (f"Held-out accuracy: {result.report.n_pixels} labelled pixels not used for "
                 f"training ({options.shots} shots per class, seed {options.seed})")
        paths = write_report(result.report, stem, overwrite=overwrite, title=title,
                             metadata={"model": str(output), "shots": options.shots,
                                       "seed": options.seed, "split": options.split,
                                       "labels": str(options.labels)},
                             baselines=result.baselines)
    return FewshotOutcome(result, title, paths)
