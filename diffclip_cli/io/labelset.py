"""Labelled pixels on the HSI grid: the set, the report of what was dropped, merging.

Nothing is dropped silently: every feature or pixel that does not end up as a label is counted
in the :class:`LabelReport` (outside the raster, no class value, conflicting classes, ...).
The readers are :mod:`diffclip_cli.io.labels` (rasters, and the entry point
:func:`~diffclip_cli.io.labels.read_labels`) and :mod:`diffclip_cli.io.label_vectors`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffclip_cli.errors import GridError, InputError, LabelError
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.io.grid import Grid
from diffclip_cli.io.raster import Scene

__all__ = ["LabelReport", "LabelSet", "labels_from_pixels", "merge_labels", "pixels_per_class"]

log = logging.getLogger("diffclip")



@dataclass
class LabelReport:
    """What happened to every label on its way to the HSI grid.

    Attributes:
        source: the label file.
        kind: ``"vector"`` or ``"raster"``.
        features_read: vector features read (for a raster: labelled pixels on its own grid).
        class_field: the field the class ids or names came from (vector).
        name_field: the field class names came from, when another field gave the ids.
        crs_assumed: the vector had no CRS and was taken to be in the grid's CRS.
        features_without_geometry: features with an empty or missing geometry (skipped).
        features_without_class: features with an empty class value (skipped).
        features_unlabelled: features with class id 0, which means unlabelled (skipped).
        features_outside: features entirely outside the raster (skipped).
        features_partly_outside: features partly outside (their inside part was used).
        features_without_pixel: polygons inside the raster that contain no pixel centre.
        pixels_outside: label-raster pixels whose centre lies outside the HSI grid.
        duplicate_pixels: pixels labelled more than once with the same class (kept once).
        conflict_pixels: pixels claimed by different classes (dropped).
        conflicts: conflicting class-name combinations (``"a / b"``) and their pixel counts.
        pixels_per_class: labelled pixels per class name (current, after any drop).
        invalid_pixels: labelled pixels dropped because the scene is invalid there
            (``None`` until :meth:`LabelSet.drop_invalid`).
        invalid_per_class: the same, per class name.
        empty_classes: classes of the table without any labelled pixel.
        files: the label files merged into the set, in order (several ``--labels``).
        file_conflicts: pixels labelled with different classes in different files (dropped),
            each as ``"row R, col C: name (file) / name (file)"``.
    """

    source: str
    kind: str
    features_read: int = 0
    class_field: str | None = None
    name_field: str | None = None
    crs_assumed: bool = False
    features_without_geometry: int = 0
    features_without_class: int = 0
    features_unlabelled: int = 0
    features_outside: int = 0
    features_partly_outside: int = 0
    features_without_pixel: int = 0
    pixels_outside: int = 0
    duplicate_pixels: int = 0
    conflict_pixels: int = 0
    conflicts: dict[str, int] = field(default_factory=dict)
    pixels_per_class: dict[str, int] = field(default_factory=dict)
    invalid_pixels: int | None = None
    invalid_per_class: dict[str, int] | None = None
    empty_classes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    file_conflicts: list[str] = field(default_factory=list)

    @property
    def labelled_pixels(self) -> int:
        """Labelled pixels in the set (after conflicts and any invalid drop)."""
        return sum(self.pixels_per_class.values())

    def summary(self) -> list[str]:
        """Human-readable sentences: what was read, the pixels per class, then every problem."""
        name = Path(self.source).name
        out: list[str] = []
        if self.kind == "vector":
            fields = f"field '{self.class_field}'"
            if self.name_field:
                fields += f" with names from '{self.name_field}'"
            out.append(f"Read {self.features_read} features from {name}; classes from {fields}.")
        else:
            out.append(f"Read {self.features_read} labelled pixels from the label raster {name}.")
        per = ", ".join(f"{k} {v}" for k, v in self.pixels_per_class.items())
        out.append(f"{self.labelled_pixels} labelled pixels in {len(self.pixels_per_class)} "
                   f"classes: {per}.")
        return out + self.problems()

    def problems(self) -> list[str]:
        """One sentence per thing that did not become a label (empty when all went well)."""
        out: list[str] = []
        if self.crs_assumed:
            out.append("The label file has no CRS; it was assumed to be in the HSI's CRS.")
        counts = [
            (self.features_outside, "features lie entirely outside the raster and were skipped"),
            (self.features_partly_outside,
             "features lie partly outside the raster; only their inside part was used"),
            (self.pixels_outside,
             "labelled pixels of the label raster lie outside the HSI grid and were skipped"),
            (self.features_without_geometry, "features have no geometry and were skipped"),
            (self.features_without_class, "features have no class value and were skipped"),
            (self.features_unlabelled, "features have class id 0 (unlabelled) and were skipped"),
            (self.features_without_pixel,
             "polygons contain no pixel centre (smaller than a pixel) and gave no label"),
            (self.duplicate_pixels,
             "pixels were labelled more than once with the same class and were counted once"),
        ]
        out += [f"{n} {text}." for n, text in counts if n]
        if self.conflict_pixels:
            detail = ", ".join(f"{k}: {v}" for k, v in self.conflicts.items())
            out.append(f"{self.conflict_pixels} pixels claimed by different classes were "
                       f"dropped ({detail}).")
        if self.invalid_pixels:
            detail = ", ".join(f"{k} {v}" for k, v in (self.invalid_per_class or {}).items() if v)
            out.append(f"{self.invalid_pixels} labelled pixels lie on invalid pixels (nodata or "
                       f"no LiDAR) and were dropped ({detail}).")
        if self.file_conflicts:
            shown = "; ".join(self.file_conflicts[:5])
            more = (f"; and {len(self.file_conflicts) - 5} more"
                    if len(self.file_conflicts) > 5 else "")
            out.append(f"{len(self.file_conflicts)} pixels are labelled with different classes "
                       f"in different label files and were dropped ({shown}{more}).")
        if self.empty_classes:
            out.append(f"Classes without any labelled pixel: {', '.join(self.empty_classes)}.")
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dictionary (plain Python types)."""
        data = dataclasses.asdict(self)
        data["labelled_pixels"] = self.labelled_pixels
        return data


