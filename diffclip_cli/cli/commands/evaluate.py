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
from diffclip_cli.errors import InputError
from diffclip_cli.io.atomic import output_set
from diffclip_cli.report.evaluate import Evaluation, evaluate_map
from diffclip_cli.report.render import report_paths, rich_table, write_report


def report_stem(output: Path) -> Path:
    """``report.json`` -> ``report`` (the stem of the .json/.md/.png trio)."""
    return output.with_suffix("") if output.suffix.lower() in (".json", ".md", ".png") \
        else output


def run_evaluate(map_path: Path, labels: Path, output: Path, *, classes: Path | None = None,
                 class_field: str | None = None, layer: str | None = None,
                 overwrite: bool = False) -> tuple[Evaluation, dict[str, Path]]:
    """Evaluate a map and write its report trio; what the command and ``batch`` call."""
    stem = report_stem(output)
    inputs = {"the map": map_path, "the labels": labels, "the classes table": classes}
    with interruptible(), output_set({"report": list(report_paths(stem).values())},
                                     inputs=inputs, overwrite=overwrite):
        if not map_path.exists():
            raise InputError("map not found", path=map_path, hint="check the path")
        evaluation = evaluate_map(map_path, labels, classes=classes, class_field=class_field,
                                  layer=layer)
        title = f"Accuracy of {map_path.name} against {labels.name}"
        paths = write_report(evaluation.report, stem, overwrite=overwrite,
                             title=title, metadata={"map": str(map_path),
                                                    "labels": str(labels),
                                                    "matched_by": evaluation.match.by})
    return evaluation, paths


@app.command(rich_help_panel="Map")
def evaluate(
    map_path: Annotated[Path, typer.Argument(metavar="MAP", help="A class map GeoTIFF.",
                                             show_default=False)],
    labels: LabelsOpt = ...,  # type: ignore[assignment]
    output: Annotated[Path, typer.Option(
        "-o", "--output", help="The report: REPORT.json, with REPORT.md and REPORT.png "
        "beside it.")] = Path("report.json"),
    classes: ClassesOpt = None,
    class_field: ClassFieldOpt = None,
    layer: LayerOpt = None,
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score a class map against reference labels: OA, AA, kappa, per-class accuracies.

    Classes are matched by name whenever both sides have names (the map's class table; the
    vector's class names or the --classes table of a label raster), by id otherwise. The
    confusion matrix has reference classes as rows and predicted classes as columns (as in
    OTB); reference pixels where the map is nodata count as unclassified errors.
    """
    level = start(verbose, quiet)
    evaluation, paths = run_evaluate(map_path, labels, output, classes=classes,
                                     class_field=class_field, layer=layer,
                                     overwrite=overwrite)
    for note in evaluation.match.describe():
        err_console.print(note)
    if level >= 0:
        console.print(rich_table(evaluation.report, title=f"Accuracy of {map_path.name}"))
    console.print("Report: " + ", ".join(str(p) for p in paths.values()))
