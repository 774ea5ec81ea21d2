"""Map products: tiled GeoTIFF/COG writers, read_map, and quicklook PNGs."""

import json
import os

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.windows import Window

from diffclip_cli import __version__
from diffclip_cli.errors import InputError, OutputError
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.io.grid import Grid
from diffclip_cli.io.maps import CLASSES_TAG, MapWriter, RasterWriter, read_map
from diffclip_cli.io.sidecars import sidecar_path
from diffclip_cli.report.quicklook import decimated_shape, quicklook, read_decimated

CLASSES = ClassTable([
    {"id": 1, "name": "grass", "color": "#00ff00", "description": "lawn, low"},
    {"id": 2, "name": "trees", "color": "#006400"},
    {"id": 5, "name": "water", "color": "#0000ff"},
])
UTM = Grid(70, 50, Affine(2.5, 0, 271000.0, 0, -2.5, 3290000.0), CRS.from_epsg(26915))


def class_image(shape, ids=(1, 2, 5), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.choice(np.array(ids), size=shape).astype(np.int64)
    img[:3, :4] = 0  # some nodata
    return img


def write_tiles(writer, image, tile=32):
    h, w = image.shape[-2:]
    for r in range(0, h, tile):
        for c in range(0, w, tile):
            win = Window(c, r, min(tile, w - c), min(tile, h - r))
            writer.write(win, image[..., r:r + win.height, c:c + win.width])


def test_map_writer_geotiff(tmp_path):
    out = tmp_path / "map.tif"
    image = class_image(UTM.shape)
    with MapWriter(out, UTM, CLASSES, metadata={"model": "m.pt", "sources": ["hsi.tif"]}) as w:
        write_tiles(w, image)
    assert sorted(os.listdir(tmp_path)) == ["map.qml", "map.tif", "map.tif.aux.xml",
                                            "map.tif.json"]
    with rasterio.open(out) as ds:
        assert ds.crs == UTM.crs and ds.transform == UTM.transform
        assert (ds.height, ds.width) == UTM.shape
        assert ds.dtypes[0] == "uint8" and ds.nodata == 0 and ds.count == 1
        assert ds.block_shapes[0] == (256, 256) and ds.compression.name.lower() == "deflate"
        np.testing.assert_array_equal(ds.read(1), image)
        cmap = ds.colormap(1)
        assert cmap[0] == (0, 0, 0, 0)
        assert cmap[1] == (0, 255, 0, 255) and cmap[2] == (0, 100, 0, 255)
        assert cmap[5] == (0, 0, 255, 255)
        assert ds.descriptions == ("land cover class",)
        tags = ds.tags()
        assert tags["CLASS_5"] == "water" and tags["DIFFCLIP_VERSION"] == __version__
    info = read_map(out)
    assert info.classes == CLASSES and info.source_of_classes == "tags"
    assert info.classes.by_id(1).description == "lawn, low"
    assert info.grid == UTM and info.nodata == 0 and info.dtype == "uint8"
    assert info.colormap == {0: (0, 0, 0, 0), 1: (0, 255, 0, 255), 2: (0, 100, 0, 255),
                             5: (0, 0, 255, 255)}
    side = json.loads(sidecar_path(out).read_text())
    assert side["metadata"] == {"model": "m.pt", "sources": ["hsi.tif"]}
    assert side["software"]["version"] == __version__ and side["nodata"] == 0
    assert ClassTable.from_records(side["classes"]) == CLASSES
    assert Grid.from_dict(side["grid"]) == UTM
    assert info.sidecar == side


@pytest.mark.parametrize("transform", [Affine.identity(), Affine(1, 0, 0, 0, -1, 50)])
def test_pixel_grid_without_crs(tmp_path, transform):
    grid = Grid(40, 50, transform, None)
    out = tmp_path / "map.tif"
    image = class_image(grid.shape)
    with MapWriter(out, grid, CLASSES) as w:
        write_tiles(w, image)
    info = read_map(out)
    assert info.grid == grid and info.grid.crs is None
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(1), image)


def test_uint16_for_large_ids(tmp_path):
    table = ClassTable([{"id": 1, "name": "a"}, {"id": 300, "name": "b", "color": "#ff0000"}])
    out = tmp_path / "map.tif"
    image = class_image(UTM.shape, ids=(1, 300))
    with MapWriter(out, UTM, table) as w:
        write_tiles(w, image)
    with rasterio.open(out) as ds:
        assert ds.dtypes[0] == "uint16" and ds.nodata == 0
        np.testing.assert_array_equal(ds.read(1), image)
    info = read_map(out)
    assert info.classes == table and info.colormap[300] == (255, 0, 0, 255)


