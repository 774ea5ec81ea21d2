"""Few-shot splits: k labelled pixels per class for training, every other one for testing."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np

from diffclip_cli.errors import LabelError, UsageError
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.io.labels import LabelSet
from diffclip_cli.io.raster import Scene

__all__ = ["SPLITS", "Split", "check_split", "draw_split", "drop_classes_without_shots",
           "given_split", "sample_shots", "spatial_split", "split_labels"]

#: How shots are drawn: ``random`` (the paper's protocol) or ``spatial`` (test pixels away
#: from the shots).
SPLITS = ("random", "spatial")

log = logging.getLogger("diffclip")


@dataclass(frozen=True, eq=False)
class Split:
    """A train/test split as index arrays into a :class:`~diffclip_cli.io.labels.LabelSet`.

    Attributes:
        train: sorted int64 indices of the shots.
        test: sorted int64 indices of the test pixels (disjoint from ``train``).
        warnings: sentences about classes that got fewer shots than asked, or pixels excluded.
    """

    train: np.ndarray
    test: np.ndarray
    warnings: list[str] = field(default_factory=list)


def check_split(mode: str) -> None:
    """Refuse an unknown split mode (a usage error of ``--split``).

    Raises:
        UsageError: ``mode`` is not in :data:`SPLITS`.
    """
    if mode not in SPLITS:
        raise UsageError(f"unknown split {mode!r}", hint=f"use {' or '.join(SPLITS)}",
                         option="--split")


def draw_split(labels: LabelSet, k: int, *, seed: int, mode: str) -> Split:
    """The split of ``mode`` (:func:`sample_shots` or :func:`spatial_split`).

    Raises:
        UsageError: an unknown mode.
    """
    check_split(mode)
    if mode == "random":
        return sample_shots(labels, k, seed=seed)  # logs its own warnings
    return spatial_split(labels, k, seed=seed)


def _shots_for(n: int, k: int) -> int:
    """Shots a class with ``n`` labelled pixels gives: k, or half of them when n <= k."""
    return k if n > k else n // 2


def sample_shots(labels: LabelSet, k: int, *, seed: int | np.random.Generator) -> Split:
    """Draw ``k`` shots per class at random; the test set is every other labelled pixel.

    A class with ``k`` or fewer labelled pixels gives only ``floor(n / 2)`` shots (with a
    warning), so it keeps test pixels.

    Args:
        labels: the labelled pixels (usually after ``drop_invalid``).
        k: shots per class (positive).
        seed: the random seed; the same seed gives the same split.

    Returns:
        The split.
    """
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    rng = np.random.default_rng(seed)
    index = labels.index
    train: list[np.ndarray] = []
    warnings: list[str] = []
    for ci, info in enumerate(labels.classes):
        members = np.flatnonzero(index == ci)
        take = _shots_for(members.size, k)
        if members.size == 0:
            warnings.append(f"class '{info.name}' has no labelled pixel, so no shot")
        elif take == 0:
            warnings.append(
                f"class '{info.name}' has only 1 labelled pixel, too few to train on and "
                "still test (at least 2 are needed), so no shot")
        elif take < k:
            warnings.append(
                f"class '{info.name}' has only {members.size} labelled pixels; it gives "
                f"{take} shot{'s' if take > 1 else ''} instead of {k} (at most half of its "
                "pixels) so that it keeps test pixels")
        train.append(rng.choice(members, size=take, replace=False))
    train_idx = np.sort(np.concatenate(train)).astype(np.int64)
    test = np.setdiff1d(np.arange(len(labels), dtype=np.int64), train_idx)
    for text in warnings:
        log.warning(text)
    return Split(train_idx, test, warnings)


def spatial_split(
    labels: LabelSet,
    k: int,
    *,
    seed: int | np.random.Generator,
    block_size: int = 32,
    gap: int = 10,
) -> Split:
    """A spatially disjoint split: shots from some blocks, test pixels from the others.

    The grid is cut into ``block_size`` x ``block_size`` blocks. Blocks holding labels are
    visited in a seeded random order and made *training blocks* while some class still has
    fewer than ``k`` candidate pixels in training blocks, never taking the last block of a
    class (so every class keeps test pixels). Shots are ``k`` random pixels per class from
    the training blocks (half of a class's candidates when it has ``k`` or fewer). Test pixels
    are labelled pixels outside training blocks whose Chebyshev distance to every shot is more
    than ``gap`` (with 11 x 11 windows, ``gap=10`` means no test window shares a pixel with a
    training window). Other labelled pixels are in neither set; the warnings say how many.

    Args:
        labels: the labelled pixels.
        k: shots per class.
        seed: the random seed.
        block_size: block edge in pixels.
        gap: minimum Chebyshev distance minus one between a shot and a test pixel.

    Returns:
        The split.
    """
    if k < 1 or block_size < 1 or gap < 0:
        raise ValueError("k and block_size must be positive and gap non-negative")
    rng = np.random.default_rng(seed)
    index = labels.index
    n_cls = len(labels.classes)
    bcols = int(labels.cols.max()) // block_size + 1 if len(labels) else 1
    block = (labels.rows // block_size) * bcols + labels.cols // block_size
    blocks, block_of = np.unique(block, return_inverse=True)
    # per_block[b, c] = pixels of class c in block b
    per_block = np.zeros((blocks.size, n_cls), np.int64)
    np.add.at(per_block, (block_of, index), 1)
    blocks_of_class = (per_block > 0).sum(axis=0)
    in_train = np.zeros(n_cls, np.int64)
    left = blocks_of_class.copy()  # blocks of each class not (yet) made training blocks
    is_train = np.zeros(blocks.size, bool)
    for b in rng.permutation(blocks.size):
        present = per_block[b] > 0
        needy = present & (in_train < k) & (left > 1)
        if not needy.any():
            continue
        # Taking this block must leave every class present in it with a block for testing.
        if (present & (left <= 1)).any():
            continue
        is_train[b] = True
        in_train += per_block[b]
        left -= present
    warnings: list[str] = []
    candidate = is_train[block_of]
    train: list[np.ndarray] = []
    for ci, info in enumerate(labels.classes):
        members = np.flatnonzero((index == ci) & candidate)
        take = _shots_for(members.size, k)
        if blocks_of_class[ci] < 2:
            warnings.append(f"class '{info.name}' lies in a single block of {block_size} px; "
                            "it gives no shots so that it keeps test pixels")
            take = 0
        elif take < k:
            warnings.append(f"class '{info.name}' has only {members.size} pixels in the "
                            f"training blocks; it gives {take} shots instead of {k}")
        train.append(rng.choice(members, size=take, replace=False))
    train_idx = np.sort(np.concatenate(train)).astype(np.int64)
    far = _far_from(labels.rows, labels.cols, labels.rows[train_idx], labels.cols[train_idx],
                    gap)
    test = np.flatnonzero(~candidate & far).astype(np.int64)
    excluded = len(labels) - train_idx.size - test.size
    if excluded:
        warnings.append(f"{excluded} labelled pixels are neither shots nor test pixels (in "
                        f"training blocks or within {gap} px of a shot)")
    for text in warnings:
        log.warning(text)
    return Split(train_idx, test, warnings)


def _far_from(
    rows: np.ndarray, cols: np.ndarray, srows: np.ndarray, scols: np.ndarray, gap: int
) -> np.ndarray:
    """Whether each pixel's Chebyshev distance to every ``(srows, scols)`` exceeds ``gap``."""
    far = np.ones(rows.size, bool)
    if srows.size == 0:
        return far
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    lo = np.searchsorted(sorted_rows, srows - gap, side="left")
    hi = np.searchsorted(sorted_rows, srows + gap, side="right")
    for a, b, sc in zip(lo, hi, scols, strict=True):  # one step per shot, vectorised inside
        idx = order[a:b]
        far[idx[np.abs(cols[idx] - sc) <= gap]] = False
    return far


def split_labels(labels: LabelSet, shots: int, *, seed: int, mode: str
                 ) -> tuple[LabelSet, Split]:
    """The labels without the classes that got no shot, and the split of ``mode``.

    See :func:`drop_classes_without_shots`.
    """
    return drop_classes_without_shots(labels, draw_split(labels, shots, seed=seed, mode=mode))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def drop_classes_without_shots(labels: LabelSet, split: Split) -> tuple[LabelSet, Split]:
    """Leave classes that got no training shot out of the model (with a warning).

    A class with 0 or 1 labelled pixel (or, in a spatial split, lying in one block) gives no
    shot: the network would have nothing but its name to learn it from. It is left out of the
    model, the map and the held-out report; the other classes keep their ids.

    Raises:
        LabelError: fewer than two classes are left.
    """
    counts = np.bincount(labels.index[split.train], minlength=len(labels.classes))
    empty = counts == 0
    if not empty.any():
        return labels, split
    have = labels.counts()
    kept = [c for c, e in zip(labels.classes, empty, strict=True) if not e]
    dropped = [f"'{c.name}' ({_plural(int(n), 'labelled pixel')})"
               for c, n, e in zip(labels.classes, have, empty, strict=True) if e]
    rule = "a class needs at least 2 labelled pixels, one to train on and one to test"
    if not kept:
        raise LabelError(f"no class has enough labelled pixels to train on; {rule}",
                         path=labels.report.source,
                         hint="label more pixels of each class")
    if len(kept) == 1:
        raise LabelError(f"only the class '{kept[0].name}' has enough labelled pixels to train "
                         f"on, and a map needs at least two classes; {rule}",
                         path=labels.report.source,
                         hint=f"label more pixels of {', '.join(dropped)}")
    text = (f"left out of the model, so never mapped: {', '.join(dropped)}, because {rule}; "
            "label more pixels of them to map them")
    log.warning("%s", text)
    keep = ~empty[labels.index]
    new_index = np.cumsum(keep) - 1
    train = new_index[split.train].astype(np.int64)
    test = new_index[split.test[keep[split.test]]].astype(np.int64)
    subset = labels.subset(keep)
    table = ClassTable(kept)
    report = dataclasses.replace(
        labels.report,
        pixels_per_class={c.name: labels.report.pixels_per_class.get(c.name, 0) for c in kept})
    return (dataclasses.replace(subset, classes=table, report=report),
            Split(train, test, [*split.warnings, text]))


def given_split(split: Split, labels: LabelSet, scene: Scene) -> Split:
    """A split of ``labels`` re-indexed onto ``labels.drop_invalid(scene)``."""
    n = len(labels)
    for part in (split.train, split.test):
        if part.size and (part.min() < 0 or part.max() >= n):
            raise ValueError(f"split indices must lie in 0..{n - 1}")
    if np.intersect1d(split.train, split.test).size:
        raise ValueError("the training and test pixels of a split must be disjoint")
    valid = scene.valid_at(labels.rows, labels.cols)
    new_index = np.cumsum(valid) - 1
    train = np.sort(new_index[split.train[valid[split.train]]]).astype(np.int64)
    test = np.sort(new_index[split.test[valid[split.test]]]).astype(np.int64)
    if train.size == 0:
        raise LabelError("the given split has no valid training pixel",
                         hint="check that the training labels belong to this scene")
    return Split(train, test, list(split.warnings))
