"""read_labels: vector and raster labels onto the HSI grid, with a complete report."""

import json
import logging

import geopandas as gpd
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterdata import (
    HSI_CRS,
    ORIGIN,
    RES,
    write_tif,
)
from rasterio.crs import CRS
from rasterio.transform import from_origin
from shapely.geometry import MultiPolygon, Point, box

from diffclip_cli.errors import GridError, InputError, LabelError
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.io.grid import Grid
from diffclip_cli.io.label_vectors import _burn
from diffclip_cli.io.labels import LabelReport, read_labels
from diffclip_cli.io.raster import Scene

H, W = 30, 40
GRID = Grid(W, H, from_origin(*ORIGIN, RES, RES), CRS.from_user_input(HSI_CRS))


def centre(row, col):
    """Map coordinates of a pixel centre of GRID."""
    return ORIGIN[0] + (col + 0.5) * RES, ORIGIN[1] - (row + 0.5) * RES


def pix_box(r0, c0, r1, c1):
    """A polygon covering pixels rows r0..r1-1, cols c0..c1-1 (edges a quarter pixel in)."""
    q = RES / 4
    return box(ORIGIN[0] + c0 * RES + q, ORIGIN[1] - r1 * RES + q,
               ORIGIN[0] + c1 * RES - q, ORIGIN[1] - r0 * RES - q)


def write_vector(path, records, crs=HSI_CRS, **kw):
    gdf = gpd.GeoDataFrame(records, geometry="geometry", crs=crs)
    gdf.to_file(path, **kw)
    return path


def pixels(labels):
    return set(zip(labels.rows.tolist(), labels.cols.tolist(), labels.class_ids.tolist(),
                   strict=True))


def test_points_with_names(tmp_path):
    recs = [{"landcover": "water", "geometry": Point(*centre(2, 3))},
            {"landcover": "Grass", "geometry": Point(*centre(5, 7))},
            {"landcover": "grass", "geometry": Point(*centre(6, 7))},
            {"landcover": "asphalt", "geometry": Point(*centre(0, 0))}]
    path = write_vector(tmp_path / "pts.gpkg", recs)
    labels = read_labels(path, GRID)
    # names in sorted order -> ids 1..K; "Grass" and "grass" are one class
    assert labels.classes.names == ["Grass", "asphalt", "water"]
    assert labels.classes.ids == [1, 2, 3]
    assert pixels(labels) == {(2, 3, 3), (5, 7, 1), (6, 7, 1), (0, 0, 2)}
    assert labels.rows.dtype == np.int64 and labels.cols.dtype == np.int64
    np.testing.assert_array_equal(labels.counts(), [2, 1, 1])
    np.testing.assert_array_equal(labels.index, labels.class_ids - 1)
    assert labels.report.class_field == "landcover" and labels.report.features_read == 4


def test_points_anywhere_in_a_pixel_map_to_it(tmp_path):
    x, y = centre(4, 9)
    recs = [{"class_id": 2, "geometry": Point(x + 0.9, y - 0.9)},  # bottom-right quarter
            {"class_id": 2, "geometry": Point(x - 0.99, y + 0.99)}]
    labels = read_labels(write_vector(tmp_path / "p.geojson", recs), GRID)
    assert pixels(labels) == {(4, 9, 2)}
    assert labels.report.duplicate_pixels == 1
    assert labels.classes.names == ["class 2"]


def test_polygons_use_the_pixel_centre_rule(tmp_path):
    recs = [{"class": 1, "geometry": pix_box(2, 3, 5, 7)},
            {"class": 4, "geometry": MultiPolygon([pix_box(10, 10, 11, 12),
                                                   pix_box(20, 30, 22, 31)])}]
    labels = read_labels(write_vector(tmp_path / "poly.shp", recs), GRID)
    expected = {(r, c, 1) for r in range(2, 5) for c in range(3, 7)}
    expected |= {(10, 10, 4), (10, 11, 4), (20, 30, 4), (21, 30, 4)}
    assert pixels(labels) == expected
    raster = labels.to_raster()
    assert raster.shape == (H, W) and raster.dtype == np.uint16
    assert raster[3, 4] == 1 and raster[21, 30] == 4 and (raster > 0).sum() == len(expected)


