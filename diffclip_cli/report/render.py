"""Accuracy reports as files (JSON, Markdown, PNG heatmap) and as a Rich table for the CLI."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape
from rich.table import Table

from diffclip_cli.io.atomic import atomic_path, output_set
from diffclip_cli.report.baseline import Baseline
from diffclip_cli.report.metrics import AccuracyReport

__all__ = ["baseline_record", "baseline_verdict", "baseline_verdicts", "confusion_csv",
           "confusion_figure", "report_paths", "rich_table", "write_report"]


def report_paths(stem: str | os.PathLike[str]) -> dict[str, Path]:
    """The files :func:`write_report` writes for ``stem``.

    ``stem.json``, ``.md``, ``.csv`` (the confusion matrix) and ``.png``. The suffix is
    appended, never substituted, so ``run.seed1`` gives ``run.seed1.json``.
    """
    stem = os.fspath(stem)
    return {"json": Path(stem + ".json"), "markdown": Path(stem + ".md"),
            "csv": Path(stem + ".csv"), "png": Path(stem + ".png")}


def confusion_csv(report: AccuracyReport) -> str:
    """The confusion matrix as CSV, as OTB's ComputeConfusionMatrix writes one.

    One row per reference class (``reference_id``, ``reference_name``, then the pixel counts
    predicted as each class, by id, in the same order, then ``unclassified``).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["reference_id", "reference_name", *[str(i) for i in report.class_ids],
                     "unclassified"])
    for i, (cid, name) in enumerate(zip(report.class_ids, report.class_names, strict=True)):
        writer.writerow([cid, name, *[int(v) for v in report.confusion_matrix[i]],
                         int(report.unclassified[i])])
    return buffer.getvalue()


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def baseline_verdict(report: AccuracyReport, baseline: AccuracyReport, *,
                     model: str = "DiffCLIP", name: str = "per-pixel baseline") -> str:
    """One plain sentence: which of the model and a baseline is more accurate.

    Args:
        report: the model's accuracy.
        baseline: the baseline's accuracy on the same reference pixels.
        model: how to call the model.
        name: how to call the baseline.

    Returns:
        E.g. ``"The per-pixel baseline is better than DiffCLIP on these pixels: OA 93.10 %
        against 88.40 %. ..."``.
    """
    ours, theirs = report.overall_accuracy or 0.0, baseline.overall_accuracy or 0.0
    figures = (f"OA {_pct(theirs)} % against {_pct(ours)} %, kappa {_pct(baseline.kappa)} "
               f"against {_pct(report.kappa)}")
    if theirs > ours:
        return (f"The {name} is better than {model} on these pixels: {figures}. "
                "Use the baseline's kind of map, or give more shots or pretraining samples.")
    if theirs == ours:
        return f"The {name} is as accurate as {model} on these pixels: {figures}."
    return (f"{model} is better than the {name} on these pixels: OA {_pct(ours)} % "
            f"against {_pct(theirs)} %, kappa {_pct(report.kappa)} against "
            f"{_pct(baseline.kappa)}.")


def baseline_record(report: AccuracyReport, baseline: Baseline) -> dict[str, Any]:
    """One entry of a report's ``"baselines"``: what it is, its figures, which is better."""
    theirs = baseline.report
    return {
        "name": baseline.name,
        "method": baseline.method,
        **baseline.details,
        "overall_accuracy": theirs.overall_accuracy,
        "average_accuracy": theirs.average_accuracy,
        "kappa": theirs.kappa,
        "per_class": theirs.per_class(),
        "confusion_matrix": [[int(v) for v in r] for r in theirs.confusion_matrix],
        "n_pixels": theirs.n_pixels,
        "better_than_model": (theirs.overall_accuracy or 0.0)
        > (report.overall_accuracy or 0.0),
        "verdict": baseline_verdict(report, theirs, name=baseline.name),
    }


