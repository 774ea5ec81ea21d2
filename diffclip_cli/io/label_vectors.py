"""Vector labels: points, lines and polygons of any OGR format onto the HSI grid.

The class field is found (or given), its values mapped to a classes table, the features
reprojected and burnt into pixels; what is dropped is counted in the
:class:`~diffclip_cli.io.labelset.LabelReport`.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyogrio
import shapely
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from diffclip_cli.errors import GridError, InputError, LabelError, first_line
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.io.grid import Grid
from diffclip_cli.io.labelset import LabelReport, LabelSet, labels_from_pixels
from diffclip_cli.io.pixels import apply_transform

__all__ = ["detect_class_fields", "read_vector_labels"]

log = logging.getLogger("diffclip")

# Auto-detected class fields: base word (priority order) + optional suffix.
_BASES = ("class", "classe", "label", "landcover", "land_cover", "lulc", "lc", "category", "cls")
_SUFFIXES = ("name", "id", "code", "value", "val", "num", "label", "type")
_FIELD_RE = re.compile(
    r"^(?P<base>" + "|".join(_BASES) + r")[_ ]?(?P<suffix>" + "|".join(_SUFFIXES) + r")?s?$"
)


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


def read_vector_labels(
    path: Path | str,
    grid: Grid,
    *,
    class_field: str | None,
    layer: str | None,
    table: ClassTable | None,
) -> LabelSet:
    """Labels from a vector file (points, lines, polygons) burnt onto ``grid``.

    Args:
        path: any OGR vector file (GeoPackage, GeoJSON, Shapefile, ...).
        grid: the HSI grid.
        class_field: the field holding class names or ids (``None``: detected).
        layer: the layer of a file with several.
        table: the classes table (``None``: built from the field's values).

    Raises:
        InputError: unreadable file, several layers without ``layer``.
        GridError: features with a CRS where the grid has none.
        LabelError: no feature, unknown field, classes not in the table, nothing inside.
    """
    try:
        layers = [str(name) for name, _ in pyogrio.list_layers(path)]
    except Exception as exc:  # pyogrio raises its own DataSourceError family
        reason = first_line(exc)
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
        raise InputError(f"reading the vector file failed ({first_line(exc)})",
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
    return labels_from_pixels(rows, cols, cls, table, grid, report, path)


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


