"""The tiny scene the command tests share (bad inputs, reliability, the array API), and helpers.

A 24 x 28 scene with 8 HSI bands (one NaN pixel, one nodata pixel), a DSM, GeoPackage label
points of four classes, an untrained pretrained model and classifier for it (an untrained
network is a valid model file) and a folder of broken inputs; the fixture ``tiny``
(conftest.py) writes it once per module. ``invoke`` runs a command through typer's CliRunner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
from rasterdata import write_tif
from rasterio.transform import from_origin
from scenes import make_scene
from shapely.geometry import Point
from typer.testing import CliRunner

from diffclip_cli.cli import app
from diffclip_cli.io.atomic import TEMP_PREFIX
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.archive import save_model
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.config import load_preset
from diffclip_cli.model.modelfile import bundle_from_classifier, bundle_from_network
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.prompts import build_prompts
from diffclip_cli.model.text import Vocabulary
from diffclip_cli.sampling.normalise import compute_stats

runner = CliRunner()
H, W, BANDS = 24, 28, 8
TRANSFORM = from_origin(500000.0, 4200000.0, 2.0, 2.0)
NAN_PIXEL = (5, 7)  # NaN in one HSI band
NODATA_PIXEL = (10, 12)  # the HSI's nodata value (-9999) in one band
CLASSES = ["grass", "trees", "roof", "water"]


def invoke(*args: object, code: int):
    argv = [str(a) for a in args]
    if argv[0] == "fewshot":  # these tests are not about the fast path: skip its distillation
        argv.insert(1, "--no-fast")
    result = runner.invoke(app, argv)
    assert result.exit_code == code, result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"escaped exception {result.exception!r}\n{result.output}")
    return result


def error_line(result, prefix: str = "Error:") -> str:
    """The one line of the error message; no traceback, no second error line."""
    assert "Traceback" not in result.output, result.output
    lines = [ln for ln in result.output.splitlines()
             if ln.startswith(("Error:", "Internal error:", "Stopped:"))]
    assert len(lines) == 1, result.output
    assert lines[0].startswith(prefix), result.output
    assert lines[0].rstrip().endswith("."), lines[0]
    return lines[0]


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]


def pixel_point(row: int, col: int) -> Point:
    return Point(TRANSFORM.c + (col + 0.5) * TRANSFORM.a, TRANSFORM.f + (row + 0.5) * TRANSFORM.e)


def write_points(path: Path, records: list[tuple[str, int, int]], field: str = "landcover"
                 ) -> Path:
    gpd.GeoDataFrame({field: [r[0] for r in records]},
                     geometry=[pixel_point(r, c) for _, r, c in records],
                     crs="EPSG:32615").to_file(path)
    return path


def untrained_models(scene: Scene, folder: Path, *, window: int = 5, suffix: str = ""
                     ) -> tuple[Path, Path]:
    """A pretrained model and a classifier of ``CLASSES`` for ``scene``, without training."""
    preset = load_preset("tiny").with_overrides(**{"model.window": window})
    stats = compute_stats(scene, seed=0, n_samples=500)
    net = DiffCLIPNet(preset.model, hsi_bands=scene.hsi_bands, lidar_bands=scene.lidar_bands,
                      seed=0)
    pretrained = save_model(bundle_from_network(net, preset=preset, stats=stats,
                                                band_names=scene.band_names),
                            folder / f"pretrained{suffix}.pt")
    prompts = build_prompts(CLASSES, template="p4")
    clf = DiffCLIPClassifier(net, vocabulary=Vocabulary.build(prompts), prompts=prompts, seed=0)
    table = ClassTable({"id": k + 1, "name": n} for k, n in enumerate(CLASSES))
    model = save_model(bundle_from_classifier(clf, preset=preset, stats=stats, classes=table,
                                              template="p4", band_names=scene.band_names),
                       folder / f"model{suffix}.pt")
    return pretrained, model


@dataclass
class Files:
    folder: Path
    hsi: Path
    lidar: Path
    labels: Path
    pretrained: Path
    model: Path
    model_hsi: Path
    broken: Path  # a folder of broken inputs
    hsi_data: np.ndarray


def write_tiny_files(d: Path) -> Files:
    """Write the tiny scene, its untrained models and the folder of broken inputs into ``d``."""
    s = make_scene(height=H, width=W, hsi_bands=BANDS, patch_size=10, seed=1,
                   crs="EPSG:32615", pixel_size=2.0)
    hsi = s.hsi.copy()
    hsi[3][NAN_PIXEL] = np.nan
    hsi[0][NODATA_PIXEL] = -9999
    hsi_path = write_tif(d / "hsi.tif", hsi, transform=TRANSFORM, nodata=-9999)
    lidar_path = write_tif(d / "lidar.tif", s.lidar, transform=TRANSFORM, descriptions=["DSM"])
    rows, cols = np.mgrid[0:H:2, 0:W:2]
    names = [CLASSES[(r // 12) * 2 + c // 14] for r, c in zip(rows.ravel(), cols.ravel(),
                                                               strict=True)]
    labels = write_points(d / "labels.gpkg",
                          list(zip(names, rows.ravel(), cols.ravel(), strict=True)))
    with Scene.open(hsi_path, lidar_path) as scene:
        pretrained, model = untrained_models(scene, d)
    with Scene.open(hsi_path) as scene:
        _, model_hsi = untrained_models(scene, d, suffix="_hsi")

    b = d / "broken"
    b.mkdir()
    for name in ("dir.tif", "dir.gpkg", "dir.pt", "dir.csv", "dir.yaml"):
        (b / name).mkdir()
    for name in ("empty.tif", "empty.gpkg", "empty.pt", "empty.csv"):
        (b / name).write_bytes(b"")
    for name in ("text.tif", "text.gpkg", "text.pt"):
        (b / name).write_text("hello, I am not what you think\n")
    (b / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00")
    tif = write_tif(b / "whole.tif", np.random.default_rng(0).random((BANDS, 64, 64))
                    .astype(np.float32), block=16, compress="deflate")
    (b / "truncated.tif").write_bytes(tif.read_bytes()[: tif.stat().st_size // 2])
    (b / "truncated.pt").write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    return Files(d, hsi_path, lidar_path, labels, pretrained, model, model_hsi, b, hsi)
