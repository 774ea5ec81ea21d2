"""Labels: vector points/polygons or a label raster -> labelled pixels on the HSI grid.

Nothing is dropped silently: every feature or pixel that does not end up as a label is counted
in the :class:`LabelReport` (outside the raster, no class value, conflicting classes, ...).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyogrio
import shapely
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.features import rasterize
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from diffclip_cli.errors import GridError, InputError, LabelError
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.io.grid import Grid
from diffclip_cli.io.pixels import apply_transform
from diffclip_cli.io.raster import Scene, is_gdal_name, open_raster

__all__ = [
    "RASTER_SUFFIXES",
    "LabelReport",
    "LabelSet",
    "detect_class_fields",
    "merge_labels",
    "read_labels",
]

log = logging.getLogger("diffclip")

PathLike = str | os.PathLike[str]

#: File suffixes read as label rasters; anything else is read as a vector file.
RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".vrt", ".img", ".jp2", ".nc"})

# Auto-detected class fields: base word (priority order) + optional suffix.
_BASES = ("class", "classe", "label", "landcover", "land_cover", "lulc", "lc", "category", "cls")
_SUFFIXES = ("name", "id", "code", "value", "val", "num", "label", "type")
_FIELD_RE = re.compile(
    r"^(?P<base>" + "|".join(_BASES) + r")[_ ]?(?P<suffix>" + "|".join(_SUFFIXES) + r")?s?$"
)
_READ_TILE = 1024


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
            pixels_per_class=_per_class(kept),
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


def _per_class(labels: LabelSet) -> dict[str, int]:
    return {c.name: int(n) for c, n in zip(labels.classes, labels.counts(), strict=True)}


# -- entry point ---------------------------------------------------------------------------


def read_labels(
    path: PathLike,
    grid: Grid,
    *,
    class_field: str | None = None,
    layer: str | None = None,
    classes: ClassTable | PathLike | None = None,
) -> LabelSet:
    """Read labels onto ``grid`` from a vector file or a label raster.

    Args:
        path: GeoPackage, GeoJSON, Shapefile (any OGR vector) with points and/or polygons, or a
            label GeoTIFF (0 = unlabelled, nodata honoured).
        grid: the HSI grid.
        class_field: the vector field holding class names or integer ids; auto-detected when
            omitted (see :func:`detect_class_fields`).
        layer: the vector layer (needed when the file has several).
        classes: a class table, or the path of a CSV ``id,name[,description][,color]``.

    Returns:
        The labelled pixels, sorted by row then column.

    Raises:
        InputError: missing/unreadable file, several layers without ``layer``.
        GridError: vector with a CRS but the grid without, or raster on an incompatible grid.
        LabelError: empty file, unknown field, classes not in the table, no label inside the
            raster.
    """
    table = None
    if is_gdal_name(path):  # /vsizip/..., NETCDF:...: GDAL's business, no file checks
        text = os.fspath(path)
        if classes is not None:
            table = classes if isinstance(classes, ClassTable) else ClassTable.from_csv(classes)
        raster = (Path(text).suffix.lower() in RASTER_SUFFIXES
                  or not (text.startswith("/vsi") or "://" in text))
        labels = (_read_raster(text, grid, table) if raster else
                  _read_vector(text, grid, class_field=class_field, layer=layer, table=table))
        for sentence in labels.report.problems():
            log.warning("%s: %s", text, sentence)
        return labels
    p = Path(path)
    if not p.exists():
        raise InputError("label file not found", path=p, hint="check the path")
    if p.is_dir() and p.suffix.lower() != ".gdb":
        raise InputError("is a directory, not a label file", path=p,
                         hint="give the vector or raster file inside it")
    if p.is_file() and p.stat().st_size == 0:
        raise LabelError("the label file is empty (0 bytes)", path=p,
                         hint="give the file holding your labelled points or polygons")
    if classes is not None:
        table = classes if isinstance(classes, ClassTable) else ClassTable.from_csv(classes)
    if p.suffix.lower() in RASTER_SUFFIXES:
        labels = _read_raster(p, grid, table)
    else:
        labels = _read_vector(p, grid, class_field=class_field, layer=layer, table=table)
    for sentence in labels.report.problems():
        log.warning("%s: %s", p, sentence)
    return labels


# -- vector --------------------------------------------------------------------------------


def detect_class_fields(columns: pd.DataFrame) -> tuple[str | None, str | None]:
    """Find the class-id and class-name fields of a table of attributes.

    A field qualifies when its name is a class-like word (class, label, landcover, lulc, lc,
    category, ...) optionally followed by ``_name``, ``_id``, ``_code``, ... (case-insensitive).
    Integer (or integral) fields give ids, text fields names. Earlier words win (``class``
    before ``label`` before ``landcover``).

    Returns:
        ``(id_field, name_field)``, either may be ``None``.
    """
    best: dict[str, tuple[int, int, str]] = {}
    for col in columns.columns:
        m = _FIELD_RE.match(str(col).strip().lower())
        if not m:
            continue
        kind = _value_kind(columns[col])
        if kind is None:
            continue
        rank = (_BASES.index(m.group("base")), 0 if m.group("suffix") else 1, str(col))
        if kind not in best or rank < best[kind]:
            best[kind] = rank
    return (best["id"][2] if "id" in best else None, best["name"][2] if "name" in best else None)


def _value_kind(series: pd.Series) -> str | None:
    """``"id"`` for integer(-like) values, ``"name"`` for text, ``None`` otherwise."""
    values = series.dropna()
    if pd.api.types.is_bool_dtype(series):
        return None
    if pd.api.types.is_integer_dtype(series):
        return "id"
    if pd.api.types.is_float_dtype(series):
        return "id" if np.all(np.mod(values.to_numpy(), 1) == 0) else None
    if pd.api.types.is_string_dtype(series) or pd.api.types.is_object_dtype(series):
        text = values.astype(str).str.strip()
        if len(text) and text.str.fullmatch(r"\d+").all():
            return "id"
        return "name"
    return None


def _read_vector(
    path: Path | str,
    grid: Grid,
    *,
    class_field: str | None,
    layer: str | None,
    table: ClassTable | None,
) -> LabelSet:
    try:
        layers = [str(name) for name, _ in pyogrio.list_layers(path)]
    except Exception as exc:  # pyogrio raises its own DataSourceError family
        reason = _first_line(exc)
        if "not recognized as being in a supported file format" in reason:
            reason = "GDAL does not recognise its format"
        else:
            reason = reason.replace(f"'{path}'", "").replace(str(path), "").strip(" ,:")
        raise InputError(f"is not a readable vector file ({reason})", path=path,
                         hint="give a GeoPackage, GeoJSON or Shapefile of points or polygons, "
                              "or a label GeoTIFF") from None
    if layer is None and len(layers) > 1:
        raise InputError(f"has several layers ({', '.join(layers)})", path=path,
                         hint="choose one with --layer")
    if layer is not None and layer not in layers:
        raise InputError(f"has no layer '{layer}' (layers: {', '.join(layers)})", path=path,
                         hint="choose one of these with --layer")
    try:
        gdf = pyogrio.read_dataframe(path, layer=layer)
    except Exception as exc:
        raise InputError(f"reading the vector file failed ({_first_line(exc)})",
                         path=path, hint="the file may be truncated or corrupt") from None
    report = LabelReport(source=str(path), kind="vector", features_read=len(gdf))
    if len(gdf) == 0:
        raise LabelError("the label file has no features", path=path,
                         hint="check the layer and that the file is the right one")
    attrs = gdf.drop(columns=gdf.geometry.name)
    fields = [str(c) for c in attrs.columns]
    id_field, name_field = _choose_fields(attrs, class_field, path, fields)

    # CRS handling.
    if gdf.crs is None and grid.crs is not None:
        report.crs_assumed = True
    elif gdf.crs is not None and grid.crs is None:
        raise GridError(f"has a CRS ({gdf.crs.to_string()}) but the HSI has none", path=path,
                        hint="give the HSI a CRS, or store the labels in pixel coordinates "
                             "without a CRS")
    elif gdf.crs is not None and grid.crs is not None and CRS.from_user_input(gdf.crs) != grid.crs:
        gdf = gdf.to_crs(grid.crs.to_wkt())

    geoms = gdf.geometry.to_numpy()
    ids, table, no_class, unlabelled = _class_ids(attrs, id_field, name_field, table, path)
    report.class_field = id_field or name_field
    report.name_field = name_field if id_field else None
    report.features_without_class = int(no_class.sum())
    report.features_unlabelled = int(unlabelled.sum())
    empty_geom = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    report.features_without_geometry = int((empty_geom & ~no_class & ~unlabelled).sum())
    use = ~(empty_geom | no_class | unlabelled)

    rows, cols, cls = _burn(geoms[use], ids[use], grid, report, path)
    return _finish(rows, cols, cls, table, grid, report, path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


def _choose_fields(
    attrs: pd.DataFrame, class_field: str | None, path: str | Path, fields: list[str]
) -> tuple[str | None, str | None]:
    """``(id_field, name_field)`` to use; one of them may be ``None``."""
    listing = ", ".join(fields) if fields else "none"
    if class_field is not None:
        match = [c for c in fields if c == class_field] or [
            c for c in fields if c.casefold() == class_field.casefold()]
        if not match:
            raise LabelError(f"has no field '{class_field}' (fields: {listing})", path=path,
                             hint="choose one of these with --class-field")
        kind = _value_kind(attrs[match[0]])
        if kind is None:
            raise LabelError(f"field '{match[0]}' holds neither class names nor integer ids",
                             path=path, hint=f"choose another field (fields: {listing})")
        return (match[0], None) if kind == "id" else (None, match[0])
    id_field, name_field = detect_class_fields(attrs)
    if id_field is None and name_field is None:
        raise LabelError(f"no class field found (fields: {listing})", path=path,
                         hint="name the field holding class names or ids with --class-field")
    return id_field, name_field


def _class_ids(
    attrs: pd.DataFrame,
    id_field: str | None,
    name_field: str | None,
    table: ClassTable | None,
    path: str | Path,
) -> tuple[np.ndarray, ClassTable, np.ndarray, np.ndarray]:
    """Class id per feature (0 where none), the class table, and the skip masks."""
    n = len(attrs)
    names = None
    if name_field is not None:
        raw = attrs[name_field]
        missing = raw.isna().to_numpy() | (raw.astype(str).str.strip() == "").to_numpy()
        names = np.where(missing, "", raw.astype(str).str.strip().to_numpy()).astype(object)
    else:
        missing = np.zeros(n, bool)
    if id_field is not None:
        raw_ids = attrs[id_field]
        id_missing = raw_ids.isna().to_numpy()
        if not pd.api.types.is_numeric_dtype(raw_ids):
            id_missing |= (raw_ids.astype(str).str.strip() == "").to_numpy()
        ids = np.zeros(n, np.int64)
        ids[~id_missing] = pd.to_numeric(raw_ids[~id_missing]).to_numpy().astype(np.int64)
        no_class = id_missing
        if (ids < 0).any() or (ids > 65535).any():
            bad = sorted(set(ids[(ids < 0) | (ids > 65535)].tolist()))[:10]
            raise LabelError(f"field '{id_field}' has class ids outside 0..65535: {bad}",
                             path=path, hint="class ids must be 1..65535 (0 = unlabelled)")
        unlabelled = (ids == 0) & ~no_class
        present = sorted(set(ids[~no_class & ~unlabelled].tolist()))
        if table is not None:
            unknown = [i for i in present if i not in table.ids]
            if unknown:
                raise LabelError(
                    f"class ids {unknown[:20]} of field '{id_field}' are not in the classes "
                    f"table (ids {table.ids})", path=path, hint="add them to the classes table")
            return ids, table, no_class, unlabelled
        id_names: dict[int, str] = {}
        if names is not None:
            pairs = {(i, nm) for i, nm, skip in zip(ids, names, no_class | missing, strict=True)
                     if not skip and i != 0}
            by_id: dict[int, set[str]] = {}
            for i, nm in pairs:
                by_id.setdefault(int(i), set()).add(nm)
            clash = {i: sorted(v) for i, v in by_id.items() if len(v) > 1}
            if clash:
                cid, v = next(iter(sorted(clash.items())))
                raise LabelError(f"fields '{id_field}' and '{name_field}' disagree: id {cid} has "
                                 f"the names {v}", path=path,
                                 hint=f"pass --class-field {id_field} to use the ids only")
            id_names = {i: next(iter(v)) for i, v in by_id.items()}
            by_name = Counter(nm.casefold() for nm in id_names.values())
            if any(c > 1 for c in by_name.values()):
                raise LabelError(f"fields '{id_field}' and '{name_field}' disagree: one name has "
                                 "several ids", path=path,
                                 hint=f"pass --class-field {id_field} to use the ids only")
        if not present:
            raise LabelError(f"field '{id_field}' holds no class id", path=path,
                             hint="check the field (0 means unlabelled)")
        table = ClassTable({"id": i, "name": id_names.get(i, f"class {i}")} for i in present)
        return ids, table, no_class, unlabelled
    if names is None:  # _class_fields names at least one field
        raise LabelError("no class field to read classes from", path=path,
                         hint="name the field holding class names or ids with --class-field")
    if missing.all():
        raise LabelError(f"field '{name_field}' holds no class name", path=path,
                         hint="check the field")
    numeric = np.array([not m and nm.isdigit() for nm, m in zip(names, missing, strict=True)])
    if numeric.any() and (~numeric & ~missing).any():
        return _mixed_ids_and_names(names, missing, numeric, name_field, table, path)
    if table is not None:
        unknown = sorted({nm for nm in names[~missing] if not table.has_name(nm)})
        if unknown:
            raise LabelError(f"class names {unknown[:20]} of field '{name_field}' are not in the "
                             f"classes table ({', '.join(table.names)})", path=path,
                             hint="use the table's names (case does not matter)")
        lookup = {c.name.casefold(): c.id for c in table}
    else:
        spelled: dict[str, str] = {}
        for nm in sorted(set(names[~missing].tolist())):
            spelled.setdefault(nm.casefold(), nm)
        ordered = sorted(spelled.values())
        table = ClassTable({"id": k + 1, "name": nm} for k, nm in enumerate(ordered))
        lookup = {nm.casefold(): k + 1 for k, nm in enumerate(ordered)}
    ids = np.array([0 if m else lookup[nm.casefold()] for nm, m in zip(names, missing,
                                                                          strict=True)], np.int64)
    return ids, table, missing, np.zeros(n, bool)


def _mixed_ids_and_names(
    names: np.ndarray,
    missing: np.ndarray,
    numeric: np.ndarray,
    field_name: str | None,
    table: ClassTable | None,
    path: str | Path,
) -> tuple[np.ndarray, ClassTable, np.ndarray, np.ndarray]:
    """A field holding both integer ids and class names (``1, "asphalt road", 2``).

    Read as is, each class would count twice (once as ``"1"``, once by name). With a classes
    table the ids are mapped through it (names by name); without one the field is refused.

    Raises:
        LabelError: no classes table, or values the table does not know.
    """
    some_ids = sorted({int(v) for v in names[numeric]})[:5]
    some_names = sorted({str(v) for v in names[~numeric & ~missing]})[:3]
    if table is None:
        raise LabelError(
            f"field '{field_name}' mixes integer class ids ({', '.join(map(str, some_ids))}"
            f") and class names ({', '.join(repr(n) for n in some_names)}), so each class "
            "would be counted twice", path=path,
            hint="use names throughout or ids throughout, or pass --classes with a table of "
                 "ids and names to map the ids to their names")
    unknown_ids = sorted({int(v) for v in names[numeric]} - set(table.ids))
    unknown_names = sorted({str(v) for v in names[~numeric & ~missing]
                            if not table.has_name(str(v))})
    if unknown_ids or unknown_names:
        raise LabelError(
            f"field '{field_name}' mixes ids and names, and the classes table has no "
            f"{'ids ' + str(unknown_ids[:20]) if unknown_ids else ''}"
            f"{' and no ' if unknown_ids and unknown_names else ''}"
            f"{'names ' + str(unknown_names[:20]) if unknown_names else ''}", path=path,
            hint=f"add them to the classes table ({', '.join(table.names)})")
    lookup = {c.name.casefold(): c.id for c in table}
    ids = np.array([0 if m else int(nm) if num else lookup[nm.casefold()]
                    for nm, m, num in zip(names, missing, numeric, strict=True)], np.int64)
    log.info("%s: field '%s' mixes ids and names; the ids were mapped through the classes "
             "table", path, field_name)
    return ids, table, missing, np.zeros(len(names), bool)


_POINT_TYPES = {0, 4}  # Point, MultiPoint
_POLYGON_TYPES = {3, 6}  # Polygon, MultiPolygon
_LINE_TYPES = {1, 2, 5}


def _burn(
    geoms: np.ndarray, ids: np.ndarray, grid: Grid, report: LabelReport,
    path: str | Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels of every geometry: points to the pixel holding them, polygons by pixel centre."""
    parts, part_of = shapely.get_parts(geoms, return_index=True)
    # Geometry collections are split into their parts; nested ones once more.
    types = shapely.get_type_id(parts)
    if (types == 7).any():
        sub, sub_of = shapely.get_parts(parts[types == 7], return_index=True)
        keep = types != 7
        parts = np.concatenate([parts[keep], sub])
        part_of = np.concatenate([part_of[keep], part_of[types == 7][sub_of]])
        types = shapely.get_type_id(parts)
    if np.isin(types, list(_LINE_TYPES)).any():
        raise LabelError("has line geometries, which cannot be labels", path=path,
                         hint="use points or polygons (buffer lines into polygons)")
    inside = np.zeros(len(geoms), bool)
    partly = np.zeros(len(geoms), bool)
    got_pixel = np.zeros(len(geoms), bool)
    out_r: list[np.ndarray] = []
    out_c: list[np.ndarray] = []
    out_f: list[np.ndarray] = []

    # Points: vectorised.
    pt = types == 0
    if pt.any():
        xy = shapely.get_coordinates(parts[pt])
        f = part_of[pt]
        colf, rowf = apply_transform(~grid.transform, xy[:, 0], xy[:, 1])
        r = np.floor(np.asarray(rowf)).astype(np.int64)
        c = np.floor(np.asarray(colf)).astype(np.int64)
        ok = (r >= 0) & (c >= 0) & (r < grid.height) & (c < grid.width)
        np.logical_or.at(inside, f[ok], True)
        np.logical_or.at(partly, f[~ok], True)
        np.logical_or.at(got_pixel, f[ok], True)
        out_r.append(r[ok])
        out_c.append(c[ok])
        out_f.append(f[ok])

    # Polygons: one rasterisation per polygon, in its bounding window.
    bx, by = apply_transform(grid.transform, [0, grid.width, grid.width, 0],
                             [0, 0, grid.height, grid.height])
    grid_box = shapely.Polygon(np.stack([bx, by], axis=1))
    poly_idx = np.flatnonzero(np.isin(types, list(_POLYGON_TYPES)))
    inv = ~grid.transform
    for k in poly_idx:
        geom = parts[k]
        f = part_of[k]
        if not grid_box.intersects(geom):
            partly[f] = True
            continue
        inside[f] = True
        if not grid_box.covers(geom):
            partly[f] = True
        x0, y0, x1, y1 = geom.bounds
        cs, rs = apply_transform(inv, [x0, x1, x0, x1], [y0, y0, y1, y1])
        r0 = max(0, math.floor(min(rs)))
        r1 = min(grid.height, math.ceil(max(rs)))
        c0 = max(0, math.floor(min(cs)))
        c1 = min(grid.width, math.ceil(max(cs)))
        if r1 <= r0 or c1 <= c0:
            continue
        win = Window(c0, r0, c1 - c0, r1 - r0)
        mask = rasterize([(geom, 1)], out_shape=(r1 - r0, c1 - c0),
                         transform=window_transform(win, grid.transform), fill=0,
                         all_touched=False, dtype="uint8")
        rr, cc = np.nonzero(mask)
        if rr.size:
            got_pixel[f] = True
            out_r.append(rr.astype(np.int64) + r0)
            out_c.append(cc.astype(np.int64) + c0)
            out_f.append(np.full(rr.size, f, np.int64))

    report.features_outside = int((~inside).sum())
    report.features_partly_outside = int((inside & partly).sum())
    poly_feature = np.zeros(len(geoms), bool)
    poly_feature[part_of[poly_idx]] = True
    report.features_without_pixel = int((inside & ~got_pixel & poly_feature).sum())
    if not out_r:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    fidx = np.concatenate(out_f)
    return np.concatenate(out_r), np.concatenate(out_c), ids[fidx]


