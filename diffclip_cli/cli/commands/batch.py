"""``diffclip batch``: classify (and evaluate) many scenes; one failure does not stop the rest."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from diffclip_cli.cli.app import app
from diffclip_cli.cli.commands.classify import ModelOpt, parse_creation_options, run_classify
from diffclip_cli.cli.commands.evaluate import report_stem, run_evaluate
from diffclip_cli.cli.common import interruptible, start
from diffclip_cli.cli.console import console, err_console
from diffclip_cli.cli.options import (
    DEFAULT_MODEL,
    BatchSizeOpt,
    DeviceOpt,
    OverwriteOpt,
    QuietOpt,
    TileSizeOpt,
    VerboseOpt,
)
from diffclip_cli.errors import BatchError, DiffclipError
from diffclip_cli.io.atomic import check_collisions, check_outputs
from diffclip_cli.io.manifest import SceneJob, read_manifest
from diffclip_cli.report.render import report_paths

log = logging.getLogger("diffclip")


def _scene_log(output: Path) -> logging.Handler | None:
    """A log file OUTPUT.log for one scene (None when its folder does not exist)."""
    path = output.with_name(output.name + ".log")
    if not path.parent.is_dir():
        return None
    try:
        handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    except OSError as exc:  # a full disk or a read-only folder: the scene itself will say so
        log.warning("%s: cannot write the scene's log (%s)", path, exc.strerror or exc)
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    return handler


def _report_path(job: SceneJob) -> Path:
    return job.output.with_name(job.output.stem + ".report.json")


def _job_files(job: SceneJob) -> dict[str, Any]:
    """The files one scene writes: map (and side files), log, and report trio with labels."""
    from diffclip_cli.io.maps import map_files

    files: dict[str, Any] = {
        f"the map of scene {job.name!r}": map_files(job.output),
        f"the log of scene {job.name!r}": job.output.with_name(job.output.name + ".log")}
    if job.labels is not None:
        files[f"the report of scene {job.name!r}"] = list(
            report_paths(report_stem(_report_path(job))).values())
    return files


def _check_manifest(manifest: Path, jobs: list[SceneJob], model: Path) -> None:
    """Before any scene runs: no scene writes another's output or any scene's input."""
    outputs: dict[str, Any] = {}
    inputs: dict[str, Any] = {"the manifest": manifest, "the model": model}
    for job in jobs:
        outputs.update(_job_files(job))
        inputs.update({f"an input of scene {job.name!r}": [
            p for p in (job.hsi, *job.lidar, job.labels, job.classes, job.model)
            if p is not None]})
    check_collisions(outputs, inputs=inputs)


def _run_job(job: SceneJob, *, model: Path, options: dict[str, Any]) -> dict[str, Any]:
    if job.labels is not None:  # the report is checked before the map is made
        check_outputs({"report": list(report_paths(report_stem(_report_path(job))).values())},
                      inputs={"the labels": job.labels, "the classes table": job.classes},
                      overwrite=options["overwrite"])
    summary = run_classify(job.hsi, job.lidar, job.output, model=job.model or model,
                           **options)
    row: dict[str, Any] = {"pixels": summary["valid_pixels"], "seconds": summary["seconds"]}
    if job.labels is not None:
        evaluation, _ = run_evaluate(job.output, job.labels, _report_path(job),
                                     classes=job.classes,
                                     class_field=job.class_field, layer=job.layer,
                                     overwrite=options["overwrite"])
        row["oa"] = evaluation.report.overall_accuracy
        row["kappa"] = evaluation.report.kappa
    return row


@app.command(rich_help_panel="Map")
def batch(
    manifest: Annotated[Path, typer.Argument(
        help="CSV or YAML: one scene per row with hsi, output and optionally lidar "
        "(';'-separated), labels, classes, class_field, layer, model, name.",
        show_default=False)],
    model: ModelOpt = DEFAULT_MODEL,
    fast: Annotated[bool, typer.Option("--fast", help="Use the fast path.")] = False,
    tile_size: TileSizeOpt = None,
    batch_size: BatchSizeOpt = None,
    cog: Annotated[bool, typer.Option("--cog", help="Cloud-Optimized GeoTIFF maps.")] = False,
    co: Annotated[list[str] | None, typer.Option(
        "--co", help="GDAL creation option NAME=VALUE (repeatable).", show_default=False)
        ] = None,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Classify every scene of a manifest (and evaluate those with labels).

    A failing scene is reported and skipped; the others still run. Each scene gets a log
    OUTPUT.log; a summary table ends the run. Exit code 8 if any scene failed.
    """
    level = start(verbose, quiet)
    jobs = read_manifest(manifest)
    _check_manifest(manifest, jobs, model)
    options = {"tile_size": tile_size, "batch_size": batch_size, "cog": cog,
               "creation_options": parse_creation_options(co, cog=cog), "fast": fast,
               "device": device, "overwrite": overwrite, "show_progress": level >= 0}
    table = Table(title=f"Batch {manifest.name}: {len(jobs)} scenes")
    for col in ("scene", "status", "pixels", "seconds", "OA", "kappa", "message"):
        table.add_column(col)
    failed = 0
    for i, job in enumerate(jobs, start=1):
        err_console.print(f"[bold]Scene {i}/{len(jobs)}:[/] {job.name}")
        handler = _scene_log(job.output)
        if handler is not None:
            log.addHandler(handler)
        begin = time.perf_counter()
        try:
            with interruptible():  # SIGTERM between two writes still stops the whole batch
                row = _run_job(job, model=model, options=options)
            status, message = "[green]ok[/]", str(job.output)
            log.info("scene %s done: %s", job.name, row)
        except KeyboardInterrupt:
            raise
        except DiffclipError as exc:
            failed += 1
            status, message, row = "[red]failed[/]", str(exc), {}
            log.error("scene %s failed: %s", job.name, exc)
        except Exception as exc:  # one broken scene must not stop the others
            failed += 1
            status, message, row = "[red]failed[/]", f"internal error: {exc!r}", {}
            log.exception("scene %s failed with an internal error", job.name)
        finally:
            if handler is not None:
                log.removeHandler(handler)
                handler.close()
        seconds = row.get("seconds", round(time.perf_counter() - begin, 1))
        table.add_row(job.name, status, f"{row['pixels']:,}" if "pixels" in row else "",
                      str(seconds),
                      f"{100 * row['oa']:.2f}" if row.get("oa") is not None else "",
                      f"{100 * row['kappa']:.2f}" if row.get("kappa") is not None else "",
                      message)
    console.print(table)
    if failed:
        raise BatchError(f"{failed} of {len(jobs)} scenes failed", path=manifest,
                         hint="see the table above and each scene's OUTPUT.log")
