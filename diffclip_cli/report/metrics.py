"""Accuracy metrics of a class map against reference labels: confusion matrix, OA, AA, kappa.

Conventions (see ``docs/report.md``):

- The confusion matrix has one row per *reference* class and one column per *predicted* class,
  in the order of the class table (as in the Orfeo ToolBox).
- Reference value 0 means unlabelled: such pixels are ignored.
- A reference pixel whose prediction is 0 (nodata: the map has no class there) or an id that is
  not a reference class is *unclassified*. It is counted in a separate column, as an error for
  OA and for the producer's accuracy of its reference class, and it does not change any user's
  accuracy (no class was claimed for it).
- Every metric is a fraction in 0..1; a metric that is undefined (no pixel to compute it from)
  is ``None``, and ``null`` in JSON, never NaN.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffclip_cli.errors import LabelError
from diffclip_cli.io.classes import ClassInfo, ClassTable

__all__ = [
    "REPORT_FORMAT",
    "AccuracyReport",
    "ClassMatch",
    "confusion_matrix",
    "match_classes",
    "summarize",
]

#: The ``format`` field of a report's JSON; bumped when a field changes meaning.
REPORT_FORMAT = "diffclip-accuracy/1"


def confusion_matrix(
    reference: np.ndarray | Sequence[int],
    predicted: np.ndarray | Sequence[int],
    *,
    labels: Sequence[int],
) -> np.ndarray:
    """Count reference/prediction pairs.

    Args:
        reference: reference class ids, any shape; 0 means unlabelled (ignored).
        predicted: predicted class ids, the same shape; 0 means nodata (unclassified).
        labels: the class ids, in the order of the rows and columns.

    Returns:
        An int64 array of shape ``(K, K + 1)``: ``cm[i, j]`` counts pixels of reference class
        ``labels[i]`` predicted as ``labels[j]``; the last column ``cm[i, K]`` counts pixels of
        reference class ``labels[i]`` left unclassified (predicted 0, or an id not in
        ``labels``).

    Raises:
        ValueError: if the shapes differ, ``labels`` is empty or repeats an id or contains 0, or
            ``reference`` holds a non-zero id that is not in ``labels``.
    """
    ref = np.asarray(reference).ravel()
    pred = np.asarray(predicted).ravel()
    if np.asarray(reference).shape != np.asarray(predicted).shape:
        raise ValueError(
            f"reference and predicted differ in shape: {np.shape(reference)} vs "
            f"{np.shape(predicted)}"
        )
    lab = np.asarray([int(v) for v in labels], dtype=np.int64)
    k = lab.size
    if k == 0:
        raise ValueError("labels is empty")
    if np.unique(lab).size != k:
        raise ValueError(f"labels repeat an id: {lab.tolist()}")
    if (lab == 0).any():
        raise ValueError("0 means unlabelled/nodata and cannot be a class id in labels")
    keep = ref != 0
    ref = ref[keep].astype(np.int64, copy=False)
    pred = pred[keep].astype(np.int64, copy=False)
    ref_idx = _index_of(ref, lab)
    unknown = ref_idx == k
    if unknown.any():
        bad = np.unique(ref[unknown])[:10].tolist()
        raise ValueError(f"reference holds ids that are not in labels: {bad}")
    pred_idx = _index_of(pred, lab)  # k (the last column) for 0 and unknown ids
    flat = np.bincount(ref_idx * (k + 1) + pred_idx, minlength=k * (k + 1))
    return flat.reshape(k, k + 1).astype(np.int64, copy=False)


def _index_of(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Position of each value in ``labels``; ``len(labels)`` where it is not there."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    pos = np.searchsorted(sorted_labels, values)
    pos = np.clip(pos, 0, sorted_labels.size - 1)
    found = sorted_labels[pos] == values
    return np.where(found, order[pos], labels.size)


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _clean(value: Any) -> float | None:
    """``None`` for missing or non-finite values, else a float."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


