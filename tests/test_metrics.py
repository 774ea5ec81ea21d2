"""Accuracy metrics: hand-computed example, sklearn agreement, properties, JSON, class matching."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from diffclip_cli.errors import LabelError
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.report.metrics import (
    AccuracyReport,
    confusion_matrix,
    match_classes,
    summarize,
)

CLASSES = ClassTable([{"id": 1, "name": "grass"}, {"id": 2, "name": "trees"},
                      {"id": 3, "name": "water"}])

# Rows = reference 1, 2, 3; columns = predicted 1, 2, 3, unclassified.
WORKED = np.array([[50, 3, 2, 0],
                   [5, 40, 5, 0],
                   [0, 2, 38, 5]])


def pixels_from(cm, ids):
    """Reference/prediction pixel arrays that produce the (K, K+1) matrix ``cm``."""
    ref, pred = [], []
    for i, rid in enumerate(ids):
        for j, pid in enumerate([*ids, 0]):
            ref += [rid] * int(cm[i, j])
            pred += [pid] * int(cm[i, j])
    return np.array(ref), np.array(pred)


def test_worked_example_by_hand():
    ref, pred = pixels_from(WORKED, [1, 2, 3])
    # unlabelled reference pixels are ignored whatever was predicted
    ref = np.concatenate([ref, [0, 0, 0]])
    pred = np.concatenate([pred, [1, 0, 3]])
    cm = confusion_matrix(ref, pred, labels=[1, 2, 3])
    np.testing.assert_array_equal(cm, WORKED)

    r = AccuracyReport.from_labels(ref.reshape(-1, 1), pred.reshape(-1, 1), CLASSES)
    # N = 150 reference pixels (5 unclassified), 128 correct.
    assert r.n_pixels == 150 and r.n_unclassified == 5
    assert r.overall_accuracy == pytest.approx(128 / 150)
    assert r.producers_accuracy == pytest.approx([50 / 55, 40 / 50, 38 / 45])
    assert r.average_accuracy == pytest.approx((50 / 55 + 40 / 50 + 38 / 45) / 3)
    # Predicted column sums 55, 45, 45 (the 5 unclassified claim no class).
    assert r.users_accuracy == pytest.approx([50 / 55, 40 / 45, 38 / 45])
    assert r.f1 == pytest.approx([100 / 110, 80 / 95, 76 / 90])
    # p_e = (55*55 + 50*45 + 45*45) / 150^2 = 7300 / 22500; p_o = 19200 / 22500.
    assert r.kappa == pytest.approx((19200 - 7300) / (22500 - 7300))
    assert r.support == [55, 50, 45]
    np.testing.assert_array_equal(r.confusion_matrix, WORKED[:, :3])
    np.testing.assert_array_equal(r.unclassified, [0, 0, 5])


def test_from_confusion_square_and_with_unclassified_argument():
    a = AccuracyReport.from_confusion(WORKED, CLASSES)
    b = AccuracyReport.from_confusion(WORKED[:, :3], CLASSES, unclassified=WORKED[:, 3])
    assert a.to_dict() == b.to_dict()
    with pytest.raises(ValueError, match="either"):
        AccuracyReport.from_confusion(WORKED, CLASSES, unclassified=[0, 0, 0])
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        AccuracyReport.from_confusion(np.ones((2, 2)), CLASSES)
    with pytest.raises(ValueError, match="non-negative"):
        AccuracyReport.from_confusion(-np.ones((3, 3)), CLASSES)


def test_confusion_matrix_input_errors():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix([1, 2], [1], labels=[1, 2])
    with pytest.raises(ValueError, match="not in labels: \\[7\\]"):
        confusion_matrix([1, 7], [1, 1], labels=[1, 2])
    with pytest.raises(ValueError, match="repeat"):
        confusion_matrix([1], [1], labels=[1, 1])
    with pytest.raises(ValueError, match="0 means"):
        confusion_matrix([1], [1], labels=[0, 1])


def test_predicted_ids_outside_labels_are_unclassified():
    cm = confusion_matrix([1, 1, 2, 2], [1, 9, 0, 2], labels=[2, 1])
    # row/column order follows labels: [2, 1]
    np.testing.assert_array_equal(cm, [[1, 0, 1], [0, 1, 1]])


def test_agrees_with_sklearn():
    rng = np.random.default_rng(5)
    ids = [3, 7, 1, 12]  # table order is not sorted order
    table = ClassTable([{"id": i, "name": f"c{i}"} for i in ids])
    ref = rng.choice([0, *ids], size=4000)
    pred = np.where(rng.random(4000) < 0.7, ref, rng.choice([0, *ids], size=4000))
    r = AccuracyReport.from_labels(ref, pred, table)
    keep = ref != 0
    y, p = ref[keep], pred[keep]
    np.testing.assert_array_equal(r.confusion_matrix, skm.confusion_matrix(y, p, labels=ids))
    assert r.overall_accuracy == pytest.approx(skm.accuracy_score(y, p))
    # "unclassified" is one more predicted category for kappa: sklearn sees 0 as a label.
    assert r.kappa == pytest.approx(skm.cohen_kappa_score(y, p))
    assert r.producers_accuracy == pytest.approx(
        skm.recall_score(y, p, labels=ids, average=None, zero_division=np.nan))
    assert r.users_accuracy == pytest.approx(
        skm.precision_score(y, p, labels=ids, average=None, zero_division=np.nan))
    assert r.f1 == pytest.approx(skm.f1_score(y, p, labels=ids, average=None))
    assert r.average_accuracy == pytest.approx(
        skm.recall_score(y, p, labels=ids, average="macro"))
    assert r.support == [int((y == i).sum()) for i in ids]


def test_undefined_values_are_null_not_nan():
    # class 3 has no reference pixel and is never predicted; class 2 is never predicted.
    r = AccuracyReport.from_labels([1, 1, 2], [1, 1, 1], CLASSES)
    assert r.producers_accuracy == [1.0, 0.0, None]
    assert r.users_accuracy[1] is None and r.users_accuracy[2] is None
    assert r.f1[2] is None and r.f1[1] == 0.0
    assert r.average_accuracy == pytest.approx(0.5)  # over classes with reference pixels
    text = json.dumps(r.to_dict(), allow_nan=False)
    assert "NaN" not in text
    data = json.loads(text)
    assert data["per_class"][2]["producers_accuracy"] is None
    # Nothing to evaluate: every metric undefined, still valid JSON.
    empty = AccuracyReport.from_labels([0, 0], [1, 2], CLASSES)
    d = json.loads(json.dumps(empty.to_dict(), allow_nan=False))
    assert d["overall_accuracy"] is None and d["kappa"] is None and d["n_pixels"] == 0


def test_dict_round_trip_and_keys():
    r = AccuracyReport.from_confusion(WORKED, CLASSES)
    d = r.to_dict()
    for key in ("overall_accuracy", "average_accuracy", "kappa", "per_class",
                "confusion_matrix", "class_names", "class_ids", "n_pixels", "n_unclassified"):
        assert key in d
    assert set(d["per_class"][0]) >= {"id", "name", "producers_accuracy", "users_accuracy",
                                      "f1", "support"}
    assert 0 <= d["overall_accuracy"] <= 1
    d["title"] = "kept"
    back = AccuracyReport.from_dict(json.loads(json.dumps(d)))
    assert back.to_dict() == d
    with pytest.raises(ValueError, match="not an accuracy report"):
        AccuracyReport.from_dict({"class_ids": [1]})


def test_markdown_in_percent():
    md = AccuracyReport.from_confusion(WORKED, CLASSES).to_markdown(title="Run 1")
    assert md.startswith("# Run 1")
    assert "85.33 %" in md  # OA 128/150
    assert "78.29" in md  # kappa x 100
    assert "| 3 water | 0 | 2 | 38 | 5 |" in md


def test_summarize_mean_std_over_seeds():
    reports = [AccuracyReport.from_labels([1, 2, 1, 2], p, CLASSES)
               for p in ([1, 2, 1, 2], [1, 2, 1, 1], [1, 1, 2, 2])]
    s = summarize(reports)
    oas = [1.0, 0.75, 0.5]
    assert s["n_runs"] == 3
    assert s["overall_accuracy"]["mean"] == pytest.approx(np.mean(oas))
    assert s["overall_accuracy"]["std"] == pytest.approx(np.std(oas))
    assert s["overall_accuracy"]["values"] == oas
    assert s["kappa"]["values"][0] == pytest.approx(1.0)
    assert s["per_class"][0]["producers_accuracy"]["mean"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert summarize([])["overall_accuracy"]["mean"] is None


# ------------------------------------------------------------------------------- properties
@st.composite
def labelled(draw):
    k = draw(st.integers(1, 5))
    n = draw(st.integers(1, 60))
    ref = draw(st.lists(st.integers(0, k), min_size=n, max_size=n))
    pred = draw(st.lists(st.integers(0, k), min_size=n, max_size=n))
    return k, np.array(ref), np.array(pred)


def table(k, order=None):
    ids = list(range(1, k + 1)) if order is None else order
    return ClassTable([{"id": i, "name": f"class {i}"} for i in ids])


@settings(max_examples=60, deadline=None)
@given(labelled())
def test_metric_bounds(case):
    k, ref, pred = case
    r = AccuracyReport.from_labels(ref, pred, table(k))
    assert r.n_pixels == int((ref != 0).sum())
    assert r.confusion_matrix.sum() + r.n_unclassified == r.n_pixels
    for v in (r.overall_accuracy, r.average_accuracy,
              *r.producers_accuracy, *r.users_accuracy, *r.f1):
        assert v is None or 0.0 <= v <= 1.0
    if r.kappa is not None:
        assert -1.0 - 1e-12 <= r.kappa <= 1.0 + 1e-12
    assert "NaN" not in json.dumps(r.to_dict(), allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(labelled())
def test_kappa_is_one_iff_perfect_with_two_classes(case):
    k, ref, pred = case
    r = AccuracyReport.from_labels(ref, pred, table(k))
    keep = ref != 0
    perfect = bool(keep.any()) and bool((ref[keep] == pred[keep]).all())
    several = np.unique(ref[keep]).size > 1
    if perfect and several:
        assert r.kappa == pytest.approx(1.0) and r.overall_accuracy == 1.0
    if r.kappa is not None and math.isclose(r.kappa, 1.0):
        assert perfect
    r2 = AccuracyReport.from_labels(ref, ref, table(k))  # a perfect map
    if several:
        assert r2.kappa == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(labelled(), st.randoms(use_true_random=False))
def test_class_order_does_not_change_metrics(case, rnd):
    k, ref, pred = case
    order = list(range(1, k + 1))
    rnd.shuffle(order)
    a = AccuracyReport.from_labels(ref, pred, table(k))
    b = AccuracyReport.from_labels(ref, pred, table(k, order))
    for name in ("overall_accuracy", "average_accuracy", "kappa"):
        va, vb = getattr(a, name), getattr(b, name)
        assert (va is None and vb is None) or va == pytest.approx(vb)
    pos = [order.index(i) for i in range(1, k + 1)]
    np.testing.assert_array_equal(a.confusion_matrix, b.confusion_matrix[np.ix_(pos, pos)])
    assert a.producers_accuracy == [b.producers_accuracy[p] for p in pos]


@settings(max_examples=40, deadline=None)
@given(labelled())
def test_unclassified_lowers_oa_only_through_errors(case):
    k, ref, pred = case
    a = AccuracyReport.from_labels(ref, pred, table(k))
    # Replacing a wrong prediction by nodata never changes OA or PA, and never lowers UA
    # (a class no longer predicted at all has an undefined UA; it was 0 before).
    wrong = (ref != 0) & (pred != ref)
    b = AccuracyReport.from_labels(ref, np.where(wrong, 0, pred), table(k))
    assert a.overall_accuracy == b.overall_accuracy
    assert a.producers_accuracy == b.producers_accuracy
    for ua, ub in zip(a.users_accuracy, b.users_accuracy, strict=True):
        if ub is None:
            assert ua in (None, 0.0)
        else:
            assert ua is None or ub >= ua


# ------------------------------------------------------------------------------- matching
def test_match_by_name_ignores_case_underscores_and_ids():
    labels = ClassTable([{"id": 1, "name": "Healthy grass"}, {"id": 2, "name": "Water"},
                         {"id": 3, "name": "Road"}])
    amap = ClassTable([{"id": 5, "name": "healthy_grass"}, {"id": 7, "name": "WATER"},
                       {"id": 9, "name": "Cloud"}])
    m = match_classes(amap, labels)
    assert m.by == "name"
    assert m.mapping == {5: 1, 7: 2}
    assert [c.name for c in m.only_in_map] == ["Cloud"]
    assert [c.name for c in m.only_in_labels] == ["Road"]
    np.testing.assert_array_equal(m.translate(np.array([[5, 7], [9, 0]])), [[1, 2], [0, 0]])
    assert any("Cloud" in note for note in m.describe())
    # evaluated through the match: class 9 pixels count as unclassified
    r = AccuracyReport.from_labels([1, 2, 3, 1], m.translate(np.array([5, 7, 9, 9])), labels)
    assert r.n_unclassified == 2 and r.overall_accuracy == 0.5


def test_match_by_id_without_map_table():
    labels = ClassTable([{"id": 4, "name": "a"}, {"id": 8, "name": "b"}])
    m = match_classes(None, labels)
    assert m.by == "id" and m.mapping == {4: 4, 8: 8}
    np.testing.assert_array_equal(m.translate(np.array([4, 8, 5, 0])), [4, 8, 0, 0])


def test_match_without_shared_name_or_ambiguous():
    labels = ClassTable([{"id": 1, "name": "a"}])
    with pytest.raises(LabelError, match="share no name"):
        match_classes(ClassTable([{"id": 1, "name": "b"}]), labels)
    with pytest.raises(LabelError, match="same name"):
        match_classes(ClassTable([{"id": 1, "name": "bare soil"},
                                  {"id": 2, "name": "Bare_Soil"}]), labels)


@settings(max_examples=60, deadline=None)
@given(labelled(), st.integers(2, 4), st.randoms(use_true_random=False))
def test_rates_ignore_pixel_order_and_repetition(case, times, rnd):
    # Every rate is a ratio of counts: shuffling the pixels or repeating each of them the same
    # number of times changes no rate (only the counts scale).
    k, ref, pred = case
    a = AccuracyReport.from_labels(ref, pred, table(k))
    order = list(range(ref.size))
    rnd.shuffle(order)
    shuffled = AccuracyReport.from_labels(ref[order], pred[order], table(k))
    repeated = AccuracyReport.from_labels(np.tile(ref, times), np.tile(pred, times), table(k))
    np.testing.assert_array_equal(repeated.confusion_matrix, times * a.confusion_matrix)
    for other in (shuffled, repeated):
        for name in ("overall_accuracy", "average_accuracy", "kappa"):
            va, vb = getattr(a, name), getattr(other, name)
            assert (va is None and vb is None) or va == pytest.approx(vb)
        for name in ("producers_accuracy", "users_accuracy", "f1"):
            for va, vb in zip(getattr(a, name), getattr(other, name), strict=True):
                assert (va is None and vb is None) or va == pytest.approx(vb)


@settings(max_examples=60, deadline=None)
@given(labelled())
def test_oa_and_aa_are_means_of_the_producers_accuracies(case):
    # OA is the support-weighted mean of the PAs (unclassified pixels count in the support),
    # AA their plain mean over the classes that have reference pixels.
    k, ref, pred = case
    r = AccuracyReport.from_labels(ref, pred, table(k))
    defined = [(pa, n) for pa, n in zip(r.producers_accuracy, r.support, strict=True)
               if pa is not None]
    assert all(n > 0 for _, n in defined) and len(defined) == sum(n > 0 for n in r.support)
    if r.n_pixels == 0:
        assert r.overall_accuracy is None and r.average_accuracy is None
        return
    assert r.overall_accuracy == pytest.approx(sum(pa * n for pa, n in defined) / r.n_pixels)
    assert r.overall_accuracy == pytest.approx(np.trace(r.confusion_matrix) / r.n_pixels)
    assert r.average_accuracy == pytest.approx(np.mean([pa for pa, _ in defined]))
