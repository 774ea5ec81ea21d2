"""Write outputs atomically: to a temporary name beside the target, then rename.

A failed, interrupted or killed run never leaves a file under the output name that looks
complete; an existing output is untouched unless ``overwrite`` is set.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from diffclip_cli.errors import OutputError

__all__ = ["TEMP_PREFIX", "atomic_path", "check_output"]

#: Temporary outputs are hidden files with this prefix in the output's folder.
TEMP_PREFIX = ".diffclip-tmp-"


def check_output(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Check that ``path`` can be written, before any expensive work starts.

    Args:
        path: the output file.
        overwrite: whether an existing file may be replaced.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputError: the file exists (and ``overwrite`` is false), is a directory, or its folder
            is missing or not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError("is a directory, not a file", path=path,
                          hint="give a file name for the output")
    if path.exists() and not overwrite:
        raise OutputError("already exists", path=path,
                          hint="pass --overwrite to replace it, or choose another name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"the folder {folder} does not exist", path=path,
                          hint="create it first or choose another output path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"the folder {folder} is not writable", path=path,
                          hint="choose a folder you can write to")
    return path


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask() briefly changes process state, unsafe beside writer threads.
_UMASK = _read_umask()


def _disk_full(exc: OSError) -> bool:
    """Whether a write failed for lack of space (GDAL says so only in its message)."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    text = str(exc).lower()
    return "no space left" in text or "disk full" in text or "quota exceeded" in text


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` when the block succeeds.

    The temporary file lives in the same folder (so the rename is atomic) and keeps the target's
    suffix (so drivers that look at it still work). On any exception, ``KeyboardInterrupt``
    included, the temporary file is removed and the target is left as it was.

    Args:
        path: the final output path.
        overwrite: whether an existing file at ``path`` may be replaced.

    Yields:
        The temporary path to write to.

    Raises:
        OutputError: see :func:`check_output`; also when the disk is full or the write fails.
    """
    target = check_output(path, overwrite=overwrite)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=target.suffix or ".tmp",
                                    dir=target.parent if str(target.parent) else ".")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError("nothing was written", path=target)
        # mkstemp creates 0600 files; give the output the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except OSError as exc:
        if _disk_full(exc):
            raise OutputError("the disk is full, so it was not written", path=target,
                              hint="free some space or write elsewhere") from None
        lines = str(exc).strip().splitlines()
        reason = exc.strerror or (lines[0] if lines else "")
        raise OutputError(f"could not be written ({reason or type(exc).__name__})",
                          path=target, hint="check the folder and the free space") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        for aux in tmp.parent.glob(tmp.name + ".*"):  # GDAL side files (.aux.xml, .ovr)
            with contextlib.suppress(OSError):
                aux.unlink()
