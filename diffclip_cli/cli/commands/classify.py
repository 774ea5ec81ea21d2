"""``diffclip classify``: a georeferenced land-cover map of a whole scene."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffclip_cli.cli.app import app
from diffclip_cli.cli.common import StageProgress, interruptible, start
from diffclip_cli.cli.console import console
from diffclip_cli.cli.options import (
    DEFAULT_MODEL,
    BatchSizeOpt,
    DeviceOpt,
    HsiArg,
    LidarArg,
    ModelOpt,
    OverwriteOpt,
    QuietOpt,
    TileSizeOpt,
    VerboseOpt,
    creation_option_errors,
    parse_creation_options,
)

_OUT = "Outputs"
_PERF = "Performance"


@app.command(rich_help_panel="Map")
def classify(
    hsi: HsiArg,
    lidar: LidarArg = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="The class map (GeoTIFF).",
                                         rich_help_panel=_OUT)] = ...,  # type: ignore[assignment]
    model: ModelOpt = DEFAULT_MODEL,
    confidence: Annotated[Path | None, typer.Option(
        "--confidence", help="Also write the top-class probability (float32, nodata -1).",
        rich_help_panel=_OUT, show_default=False)] = None,
    probabilities: Annotated[Path | None, typer.Option(
        "--probabilities", help="Also write one probability band per class (float32).",
        rich_help_panel=_OUT, show_default=False)] = None,
    quicklook: Annotated[Path | None, typer.Option(
        "--quicklook", help="Also draw the map as a PNG with a legend.",
        rich_help_panel=_OUT, show_default=False)] = None,
    cog: Annotated[bool, typer.Option(
        "--cog", help="Write Cloud-Optimized GeoTIFFs (tiled, with overviews).",
        rich_help_panel=_OUT)] = False,
    co: Annotated[list[str] | None, typer.Option(
        "--co", help="GDAL creation option NAME=VALUE (repeatable), e.g. COMPRESS=ZSTD.",
        rich_help_panel=_OUT, show_default=False)] = None,
    fast: Annotated[bool, typer.Option(
        "--fast", help="Use the model's distilled fast path (much faster on CPUs, "
        "slightly less faithful).", rich_help_panel=_PERF)] = False,
    tile_size: TileSizeOpt = None,
    batch_size: BatchSizeOpt = None,
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", help="Run the tiles on a dask.distributed scheduler at this address.",
        rich_help_panel=_PERF, show_default=False)] = None,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Classify every pixel of a scene into a georeferenced land-cover map.

    The map is on the HSI grid (CRS, transform, shape), uint8 (uint16 above 255 classes), with
    nodata 0 where any input band is nodata or LiDAR does not reach, a colour table, the class
    names in its tags and a sidecar MAP.json. Tiles are processed lazily, so memory does not
    grow with the scene; outputs appear only when complete.
    """
    from diffclip_cli.workflows.classify import (
        ClassifyOptions,
        RunOptions,
        WriteOptions,
        run_classify,
    )

    level = start(verbose, quiet)
    with creation_option_errors():
        write = WriteOptions(confidence=confidence, probabilities=probabilities, cog=cog,
                             creation_options=parse_creation_options(co), overwrite=overwrite)
    run = RunOptions(tile_size=tile_size, batch_size=batch_size, device=device, fast=fast,
                     scheduler=scheduler)
    options = ClassifyOptions(model=model, quicklook=quicklook, write=write, run=run)
    with interruptible(), StageProgress(enabled=level >= 0) as progress:
        summary = run_classify(hsi, lidar, output, options=options, progress=progress)
    console.print(f"Map: {summary.output}  ({summary.valid_pixels:,} of "
                  f"{summary.pixels:,} pixels classified, {summary.seconds:.2f} s, "
                  f"{summary.pixels_per_second:,.1f} px/s, {summary.engine} engine)")
    for name, path in (("Confidence", summary.confidence),
                       ("Probabilities", summary.probabilities),
                       ("Quicklook", summary.quicklook)):
        if path is not None:
            console.print(f"{name}: {path}")
