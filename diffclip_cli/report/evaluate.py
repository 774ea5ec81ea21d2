"""Score a class map against reference labels (``diffclip evaluate``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffclip_cli.errors import InputError, LabelError
from diffclip_cli.io.classes import ClassInfo, ClassTable
from diffclip_cli.io.labels import LabelSet, read_labels
from diffclip_cli.io.maps import read_map
from diffclip_cli.io.raster import Scene
from diffclip_cli.report.metrics import AccuracyReport, ClassMatch, match_classes

__all__ = ["Evaluation", "evaluate_map"]

log = logging.getLogger("diffclip")


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
    match_ids: bool = False,
) -> Evaluation:
    """Compare a class map with reference labels on the map's grid.

    Classes are never matched by id silently:

    - names on both sides (the map's class table; the vector's class names or the ``classes``
      table of a label raster): matched by name;
    - a map with names and a reference with ids only (a label raster without ``classes``, a
      vector of integer ids): a :class:`LabelError` naming ``--classes``, unless
      ``match_ids`` says the reference ids are the map's ids;
    - a map whose classes are ids too (``class 3``: its model was trained on a label raster
      without a classes table): matched by id, which are the training raster's ids;
    - a map without class table (made by another tool): matched by id, with a warning.

    The report names the matched classes as the map does. Reference pixels where the map is
    nodata count as unclassified (an error for OA).

    Args:
        map_path: a class map GeoTIFF (e.g. written by ``diffclip classify``).
        labels: reference labels: a vector file or a label raster (0 = unlabelled).
        classes: a classes table (or CSV path) naming a label raster's ids.
        class_field: the vector attribute holding classes.
        layer: the vector layer.
        match_ids: match classes by id even when the map names them (the reference ids are
            taken to be the map's ids).

    Returns:
        The report, the class match and the reference pixels.

    Raises:
        LabelError: a named map against id-only labels without ``match_ids``, or names that
            do not match at all.
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
    reference_named = table is not None or not _generic_names(reference.classes)
    if info.classes is None:
        log.warning("%s has no class table (not made by diffclip?): its values are taken as "
                    "the reference labels' class ids", map_path)
        match = match_classes(None, reference.classes)
    elif match_ids or _generic_names(info.classes):
        # Asked for, or a map whose classes are ids too ("class 3": trained on a label
        # raster without a classes table): its ids are the training raster's ids.
        match = _match_by_id(info.classes, reference.classes)
    elif reference_named:
        match = match_classes(info.classes, reference.classes)
    else:
        raise LabelError(
            f"the map names its classes ({_listing(info.classes)}) but the reference labels "
            f"carry only ids ({', '.join(str(i) for i in reference.classes.ids)}), so the "
            "classes cannot be matched by name", path=labels,
            hint="give --classes CLASSES.csv (id,name) naming the label ids, or --match-ids "
                 "if the label ids are the map's ids")
    with Scene.open(map_path) as scene:
        values = scene.read_pixels(reference.rows, reference.cols)
    raw = np.where(values.valid, np.nan_to_num(values.hsi[:, 0]), 0).astype(np.int64)
    predicted = match.translate(raw)
    report = AccuracyReport.from_labels(reference.class_ids, predicted,
                                        _named_as_map(reference.classes, info.classes, match))
    return Evaluation(report, match, reference)


def _listing(classes: ClassTable, limit: int = 6) -> str:
    """``1 asphalt, 2 meadows, ...``: the first classes of a table, for messages."""
    items = [f"{c.id} {c.name}" for c in classes]
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


def _match_by_id(map_classes: ClassTable, label_classes: ClassTable) -> ClassMatch:
    """Match by id as asked (``--match-ids``), listing the classes found on one side only."""
    label_ids = set(label_classes.ids)
    map_ids = set(map_classes.ids)
    return ClassMatch(
        by="id",
        mapping={i: i for i in map_classes.ids if i in label_ids},
        only_in_map=tuple(c for c in map_classes if c.id not in label_ids),
        only_in_labels=tuple(c for c in label_classes if c.id not in map_ids),
    )


def _named_as_map(label_classes: ClassTable, map_classes: ClassTable | None,
                  match: ClassMatch) -> ClassTable:
    """The reference classes, those matched to a map class under the map's name and colour."""
    if map_classes is None:
        return label_classes
    from_map = {ref: map_classes.by_id(mid) for mid, ref in match.mapping.items()}
    renamed = [ClassInfo(c.id, from_map[c.id].name, c.description, from_map[c.id].color)
               if c.id in from_map else c for c in label_classes]
    try:
        return ClassTable(renamed)
    except LabelError:  # an unmatched reference name equal to a map name: keep the labels'
        return label_classes


def _generic_names(classes: ClassTable) -> bool:
    """True when the reference classes carry only numbered placeholder names."""
    return all(c.name == f"class {c.id}" for c in classes)