def test_cog_is_tiled_with_overviews_and_keeps_the_colour_table(tmp_path):
    grid = Grid(600, 520, Affine(1, 0, 500000, 0, -1, 4000000), CRS.from_epsg(32633))
    image = np.repeat(np.repeat(class_image((52, 60)), 10, axis=0), 10, axis=1)
    out = tmp_path / "map.tif"
    with MapWriter(out, grid, CLASSES, cog=True, creation_options=["COMPRESS=ZSTD"]) as w:
        write_tiles(w, image, tile=256)
    assert sorted(os.listdir(tmp_path)) == ["map.qml", "map.tif", "map.tif.aux.xml",
                                            "map.tif.json"]
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.block_shapes[0] == (256, 256)
        assert ds.overviews(1) == [2, 4]
        assert ds.compression.name.lower() == "zstd"
        assert ds.crs == grid.crs and ds.transform == grid.transform
        assert ds.colormap(1)[5] == (0, 0, 255, 255) and ds.colormap(1)[0] == (0, 0, 0, 0)
        np.testing.assert_array_equal(ds.read(1), image)
        # mode overviews keep class ids (no averaged values such as 3 or 4)
        ov = ds.read(1, out_shape=(130, 150))
        assert set(np.unique(ov)) <= {0, 1, 2, 5}
    assert read_map(out).classes == CLASSES
    assert read_map(out).overviews == [2, 4]


def test_generic_raster_writer(tmp_path):
    out = tmp_path / "conf.tif"
    data = np.random.default_rng(1).random((2, *UTM.shape)).astype(np.float32)
    with RasterWriter(out, UTM, count=2, dtype="float32", nodata=-1.0,
                      band_descriptions=["confidence", "margin"], tags={"UNITS": "prob"},
                      creation_options={"compress": "lzw", "blockxsize": 128,
                                        "blockysize": 128}) as w:
        write_tiles(w, data, tile=40)
    with rasterio.open(out) as ds:
        assert ds.count == 2 and ds.dtypes == ("float32", "float32") and ds.nodata == -1
        assert ds.descriptions == ("confidence", "margin") and ds.tags()["UNITS"] == "prob"
        assert ds.block_shapes[0] == (128, 128) and ds.compression.name.lower() == "lzw"
        np.testing.assert_array_equal(ds.read(), data)
    info = read_map(out)
    assert info.classes is None and info.colormap is None and info.count == 2


def test_unwritten_area_is_nodata(tmp_path):
    out = tmp_path / "map.tif"
    with MapWriter(out, UTM, CLASSES, sidecar=False, styles=False) as w:
        w.write(Window(0, 0, 10, 10), np.full((10, 10), 2))
    assert os.listdir(tmp_path) == ["map.tif"]
    with rasterio.open(out) as ds:
        arr = ds.read(1)
    assert (arr[:10, :10] == 2).all() and arr.sum() == 200


@pytest.mark.parametrize("cog", [False, True])
def test_exception_leaves_nothing(tmp_path, cog):
    out = tmp_path / "map.tif"
    with pytest.raises(RuntimeError, match="model crashed"), \
            MapWriter(out, UTM, CLASSES, cog=cog) as w:
        w.write(Window(0, 0, 10, 10), np.ones((10, 10), np.uint8))
        raise RuntimeError("model crashed")
    assert os.listdir(tmp_path) == []


def test_interrupt_keeps_the_previous_map(tmp_path):
    out = tmp_path / "map.tif"
    with MapWriter(out, UTM, CLASSES) as w:
        w.write(Window(0, 0, 70, 50), np.ones((50, 70)))
    before = out.read_bytes()
    with pytest.raises(KeyboardInterrupt), MapWriter(out, UTM, CLASSES, overwrite=True) as w:
        w.write(Window(0, 0, 70, 50), np.full((50, 70), 2))
        raise KeyboardInterrupt
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["map.qml", "map.tif", "map.tif.aux.xml",
                                            "map.tif.json"]


def test_bad_blocks_are_refused_and_leave_nothing(tmp_path):
    out = tmp_path / "map.tif"
    with pytest.raises(ValueError, match="no class id: \\[3\\]"), \
            MapWriter(out, UTM, CLASSES) as w:
        w.write(Window(0, 0, 2, 2), np.array([[1, 3], [0, 5]]))
    with pytest.raises(ValueError, match="not inside"), MapWriter(out, UTM, CLASSES) as w:
        w.write(Window(60, 0, 20, 2), np.ones((2, 20)))
    with pytest.raises(ValueError, match="expected \\(1, 2, 3\\)"), \
            MapWriter(out, UTM, CLASSES) as w:
        w.write(Window(0, 0, 3, 2), np.ones((3, 2)))
    with pytest.raises(ValueError, match="do not fit in uint8"), \
            RasterWriter(out, UTM, count=1, dtype="uint8", nodata=None) as w:
        w.write(Window(0, 0, 1, 1), np.array([[256]]))
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="mode"):
        MapWriter(out, UTM, CLASSES, overview_resampling="average")


