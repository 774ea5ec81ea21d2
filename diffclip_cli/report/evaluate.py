"""Score a class map against reference labels (``diffclip evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffclip_cli.errors import InputError
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.io.labels import LabelSet, read_labels
from diffclip_cli.io.maps import read_map
from diffclip_cli.io.raster import Scene
from diffclip_cli.report.metrics import AccuracyReport, ClassMatch, match_classes

__all__ = ["Evaluation", "evaluate_map"]


@dataclass
class Evaluation:
    """The outcome of :func:`evaluate_map`.

    Attributes:
        report: OA, AA, kappa, per-class figures and the confusion matrix.
        match: how map classes were paired with reference classes.
        labels: the reference pixels used.
    """

    report: AccuracyReport
    match: ClassMatch
    labels: LabelSet


def evaluate_map(
    map_path: str | Path,
    labels: str | Path,
    *,
    classes: ClassTable | str | Path | None = None,
    class_field: str | None = None,
    layer: str | None = None,
) -> Evaluation:
    """Compare a class map with reference labels on the map's grid.

    Classes are matched by name whenever names exist on both sides (the map's class table and
    the vector's names or the ``classes`` table of a label raster), by id otherwise. Reference
    pixels where the map is nodata count as unclassified (an error for OA).

    Args:
        map_path: a class map GeoTIFF (e.g. written by ``diffclip classify``).
        labels: reference labels: a vector file or a label raster (0 = unlabelled).
        classes: a classes table (or CSV path) naming a label raster's ids.
        class_field: the vector attribute holding classes.
        layer: the vector layer.

    Returns:
        The report, the class match and the reference pixels.
    """
    info = read_map(map_path)
    if info.count > 1 and info.classes is None:
        raise InputError(f"has {info.count} bands of {info.dtype}, so it is not a class map "
                         "(the HSI?)", path=map_path,
                         hint="give the map written by `diffclip classify` (one band of class "
                              "ids)")
    table = ClassTable.from_csv(classes) if isinstance(classes, (str, Path)) else classes
    reference = read_labels(labels, info.grid, class_field=class_field, layer=layer,
                            classes=table)
    names_known = table is not None or not _generic_names(reference.classes)
    match = match_classes(info.classes if names_known else None, reference.classes)
    with Scene.open(map_path) as scene:
        values = scene.read_pixels(reference.rows, reference.cols)
    raw = np.where(values.valid, np.nan_to_num(values.hsi[:, 0]), 0).astype(np.int64)
    predicted = match.translate(raw)
    report = AccuracyReport.from_labels(reference.class_ids, predicted, reference.classes)
    return Evaluation(report, match, reference)


def _generic_names(classes: ClassTable) -> bool:
    """True when the reference classes carry only numbered placeholder names."""
    return all(c.name == f"class {c.id}" for c in classes)
