"""Report files (JSON, Markdown, PNG) and the Rich table."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from diffclip_cli.errors import OutputError
from diffclip_cli.io.atomic import TEMP_PREFIX
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.report.metrics import AccuracyReport
from diffclip_cli.report.render import rich_table, write_report

CLASSES = ClassTable([{"id": 1, "name": "grass"}, {"id": 2, "name": "trees [tall]"},
                      {"id": 3, "name": "water"}])
CM = np.array([[50, 3, 2, 0], [5, 40, 5, 0], [0, 2, 38, 5]])


@pytest.fixture
def report():
    return AccuracyReport.from_confusion(CM, CLASSES)


def test_writes_three_files(tmp_path, report):
    paths = write_report(report, tmp_path / "run.seed1", title="Seed 1",
                         metadata={"map": tmp_path / "map.tif", "seed": 1})
    assert paths == {"json": tmp_path / "run.seed1.json", "markdown": tmp_path / "run.seed1.md",
                     "csv": tmp_path / "run.seed1.csv", "png": tmp_path / "run.seed1.png"}
    data = json.loads(paths["json"].read_text())
    assert data["overall_accuracy"] == pytest.approx(128 / 150)
    assert data["title"] == "Seed 1" and data["metadata"]["seed"] == 1
    assert data["metadata"]["map"].endswith("map.tif")
    assert AccuracyReport.from_dict(data).kappa == pytest.approx(report.kappa)
    md = paths["markdown"].read_text()
    assert "# Seed 1" in md and "85.33 %" in md and "78.29" in md and "- seed: 1" in md
    with Image.open(paths["png"]) as im:
        im.verify()
    with Image.open(paths["png"]) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 200
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 10  # something was drawn
    assert sorted(os.listdir(tmp_path)) == ["run.seed1.csv", "run.seed1.json", "run.seed1.md",
                                            "run.seed1.png"]


def test_refuses_to_overwrite_any_of_the_three(tmp_path, report):
    (tmp_path / "r.md").write_text("keep")
    with pytest.raises(OutputError, match="--overwrite"):
        write_report(report, tmp_path / "r")
    assert sorted(os.listdir(tmp_path)) == ["r.md"]
    assert (tmp_path / "r.md").read_text() == "keep"
    write_report(report, tmp_path / "r", overwrite=True)
    assert "grass" in (tmp_path / "r.md").read_text()


def test_failure_leaves_no_file(tmp_path, report, monkeypatch):
    import diffclip_cli.report.render as render

    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(render, "confusion_figure", broken)
    with pytest.raises(RuntimeError):
        write_report(report, tmp_path / "r")
    assert os.listdir(tmp_path) == []


def test_twenty_classes_png(tmp_path):
    rng = np.random.default_rng(0)
    table = ClassTable([{"id": i, "name": f"land cover class number {i}"} for i in range(1, 21)])
    ref = rng.integers(1, 21, 3000)
    pred = np.where(rng.random(3000) < 0.8, ref, rng.integers(0, 21, 3000))
    paths = write_report(AccuracyReport.from_labels(ref, pred, table), tmp_path / "big")
    with Image.open(paths["png"]) as im:
        assert 600 < im.width < 2000 and 600 < im.height < 2000
    assert not list(tmp_path.glob(TEMP_PREFIX + "*"))


def test_rich_table(report):
    console = Console(width=120, record=True)
    console.print(rich_table(report, title="Accuracy"))
    text = console.export_text()
    assert "trees [tall]" in text  # names are not read as markup
    assert "OA 85.33 %" in text and "AA 85.12 %" in text and "kappa 78.29" in text
    assert "5 unclassified" in text
    row = next(line for line in text.splitlines() if "water" in line)
    assert "84.44" in row and "45" in row  # PA 38/45, support 45
