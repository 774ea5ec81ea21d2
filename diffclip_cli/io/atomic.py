"""Write outputs atomically: to a temporary name beside the target, then rename.

A failed, interrupted or killed run never leaves a file under the output name that looks
complete; an existing output is untouched unless ``overwrite`` is set.

A command declares all its outputs (and its inputs) up front with :func:`output_set`, before
any work: an output that is an input, an input's sidecar or another output's file is refused
there. Inside the set, each output completed through :func:`atomic_path` waits under its
temporary name; only when every output of the set is complete are they renamed into place,
so a failure in the last one leaves none of them behind. An output that another process
created (or replaced) while the run was working is not clobbered: the run fails instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from diffclip_cli.errors import DiffclipError, OutputError

__all__ = [
    "TEMP_PREFIX",
    "OutputSet",
    "atomic_path",
    "check_collisions",
    "check_output",
    "check_outputs",
    "companions",
    "output_set",
    "write_error",
]

#: Temporary outputs are hidden files with this prefix in the output's folder.
TEMP_PREFIX = ".diffclip-tmp-"

#: Side files that GDAL and diffclip read together with a file ``X``: ``X.aux.xml`` (GDAL
#: statistics and metadata), ``X.ovr`` (overviews), ``X.msk`` (masks), ``X.json`` (a map's
#: sidecar).
_SIDE_SUFFIXES = (".aux.xml", ".ovr", ".msk", ".json")
#: Files that make up one dataset with a file of this suffix.
_DATASET_PARTS = {
    ".shp": (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx"),
    ".gpkg": ("-wal", "-shm", "-journal"),
}
#: Free bytes under which a failed write is reported as a full disk.
_FULL_DISK_BYTES = 16 * 2**20

PathLike = str | os.PathLike[str]
Identity = tuple[int, int, int, int]


def check_output(path: PathLike, *, overwrite: bool = False) -> Path:
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


def companions(path: PathLike) -> list[Path]:
    """``path`` and the side files read together with it (``X.aux.xml``, ``X.json``, ...).

    For a Shapefile its other parts (``.shx``, ``.dbf``, ...), for a GeoPackage its journal
    files.
    """
    path = Path(path)
    parts = [path, *(Path(os.fspath(path) + s) for s in _SIDE_SUFFIXES)]
    for extra in _DATASET_PARTS.get(path.suffix.lower(), ()):
        parts.append(path.with_suffix(extra) if extra.startswith(".")
                     else Path(os.fspath(path) + extra))
    return parts


def _key(path: Path) -> Path:
    """The absolute, symlink-free form of a path (which need not exist)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare it literally
        return Path(os.path.abspath(path))


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name the same file: same resolved path, or same inode (hard links)."""
    if _key(a) == _key(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _identity(path: Path) -> Identity | None:
    """What tells a file apart from a replacement: device, inode, size, modification time."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


Outputs = Mapping[str, PathLike | Sequence[PathLike] | None]


def _files_of(outputs: Outputs) -> list[tuple[str, Path, Path]]:
    """``(what, file, main file)`` for every file the outputs write (sidecars included)."""
    files: list[tuple[str, Path, Path]] = []
    for what, value in outputs.items():
        if value is None:
            continue
        paths = [Path(value)] if isinstance(value, (str, os.PathLike)) else \
            [Path(p) for p in value]
        for i, p in enumerate(paths):
            files.append((what if i == 0 else f"the sidecar of {what}", p, paths[0]))
    return files