@settings(max_examples=25, deadline=None)
@given(st.integers(-5, 35), st.integers(-5, 45), st.integers(1, 12), st.integers(1, 12),
       st.floats(0.05, 0.45), st.floats(0.55, 0.95))
def test_rectangles_rasterise_to_the_pixels_whose_centres_they_hold(r0, c0, dh, dw, a, b):
    # A rectangle from (r0 + a) to (r0 + dh + b) in pixel units: holds centres r0+1 .. r0+dh
    # (the first row's centre r0 + 0.5 is inside only when a < 0.5, always true here).
    poly = box(ORIGIN[0] + (c0 + a) * RES, ORIGIN[1] - (r0 + dh + b) * RES,
               ORIGIN[0] + (c0 + dw + b) * RES, ORIGIN[1] - (r0 + a) * RES)
    rows = [r for r in range(r0, r0 + dh + 1) if 0 <= r < H]
    cols = [c for c in range(c0, c0 + dw + 1) if 0 <= c < W]
    expected = {(r, c) for r in rows for c in cols}
    report = LabelReport(source="x", kind="vector")
    rr, cc, _ = _burn(np.array([poly]), np.array([1]), GRID, report, "x")
    assert set(zip(rr.tolist(), cc.tolist(), strict=True)) == expected
    assert report.features_outside == (0 if expected else 1)


def test_another_crs_is_reprojected(tmp_path):
    pts = gpd.GeoSeries([Point(*centre(1, 1)), Point(*centre(17, 33))], crs=HSI_CRS)
    recs = gpd.GeoDataFrame({"class_name": ["a", "b"], "class_id": [5, 9]},
                            geometry=pts.to_crs("EPSG:4326"))
    path = tmp_path / "ll.gpkg"
    recs.to_file(path)
    labels = read_labels(path, GRID)
    assert pixels(labels) == {(1, 1, 5), (17, 33, 9)}
    assert labels.classes.names == ["a", "b"] and labels.classes.ids == [5, 9]
    assert labels.report.class_field == "class_id" and labels.report.name_field == "class_name"


def test_outside_and_partly_outside_are_reported(tmp_path, caplog):
    recs = [{"label": "a", "geometry": Point(ORIGIN[0] - 5, ORIGIN[1])},
            {"label": "a", "geometry": box(0, 0, 10, 10)},
            {"label": "b", "geometry": pix_box(-3, -3, 2, 2)},
            {"label": "b", "geometry": Point(*centre(8, 8))},
            {"label": None, "geometry": Point(*centre(9, 9))}]
    with caplog.at_level(logging.WARNING, logger="diffclip"):
        labels = read_labels(write_vector(tmp_path / "o.gpkg", recs), GRID)
    rep = labels.report
    assert rep.features_outside == 2 and rep.features_partly_outside == 1
    assert rep.features_without_class == 1
    assert pixels(labels) == {(r, c, 2) for r in range(2) for c in range(2)} | {(8, 8, 2)}
    assert rep.empty_classes == ["a"] and rep.pixels_per_class == {"a": 0, "b": 5}
    text = " ".join(rep.summary())
    assert "2 features lie entirely outside" in text and "no class value" in text
    assert "entirely outside" in caplog.text
    json.dumps(rep.to_dict())


def test_conflicts_are_dropped_and_reported(tmp_path):
    recs = [{"cls": "a", "geometry": pix_box(0, 0, 4, 4)},
            {"cls": "b", "geometry": pix_box(2, 2, 6, 6)},
            {"cls": "a", "geometry": pix_box(0, 0, 2, 2)}]  # same class again: merged
    labels = read_labels(write_vector(tmp_path / "c.gpkg", recs), GRID)
    rep = labels.report
    assert rep.conflict_pixels == 4 and rep.conflicts == {"a / b": 4}
    assert rep.duplicate_pixels == 4
    got = pixels(labels)
    assert all((r, c) not in {(2, 2), (2, 3), (3, 2), (3, 3)} for r, c, _ in got)
    assert len(got) == 16 - 4 + 16 - 4
    assert any("claimed by different classes" in s for s in rep.summary())


