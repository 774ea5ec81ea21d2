"""Where to label next: pixels whose labels would teach a model the most, spread over the scene.

The scene is scored tile by tile as ``classify`` scores it (the same engine, faithful or
fast), and each valid, not yet labelled pixel gets its margin: the top class probability
minus the runner-up's. A small margin is a pixel the model hesitates on. What is kept while
the tiles stream past is bounded (a pool of the lowest margins and a reservoir sample), so
memory does not grow with the scene. Strategies (:data:`STRATEGIES`):

* ``cluster`` (the default): among the ``POOL_FACTOR * n`` smallest margins, ``n`` k-means
  clusters in the model's probability space and the scene's plane, and each cluster's
  pixel nearest its centre, least sure first: the points cover different confusions and places, and
  follow where the unsure pixels are many (a point stands for many pixels like it);
* ``spread``: among the same pool, a greedy farthest-point selection in the same space,
  from the least sure pixel (it covers the pool's extremes: confusions of few pixels
  weigh as much as those of whole fields);
* ``margin``: the ``n`` smallest margins (uncertainty alone: they bunch up in the fields
  and at the class borders the model confuses most);
* ``balanced``: among the pool, the smallest of each predicted class in turn (every class
  the model confuses is asked);
* ``random``: pixels drawn uniformly (the reference every other strategy must beat).

The result is ranked: rank 1 is asked first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from diffclip_cli.infer.predict import Engine
from diffclip_cli.io.raster import Scene
from diffclip_cli.report.quicklook import decimated_shape
from diffclip_cli.sampling.normalise import SceneStats
from diffclip_cli.sampling.tiles import iter_tiles, read_tile

__all__ = ["POOL_FACTOR", "STRATEGIES", "Suggestions", "suggest_pixels"]

#: How the points are chosen (the first is the default).
STRATEGIES = ("cluster", "spread", "margin", "balanced", "random")
#: ``cluster``, ``spread`` and ``balanced`` choose among this many times ``n`` of the
#: smallest margins.
POOL_FACTOR = 10
#: The strategies that take the ``n`` smallest keys as they are (the others choose among
#: ``POOL_FACTOR * n``).
_FIRST_N = ("random", "margin")
#: Weight of the scene plane (coordinates scaled to the scene's diagonal) against the
#: probability space (a difference of probabilities up to about 1.4) in ``cluster`` and
#: ``spread``.
PLANE_WEIGHT = 1.0


@dataclass(frozen=True)
class Suggestions:
    """Ranked pixels to label next, with what the model says of each.

    Attributes:
        rows: pixel rows, rank order.
        cols: pixel columns.
        predicted: index of the predicted class (into the model's classes).
        probability: its probability.
        runner_up: index of the second most probable class.
        runner_up_probability: its probability.
        strategy: how they were chosen.
        candidates: valid, unlabelled pixels scored.
        overview: the predicted class index plus one (0: nodata) of every pixel of a
            decimated copy of the grid (nearest pixel, at most ``overview`` on its longer
            side), for a quicklook; ``None`` unless asked for.
    """

    rows: np.ndarray
    cols: np.ndarray
    predicted: np.ndarray
    probability: np.ndarray
    runner_up: np.ndarray
    runner_up_probability: np.ndarray
    strategy: str
    candidates: int
    overview: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.rows.size)


class _Pool:
    """The ``size`` smallest keys seen so far, with their pixels and probabilities, sorted."""

    def __init__(self, size: int, classes: int) -> None:
        self.size = size
        self.margin = np.empty(0, np.float32)
        self.rows = np.empty(0, np.int64)
        self.cols = np.empty(0, np.int64)
        self.probs = np.empty((0, classes), np.float32)

    def add(self, margin: np.ndarray, rows: np.ndarray, cols: np.ndarray,
            probs: np.ndarray) -> None:
        m = np.concatenate([self.margin, margin])
        r = np.concatenate([self.rows, rows])
        c = np.concatenate([self.cols, cols])
        p = np.concatenate([self.probs, probs])
        # sorted by key, ties broken by position: the pool does not depend on the tile order
        order = np.lexsort((c, r, m))[: self.size]
        self.margin, self.rows, self.cols, self.probs = m[order], r[order], c[order], p[order]


def _uniform_keys(flat: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) for each pixel index, from the index and the seed alone.

    A hash (SplitMix64's finaliser), so a pixel gets the same key whatever the tile order:
    the ``random`` strategy keeps the ``n`` smallest keys, a uniform sample of the stream.
    """
    with np.errstate(over="ignore"):
        z = flat.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _top_two(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best and runner-up class indices and probabilities of ``(N, K)`` probabilities."""
    if probs.shape[1] == 1:
        zeros = np.zeros(probs.shape[0], np.int64)
        return zeros, probs[:, 0], zeros, np.zeros(probs.shape[0], np.float32)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :2]
    rows = np.arange(probs.shape[0])
    return order[:, 0], probs[rows, order[:, 0]], order[:, 1], probs[rows, order[:, 1]]


def _farthest_first(points: np.ndarray, n: int) -> np.ndarray:
    """Greedy farthest-point (k-centre) order of ``points``, from the first; ``n`` indices."""
    n = min(n, points.shape[0])
    chosen = [0]
    dist = np.linalg.norm(points - points[0], axis=1)
    while len(chosen) < n:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return np.asarray(chosen, np.int64)


def _cluster_centres(points: np.ndarray, n: int) -> np.ndarray:
    """``n`` indices of ``points``: the member of each of ``n`` k-means clusters nearest its centre.

    In the points' order (the pool's: least sure first). The clusters are disjoint, so the
    points are distinct (were a cluster empty, the least sure points left fill in); memory is
    that of the points, not points x centres.
    """
    from sklearn.cluster import KMeans

    if points.shape[0] <= n:
        return np.arange(points.shape[0], dtype=np.int64)
    km = KMeans(n_clusters=n, n_init=4, random_state=0).fit(points)
    dist = np.linalg.norm(points - km.cluster_centers_[km.labels_], axis=1)
    order = np.lexsort((dist, km.labels_))  # by cluster, nearest first
    first = np.flatnonzero(np.r_[True, np.diff(km.labels_[order]) != 0])
    picked = np.zeros(points.shape[0], bool)
    picked[order[first]] = True
    picked[np.flatnonzero(~picked)[: n - int(picked.sum())]] = True
    return np.flatnonzero(picked).astype(np.int64)


def _choose(strategy: str, n: int, pool: _Pool, shape: tuple[int, int]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns and probabilities of the chosen pixels, rank order.

    The pool is sorted by its key: the margin, or (``random``) the pixel's random key.
    """
    if strategy in _FIRST_N:
        return pool.rows[:n], pool.cols[:n], pool.probs[:n]
    if strategy == "balanced":
        best = pool.probs.argmax(axis=1) if pool.rows.size else np.empty(0, np.int64)
        queues = [np.flatnonzero(best == k) for k in range(pool.probs.shape[1])]
        picked: list[int] = []
        depth = 0
        while len(picked) < min(n, pool.rows.size):
            for q in queues:
                if depth < q.size and len(picked) < n:
                    picked.append(int(q[depth]))
            depth += 1
        idx = np.asarray(picked, np.int64)
        return pool.rows[idx], pool.cols[idx], pool.probs[idx]
    # spread: farthest-first over probabilities and the scene plane, from the least sure;
    # cluster: k-means centres in the same space
    h, w = shape
    diag = float(np.hypot(h, w)) or 1.0
    plane = np.stack([pool.rows, pool.cols], axis=1) / diag * PLANE_WEIGHT
    points = np.concatenate([pool.probs, plane], axis=1)
    choose = _cluster_centres if strategy == "cluster" else _farthest_first
    idx = choose(points, n)
    return pool.rows[idx], pool.cols[idx], pool.probs[idx]


def suggest_pixels(
    scene: Scene,
    engine: Engine,
    stats: SceneStats,
    n: int,
    *,
    strategy: str = "cluster",
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    within: tuple[np.ndarray, np.ndarray] | None = None,
    tile_size: int = 256,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    overview: int = 0,
) -> Suggestions:
    """The ``n`` pixels to label next, chosen by ``strategy``.

    Args:
        scene: the scene.
        engine: the model's engine (faithful or fast), as ``classify`` makes it.
        stats: the model's statistics.
        n: how many points.
        strategy: one of :data:`STRATEGIES`.
        exclude: ``(rows, cols)`` of pixels already labelled (never suggested).
        within: ``(rows, cols)`` of the only pixels that may be suggested (e.g. those a
            simulated user can answer from a ground truth); ``None``: any valid pixel.
        tile_size: tile edge; memory grows with its square, not with the scene.
        seed: the random strategy's seed.
        progress: ``(pixels done, pixels in all)`` after every tile.
        overview: also keep the predicted classes on a decimated grid of at most this many
            pixels on its longer side (0: none); memory ``overview`` squared.

    Returns:
        The suggestions, rank order (fewer than ``n`` when the scene has fewer candidates).

    Raises:
        ValueError: an unknown strategy or ``n < 1``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    h, w = scene.grid.shape
    excluded = np.zeros(0, np.int64)
    if exclude is not None and exclude[0].size:
        excluded = np.unique(np.asarray(exclude[0], np.int64) * w
                             + np.asarray(exclude[1], np.int64))
    allowed = None
    if within is not None:
        allowed = np.unique(np.asarray(within[0], np.int64) * w
                            + np.asarray(within[1], np.int64))
    k = engine.num_classes
    pool = _Pool(n if strategy in _FIRST_N else POOL_FACTOR * n, k)
    small = None
    if overview > 0:
        oh, ow = decimated_shape((h, w), overview)
        small = np.zeros((oh, ow), np.int16 if k < 32767 else np.int32)
        at_rows = ((np.arange(oh) + 0.5) * h / oh).astype(np.int64)
        at_cols = ((np.arange(ow) + 0.5) * w / ow).astype(np.int64)
    candidates = 0
    done, total = 0, h * w
    for tile in iter_tiles(scene.grid, tile_size=tile_size, halo=engine.window // 2):
        data = read_tile(scene, tile, stats=stats)
        valid = data.valid.copy()
        rr, cc = np.mgrid[tile.row:tile.row + tile.height, tile.col:tile.col + tile.width]
        if excluded.size:
            valid &= ~np.isin(rr * w + cc, excluded)
        if allowed is not None:
            valid &= np.isin(rr * w + cc, allowed)
        probs = None
        if valid.any() or (small is not None and data.valid.any()):
            probs = engine.predict_tile(data)  # (K, h, w)
        if small is not None and probs is not None:
            sel_r = np.flatnonzero((at_rows >= tile.row) & (at_rows < tile.row + tile.height))
            sel_c = np.flatnonzero((at_cols >= tile.col) & (at_cols < tile.col + tile.width))
            if sel_r.size and sel_c.size:
                lr, lc = at_rows[sel_r] - tile.row, at_cols[sel_c] - tile.col
                best = probs.argmax(axis=0) + 1
                best[~data.valid] = 0
                small[np.ix_(sel_r, sel_c)] = best[np.ix_(lr, lc)]
        if valid.any() and probs is not None:
            p = probs[:, valid].T.astype(np.float32)
            rows, cols = rr[valid], cc[valid]
            _, top, _, second = _top_two(p)
            candidates += rows.size
            key = (_uniform_keys(rows * w + cols, seed) if strategy == "random"
                   else top - second)
            pool.add(key.astype(np.float32), rows, cols, p)
        done += tile.height * tile.width
        if progress is not None:
            progress(done, total)
    rows, cols, probs = _choose(strategy, n, pool, (h, w))
    best, best_p, second, second_p = _top_two(probs) if probs.size else (
        np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, np.int64),
        np.empty(0, np.float32))
    return Suggestions(rows=np.asarray(rows, np.int64), cols=np.asarray(cols, np.int64),
                       predicted=best, probability=best_p, runner_up=second,
                       runner_up_probability=second_p, strategy=strategy,
                       candidates=candidates, overview=small)