def _finish(
    rows: np.ndarray,
    cols: np.ndarray,
    cls: np.ndarray,
    table: ClassTable,
    grid: Grid,
    report: LabelReport,
    path: str | Path,
) -> LabelSet:
    """Deduplicate, drop and report conflicts, sort, and build the :class:`LabelSet`."""
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
    report.pixels_per_class = _per_class(labels)
    report.empty_classes = [name for name, n in report.pixels_per_class.items() if n == 0]
    return labels


# -- raster --------------------------------------------------------------------------------


def _read_raster(path: Path | str, grid: Grid, table: ClassTable | None) -> LabelSet:
    ds = open_raster(path, what="label")
    try:
        report = LabelReport(source=str(path), kind="raster")
        if not (np.issubdtype(np.dtype(ds.dtypes[0]), np.integer)
                or np.issubdtype(np.dtype(ds.dtypes[0]), np.floating)):
            raise LabelError(f"has data type {ds.dtypes[0]}, not class ids", path=path)
        if ds.count > 1:
            log.warning("%s has %d bands; using band 1 as labels", path, ds.count)
        src_crs = ds.crs
        if src_crs is None and grid.crs is not None:
            report.crs_assumed = True
            src_crs = grid.crs
        elif src_crs is not None and grid.crs is None:
            raise GridError(f"has a CRS ({src_crs.to_string()}) but the HSI has none", path=path,
                            hint="give every input a CRS or none of them")
        same = (ds.height, ds.width) == grid.shape and (
            grid.crs is None
            or (CRS.from_user_input(src_crs) == grid.crs
                and ds.transform.almost_equals(grid.transform, precision=1e-9 * max(grid.res))))
        if grid.crs is None and not same:
            raise GridError(f"is a {ds.width} x {ds.height} pixel grid without CRS but the HSI "
                            f"is {grid.width} x {grid.height}", path=path,
                            hint="rasters without CRS must have the same size")
        nodata = ds.nodata
        if same:
            reader = ds
        else:
            reader = WarpedVRT(ds, src_crs=src_crs, crs=grid.crs, transform=grid.transform,
                               width=grid.width, height=grid.height,
                               resampling=Resampling.nearest, nodata=0, src_nodata=nodata)
            report.pixels_outside, report.features_read = _raster_outside(ds, src_crs, grid,
                                                                          nodata, path)
        rows, cols, cls = [], [], []
        try:
            for r0 in range(0, grid.height, _READ_TILE):
                for c0 in range(0, grid.width, _READ_TILE):
                    win = Window(c0, r0, min(_READ_TILE, grid.width - c0),
                                 min(_READ_TILE, grid.height - r0))
                    data = reader.read(1, window=win)
                    lab = _labelled(data, nodata if same else None, path)
                    rr, cc = np.nonzero(lab)
                    rows.append(rr.astype(np.int64) + r0)
                    cols.append(cc.astype(np.int64) + c0)
                    cls.append(data[rr, cc].astype(np.int64))
        except (RasterioError, OSError) as exc:
            raise InputError(f"reading the label raster failed ({_first_line(exc)})", path=path,
                             hint="the file may be truncated or corrupt") from None
        finally:
            if reader is not ds:
                reader.close()
    finally:
        ds.close()
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    k = np.concatenate(cls)
    if same:
        report.features_read = int(r.size)
    present = sorted(set(np.unique(k).tolist()))
    if table is not None:
        unknown = [i for i in present if i not in table.ids]
        if unknown:
            raise LabelError(f"label values {unknown[:20]} are not in the classes table "
                             f"(ids {table.ids})", path=path,
                             hint="add them to the classes table or fix the raster")
    elif present:
        table = ClassTable({"id": i, "name": f"class {i}"} for i in present)
    else:
        raise LabelError(f"no label falls inside the raster ({grid.describe()})", path=path,
                         hint="label values must be 1..65535; 0 and nodata mean unlabelled")
    return _finish(r, c, k, table, grid, report, path)