@dataclass(frozen=True, eq=False)
class LabelSet:
    """Labelled pixels on the HSI grid, as sparse lists.

    Attributes:
        rows: ``(N,)`` int64 pixel rows.
        cols: ``(N,)`` int64 pixel columns.
        class_ids: ``(N,)`` int64 class ids (the raster values, see :class:`ClassTable`).
        classes: the class table; its order is the model's output order.
        report: what happened to the labels.
        grid: the grid the pixels are on.
    """

    rows: np.ndarray
    cols: np.ndarray
    class_ids: np.ndarray
    classes: ClassTable
    report: LabelReport
    grid: Grid | None = None

    def __len__(self) -> int:
        return int(self.rows.size)

    @property
    def index(self) -> np.ndarray:
        """``(N,)`` int64 0-based class index (position in :attr:`classes`) of each pixel."""
        lut = np.full(max(self.classes.ids) + 1, -1, np.int64)
        lut[self.classes.ids] = np.arange(len(self.classes))
        return lut[self.class_ids]

    def counts(self) -> np.ndarray:
        """``(K,)`` int64 labelled pixels per class, in class-table order."""
        return np.bincount(self.index, minlength=len(self.classes)).astype(np.int64)

    def subset(self, idx: np.ndarray) -> LabelSet:
        """The labels at positions ``idx`` (integer indices or a boolean mask)."""
        return dataclasses.replace(
            self, rows=self.rows[idx], cols=self.cols[idx], class_ids=self.class_ids[idx])

    def drop_invalid(self, scene: Scene) -> LabelSet:
        """Drop labels on pixels the scene cannot use (nodata, NaN, no LiDAR); report them.

        Raises:
            GridError: the scene is on a grid of another size.
            InputError: the scene has no valid pixel at all.
            LabelError: no labelled pixel is valid.
        """
        if self.grid is not None and scene.grid.shape != self.grid.shape:
            raise GridError(f"the labels are on a {self.grid.width} x {self.grid.height} grid but "
                            f"the scene is {scene.grid.width} x {scene.grid.height}",
                            path=self.report.source, hint="read the labels on the scene's grid")
        valid = scene.valid_at(self.rows, self.cols)
        kept = self.subset(valid)
        dropped = self.subset(~valid)
        invalid = {c.name: int(n) for c, n in zip(self.classes, dropped.counts(), strict=True)}
        report = dataclasses.replace(
            self.report,
            invalid_pixels=int((~valid).sum()),
            invalid_per_class=invalid,
            pixels_per_class=pixels_per_class(kept),
            empty_classes=[c.name for c, n in zip(self.classes, kept.counts(), strict=True)
                           if n == 0],
        )
        if not valid.any():
            if scene.valid_fraction() == 0:
                raise InputError(
                    "the scene has no valid pixel (every pixel is nodata in some band or "
                    "outside the LiDAR)", path=scene.hsi_path,
                    hint="check the nodata values and that the LiDAR covers the HSI")
            raise LabelError("every labelled pixel lies on invalid scene pixels (nodata or no "
                             "LiDAR)", path=self.report.source,
                             hint="check that the labels belong to this scene")
        if (~valid).any():
            log.warning("%s: %d labelled pixels lie on invalid scene pixels and were dropped",
                        self.report.source, int((~valid).sum()))
        return dataclasses.replace(kept, report=report)

    def to_raster(self, grid: Grid | None = None) -> np.ndarray:
        """A ``(H, W)`` uint16 label image (0 = unlabelled) on ``grid`` (default: own grid)."""
        grid = grid or self.grid
        if grid is None:
            raise ValueError("no grid given")
        out = np.zeros(grid.shape, np.uint16)
        out[self.rows, self.cols] = self.class_ids
        return out


