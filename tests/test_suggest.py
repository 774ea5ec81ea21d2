"""``diffclip suggest`` and the loop it serves: suggest, fill the class field, train again."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterdata import write_tif
from tinyscene import CLASSES, NODATA_PIXEL, invoke, no_temp_files, write_points

from diffclip_cli.errors import LabelError, ModelError, OutputError, UsageError
from diffclip_cli.infer.suggest import POOL_FACTOR, STRATEGIES, suggest_pixels
from diffclip_cli.io.grid import Grid
from diffclip_cli.io.labels import read_labels
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.archive import load_model
from diffclip_cli.sampling.normalise import BandStats, SceneStats
from diffclip_cli.sampling.tiles import TileData
from diffclip_cli.workflows.suggest import SuggestOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIELDS = ["rank", "predicted", "probability", "runner_up", "runner_up_probability", "class"]


# ------------------------------------------------------------------- choosing the pixels
class _Known:
    """An engine whose probabilities are a known function of the pixel (for the strategies).

    Class 0 gets ``0.5 + margin / 2``, class 1 the rest, with ``margin`` growing with the
    distance from the grid's centre row: the least sure pixels lie in one band across it.
    """

    window = 1
    num_classes = 3

    def __init__(self, height: int) -> None:
        self.height = height

    def predict_tile(self, data: TileData) -> np.ndarray:
        t = data.tile
        rows = np.arange(t.row, t.row + t.height)[:, None] + np.zeros((1, t.width))
        cols = np.arange(t.col, t.col + t.width)[None, :] + np.zeros((t.height, 1))
        margin = np.abs(rows - self.height / 2) / self.height + cols * 1e-4
        first = 0.5 + margin / 2
        probs = np.stack([first, 1 - first, np.zeros_like(first)])
        swap = (cols % 3) == 0  # a third of the pixels predicted as class 1
        probs[:, swap] = probs[[1, 0, 2]][:, swap]
        return probs.astype(np.float32)


@pytest.fixture(scope="module")
def plain_scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("suggest")
    data = np.random.default_rng(0).random((2, 60, 80)).astype(np.float32)
    data[:, 0, 0] = np.nan  # one nodata pixel
    path = write_tif(folder / "hsi.tif", data)
    stats = SceneStats(BandStats(np.zeros(2), np.ones(2)))
    return path, stats


def _run(path, stats, n, strategy, **kw):
    with Scene.open(path) as scene:
        return suggest_pixels(scene, _Known(60), stats, n, strategy=strategy, **kw)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_ranks_distinct_valid_pixels_whatever_the_tiles(plain_scene, strategy):
    path, stats = plain_scene
    a = _run(path, stats, 12, strategy, tile_size=16, seed=3)
    b = _run(path, stats, 12, strategy, tile_size=64, seed=3)
    assert len(a) == 12 and a.candidates == 60 * 80 - 1
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.cols, b.cols)
    assert len(set(zip(a.rows.tolist(), a.cols.tolist(), strict=True))) == 12
    assert not ((a.rows == 0) & (a.cols == 0)).any()  # the nodata pixel
    assert (a.probability >= a.runner_up_probability).all()
    assert (a.predicted != a.runner_up).all()


def test_margin_takes_the_least_sure_and_spread_spreads_them(plain_scene):
    path, stats = plain_scene
    margin = _run(path, stats, 10, "margin")
    spread = _run(path, stats, 10, "spread")
    gaps = margin.probability - margin.runner_up_probability
    assert (np.diff(gaps) >= 0).all() and (np.abs(margin.rows - 30) <= 1).all()
    # spread starts from the least sure pixel and stays among the least sure ones ...
    assert (spread.rows[0], spread.cols[0]) == (margin.rows[0], margin.cols[0])
    pool_margin = _run(path, stats, POOL_FACTOR * 10, "margin")
    worst = (pool_margin.probability - pool_margin.runner_up_probability).max()
    assert ((spread.probability - spread.runner_up_probability) <= worst + 1e-6).all()
    # ... but covers the scene's width and both predicted classes, where margin bunches up
    assert np.ptp(spread.cols) > 2 * np.ptp(margin.cols)
    assert set(spread.predicted.tolist()) == {0, 1}


def test_balanced_asks_each_predicted_class_and_random_follows_its_seed(plain_scene):
    path, stats = plain_scene
    balanced = _run(path, stats, 6, "balanced")
    assert sorted(balanced.predicted.tolist()) == [0, 0, 0, 1, 1, 1]
    r1, r2 = _run(path, stats, 20, "random", seed=1), _run(path, stats, 20, "random", seed=2)
    assert set(zip(r1.rows.tolist(), r1.cols.tolist(), strict=True)) != set(
        zip(r2.rows.tolist(), r2.cols.tolist(), strict=True))
    assert np.ptp(r1.rows) > 30  # over the whole scene, not the least sure band


def test_labelled_pixels_are_never_suggested(plain_scene):
    path, stats = plain_scene
    first = _run(path, stats, 5, "margin")
    again = _run(path, stats, 5, "margin", exclude=(first.rows, first.cols))
    assert not set(zip(first.rows.tolist(), first.cols.tolist(), strict=True)) & set(
        zip(again.rows.tolist(), again.cols.tolist(), strict=True))
    assert again.candidates == first.candidates - 5


def test_bad_options_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="at least 1"):
        SuggestOptions(model=tmp_path / "m.pt", n=0)
    with pytest.raises(UsageError, match="unknown strategy"):
        SuggestOptions(model=tmp_path / "m.pt", strategy="smart")


# -------------------------------------------------------------------- through the command
def test_suggest_writes_ranked_points_and_a_quicklook(tiny, tmp_path):
    out, png = tmp_path / "next.gpkg", tmp_path / "next.png"
    r = invoke("suggest", tiny.hsi, tiny.lidar, "--model", tiny.model, "-n", 15, "-o", out,
               "--labels", tiny.labels, "--quicklook", png, "--tile-size", 16, code=0)
    said = " ".join(r.output.split())
    assert "15 points, cluster" in said and "--labels" in r.output  # the default strategy
    points = gpd.read_file(out)
    assert list(points.columns[:-1]) == FIELDS and len(points) == 15
    assert points["rank"].tolist() == list(range(1, 16))
    assert (points["class"].fillna("") == "").all()
    assert set(points["predicted"]) <= set(CLASSES)
    with rasterio.open(tiny.hsi) as src:
        assert points.crs == src.crs
        inv = ~src.transform
        cols, rows = inv * (points.geometry.x.to_numpy(), points.geometry.y.to_numpy())
    rows, cols = np.floor(rows).astype(int), np.floor(cols).astype(int)
    # pixel centres, never a labelled pixel (every other pixel is labelled) nor nodata
    np.testing.assert_allclose(inv * (points.geometry.x, points.geometry.y),
                               (cols + 0.5, rows + 0.5), atol=1e-6)
    assert not ((rows % 2 == 0) & (cols % 2 == 0)).any()
    assert not ((rows == NODATA_PIXEL[0]) & (cols == NODATA_PIXEL[1])).any()
    with rasterio.open(png) as q:
        assert q.count in (3, 4) and q.width > 100
    assert no_temp_files(tmp_path)


def test_suggest_refuses_bad_outputs_and_models_before_any_work(tiny, tmp_path):
    invoke("suggest", tiny.hsi, tiny.lidar, "--model", tiny.model, "-o", tmp_path / "p.shp",
           code=OutputError.exit_code)
    invoke("suggest", tiny.hsi, tiny.lidar, "--model", tiny.pretrained, "-o",
           tmp_path / "p.gpkg", code=ModelError.exit_code)
    invoke("suggest", tiny.hsi, tiny.lidar, "--model", tiny.model, "-o", tmp_path / "p.gpkg",
           "--strategy", "smart", code=UsageError.exit_code)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ the loop
def _fill(points_path, truth, out_path, *, typo: bool = False):
    """Fill the class field from the ground truth, as a user would in QGIS (one left empty)."""
    points = gpd.read_file(points_path)
    with rasterio.open(truth) as src:
        inv = ~src.transform
        cols, rows = inv * (points.geometry.x.to_numpy(), points.geometry.y.to_numpy())
        ids = src.read(1)[rows.astype(int), cols.astype(int)]
    points["class"] = [CLASSES[i - 1] if i else "" for i in ids]
    points.loc[len(points) - 1, "class"] = ""  # not visited yet
    if typo:
        points.loc[0, "class"] = "gras"
    points.to_file(out_path)
    return points


def test_the_loop_suggest_fill_fewshot_classify(tiny, tmp_path):
    """Suggest, fill the field, train on both files, map: and the errors a user meets on the way."""
    # the tiny scene's classes are quadrants; a truth raster of them
    with rasterio.open(tiny.hsi) as src:
        h, w, transform, crs = src.height, src.width, src.transform, src.crs
    rr, cc = np.mgrid[0:h, 0:w]
    truth = write_tif(tmp_path / "truth.tif", ((rr // 12) * 2 + cc // 14 + 1).astype(np.uint8),
                      transform=transform, crs=crs.to_string(), nodata=0)
    first = write_points(tmp_path / "first.gpkg",
                         [(CLASSES[(r // 12) * 2 + c // 14], r, c)
                          for r, c in [(1, 1), (3, 3), (1, 20), (3, 22), (20, 1), (22, 3),
                                       (20, 20), (22, 22)]])
    out = tmp_path / "next.gpkg"
    invoke("suggest", tiny.hsi, tiny.lidar, "--model", tiny.model, "-n", 12, "-o", out,
           "--labels", first, code=0)
    filled = _fill(out, truth, tmp_path / "filled.gpkg")
    _fill(out, truth, tmp_path / "typo.gpkg", typo=True)

    # a misspelt class: one sentence naming the file and the name, and nothing written
    model = tmp_path / "m.pt"
    r = invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", first, "--labels",
               tmp_path / "typo.gpkg", "--shots", 2, "--preset", "tiny", "-o", model,
               code=LabelError.exit_code)
    assert "typo.gpkg" in r.output and "gras" in r.output and "first.gpkg" in r.output
    assert not model.exists() and no_temp_files(tmp_path)

    # a pixel labelled differently in the two files is dropped, naming both files
    clash = filled.iloc[[0]].copy()
    clash["class"] = CLASSES[3] if filled["class"].iloc[0] != CLASSES[3] else CLASSES[0]
    pd_clash = gpd.GeoDataFrame(clash, crs=filled.crs)
    pd_clash.to_file(tmp_path / "clash.gpkg")
    with Scene.open(tiny.hsi, [tiny.lidar]) as scene:
        from diffclip_cli.workflows.common import read_label_files

        merged = read_label_files([tmp_path / "filled.gpkg", tmp_path / "clash.gpkg"], scene,
                                  classes=None, class_field=None, layer=None)
    (conflict,) = merged.report.file_conflicts
    assert "filled.gpkg" in conflict and "clash.gpkg" in conflict
    assert any("different label files" in s for s in merged.report.problems())
    assert len(merged) == (filled["class"] != "").sum() - 1

    # both files train a model: the filled points are shots too, the empty one is skipped
    r = invoke("fewshot", tiny.hsi, tiny.lidar, "--labels", first, "--labels",
               tmp_path / "filled.gpkg", "--shots", 3, "--preset", "tiny",
               "--pretrain-samples", 60, "--pretrain-epochs", 1, "--finetune-epochs", 3,
               "-o", model, code=0)
    bundle = load_model(model)
    assert [str(p) for p in bundle.provenance["labels"]] == [str(first),
                                                              str(tmp_path / "filled.gpkg")]
    assert sum(bundle.provenance["train_pixels_per_class"].values()) == 4 * 3
    with Scene.open(tiny.hsi, [tiny.lidar]) as scene:
        both = read_labels(tmp_path / "filled.gpkg", scene.grid)
    assert len(both) == (filled["class"] != "").sum()
    invoke("classify", tiny.hsi, tiny.lidar, "--model", model, "-o", tmp_path / "map.tif",
           code=0)
    with rasterio.open(tmp_path / "map.tif") as m:
        assert m.read(1).max() <= len(CLASSES)
    assert Grid(w, h, Affine(*transform[:6])).shape == (h, w)


def test_cluster_follows_where_the_unsure_pixels_are_many(plain_scene):
    path, stats = plain_scene
    n = 8
    cluster, spread = _run(path, stats, n, "cluster"), _run(path, stats, n, "spread")
    pool = _run(path, stats, POOL_FACTOR * n, "margin")  # the pool both choose from

    def space(s):  # the strategies' space: probabilities and the scene plane
        return np.column_stack([s.probability, s.runner_up_probability,
                                np.column_stack([s.rows, s.cols]) / np.hypot(60, 80)])

    def mean_distance(picks):  # how far a pool pixel is from its nearest pick, on average
        d = np.linalg.norm(space(pool)[:, None] - space(picks)[None], axis=2)
        return d.min(axis=1).mean()

    # k-means centres stand for the pool's pixels better than farthest-first's extremes
    assert mean_distance(cluster) < mean_distance(spread)
    # every pick is in the pool, ranked least sure first
    inside = set(zip(pool.rows.tolist(), pool.cols.tolist(), strict=True))
    assert set(zip(cluster.rows.tolist(), cluster.cols.tolist(), strict=True)) <= inside
    gaps = cluster.probability - cluster.runner_up_probability
    assert (np.diff(gaps) >= -1e-7).all()


def test_cluster_takes_the_most_central_member_of_each_group():
    from diffclip_cli.infer.suggest import _cluster_centres

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    noise = rng.normal(0, 0.3, (9, 2))
    # each group: its centre (member 0) and 9 pairs of points around it, so its mean is its
    # centre and no other member is as near
    points = np.concatenate([np.concatenate([c[None], c + noise, c - noise]) for c in centres])
    np.testing.assert_array_equal(_cluster_centres(points, 3), [0, 19, 38])
    many = _cluster_centres(points, 40)  # more clusters than groups: still distinct, in order
    assert many.size == 40 and (np.diff(many) > 0).all()
