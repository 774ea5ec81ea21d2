"""The package installs, exposes its console script and keeps README and CI in sync."""

import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from diffclip_cli import __version__
from diffclip_cli.cli import app
from diffclip_cli.errors import (
    EXIT_CODES,
    DeviceError,
    DiffclipError,
    GridError,
    InputError,
    LabelError,
    ModelError,
    OutputError,
)

ROOT = Path(__file__).resolve().parents[1]


def test_version_and_help() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"diffclip {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_python_dash_m() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "diffclip_cli", "--version"],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == f"diffclip {__version__}"


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text().splitlines()
    # The first lines are the two set-up commands in one code block.
    assert readme[3].endswith("diffclip demo")
    test_cmd = readme[4].rsplit("&& ", 1)[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()
    assert "torch==2.13.0" in readme[4] and "torch==2.13.0" in ci
    assert re.search(r"^set -euo pipefail$", ci, re.M)


def test_error_messages_name_file_and_fix() -> None:
    err = InputError("file not found", path="hsi.tif", hint="check the path")
    assert str(err) == "hsi.tif: file not found; check the path."
    assert isinstance(err, DiffclipError)
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)
    assert OutputError.exit_code == EXIT_CODES["OutputError"]


def test_errors_are_also_the_matching_builtins() -> None:
    # rasterio's style: RasterioIOError(RasterioError, OSError); exit codes stay the tree's.
    for cls in (InputError, OutputError):
        assert issubclass(cls, DiffclipError) and issubclass(cls, OSError)
    for cls in (GridError, LabelError, ModelError, DeviceError):
        assert issubclass(cls, DiffclipError) and issubclass(cls, ValueError)
    assert DeviceError.exit_code == EXIT_CODES["usage error"]
    err = OutputError("disk full", path="map.tif", hint="free some space")
    assert str(err) == "map.tif: disk full; free some space."
    from diffclip_cli.model import device

    assert device.DeviceError is DeviceError


def test_embedded_sample_scene_ships() -> None:
    from diffclip_cli.data import salinas_a_dir

    folder = salinas_a_dir()
    for name in ("hsi.tif", "labels.gpkg", "labels.tif", "classes.csv", "README.md"):
        assert (folder / name).is_file()