def baseline_verdicts(report: AccuracyReport, baselines: Sequence[Baseline]) -> list[str]:
    """:func:`baseline_verdict` for each baseline, in order."""
    return [baseline_verdict(report, b.report, name=b.name) for b in baselines]


def write_report(
    report: AccuracyReport,
    stem: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    title: str | None = None,
    metadata: dict[str, Any] | None = None,
    baselines: Sequence[Baseline] = (),
) -> dict[str, Path]:
    """Write ``stem.json``, ``stem.md``, ``stem.csv`` and ``stem.png`` (confusion-matrix heatmap).

    The four files appear together: each is written to a temporary name and they are renamed
    only once all of them are complete. Nothing is written if any of them exists and
    ``overwrite`` is false.

    Args:
        report: the accuracy report.
        stem: the output path without suffix.
        overwrite: replace existing files.
        title: a title for the Markdown and the figure (also stored in the JSON).
        metadata: JSON-serialisable facts stored in the JSON under ``"metadata"`` (map, labels,
            model, seed...) and listed in the Markdown.
        baselines: classical baselines scored on the same reference pixels: stored under
            ``"baselines"`` (:func:`baseline_record`), a Markdown section saying plainly which
            is better, and their OA in the figure.

    Returns:
        ``{"json": path, "markdown": path, "csv": path, "png": path}``.

    Raises:
        OutputError: when a file exists (without ``overwrite``) or cannot be written.
    """
    paths = report_paths(stem)
    trio = output_set({"report": list(paths.values())}, overwrite=overwrite)
    data = report.to_dict()
    if title is not None:
        data["title"] = title
    if metadata:
        data["metadata"] = metadata
    if baselines:
        data["baselines"] = [baseline_record(report, b) for b in baselines]
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False, default=str) + "\n"
    markdown = report.to_markdown(title=title)
    if baselines:
        head = "| | model | " + " | ".join(b.name for b in baselines) + " |\n"
        rule = "|---|---:|" + "---:|" * len(baselines) + "\n"

        def row(label: str, ours: float | None, key: str) -> str:
            cells = " | ".join(_pct(getattr(b.report, key)) for b in baselines)
            return f"| {label} | {_pct(ours)} | {cells} |\n"

        markdown += (
            "\n## Baselines\n\n"
            + "".join(f"**{v}**\n\n" for v in baseline_verdicts(report, baselines))
            + "".join(f"- {b.name}: {b.method}.\n" for b in baselines) + "\n"
            + head + rule
            + row("OA %", report.overall_accuracy, "overall_accuracy")
            + row("AA %", report.average_accuracy, "average_accuracy")
            + row("kappa × 100", report.kappa, "kappa"))
    if metadata:
        markdown += "\n## Run\n\n" + "\n".join(
            f"- {key}: {value}" for key, value in metadata.items()
        ) + "\n"
    with trio, contextlib.ExitStack() as stack:  # the three are renamed together
        tmp = {key: stack.enter_context(atomic_path(path, overwrite=overwrite))
               for key, path in paths.items()}
        tmp["json"].write_text(text, encoding="utf-8")
        tmp["markdown"].write_text(markdown, encoding="utf-8")
        tmp["csv"].write_text(confusion_csv(report), encoding="utf-8")
        fig = confusion_figure(report, title=title, baselines=baselines)
        fig.savefig(tmp["png"], format="png", dpi=100, bbox_inches="tight", pad_inches=0.15)
    return paths


