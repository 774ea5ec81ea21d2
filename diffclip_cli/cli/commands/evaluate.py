"""``diffclip evaluate``: accuracy of a class map against reference labels."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
from diffclip_cli.io.names import display_name, is_gdal_name

if TYPE_CHECKING:
    from diffclip_cli.report.evaluate import Evaluation


def report_stem(output: Path) -> Path:
    """``report.json`` -> ``report`` (the stem of the .json/.md/.csv/.png files)."""
    return output.with_suffix("") if output.suffix.lower() in (".json", ".md", ".csv",
                                                               ".png") else output


def run_evaluate(map_path: str | Path, labels: str | Path, output: Path, *,
                 classes: Path | None = None, class_field: str | None = None,
                 layer: str | None = None, match_ids: bool = False, overwrite: bool = False
                 ) -> tuple[Evaluation, dict[str, Path]]:
    """Evaluate a map and write its report trio; what the command and ``batch`` call."""
    from diffclip_cli.io.atomic import output_set
    from diffclip_cli.report.evaluate import evaluate_map
    from diffclip_cli.report.render import report_paths, write_report

    stem = report_stem(output)
    inputs = {"the map": map_path, "the labels": labels, "the classes table": classes}
    with interruptible(), output_set({"report": list(report_paths(stem).values())},
                                     inputs=inputs, overwrite=overwrite):
        if not is_gdal_name(map_path) and not Path(map_path).exists():
            raise InputError("map not found", path=map_path, hint="check the path")
        evaluation = evaluate_map(map_path, labels, classes=classes, class_field=class_field,
                                  layer=layer, match_ids=match_ids)
        title = f"Accuracy of {display_name(map_path)} against {display_name(labels)}"
        paths = write_report(evaluation.report, stem, overwrite=overwrite,
                             title=title, metadata={"map": str(map_path),
                                                    "labels": str(labels),
                                                    "matched_by": evaluation.match.by})
    return evaluation, paths


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

    level = start(verbose, quiet)
    evaluation, paths = run_evaluate(map_path, labels, output, classes=classes,
                                     class_field=class_field, layer=layer,
                                     match_ids=match_ids, overwrite=overwrite)
    for note in evaluation.match.describe():
        err_console.print(note)
    if level >= 0:
        console.print(rich_table(evaluation.report,
                                 title=f"Accuracy of {display_name(map_path)}"))
    console.print("Report: " + ", ".join(str(p) for p in paths.values()))