def test_unknown_or_missing_field_lists_the_fields(tmp_path):
    path = write_vector(tmp_path / "f.gpkg", [{"kind": "a", "height": 2.5,
                                               "geometry": Point(*centre(1, 1))}])
    with pytest.raises(LabelError, match=r"no field 'type' \(fields: kind, height\)"):
        read_labels(path, GRID, class_field="type")
    with pytest.raises(LabelError, match=r"no class field found \(fields: kind, height\)"):
        read_labels(path, GRID)
    assert len(read_labels(path, GRID, class_field="KIND")) == 1


def test_crs_rules(tmp_path, caplog):
    path = write_vector(tmp_path / "n.gpkg", [{"class": 3, "geometry": Point(*centre(4, 4))}],
                        crs=None)
    with caplog.at_level(logging.WARNING, logger="diffclip"):
        labels = read_labels(path, GRID)
    assert labels.report.crs_assumed and pixels(labels) == {(4, 4, 3)}
    assert "no CRS" in caplog.text
    pixel_grid = Grid(W, H, GRID.transform, None)
    with pytest.raises(GridError, match="has a CRS"):
        read_labels(write_vector(tmp_path / "w.gpkg", [{"class": 3, "geometry": Point(
            *centre(4, 4))}]), pixel_grid)


def test_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_labels(tmp_path / "missing.gpkg", GRID)
    empty = gpd.GeoDataFrame({"class": []}, geometry=gpd.GeoSeries([], crs=HSI_CRS))
    empty.to_file(tmp_path / "e.gpkg")
    with pytest.raises(LabelError, match="no features"):
        read_labels(tmp_path / "e.gpkg", GRID)
    far = write_vector(tmp_path / "far.gpkg", [{"class": 1, "geometry": Point(0, 0)}])
    with pytest.raises(LabelError, match="no label falls inside"):
        read_labels(far, GRID)
    (tmp_path / "junk.gpkg").write_text("nope")
    with pytest.raises(InputError, match="not a readable vector"):
        read_labels(tmp_path / "junk.gpkg", GRID)
    disagree = write_vector(tmp_path / "d.gpkg", [
        {"class_id": 1, "class_name": "a", "geometry": Point(*centre(1, 1))},
        {"class_id": 1, "class_name": "b", "geometry": Point(*centre(2, 2))}])
    with pytest.raises(LabelError, match="disagree"):
        read_labels(disagree, GRID)


def test_classes_table_matches_names_case_insensitively(tmp_path):
    table = ClassTable([{"id": 7, "name": "Water"}, {"id": 3, "name": "Trees"},
                        {"id": 9, "name": "Roads"}])
    path = write_vector(tmp_path / "t.gpkg", [
        {"class": "water", "geometry": Point(*centre(1, 1))},
        {"class": "TREES", "geometry": Point(*centre(2, 2))}])
    labels = read_labels(path, GRID, classes=table)
    assert labels.classes is table and pixels(labels) == {(1, 1, 7), (2, 2, 3)}
    np.testing.assert_array_equal(labels.index, [0, 1])
    assert labels.report.empty_classes == ["Roads"]
    bad = write_vector(tmp_path / "b.gpkg", [{"class": "lava", "geometry": Point(
        *centre(1, 1))}])
    with pytest.raises(LabelError, match="lava"):
        read_labels(bad, GRID, classes=table)


def test_label_raster_with_classes_csv(tmp_path):
    data = np.zeros((H, W), np.uint16)
    data[3:6, 4:8] = 2
    data[10, 10] = 5
    data[11, 11] = 255  # nodata
    tif = write_tif(tmp_path / "lab.tif", data, nodata=255)
    csv = tmp_path / "classes.csv"
    csv.write_text("id,name,description\n2,grass,green\n5,water,\n6,sand,\n")
    labels = read_labels(tif, GRID, classes=csv)
    assert labels.classes.names == ["grass", "water", "sand"]
    assert labels.classes[0].description == "green"
    np.testing.assert_array_equal(labels.counts(), [12, 1, 0])
    np.testing.assert_array_equal(labels.to_raster(), np.where(data == 255, 0, data))
    assert labels.report.empty_classes == ["sand"] and labels.report.features_read == 13
    plain = read_labels(tif, GRID)
    assert plain.classes.names == ["class 2", "class 5"]
    with pytest.raises(LabelError, match=r"\[2\]"):
        read_labels(tif, GRID, classes=ClassTable([{"id": 5, "name": "water"}]))


