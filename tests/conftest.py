"""Fixtures shared by several test modules (support code lives in modules beside it).

Support modules: ``scenes`` (generated scenes: ``diffclip_cli.testing`` and the messy scene),
``rasterdata`` (small GeoTIFFs), ``tinyscene`` (the tiny scene of the command tests),
``gdalread``, ``model_windows``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rasterdata import SALINAS
from scenes import MessyScene, write_messy_scene
from tinyscene import Files, write_tiny_files


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine more threads only fight (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def salinas_dir() -> Path:
    """The embedded real sample scene (no CRS, 204 int16 bands)."""
    return SALINAS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Files:
    """The tiny scene, its untrained models and broken inputs (``tinyscene``), per module."""
    return write_tiny_files(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> MessyScene:
    """The messy scene (``scenes.write_messy_scene``: UTM HSI, Web Mercator LiDAR, points in
    EPSG:4326), written once per module."""
    return write_messy_scene(tmp_path_factory.mktemp("messy"))
