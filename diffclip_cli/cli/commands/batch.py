"""``diffclip batch``: classify (and evaluate) many scenes; one failure does not stop the rest."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from diffclip_cli.cli.app import app
from diffclip_cli.cli.common import StageProgress, interruptible, start
from diffclip_cli.cli.console import console, err_console
from diffclip_cli.cli.options import (
    DEFAULT_MODEL,
    BatchSizeOpt,
    DeviceOpt,
    ModelOpt,
    OverwriteOpt,
    QuietOpt,
    TileSizeOpt,
    VerboseOpt,
    creation_option_errors,
    parse_creation_options,
)
from diffclip_cli.errors import BatchError, DiffclipError
from diffclip_cli.io.manifest import read_manifest

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
    from diffclip_cli.workflows.batch import check_manifest, run_scene
    from diffclip_cli.workflows.classify import ClassifyOptions, RunOptions, WriteOptions

    level = start(verbose, quiet)
    jobs = read_manifest(manifest)
    check_manifest(manifest, jobs, model)
    with creation_option_errors():
        write = WriteOptions(cog=cog, creation_options=parse_creation_options(co),
                             overwrite=overwrite)
    options = ClassifyOptions(model=model, write=write,
                              run=RunOptions(tile_size=tile_size, batch_size=batch_size,
                                             device=device, fast=fast))
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
            # SIGTERM between two writes still stops the whole batch
            with interruptible(), StageProgress(enabled=level >= 0) as progress:
                scene = run_scene(job, options=options, progress=progress)
            row: dict[str, Any] = {"pixels": scene.pixels, "seconds": scene.seconds}
            if job.labels is not None:
                row.update(oa=scene.oa, kappa=scene.kappa)
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