def test_label_raster_on_another_grid_is_resampled_nearest(tmp_path):
    # Labels at 4 m starting 8 m left of the HSI: label pixel (i, j) covers HSI columns
    # 2j-4 .. 2j-3 and rows 2i .. 2i+1.
    data = np.zeros((15, 24), np.uint8)
    data[1, 3] = 7
    data[0, 0] = 9  # entirely left of the HSI
    tif = write_tif(tmp_path / "coarse.tif", data, nodata=0,
                    transform=from_origin(ORIGIN[0] - 8, ORIGIN[1], 4.0, 4.0))
    labels = read_labels(tif, GRID)
    assert pixels(labels) == {(r, c, 7) for r in (2, 3) for c in (2, 3)}
    assert labels.report.pixels_outside == 1 and labels.report.features_read == 2
    assert labels.classes.ids == [7]


def test_drop_invalid_reports_per_class(tmp_path):
    hsi = np.ones((2, H, W), np.float32)
    hsi[0, 1, 1] = np.nan
    scene_path = write_tif(tmp_path / "hsi.tif", hsi)
    path = write_vector(tmp_path / "p.gpkg", [
        {"class": "a", "geometry": Point(*centre(1, 1))},
        {"class": "b", "geometry": Point(*centre(2, 2))}])
    labels = read_labels(path, GRID)
    with Scene.open(scene_path) as scene:
        kept = labels.drop_invalid(scene)
    assert pixels(kept) == {(2, 2, 2)}
    assert kept.report.invalid_pixels == 1 and kept.report.invalid_per_class == {"a": 1, "b": 0}
    assert kept.report.empty_classes == ["a"]
    assert any("invalid" in s for s in kept.report.summary())
    np.testing.assert_array_equal(kept.subset(np.array([0])).class_ids, [2])


def test_salinas_vector_and_raster_labels_agree(salinas_dir):
    with Scene.open(salinas_dir / "hsi.tif") as scene:
        vec = read_labels(salinas_dir / "labels.gpkg", scene.grid)
        ras = read_labels(salinas_dir / "labels.tif", scene.grid,
                          classes=salinas_dir / "classes.csv")
    assert len(vec) == 5348 and vec.classes == ras.classes
    np.testing.assert_array_equal(vec.to_raster(), ras.to_raster())
    np.testing.assert_array_equal(vec.counts(), [391, 1343, 616, 1525, 674, 799])


def test_layers(tmp_path):
    path = tmp_path / "two.gpkg"
    write_vector(path, [{"class": "a", "geometry": Point(*centre(1, 1))}], layer="first")
    write_vector(path, [{"class": "b", "geometry": Point(*centre(2, 2))}], layer="second",
                 mode="a")
    with pytest.raises(InputError, match=r"several layers \(first, second\)"):
        read_labels(path, GRID)
    assert pixels(read_labels(path, GRID, layer="second")) == {(2, 2, 1)}
    with pytest.raises(InputError, match="no layer 'third'"):
        read_labels(path, GRID, layer="third")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, H + 2), st.floats(0.01, 0.99),
                          st.integers(-3, W + 2), st.floats(0.01, 0.99)),
                min_size=1, max_size=30))
def test_points_map_to_the_pixel_that_holds_them(points):
    # A point anywhere inside pixel (row, col) (not on its edge) labels that pixel; points
    # outside the grid are counted, never moved to the nearest pixel.
    geoms = np.array([Point(ORIGIN[0] + (c + fc) * RES, ORIGIN[1] - (r + fr) * RES)
                      for r, fr, c, fc in points])
    report = LabelReport(source="x", kind="vector")
    rr, cc, ids = _burn(geoms, np.arange(1, len(points) + 1), GRID, report, "x")
    inside = [(r, c, k + 1) for k, (r, _, c, _) in enumerate(points)
              if 0 <= r < H and 0 <= c < W]
    assert sorted(zip(rr.tolist(), cc.tolist(), ids.tolist(), strict=True)) == sorted(inside)
    assert report.features_outside == len(points) - len(inside)