def _labelled(data: np.ndarray, nodata: float | None, path: str | Path) -> np.ndarray:
    """Mask of labelled pixels; checks values are integral ids in 1..65535."""
    lab = data != 0
    if nodata is not None:
        lab &= ~(np.isnan(data) if math.isnan(nodata) else data == nodata)
    if np.issubdtype(data.dtype, np.floating):
        lab &= ~np.isnan(data)
        vals = data[lab]
        if vals.size and np.any(np.mod(vals, 1) != 0):
            raise LabelError("has non-integer values, not class ids", path=path,
                             hint="store class ids as integers (0 = unlabelled)")
    vals = data[lab]
    if vals.size and (vals.min() < 0 or vals.max() > 65535):
        raise LabelError("has label values outside 0..65535", path=path,
                         hint="class ids must be 1..65535 (0 = unlabelled)")
    return lab


def _raster_outside(
    ds: Any, src_crs: CRS, grid: Grid, nodata: float | None, path: str | Path
) -> tuple[int, int]:
    """Count labelled source pixels and those whose centre lies outside the grid."""
    outside = 0
    total = 0
    inv = ~grid.transform
    for r0 in range(0, ds.height, _READ_TILE):
        for c0 in range(0, ds.width, _READ_TILE):
            win = Window(c0, r0, min(_READ_TILE, ds.width - c0), min(_READ_TILE, ds.height - r0))
            data = ds.read(1, window=win)
            rr, cc = np.nonzero(_labelled(data, nodata, path))
            if not rr.size:
                continue
            total += rr.size
            xs, ys = apply_transform(ds.transform, cc + c0 + 0.5, rr + r0 + 0.5)
            if grid.crs is not None and src_crs != grid.crs:
                xs, ys = warp_transform(src_crs, grid.crs, xs, ys)
            gc, gr = apply_transform(inv, xs, ys)
            gc = np.floor(gc)
            gr = np.floor(gr)
            outside += int(((gc < 0) | (gr < 0) | (gc >= grid.width) | (gr >= grid.height)).sum())
    return outside, total


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
    report.pixels_per_class = _per_class(merged)
    report.empty_classes = [name for name, n in report.pixels_per_class.items() if n == 0]
    return merged