@dataclass(eq=False)
class AccuracyReport:
    """Accuracy of a classification against reference labels.

    All accuracies are fractions in 0..1, ``None`` where undefined. Per-class sequences follow
    ``class_ids``.

    Attributes:
        class_ids: the class ids, in table order.
        class_names: the class names, in table order.
        confusion_matrix: ``(K, K)`` counts, rows = reference, columns = predicted.
        unclassified: ``(K,)`` counts of reference pixels of each class predicted as nodata (0)
            or as an id that is not a reference class.
        overall_accuracy: correctly classified / all reference pixels (unclassified included).
        average_accuracy: mean producer's accuracy over the classes with reference pixels.
        kappa: Cohen's kappa, with "unclassified" as one more predicted category.
        producers_accuracy: per class, correct / reference pixels of the class (recall).
        users_accuracy: per class, correct / pixels predicted as the class (precision).
        f1: per class, ``2 TP / (2 TP + FP + FN)``.
        support: per class, the number of reference pixels.
        n_pixels: the number of reference pixels evaluated (unclassified included).
        extra: further JSON entries kept through :meth:`to_dict`/:meth:`from_dict` (e.g. the
            ``title`` and ``metadata`` of a written report).
    """

    class_ids: list[int]
    class_names: list[str]
    confusion_matrix: np.ndarray
    unclassified: np.ndarray
    overall_accuracy: float | None
    average_accuracy: float | None
    kappa: float | None
    producers_accuracy: list[float | None]
    users_accuracy: list[float | None]
    f1: list[float | None]
    support: list[int]
    n_pixels: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_unclassified(self) -> int:
        """Reference pixels that the map left unclassified."""
        return int(self.unclassified.sum())

    @property
    def n_classes(self) -> int:
        """The number of classes in the table."""
        return len(self.class_ids)

    # ----------------------------------------------------------------------------- builders
    @classmethod
    def from_confusion(
        cls,
        cm: np.ndarray | Sequence[Sequence[int]],
        classes: ClassTable | Sequence[ClassInfo],
        *,
        unclassified: np.ndarray | Sequence[int] | None = None,
    ) -> AccuracyReport:
        """Compute every metric from a confusion matrix.

        Args:
            cm: ``(K, K)`` counts (rows = reference, columns = predicted, in ``classes``
                order), or ``(K, K + 1)`` as returned by :func:`confusion_matrix`, whose last
                column is the unclassified count.
            classes: the K classes, in the order of the matrix.
            unclassified: ``(K,)`` unclassified counts, for a ``(K, K)`` matrix.

        Returns:
            The report.

        Raises:
            ValueError: if the matrix does not match the classes or holds negative counts.
        """
        m = np.asarray(cm)
        k = len(classes)
        if m.ndim != 2 or m.shape[0] != k or m.shape[1] not in (k, k + 1):
            raise ValueError(f"a confusion matrix for {k} classes must be ({k}, {k}) or "
                             f"({k}, {k + 1}), got {m.shape}")
        if m.shape[1] == k + 1:
            if unclassified is not None:
                raise ValueError("give unclassified counts either as the last column or "
                                 "as the unclassified argument, not both")
            unc = m[:, k]
            m = m[:, :k]
        else:
            unc = np.zeros(k) if unclassified is None else np.asarray(unclassified)
            if unc.shape != (k,):
                raise ValueError(f"unclassified must have {k} counts, got {unc.shape}")
        if (m < 0).any() or (unc < 0).any() or not np.all(np.mod(m, 1) == 0):
            raise ValueError("confusion counts must be non-negative integers")
        m = m.astype(np.int64)
        unc = np.asarray(unc).astype(np.int64)

        tp = np.diag(m).astype(np.float64)
        row = m.sum(axis=1) + unc  # reference pixels per class
        col = m.sum(axis=0)  # pixels predicted as each class
        n = int(row.sum())
        pa = [_ratio(tp[i], row[i]) for i in range(k)]
        ua = [_ratio(tp[i], col[i]) for i in range(k)]
        f1 = [_ratio(2 * tp[i], 2 * tp[i] + (col[i] - tp[i]) + (row[i] - tp[i]))
              for i in range(k)]
        present = [p for p in pa if p is not None]
        aa = float(np.mean(present)) if present else None
        oa = _ratio(tp.sum(), n)
        kappa = None
        if n:
            p_o = tp.sum() / n
            p_e = float(np.dot(row.astype(np.float64), col.astype(np.float64))) / (n * n)
            kappa = _ratio(p_o - p_e, 1.0 - p_e) if p_e < 1.0 else None
        return cls(
            class_ids=[int(c.id) for c in classes],
            class_names=[str(c.name) for c in classes],
            confusion_matrix=m,
            unclassified=unc,
            overall_accuracy=oa,
            average_accuracy=aa,
            kappa=kappa,
            producers_accuracy=pa,
            users_accuracy=ua,
            f1=f1,
            support=[int(v) for v in row],
            n_pixels=n,
        )

    @classmethod
    def from_labels(
        cls,
        reference_ids: np.ndarray | Sequence[int],
        predicted_ids: np.ndarray | Sequence[int],
        classes: ClassTable,
    ) -> AccuracyReport:
        """Compare predicted class ids with reference class ids, pixel by pixel.

        Args:
            reference_ids: reference ids, any shape; 0 = unlabelled (ignored).
            predicted_ids: predicted ids, the same shape; 0 = nodata (counted as unclassified).
                Ids must be those of ``classes`` (translate a map's ids first with
                :meth:`ClassMatch.translate`); other ids count as unclassified.
            classes: the reference classes.

        Returns:
            The report.

        Raises:
            ValueError: see :func:`confusion_matrix`.
        """
        cm = confusion_matrix(reference_ids, predicted_ids, labels=classes.ids)
        return cls.from_confusion(cm, classes)

    # ----------------------------------------------------------------------------- output
    def per_class(self) -> list[dict[str, Any]]:
        """One JSON-friendly record per class (see :meth:`to_dict`)."""
        return [
            {
                "id": cid,
                "name": name,
                "producers_accuracy": _clean(self.producers_accuracy[i]),
                "users_accuracy": _clean(self.users_accuracy[i]),
                "f1": _clean(self.f1[i]),
                "support": int(self.support[i]),
                "unclassified": int(self.unclassified[i]),
            }
            for i, (cid, name) in enumerate(zip(self.class_ids, self.class_names, strict=True))
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; fractions in 0..1 and ``None`` (JSON ``null``) where undefined.

        Keys: ``format``, ``overall_accuracy``, ``average_accuracy``, ``kappa``, ``per_class``
        (records with ``id``, ``name``, ``producers_accuracy``, ``users_accuracy``, ``f1``,
        ``support``, ``unclassified``), ``confusion_matrix`` (rows = reference, columns =
        predicted), ``unclassified`` (per class), ``class_names``, ``class_ids``, ``n_pixels``,
        ``n_unclassified``, and the ``extra`` entries.
        """
        data: dict[str, Any] = {
            "format": REPORT_FORMAT,
            "overall_accuracy": _clean(self.overall_accuracy),
            "average_accuracy": _clean(self.average_accuracy),
            "kappa": _clean(self.kappa),
            "per_class": self.per_class(),
            "confusion_matrix": [[int(v) for v in r] for r in self.confusion_matrix],
            "unclassified": [int(v) for v in self.unclassified],
            "class_names": list(self.class_names),
            "class_ids": [int(v) for v in self.class_ids],
            "n_pixels": int(self.n_pixels),
            "n_unclassified": self.n_unclassified,
        }
        for key, value in self.extra.items():
            data.setdefault(key, value)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AccuracyReport:
        """Rebuild a report from :meth:`to_dict` output (metrics are recomputed from counts).

        Raises:
            ValueError: if a required key is missing or the counts are inconsistent.
        """
        try:
            ids = [int(v) for v in data["class_ids"]]
            names = [str(v) for v in data["class_names"]]
            cm = np.asarray(data["confusion_matrix"], dtype=np.int64).reshape(len(ids), len(ids))
            unc = np.asarray(data.get("unclassified") or [0] * len(ids), dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an accuracy report: {exc}") from None
        classes = [ClassInfo(i, n) for i, n in zip(ids, names, strict=True)]
        report = cls.from_confusion(cm, classes, unclassified=unc)
        known = set(report.to_dict())
        report.extra = {k: v for k, v in data.items() if k not in known}
        return report

    def to_markdown(self, *, title: str | None = None) -> str:
        """A Markdown summary for people: percentages, per-class table, confusion matrix."""
        lines: list[str] = []
        if title:
            lines += [f"# {title}", ""]
        lines += [
            "| metric | value |",
            "|---|---:|",
            f"| Overall accuracy (OA) | {_pct(self.overall_accuracy)} % |",
            f"| Average accuracy (AA) | {_pct(self.average_accuracy)} % |",
            f"| Cohen's kappa (× 100) | {_pct(self.kappa)} |",
            f"| Reference pixels | {self.n_pixels} |",
            f"| Unclassified (nodata in the map) | {self.n_unclassified} |",
            "",
            "## Per class",
            "",
            "| id | class | producer's acc. (recall) % | user's acc. (precision) % | F1 % "
            "| reference pixels |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for rec in self.per_class():
            lines.append(
                f"| {rec['id']} | {_md_escape(rec['name'])} | {_pct(rec['producers_accuracy'])} "
                f"| {_pct(rec['users_accuracy'])} | {_pct(rec['f1'])} | {rec['support']} |"
            )
        lines += [
            "",
            "## Confusion matrix",
            "",
            "Rows: reference class; columns: predicted class (pixel counts).",
            "",
        ]
        head = [str(i) for i in self.class_ids] + ["unclassified"]
        lines.append("| reference \\ predicted | " + " | ".join(head) + " |")
        lines.append("|---|" + "---:|" * len(head))
        for i, (cid, name) in enumerate(zip(self.class_ids, self.class_names, strict=True)):
            cells = [str(int(v)) for v in self.confusion_matrix[i]]
            cells.append(str(int(self.unclassified[i])))
            lines.append(f"| {cid} {_md_escape(name)} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "OA counts unclassified pixels as errors; AA is the mean producer's accuracy over "
            "the classes that have reference pixels; – marks an undefined value.",
            "",
        ]
        return "\n".join(lines)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def summarize(reports: Iterable[AccuracyReport]) -> dict[str, Any]:
    """Mean and standard deviation of OA, AA and kappa over several runs (seeds).

    The standard deviation is the population one (``numpy.std``, ``ddof=0``), as most published
    hyperspectral tables use. Undefined values (``None``) are left out of the statistics.

    Args:
        reports: one report per run.

    Returns:
        ``{"n_runs": n, "overall_accuracy": {"mean", "std", "n", "values"}, "average_accuracy":
        {...}, "kappa": {...}}`` with fractions in 0..1 (``None`` when no run had a value),
        plus ``"per_class"`` (mean/std of each class's producer's accuracy, by class id) when
        every run has the same class ids.
    """
    reports = list(reports)

    def stats(values: list[float | None]) -> dict[str, Any]:
        vals = [v for v in (_clean(x) for x in values) if v is not None]
        return {
            "mean": float(np.mean(vals)) if vals else None,
            "std": float(np.std(vals)) if vals else None,
            "n": len(vals),
            "values": [_clean(x) for x in values],
        }

    out: dict[str, Any] = {
        "n_runs": len(reports),
        "overall_accuracy": stats([r.overall_accuracy for r in reports]),
        "average_accuracy": stats([r.average_accuracy for r in reports]),
        "kappa": stats([r.kappa for r in reports]),
    }
    if reports and all(r.class_ids == reports[0].class_ids for r in reports):
        first = reports[0]
        out["per_class"] = [
            {"id": cid, "name": name,
             "producers_accuracy": stats([r.producers_accuracy[i] for r in reports])}
            for i, (cid, name) in enumerate(zip(first.class_ids, first.class_names, strict=True))
        ]
    return out


# --------------------------------------------------------------------------------- matching
def normalize_name(name: str) -> str:
    """The form in which class names are compared: case-folded, ``_``/``-`` as spaces."""
    return re.sub(r"[\s_\-]+", " ", name).strip().casefold()


@dataclass(frozen=True)
class ClassMatch:
    """How the classes of a map correspond to the classes of the reference labels.

    Attributes:
        by: ``"name"`` or ``"id"``: how classes were matched.
        mapping: map class id -> reference class id, for the matched classes.
        only_in_map: map classes without a reference counterpart (their pixels count as
            unclassified); empty when the map has no class table.
        only_in_labels: reference classes that no map class matches (their producer's
            accuracy is 0 unless the map has no such pixels).
    """

    by: str
    mapping: dict[int, int]
    only_in_map: tuple[ClassInfo, ...] = ()
    only_in_labels: tuple[ClassInfo, ...] = ()

    def translate(self, map_ids: np.ndarray) -> np.ndarray:
        """Turn map class ids into reference class ids; unmatched ids and nodata become 0.

        Args:
            map_ids: an integer array of map values.

        Returns:
            An int64 array of the same shape with reference ids (0 = unclassified).
        """
        values = np.asarray(map_ids).astype(np.int64, copy=False)
        if not self.mapping:
            return np.zeros(values.shape, dtype=np.int64)
        src = np.asarray(list(self.mapping), dtype=np.int64)
        dst = np.asarray(list(self.mapping.values()), dtype=np.int64)
        pos = _index_of(values.ravel(), src)
        out = np.append(dst, 0)[pos]
        return out.reshape(values.shape)

    def describe(self) -> list[str]:
        """Human-readable notes about unmatched or renumbered classes, for the CLI."""
        notes = [f"classes matched by {self.by}"]
        moved = [(a, b) for a, b in self.mapping.items() if a != b]
        if moved:
            notes.append("map id -> label id: " + ", ".join(f"{a} -> {b}" for a, b in moved))
        if self.only_in_map:
            notes.append("only in the map (counted as unclassified): "
                         + ", ".join(f"{c.id} {c.name}" for c in self.only_in_map))
        if self.only_in_labels:
            notes.append("only in the labels: "
                         + ", ".join(f"{c.id} {c.name}" for c in self.only_in_labels))
        return notes


def match_classes(map_classes: ClassTable | None, label_classes: ClassTable) -> ClassMatch:
    """Pair the classes of a map with those of the reference labels.

    Rule: when the map has a class table (names on both sides), classes are matched by name,
    case-insensitively, with ``_``, ``-`` and runs of spaces equivalent; ids may differ. Without
    a map class table, classes are matched by id.

    Args:
        map_classes: the map's classes (from :func:`diffclip_cli.io.maps.read_map`), or ``None``.
        label_classes: the reference classes.

    Returns:
        The match, with the classes found on one side only.

    Raises:
        LabelError: if no name is shared, or a normalised name is ambiguous on one side.
    """
    if map_classes is None:
        return ClassMatch(by="id", mapping={i: i for i in label_classes.ids})

    def by_name(table: ClassTable, side: str) -> dict[str, ClassInfo]:
        out: dict[str, ClassInfo] = {}
        for c in table:
            key = normalize_name(c.name)
            if key in out:
                raise LabelError(
                    f"the {side} classes {out[key].name!r} and {c.name!r} have the same name "
                    "once case, spaces and underscores are ignored",
                    hint="rename one of them in the classes table",
                )
            out[key] = c
        return out

    mine = by_name(map_classes, "map")
    theirs = by_name(label_classes, "label")
    mapping = {mine[k].id: theirs[k].id for k in mine if k in theirs}
    if not mapping:
        raise LabelError(
            f"the map's classes {map_classes.names} share no name with the labels' classes "
            f"{label_classes.names}",
            hint="use the same class names in both, e.g. with a --classes table",
        )
    return ClassMatch(
        by="name",
        mapping=mapping,
        only_in_map=tuple(c for k, c in mine.items() if k not in theirs),
        only_in_labels=tuple(c for k, c in theirs.items() if k not in mine),
    )