def confusion_figure(report: AccuracyReport, *, title: str | None = None,
                     baselines: Sequence[Baseline] = ()) -> Any:
    """A matplotlib figure of the confusion matrix (Agg canvas, no window, no pyplot state).

    Colours are row-normalised (each reference class sums to 1, so the diagonal reads as the
    producer's accuracy) and each cell is annotated with its pixel count. An "unclassified"
    column is added when the map left reference pixels without a class.

    Args:
        report: the accuracy report.
        title: the figure title; OA, AA and kappa are always shown under it.
        baselines: baselines scored on the same pixels; their OA is shown too.

    Returns:
        A :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = report.n_classes
    counts = report.confusion_matrix
    names = [n.replace("$", r"\$") for n in report.class_names]  # no mathtext
    col_labels = [f"{i} {n}" for i, n in zip(report.class_ids, names, strict=True)]
    if report.n_unclassified:
        counts = np.concatenate([counts, report.unclassified[:, None]], axis=1)
        col_labels.append("unclassified")
    row_labels = list(col_labels[:k])
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)

    ncol = counts.shape[1]
    cell = 0.55 if k <= 12 else 0.42
    font = 9 if k <= 12 else 7 if k <= 20 else 5
    longest = max(len(s) for s in row_labels + col_labels)
    margin = min(0.08 * longest + 0.6, 3.5)
    width = ncol * cell + margin + 1.6
    height = k * cell + margin + 1.4
    fig = Figure(figsize=(max(width, 4.5), max(height, 3.5)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, aspect="equal",
                      interpolation="nearest")
    cbar = fig.colorbar(image, ax=ax, shrink=0.8)
    cbar.set_label("share of the reference class", fontsize=font)
    cbar.ax.tick_params(labelsize=font)
    ax.set_xticks(range(ncol), labels=col_labels, rotation=45, ha="right",
                  rotation_mode="anchor", fontsize=font)
    ax.set_yticks(range(k), labels=row_labels, fontsize=font)
    ax.set_xlabel("predicted class", fontsize=font + 1)
    ax.set_ylabel("reference class", fontsize=font + 1)
    for i in range(k):
        for j in range(ncol):
            value = int(counts[i, j])
            if value == 0:
                continue
            ax.text(j, i, f"{value}", ha="center", va="center", fontsize=font - 1,
                    color="white" if share[i, j] > 0.6 else "black")

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.2f}"

    summary = (f"OA {pct(report.overall_accuracy)} %   AA {pct(report.average_accuracy)} %   "
               f"kappa {pct(report.kappa)}   n = {report.n_pixels}")
    for b in baselines:
        summary += f"\n{b.name}: OA {pct(b.report.overall_accuracy)} %"
    heading = title.replace("$", r"\$") if title else None
    # Above the heatmap *and* its colour bar, wrapped to the figure's width: a long title
    # (the held-out report's names pixels, shots and seed) must not run into the colour bar.
    chars = max(20, int(fig.get_figwidth() * 72 / ((font + 1) * 0.62)))
    lines = [line for part in [heading or "", *summary.split("\n")]
             for line in textwrap.wrap(part, chars)]
    fig.suptitle("\n".join(lines), fontsize=font + 1)
    return fig


def rich_table(report: AccuracyReport, *, title: str | None = None) -> Table:
    """A Rich table for the terminal: per-class PA, UA, F1 and support; OA, AA, kappa below.

    Args:
        report: the accuracy report.
        title: an optional table title.

    Returns:
        The table (the CLI prints it).
    """

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.2f}"

    caption = (f"OA {pct(report.overall_accuracy)} %  ·  AA {pct(report.average_accuracy)} %  ·  "
               f"kappa {pct(report.kappa)} (× 100)  ·  {report.n_pixels} reference pixels")
    if report.n_unclassified:
        caption += f", {report.n_unclassified} unclassified"
    table = Table(title=None if title is None else escape(title), caption=caption)
    table.add_column("id", justify="right")
    table.add_column("class")
    table.add_column("PA %", justify="right", header_style="bold")
    table.add_column("UA %", justify="right")
    table.add_column("F1 %", justify="right")
    table.add_column("support", justify="right")
    for rec in report.per_class():
        table.add_row(str(rec["id"]), escape(rec["name"]), pct(rec["producers_accuracy"]),
                      pct(rec["users_accuracy"]), pct(rec["f1"]), str(rec["support"]))
    return table
