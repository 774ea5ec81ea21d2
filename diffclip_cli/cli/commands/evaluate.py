"""``diffclip evaluate``: accuracy of a class map against reference labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffclip_cli.cli.app import app
from diffclip_cli.cli.common import interruptible, start
from diffclip_cli.cli.console import console, err_console
from diffclip_cli.cli.options import (
    ClassesOpt,
    ClassFieldOpt,
    LabelsOpt,
    LayerOpt,
    OverwriteOpt,
    QuietOpt,
    VerboseOpt,
)
from diffclip_cli.io.names import display_name


@app.command(rich_help_panel="Map")
def evaluate(
    map_path: Annotated[str, typer.Argument(metavar="MAP", help="A class map GeoTIFF (or a "
                                            "GDAL dataset name).", show_default=False)],
    labels: LabelsOpt = ...,  # type: ignore[assignment]
    output: Annotated[Path, typer.Option(
        "-o", "--output", help="The report: REPORT.json, with REPORT.md, REPORT.csv and "
        "REPORT.png beside it.")] = Path("report.json"),
    classes: ClassesOpt = None,
    class_field: ClassFieldOpt = None,
    layer: LayerOpt = None,
    match_ids: Annotated[bool, typer.Option(
        "--match-ids", help="Match classes by id: the reference ids are the map's ids (needed "
        "when the map names its classes and the labels carry ids only, unless --classes "
        "names them).")] = False,
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score a class map against reference labels: OA, AA, kappa, per-class accuracies.

    Classes are matched by name whenever both sides have names (the map's class table; the
    vector's class names or the --classes table of a label raster). Labels with ids only
    against a map with names need --classes (or --match-ids); a map without class table is
    matched by id, with a warning. The report uses the map's class names. The confusion
    matrix has reference classes as rows and predicted classes as columns (as in OTB);
    reference pixels where the map is nodata count as unclassified errors.
    """
    from diffclip_cli.report.render import rich_table
    from diffclip_cli.workflows.evaluate import EvaluateOptions, run_evaluate

    level = start(verbose, quiet)
    options = EvaluateOptions(classes=classes, class_field=class_field, layer=layer,
                              match_ids=match_ids, overwrite=overwrite)
    with interruptible():
        outcome = run_evaluate(map_path, labels, output, options=options)
    evaluation, paths = outcome.evaluation, outcome.report_paths
    for note in evaluation.match.describe():
        err_console.print(note)
    if level >= 0:
        console.print(rich_table(evaluation.report,
                                 title=f"Accuracy of {display_name(map_path)}"))
    console.print("Report: " + ", ".join(str(p) for p in paths.values()))
