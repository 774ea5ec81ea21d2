"""The demo workflow: the whole pipeline on the embedded Salinas-A scene.

What ``diffclip demo`` runs: every output (model, map and its side files, quicklook, report)
checked before any work, few-shot training with a short pretraining stage (planned, as
fewshot plans), the model saved, the whole scene classified, the held-out accuracy report
(with the per-pixel baseline) and the quicklook written; all renamed into place together at
the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffclip_cli.infer.classify import RunOptions, WriteOptions, classify_scene
from diffclip_cli.progress import Progress, counting
from diffclip_cli.train.budget import PlanFn
from diffclip_cli.workflows.common import open_scene
from diffclip_cli.workflows.fewshot import FewshotRequest, FewshotResult, fewshot_scene

if TYPE_CHECKING:
    import torch

    from diffclip_cli.model.config import Preset
    from diffclip_cli.report.metrics import AccuracyReport

__all__ = ["DEMO_PRETRAIN_SAMPLES", "DemoOptions", "DemoOutcome", "run_demo"]

#: Unlabelled windows of the demo's short pretraining stage.
DEMO_PRETRAIN_SAMPLES = 1000


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    """The demo's recipe and execution.

    Attributes:
        preset: the recipe.
        preset_name: the preset as the user named it (a name or a preset file), recorded in
            the report; ``None``: the preset's own name.
        shots: labelled pixels per class to train on.
        seed: the seed of every random choice.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (or a
            :class:`torch.device`), resolved once by :func:`run_demo`.
        overwrite: replace existing outputs.

    Raises:
        ValueError: ``shots`` below 1.
    """

    preset: Preset
    preset_name: str | None = None
    shots: int
    seed: int = 0
    device: str | torch.device = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.shots < 1:
            raise ValueError(f"shots must be at least 1, not {self.shots}")

    @property
    def preset_label(self) -> str:
        """The preset as the report names it."""
        return self.preset.name if self.preset_name is None else self.preset_name


@dataclass(frozen=True)
class DemoOutcome:
    """What :func:`run_demo` wrote.

    Attributes:
        result: what the training produced (model bundle, report, baseline, timings, plan).
        report: the held-out accuracy report (``result.report``, always present here).
        title: the report's title.
        model: the model file.
        map: the class map (its side files beside it).
        quicklook: the map's PNG.
        valid_pixels: the pixels the map classified.
        report_paths: the report files by format.
    """

    result: FewshotResult
    report: AccuracyReport
    title: str
    model: Path
    map: Path
    quicklook: Path
    valid_pixels: int
    report_paths: dict[str, Path] = field(default_factory=dict)


def run_demo(output: Path, *, options: DemoOptions, progress: Progress | None = None,
             on_plan: PlanFn | None = None, on_start: Callable[[Path], None] | None = None
             ) -> DemoOutcome:
    """Train on the embedded Salinas-A scene, map it, score the map and draw it, in ``output``.

    Args:
        output: the folder of the results (created): ``model.pt``, ``map.tif`` (with its side
            files), ``map.png`` and ``report.json``/``.md``/``.csv``/``.png``.
        options: the recipe and the execution.
        progress: called with every training, scoring and classifying event.
        on_plan: called with the schedule before training.
        on_start: called with the folder of the sample scene once every output is checked,
            before any work.

    Returns:
        The training result and the files written.

    Raises:
        OutputError: ``output`` is a file, or an output exists (without ``overwrite``).
        DeviceError: the device is unknown or not available here.
        LabelError: every labelled pixel was a shot, so nothing is left to score.
    """
    from diffclip_cli.data import salinas_a_dir
    from diffclip_cli.errors import LabelError, OutputError
    from diffclip_cli.io.atomic import output_set
    from diffclip_cli.io.labels import read_labels
    from diffclip_cli.io.sidecars import map_files
    from diffclip_cli.model.archive import save_model
    from diffclip_cli.model.device import resolve_device
    from diffclip_cli.report.quicklook import quicklook
    from diffclip_cli.report.render import report_paths, write_report

    overwrite, shots, seed = options.overwrite, options.shots, options.seed
    data = salinas_a_dir()
    if output.exists() and not output.is_dir():
        raise OutputError("exists and is not a folder", path=output,
                          hint="choose another --output folder")
    output.mkdir(parents=True, exist_ok=True)
    model_path = output / "model.pt"
    map_path = output / "map.tif"
    png_path = output / "map.png"
    report_stem = output / "report"
    device = resolve_device(options.device)
    outputs: dict[str, Any] = {"model": model_path, "map": map_files(map_path),
                               "quicklook": png_path,
                               "report": list(report_paths(report_stem).values())}
    inputs = {"the demo scene": data / "hsi.tif", "the demo labels": data / "labels.gpkg"}
    # Every output is checked before the training starts; all appear together at the end.
    with output_set(outputs, inputs=inputs, overwrite=overwrite) as outs:
        if on_start is not None:
            on_start(data)
        with open_scene(data / "hsi.tif", None) as scene:
            labels = read_labels(data / "labels.gpkg", scene.grid)
            # A plan (as fewshot makes one) times a few steps first: on a busy CPU it trains
            # with one thread when that is faster (it was 30x on 2 shared cores).
            request = FewshotRequest(shots=shots, preset=options.preset,
                                     pretrain_samples=DEMO_PRETRAIN_SAMPLES, seed=seed,
                                     device=device)
            result = fewshot_scene(scene, labels, request, progress=progress,
                                   provenance={"labels": str(data / "labels.gpkg")},
                                   on_plan=on_plan)
            save_model(result.bundle, model_path, overwrite=overwrite)
            mapped = classify_scene(scene, result.bundle, map_path,
                                    write=WriteOptions(overwrite=overwrite),
                                    run=RunOptions(device=device),
                                    progress=counting(progress, "classify"),
                                    metadata={"model_file": str(model_path)})
        if result.report is None:  # every labelled pixel was a shot
            raise LabelError("no labelled pixel is left to score the model on",
                             hint="use fewer --shots")
        title = (f"Salinas-A: accuracy on the {result.report.n_pixels} labelled pixels not used "
                 f"for training ({shots} per class, seed {seed})")
        reports = write_report(result.report, report_stem, overwrite=overwrite, title=title,
                               metadata={"scene": "Salinas-A", "shots": shots, "seed": seed,
                                         "preset": options.preset_label},
                               baselines=result.baselines)
        quicklook(outs.pending(map_path), result.bundle.require_classes(), png_path,
                  overwrite=overwrite, title="Salinas-A land cover (diffclip demo)")
    return DemoOutcome(result, result.report, title, model_path, map_path, png_path,
                       mapped.valid_pixels, reports)
