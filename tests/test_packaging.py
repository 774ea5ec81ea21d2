"""The package installs, exposes its console script and keeps README and CI in sync."""

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
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
    OverrideError,
    UsageError,
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
    for cls in (GridError, LabelError, ModelError, DeviceError, UsageError, OverrideError):
        assert issubclass(cls, DiffclipError) and issubclass(cls, ValueError)
    assert DeviceError.exit_code == EXIT_CODES["usage error"] == UsageError.exit_code
    assert issubclass(DeviceError, UsageError) and issubclass(OverrideError, UsageError)
    override = OverrideError.fixed_by_pretrained("model.window", 7)
    assert (override.key, override.value) == ("model.window", 7)
    assert override.exit_code == 2 and "pretrained model" in str(override)
    err = OutputError("disk full", path="map.tif", hint="free some space")
    assert str(err) == "map.tif: disk full; free some space."
    from diffclip_cli.model import device

    assert device.DeviceError is DeviceError


def test_embedded_sample_scene_ships() -> None:
    from diffclip_cli.data import salinas_a_dir

    folder = salinas_a_dir()
    for name in ("hsi.tif", "labels.gpkg", "labels.tif", "classes.csv", "README.md"):
        assert (folder / name).is_file()


def _built_distributions(tmp_path: Path) -> tuple[Path, Path]:
    """Build the sdist, then the wheel from that sdist, as a release does."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(ROOT / "diffclip_cli", src / "diffclip_cli",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        capture_output=True, text=True, check=True,
    )
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def test_wheel_holds_every_package_and_its_data(tmp_path: Path) -> None:
    sdist, wheel = _built_distributions(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = {name for name in zf.namelist() if name.startswith("diffclip_cli/")}
        metadata = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        version_line = next(line for line in zf.read(metadata).decode().splitlines()
                            if line.startswith("Version: "))
    package = ROOT / "diffclip_cli"
    expected = {
        path.relative_to(ROOT).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    missing = sorted(expected - in_wheel)
    assert not missing, f"not in the wheel: {missing}"
    # every folder holding Python modules is a package in the wheel (the workflows/ regression)
    for folder in {p.parent for p in package.rglob("*.py")}:
        assert f"{folder.relative_to(ROOT).as_posix()}/__init__.py" in in_wheel
    assert "diffclip_cli/presets/cpu.yaml" in in_wheel
    assert "diffclip_cli/data/salinas_a/hsi.tif" in in_wheel
    # the version in the wheel's metadata is the one the installed command prints
    assert version_line == f"Version: {__version__}"
    with tarfile.open(sdist) as tf:
        names = tf.getnames()
    assert any(name.endswith("/diffclip_cli/workflows/__init__.py") for name in names)


def test_version_comes_from_the_installed_metadata() -> None:
    from importlib.metadata import version

    assert __version__ == version("diffclip")
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and "## [0.1.0]" in changelog