def test_existing_outputs_are_refused(tmp_path):
    out = tmp_path / "map.tif"
    sidecar_path(out).write_text("{}")
    with pytest.raises(OutputError, match=r"map\.tif\.json: already exists"):
        MapWriter(out, UTM, CLASSES)
    sidecar_path(out).unlink()
    (tmp_path / "map.qml").write_text("<qgis/>")
    with pytest.raises(OutputError, match=r"map\.qml: already exists"):
        MapWriter(out, UTM, CLASSES)
    assert (tmp_path / "map.qml").read_text() == "<qgis/>"
    out.write_text("old")
    with pytest.raises(OutputError, match=r"map\.tif: already exists"):
        RasterWriter(out, UTM, count=1, dtype="uint8", nodata=0)
    assert out.read_text() == "old"


def test_read_map_without_table_sidecar_fallback_and_errors(tmp_path):
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=8, height=6, count=1, dtype="uint8",
                       transform=UTM.transform, crs=UTM.crs) as ds:
        ds.write(np.ones((1, 6, 8), np.uint8))
    info = read_map(plain)
    assert info.classes is None and info.nodata is None and info.grid.shape == (6, 8)

    out = tmp_path / "map.tif"
    with MapWriter(out, UTM, CLASSES) as w:
        w.write(Window(0, 0, 70, 50), np.ones((50, 70)))
    with rasterio.open(out, "r+") as ds:  # a tool that mangled our tag
        ds.update_tags(**{CLASSES_TAG: "[{'id': 1"})
    with pytest.raises(InputError, match="DIFFCLIP_CLASSES tag does not hold a valid class"):
        read_map(out)

    sidecar_path(plain).write_text(json.dumps({"classes": CLASSES.to_records()}))
    info = read_map(plain)
    assert info.classes == CLASSES and info.source_of_classes == "sidecar"

    with pytest.raises(InputError, match="not found"):
        read_map(tmp_path / "missing.tif")
    (tmp_path / "text.tif").write_text("not a raster")
    with pytest.raises(InputError, match="not a readable map raster"):
        read_map(tmp_path / "text.tif")


# ------------------------------------------------------------------------------- quicklook
def colour_count(png, rgb):
    with Image.open(png) as im:
        arr = np.asarray(im.convert("RGB"))
    return int((arr == np.array(rgb)).all(axis=-1).sum()), arr.shape[:2]


def test_decimated_shape_keeps_aspect():
    assert decimated_shape((600, 900), 300) == (200, 300)
    assert decimated_shape((100, 20000), 1000) == (5, 1000)
    assert decimated_shape((50, 40), 1024) == (50, 40)


def test_quicklook_of_a_large_map_is_decimated(tmp_path):
    grid = Grid(900, 600, Affine(1, 0, 0, 0, -1, 600), CRS.from_epsg(32633))
    left, right = np.ones((600, 450)), np.full((600, 450), 5)
    image = np.concatenate([left, right], axis=1)
    image[:60, :90] = 0
    out = tmp_path / "map.tif"
    with MapWriter(out, grid, CLASSES, cog=True) as w:
        write_tiles(w, image, tile=256)
    arr, nodata = read_decimated(out, max_size=300)
    assert arr.shape == (200, 300) and nodata == 0

    png = quicklook(out, None, tmp_path / "ql.png", max_size=300, title="Scene A")
    n_grass, (h, w) = colour_count(png, (0, 255, 0))
    n_water, _ = colour_count(png, (0, 0, 255))
    # 150 x 200 map pixels of each class, less the nodata corner (20 x 30), plus a legend swatch
    assert 150 * 200 - 20 * 30 <= n_grass <= 150 * 200 - 20 * 30 + 400
    assert 150 * 200 <= n_water <= 150 * 200 + 400
    assert h <= 300 + 80 and w <= 300 + 250  # the map, a title line and the legend


def test_quicklook_of_a_small_array_is_enlarged(tmp_path):
    image = np.ones((20, 40), dtype=np.uint16)
    image[:, 20:] = 2
    image[0, 0] = 99  # no class of the table: grey
    png = quicklook(image, CLASSES, tmp_path / "ql.png", max_size=200)
    n_trees, (h, w) = colour_count(png, (0, 100, 0))
    # enlarged x5 (200 // 40): 20 x 20 class-2 pixels become 100 x 100
    assert 100 * 100 <= n_trees <= 100 * 100 + 400
    n_grey, _ = colour_count(png, (160, 160, 160))
    assert n_grey >= 25
    assert h < 200 + 80 and w < 200 + 250
    with pytest.raises(OutputError, match="--overwrite"):
        quicklook(image, CLASSES, png)
    with pytest.raises(InputError, match="2-D"):
        quicklook(np.ones((2, 3, 4)), CLASSES, tmp_path / "x.png")
    assert sorted(os.listdir(tmp_path)) == ["ql.png"]