def check_outputs(
    outputs: Outputs,
    *,
    inputs: Mapping[str, PathLike | Iterable[PathLike] | None] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Check every output of a run against the others and against the inputs, before work.

    An output may never be an input or a side file of one (``X.json``, ``X.aux.xml``...),
    whatever ``overwrite`` says: writing it would destroy the input (or change what GDAL reads
    with it). Two outputs may not be the same file, nor one the side file of another. Paths
    are compared resolved (``..``, symbolic links) and as files (hard links).

    Args:
        outputs: ``{"what it is": path}``, or ``{"what": [path, sidecar, ...]}`` for an output
            that writes more than one file; ``None`` values are skipped.
        inputs: ``{"what it is": path or paths}``; ``None`` values are skipped.
        overwrite: whether existing outputs may be replaced.

    Returns:
        Every file the outputs write.

    Raises:
        OutputError: a collision (naming both files), or see :func:`check_output`.
    """
    files = check_collisions(outputs, inputs=inputs)
    for path in files:
        check_output(path, overwrite=overwrite)
    return files


def check_collisions(
    outputs: Outputs,
    *,
    inputs: Mapping[str, PathLike | Iterable[PathLike] | None] | None = None,
) -> list[Path]:
    """The collision checks of :func:`check_outputs` alone (not whether outputs exist).

    Returns:
        Every file the outputs write.

    Raises:
        OutputError: an output is an input, a side file of one, or collides with another.
    """
    files = _files_of(outputs)
    sources: list[tuple[str, Path]] = []
    for what, value in (inputs or {}).items():
        if value is None:
            continue
        for p in ([value] if isinstance(value, (str, os.PathLike)) else value):
            sources.append((what, Path(p)))
    for what, path, _ in files:
        for role, source in sources:
            for part in companions(source):
                if _same(path, part):
                    relation = ("is also an input" if part == source
                                else f"is a side file of an input ({source})")
                    raise OutputError(
                        f"the output {what} {relation}: {role}", path=path,
                        hint="writing it would destroy that input, even with --overwrite; "
                             "choose another output name")
    for i, (what, path, main) in enumerate(files):
        for other, other_path, other_main in files[i + 1:]:
            if main is other_main:  # two files of one output (a map and its sidecar)
                continue
            if _same(path, other_path):
                raise OutputError(f"{what} and {other} are the same file", path=path,
                                  hint="give each output its own name")
            for a_what, a, b_main in ((what, path, other_main), (other, other_path, main)):
                if a != b_main and any(_same(a, part) for part in companions(b_main)[1:]):
                    raise OutputError(f"{a_what} would be a side file of another output "
                                      f"({b_main})", path=a,
                                      hint="give each output its own name")
    return [path for _, path, _ in files]


# -- committing -------------------------------------------------------------------------------


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask() briefly changes process state, unsafe beside writer threads.
_UMASK = _read_umask()


def _disk_full(exc: OSError, folder: Path | None = None) -> bool:
    """Whether a write failed for lack of space (GDAL says so only in its message)."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    text = str(exc).lower()
    if "no space left" in text or "disk full" in text or "quota exceeded" in text:
        return True
    if folder is not None and exc.errno in (None, errno.EIO):  # no reason given: look
        with contextlib.suppress(OSError):
            return shutil.disk_usage(folder).free < _FULL_DISK_BYTES
    return False


def write_error(exc: OSError, target: PathLike) -> OutputError:
    """The one-sentence error of a failed write of ``target`` (disk full, I/O error...)."""
    target = Path(target)
    if _disk_full(exc, target.parent if str(target.parent) else Path(".")):
        return OutputError("the disk is full, so it was not written", path=target,
                           hint="free some space or write elsewhere")
    lines = str(exc).strip().splitlines()
    reason = exc.strerror or (lines[0] if lines else "")
    return OutputError(f"could not be written ({reason or type(exc).__name__})",
                       path=target, hint="check the folder and the free space")


def _flush(tmp: Path) -> None:
    """Force a written file to disk, so a late failure (full disk, quota) shows up now."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _appeared(target: Path) -> OutputError:
    return OutputError("was written by another process while this run was working, so this "
                       "run's result was discarded and that file left as it is", path=target,
                       hint="do not write the same output from two runs at once; run again "
                            "(with --overwrite to replace it)")


@dataclass
class _Pending:
    tmp: Path
    target: Path
    overwrite: bool
    before: Identity | None


def _check_unchanged(item: _Pending) -> None:
    """Refuse to rename when the target appeared or was replaced since the run checked it."""
    now = _identity(item.target)
    if now is not None and (not item.overwrite or now != item.before):
        raise _appeared(item.target)


def _rename(item: _Pending) -> None:
    """Rename one complete temporary file into place (never clobbering a newcomer)."""
    if item.overwrite:
        os.replace(item.tmp, item.target)
        return
    try:
        os.link(item.tmp, item.target)  # fails if the target exists: no race
    except FileExistsError:
        raise _appeared(item.target) from None
    except OSError:  # hard links not supported here: the check just made must do
        os.replace(item.tmp, item.target)
        return
    os.unlink(item.tmp)


def _commit(items: Sequence[_Pending]) -> None:
    """Flush every temporary file, check every target, then rename them all into place."""
    done: list[_Pending] = []
    current: Path | None = None
    try:
        for item in items:
            current = item.target
            if not item.tmp.exists():
                raise OutputError("nothing was written", path=item.target)
            _flush(item.tmp)
            os.chmod(item.tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600 files
        for item in items:
            _check_unchanged(item)
        for item in items:
            current = item.target
            _rename(item)
            done.append(item)
    except DiffclipError:  # an OSError too (OutputError), but already the message to give
        _undo(done)
        raise
    except OSError as exc:
        _undo(done)
        raise write_error(exc, current or items[0].target) from None
    except BaseException:
        _undo(done)
        raise


def _undo(done: Sequence[_Pending]) -> None:
    """Remove the files this commit linked into place before a later one failed."""
    for item in done:
        if not item.overwrite:
            with contextlib.suppress(OSError):
                item.target.unlink()


def _remove_temp(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    for aux in tmp.parent.glob(tmp.name + ".*"):  # GDAL side files (.aux.xml, .ovr)
        with contextlib.suppress(OSError):
            aux.unlink()


# -- output sets --------------------------------------------------------------------------------


@dataclass
class OutputSet:
    """The outputs of one run, checked together before work and renamed together at the end.

    Made by :func:`output_set`; :func:`atomic_path` hands its completed files to the set.
    """

    overwrite: bool = False
    _declared: dict[Path, Identity | None] = field(default_factory=dict)
    _pending: dict[Path, _Pending] = field(default_factory=dict)

    def declare(self, files: Iterable[Path]) -> None:
        """Take ``files`` into the set, remembering what lies at each name now."""
        for path in files:
            self._declared.setdefault(_key(path), _identity(path))

    def holds(self, path: PathLike) -> bool:
        """Whether ``path`` is an output of this set."""
        return _key(Path(path)) in self._declared

    def before(self, path: PathLike) -> Identity | None:
        """The identity of the file at ``path`` when the set was checked (None: absent)."""
        return self._declared.get(_key(Path(path)))

    def defer(self, item: _Pending) -> None:
        """Keep a completed temporary file until the whole set is complete."""
        self._pending[_key(item.target)] = item

    def pending(self, path: PathLike) -> Path:
        """Where the complete content of output ``path`` lies now.

        Its temporary file until the set is committed, e.g. to draw a quicklook of a map that
        is not renamed yet; ``path`` itself otherwise.
        """
        item = self._pending.get(_key(Path(path)))
        return Path(path) if item is None else item.tmp


_CURRENT: contextvars.ContextVar[OutputSet | None] = contextvars.ContextVar(
    "diffclip_output_set", default=None)


@contextlib.contextmanager
def output_set(
    outputs: Outputs,
    *,
    inputs: Mapping[str, PathLike | Iterable[PathLike] | None] | None = None,
    overwrite: bool = False,
) -> Iterator[OutputSet]:
    """Check all outputs of a run before work; rename them into place only when all are done.

    Args:
        outputs: see :func:`check_outputs`.
        inputs: see :func:`check_outputs`.
        overwrite: whether existing outputs may be replaced.

    Yields:
        The set (see :meth:`OutputSet.pending`).

    Raises:
        OutputError: see :func:`check_outputs`; also when a write fails, the disk is full, or
            an output was written by another process meanwhile.
    """
    files = check_outputs(outputs, inputs=inputs, overwrite=overwrite)
    outer = _CURRENT.get()
    group = OutputSet(overwrite=overwrite)
    if outer is not None:  # what lay there when the enclosing run checked its outputs
        group._declared.update({_key(p): outer.before(p) for p in files if outer.holds(p)})
    group.declare(files)
    token = _CURRENT.set(group)
    current = True
    try:
        yield group
        _CURRENT.reset(token)
        current = False
        items = list(group._pending.values())
        if outer is not None and all(outer.holds(i.target) for i in items):
            for item in items:  # an enclosing set commits them
                outer.defer(item)
            group._pending.clear()
        else:
            _commit(items)
    finally:
        if current:
            _CURRENT.reset(token)
        for item in group._pending.values():  # renamed: only GDAL side files are left
            _remove_temp(item.tmp)


@contextlib.contextmanager
def atomic_path(path: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` when the block succeeds.

    The temporary file lives in the same folder (so the rename is atomic) and keeps the target's
    suffix (so drivers that look at it still work). On any exception, ``KeyboardInterrupt``
    included, the temporary file is removed and the target is left as it was. Inside an
    :func:`output_set` that holds ``path``, the complete file waits under its temporary name
    until every output of the set is complete. Without ``overwrite`` an output that appeared
    meanwhile is never replaced; with it, one that was replaced meanwhile is not either.

    Args:
        path: the final output path.
        overwrite: whether an existing file at ``path`` may be replaced.

    Yields:
        The temporary path to write to.

    Raises:
        OutputError: see :func:`check_output`; also when the disk is full, the write fails or
            another process wrote ``path`` meanwhile.
    """
    target = check_output(path, overwrite=overwrite)
    group = _CURRENT.get()
    deferred = group is not None and group.holds(target)
    before = group.before(target) if deferred and group is not None else _identity(target)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=target.suffix or ".tmp",
                                    dir=target.parent if str(target.parent) else ".")
    os.close(fd)
    tmp = Path(tmp_name)
    item = _Pending(tmp, target, overwrite, before)
    handed_over = False
    try:
        try:
            yield tmp
        except DiffclipError:  # e.g. an InputError while writing: an OSError, not a write's
            raise
        except OSError as exc:
            raise write_error(exc, target) from None
        if deferred and group is not None:
            if not tmp.exists():
                raise OutputError("nothing was written", path=target)
            group.defer(item)
            handed_over = True
        else:
            _commit([item])
    finally:
        if not handed_over:  # failed, or renamed: only GDAL side files are left
            _remove_temp(tmp)
