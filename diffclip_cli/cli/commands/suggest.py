"""``diffclip suggest``: the pixels to label next, as a GeoPackage of ranked points."""

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
    ClassesOpt,
    ClassFieldOpt,
    DeviceOpt,
    HsiArg,
    LayerOpt,
    LidarArg,
    ModelOpt,
    OverwriteOpt,
    QuietOpt,
    TileSizeOpt,
    VerboseOpt,
)

_OUT = "Outputs"
_CHOICE = "Choice"


@app.command(rich_help_panel="Map")
def suggest(
    hsi: HsiArg,
    lidar: LidarArg = None,
    output: Annotated[Path, typer.Option(
        "-o", "--output", help="The points to label (GeoPackage, .gpkg).",
        rich_help_panel=_OUT)] = ...,  # type: ignore[assignment]
    model: ModelOpt = DEFAULT_MODEL,
    n: Annotated[int, typer.Option(
        "-n", "--points", min=1, help="How many points.", rich_help_panel=_CHOICE)] = 50,
    strategy: Annotated[str, typer.Option(
        "--strategy", help="cluster (least sure pixels, one per k-means cluster over the "
        "confusions and the scene), spread (least sure pixels, farthest apart), margin "
        "(least sure only), balanced (least sure of each predicted class), random.",
        rich_help_panel=_CHOICE)] = "cluster",
    labels: Annotated[list[str] | None, typer.Option(
        "--labels", metavar="FILE", help="Pixels labelled already (never suggested); "
        "repeatable.", rich_help_panel=_CHOICE, show_default=False)] = None,
    classes: ClassesOpt = None,
    class_field: ClassFieldOpt = None,
    layer: LayerOpt = None,
    quicklook: Annotated[Path | None, typer.Option(
        "--quicklook", help="Also draw the predicted classes with the points, numbered by "
        "rank, as a PNG.", rich_help_panel=_OUT, show_default=False)] = None,
    fast: Annotated[bool, typer.Option(
        "--fast", help="Score with the model's distilled fast path.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random strategy.")] = 0,
    tile_size: TileSizeOpt = None,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Suggest the pixels to label next: where the model hesitates, spread over the scene.

    Scores the scene as classify does (in tiles, bounded memory) and writes N ranked points
    (pixel centres, the scene's CRS) with the predicted class and its probability, the
    runner-up and its probability, and an empty 'class' field: fill it in (QGIS), then train
    again with both files: diffclip fewshot ... --labels FIRST --labels OUTPUT. Pixels given
    with --labels and nodata are never suggested.
    """
    from diffclip_cli.workflows.suggest import SuggestOptions, run_suggest

    level = start(verbose, quiet)
    options = SuggestOptions(model=model, n=n, strategy=strategy, labels=tuple(labels or ()),
                             classes=classes, class_field=class_field, layer=layer, fast=fast,
                             device=device, tile_size=tile_size, batch_size=batch_size,
                             quicklook=quicklook, seed=seed, overwrite=overwrite)
    with interruptible(), StageProgress(enabled=level >= 0) as progress:
        outcome = run_suggest(hsi, lidar, output, options=options, progress=progress)
    console.print(f"Suggestions: {outcome.output}  ({outcome.points} points, {outcome.strategy}"
                  f", from {outcome.candidates:,} unlabelled pixels, {outcome.seconds:.1f} s)")
    if outcome.quicklook is not None:
        console.print(f"Quicklook: {outcome.quicklook}")
    console.print("Fill in the 'class' field, then: diffclip fewshot ... --labels <first labels> "
                  f"--labels {outcome.output}")