def pixels_per_class(labels: LabelSet) -> dict[str, int]:
    """Labelled pixels per class name, in class order (0 for a class without any)."""
    return {c.name: int(n) for c, n in zip(labels.classes, labels.counts(), strict=True)}


# -- entry point ---------------------------------------------------------------------------


def labels_from_pixels(
    rows: np.ndarray,
    cols: np.ndarray,
    cls: np.ndarray,
    table: ClassTable,
    grid: Grid,
    report: LabelReport,
    path: str | Path,
) -> LabelSet:
    """The :class:`LabelSet` of burnt or read pixels, deduplicated and sorted.

    Pixels given two classes are dropped and reported in ``report``.

    Raises:
        LabelError: no pixel inside the grid, or every pixel in conflict.
    """
    if rows.size == 0:
        raise LabelError(
            f"no label falls inside the raster ({grid.describe()})", path=path,
            hint="check that the labels belong to this scene and carry the right CRS")
    key = rows * grid.width + cols
    pairs = np.unique(np.stack([key, cls], axis=1), axis=0)  # sorted by key, then class
    report.duplicate_pixels = int(rows.size - len(pairs))
    ukey, first, n_cls = np.unique(pairs[:, 0], return_index=True, return_counts=True)
    clash = n_cls > 1
    if clash.any():
        report.conflict_pixels = int(clash.sum())
        name_of = {c.id: c.name for c in table}
        combos: Counter[str] = Counter()
        for s, n in zip(first[clash], n_cls[clash], strict=True):
            combos[" / ".join(name_of[int(i)] for i in pairs[s:s + n, 1])] += 1
        report.conflicts = dict(combos.most_common())
    keep = ~clash
    k = ukey[keep]
    labels = LabelSet(
        rows=(k // grid.width).astype(np.int64),
        cols=(k % grid.width).astype(np.int64),
        class_ids=pairs[first[keep], 1].astype(np.int64),
        classes=table,
        report=report,
        grid=grid,
    )
    if len(labels) == 0:
        raise LabelError("every labelled pixel is claimed by two different classes", path=path,
                         hint="fix the overlapping features")
    report.pixels_per_class = pixels_per_class(labels)
    report.empty_classes = [name for name, n in report.pixels_per_class.items() if n == 0]
    return labels


# -- raster --------------------------------------------------------------------------------


def merge_labels(sets: Sequence[LabelSet]) -> LabelSet:
    """Labels from several files as one set, each pixel once.

    The sets must share their class table (read the later files with the first one's). A
    pixel labelled with the same class in several files counts once; one labelled with
    different classes in different files is dropped, and the report names each such pixel,
    its classes and the files they came from.

    Raises:
        ValueError: no set, or sets with different class tables or grids.
        LabelError: every labelled pixel is in conflict.
    """
    if not sets:
        raise ValueError("no label set to merge")
    first = sets[0]
    if len(sets) == 1:
        return first
    grid = first.grid
    for other in sets[1:]:
        if other.classes != first.classes or (
                grid is not None and other.grid is not None and other.grid != grid):
            raise ValueError("label sets to merge must share their classes and grid")
    width = int(max(max(int(s.cols.max(initial=0)) for s in sets) + 1,
                    grid.width if grid is not None else 0))
    names = [Path(s.report.source).name for s in sets]
    key = np.concatenate([s.rows * width + s.cols for s in sets])
    cls = np.concatenate([s.class_ids for s in sets])
    src = np.concatenate([np.full(len(s), i) for i, s in enumerate(sets)])
    order = np.lexsort((src, cls, key))
    key, cls, src = key[order], cls[order], src[order]
    ukey, start, count = np.unique(key, return_index=True, return_counts=True)
    name_of = {c.id: c.name for c in first.classes}
    keep = np.ones(ukey.size, bool)
    conflicts: list[str] = []
    duplicates = 0
    for j in np.flatnonzero(count > 1):
        s, n = int(start[j]), int(count[j])
        classes_here = np.unique(cls[s:s + n])
        if classes_here.size == 1:
            duplicates += n - 1
            continue
        keep[j] = False
        by = "; ".join(
            f"{name_of[int(c)]} ({', '.join(dict.fromkeys(names[int(i)] for i in src[s:s + n][cls[s:s + n] == c]))})"  # noqa: E501
            for c in classes_here)
        r, c_ = divmod(int(ukey[j]), width)
        conflicts.append(f"row {r}, col {c_}: {by}")
    report = dataclasses.replace(
        first.report,
        source=" + ".join(s.report.source for s in sets),
        files=[s.report.source for s in sets],
        features_read=sum(s.report.features_read for s in sets),
        features_without_geometry=sum(s.report.features_without_geometry for s in sets),
        features_without_class=sum(s.report.features_without_class for s in sets),
        features_unlabelled=sum(s.report.features_unlabelled for s in sets),
        features_outside=sum(s.report.features_outside for s in sets),
        features_partly_outside=sum(s.report.features_partly_outside for s in sets),
        features_without_pixel=sum(s.report.features_without_pixel for s in sets),
        pixels_outside=sum(s.report.pixels_outside for s in sets),
        duplicate_pixels=sum(s.report.duplicate_pixels for s in sets) + duplicates,
        conflict_pixels=sum(s.report.conflict_pixels for s in sets),
        file_conflicts=conflicts)
    if not keep.any():
        raise LabelError("every labelled pixel is claimed by different classes in different "
                         "files", path=report.source,
                         hint="fix the class fields so the files agree")
    k = ukey[keep]
    merged = LabelSet(rows=(k // width).astype(np.int64), cols=(k % width).astype(np.int64),
                      class_ids=cls[start[keep]].astype(np.int64), classes=first.classes,
                      report=report, grid=grid)
    report.pixels_per_class = pixels_per_class(merged)
    report.empty_classes = [name for name, n in report.pixels_per_class.items() if n == 0]
    return merged
