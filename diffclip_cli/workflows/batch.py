"""The batch workflow's steps: check a manifest's files, then classify (and evaluate) a scene.

``diffclip batch`` checks the manifest once with :func:`check_manifest`, then runs
:func:`run_scene` for every scene, reporting a failing scene and going on with the others.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffclip_cli.io.atomic import check_collisions, check_outputs
from diffclip_cli.io.manifest import SceneJob
from diffclip_cli.progress import Progress
from diffclip_cli.report.render import report_paths
from diffclip_cli.workflows.classify import ClassifyOptions, run_classify
from diffclip_cli.workflows.evaluate import EvaluateOptions, report_stem, run_evaluate

__all__ = ["SceneRow", "check_manifest", "report_path", "run_scene"]


@dataclass(frozen=True)
class SceneRow:
    """What one scene of a batch gave: classified pixels, seconds, and its scores if labelled.

    Attributes:
        pixels: pixels classified (valid pixels of the map).
        seconds: seconds the classification took.
        oa: overall accuracy (0-1) against the scene's labels, else ``None``.
        kappa: Cohen's kappa against the scene's labels, else ``None``.
    """

    pixels: int
    seconds: float
    oa: float | None = None
    kappa: float | None = None


def report_path(job: SceneJob) -> Path:
    """The report of a labelled scene: ``OUTPUT.report.json`` beside its map."""
    return job.output.with_name(job.output.stem + ".report.json")


def _job_files(job: SceneJob) -> dict[str, Any]:
    """The files one scene writes: map (and side files), log, and report trio with labels."""
    from diffclip_cli.io.sidecars import map_files

    files: dict[str, Any] = {
        f"the map of scene {job.name!r}": map_files(job.output),
        f"the log of scene {job.name!r}": job.output.with_name(job.output.name + ".log")}
    if job.labels is not None:
        files[f"the report of scene {job.name!r}"] = list(
            report_paths(report_stem(report_path(job))).values())
    return files


def check_manifest(manifest: Path, jobs: list[SceneJob], model: Path) -> None:
    """Before any scene runs: no scene writes another's output or any scene's input.

    Raises:
        OutputError: two scenes write one file, or a scene writes an input.
    """
    outputs: dict[str, Any] = {}
    inputs: dict[str, Any] = {"the manifest": manifest, "the model": model}
    for job in jobs:
        outputs.update(_job_files(job))
        inputs.update({f"an input of scene {job.name!r}": [
            p for p in (job.hsi, *job.lidar, job.labels, job.classes, job.model)
            if p is not None]})
    check_collisions(outputs, inputs=inputs)


def run_scene(job: SceneJob, *, options: ClassifyOptions,
              progress: Progress | None = None) -> SceneRow:
    """Classify one scene of a manifest, then evaluate its map when it has labels.

    Args:
        job: the scene; its own model, when it names one, replaces ``options.model``.
        options: the batch's classify options (no side outputs).
        progress: called with the ``classify`` stage's pixel counts.

    Raises:
        DiffclipError: any error of the scene (the batch reports it and goes on).
    """
    if job.labels is not None:  # the report is checked before the map is made
        check_outputs({"report": list(report_paths(report_stem(report_path(job))).values())},
                      inputs={"the labels": job.labels, "the classes table": job.classes},
                      overwrite=options.write.overwrite)
    if job.model is not None:
        options = dataclasses.replace(options, model=job.model)
    summary = run_classify(job.hsi, job.lidar, job.output, options=options, progress=progress)
    if job.labels is None:
        return SceneRow(pixels=summary.valid_pixels, seconds=round(summary.seconds, 2))
    evaluation = run_evaluate(
        job.output, job.labels, report_path(job),
        options=EvaluateOptions(classes=job.classes, class_field=job.class_field,
                                layer=job.layer, overwrite=options.write.overwrite)).evaluation
    return SceneRow(pixels=summary.valid_pixels, seconds=round(summary.seconds, 2),
                    oa=evaluation.report.overall_accuracy, kappa=evaluation.report.kappa)
