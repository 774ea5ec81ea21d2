"""The evaluate workflow: a class map against reference labels to a report trio.

What ``diffclip evaluate`` and the labelled scenes of ``diffclip batch`` run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffclip_cli.errors import InputError
from diffclip_cli.io.names import display_name, is_gdal_name
from diffclip_cli.report.evaluate import Evaluation, evaluate_map

__all__ = ["EvaluateOptions", "report_stem", "run_evaluate"]


@dataclass(frozen=True, kw_only=True)
class EvaluateOptions:
    """How to read the labels and match their classes to the map's.

    Attributes:
        classes: a classes table (CSV id,name,...) naming a label raster's ids.
        class_field: the vector attribute holding class names or ids (default: guessed).
        layer: the layer of a multi-layer vector file.
        match_ids: match classes by id (the reference ids are the map's ids).
        overwrite: replace existing report files.
    """

    classes: Path | None = None
    class_field: str | None = None
    layer: str | None = None
    match_ids: bool = False
    overwrite: bool = False


def report_stem(output: Path) -> Path:
    """``report.json`` -> ``report`` (the stem of the .json/.md/.csv/.png files)."""
    return output.with_suffix("") if output.suffix.lower() in (".json", ".md", ".csv",
                                                               ".png") else output


@dataclass(frozen=True)
class EvaluateOutcome:
    """What :func:`run_evaluate` computed and wrote.

    Attributes:
        evaluation: the accuracy report and how the map's classes were matched.
        report_paths: the report files by format (``json``, ``markdown``, ``csv``, ``png``).
    """

    evaluation: Evaluation
    report_paths: dict[str, Path]


def run_evaluate(map_path: str | Path, labels: str | Path, output: Path, *,
                 options: EvaluateOptions) -> EvaluateOutcome:
    """Evaluate a map and write its report trio (renamed together when complete).

    Args:
        map_path: the class map (path or GDAL dataset name).
        labels: reference labels, vector or raster.
        output: the report; its stem names the .json/.md/.csv/.png files.
        options: how to read and match the labels.

    Returns:
        The evaluation and the report's paths.

    Raises:
        InputError: the map or the labels cannot be read or matched.
        OutputError: a report file would replace an input or an existing file.
    """
    from diffclip_cli.io.atomic import output_set
    from diffclip_cli.report.render import report_paths, write_report

    stem = report_stem(output)
    inputs = {"the map": map_path, "the labels": labels, "the classes table": options.classes}
    with output_set({"report": list(report_paths(stem).values())},
                    inputs=inputs, overwrite=options.overwrite):
        if not is_gdal_name(map_path) and not Path(map_path).exists():
            raise InputError("map not found", path=map_path, hint="check the path")
        evaluation = evaluate_map(map_path, labels, classes=options.classes,
                                  class_field=options.class_field, layer=options.layer,
                                  match_ids=options.match_ids)
        title = f"Accuracy of {display_name(map_path)} against {display_name(labels)}"
        paths = write_report(evaluation.report, stem, overwrite=options.overwrite,
                             title=title, metadata={"map": str(map_path),
                                                    "labels": str(labels),
                                                    "matched_by": evaluation.match.by})
    return EvaluateOutcome(evaluation, paths)
