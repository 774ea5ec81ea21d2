"""Outputs appear complete or not at all."""

import errno
import os

import pytest

from diffclip_cli.errors import InputError, OutputError
from diffclip_cli.io.atomic import TEMP_PREFIX, atomic_path


def test_success_renames(tmp_path):
    out = tmp_path / "map.tif"
    with atomic_path(out) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".tif"
        tmp.write_text("done")
    assert out.read_text() == "done"
    assert not list(tmp_path.glob(TEMP_PREFIX + "*"))


def test_output_gets_default_permissions(tmp_path):
    out = tmp_path / "report.json"
    with atomic_path(out) as tmp:
        tmp.write_text("{}")
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


def test_failure_leaves_nothing(tmp_path):
    out = tmp_path / "map.tif"
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_interrupt_leaves_existing_untouched(tmp_path):
    out = tmp_path / "map.tif"
    out.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(out, overwrite=True) as tmp:
        tmp.write_text("new, half")
        raise KeyboardInterrupt
    assert out.read_text() == "old"
    assert os.listdir(tmp_path) == ["map.tif"]


def test_refuses_existing_without_overwrite(tmp_path):
    out = tmp_path / "map.tif"
    out.write_text("old")
    with pytest.raises(OutputError, match="--overwrite"), atomic_path(out):
        pass
    assert out.read_text() == "old"


def test_missing_folder(tmp_path):
    with pytest.raises(OutputError, match="does not exist"), atomic_path(tmp_path / "no" / "x.tif"):
        pass


def test_disk_full_is_an_output_error(tmp_path):
    out = tmp_path / "map.tif"
    with pytest.raises(OutputError, match="disk is full"), atomic_path(out):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert os.listdir(tmp_path) == []


def test_a_diffclip_error_inside_passes_unchanged(tmp_path):
    # An InputError is an OSError too: reading an input while writing must not become a write
    # error (exit 7) but stay what it is (exit 3), and the output must not appear.
    out = tmp_path / "out.tif"
    with pytest.raises(InputError, match=r"hsi\.tif: reading failed"), atomic_path(out) as tmp:
        tmp.write_bytes(b"partial")
        raise InputError("reading failed", path="hsi.tif")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
