"""The diffclip exception tree.

Every error a user can cause is a :class:`DiffclipError`. Each class carries the process exit
code the command line returns for it, so shell loops can tell failures apart. Messages are one
sentence that names the file, what is wrong and what to do.

======  =====================  ==========================================================
code    class                  meaning
======  =====================  ==========================================================
0                              success
1                              unexpected internal error (a bug: please report it)
2       UsageError             command-line usage error (unknown option, bad value, device);
                               DeviceError and OverrideError are kinds of it
3       InputError             an input file is missing, unreadable or not what it should be
4       GridError              inputs do not share a grid: CRS missing or mixed, no overlap
5       LabelError             labels unusable: empty, unknown field, too few pixels/classes
6       ModelError             model file missing, untrusted, too new or not for this scene
7       OutputError            output exists (no --overwrite), not writable, disk full
8       BatchError             ``diffclip batch``: at least one scene failed
130     Interrupted            stopped by Ctrl-C or SIGTERM; partial outputs were removed
======  =====================  ==========================================================

As in rasterio (``RasterioIOError(RasterioError, OSError)``), each class also derives from the
builtin exception that matches it, so code that does not know diffclip can still catch it:
:class:`InputError` and :class:`OutputError` are :class:`OSError` (a file that cannot be read
or written), :class:`GridError`, :class:`LabelError`, :class:`ModelError` and
:class:`UsageError` (with :class:`DeviceError` and :class:`OverrideError`) are
:class:`ValueError` (inputs or options whose values do not fit).
:class:`BatchError` and :class:`Interrupted` have no builtin match. Library code that catches
``OSError`` or ``ValueError`` from third-party calls lets a :class:`DiffclipError` raised in the
same block pass unchanged (``except DiffclipError: raise`` first).
"""

from __future__ import annotations

import os
from typing import ClassVar

__all__ = [
    "EXIT_CODES",
    "BatchError",
    "DeviceError",
    "DiffclipError",
    "GridError",
    "InputError",
    "Interrupted",
    "LabelError",
    "ModelError",
    "OutputError",
    "OverrideError",
    "UsageError",
    "first_line",
]


class DiffclipError(Exception):
    """Base class of every error diffclip reports to its user.

    Args:
        message: what is wrong, as a sentence fragment without a trailing full stop.
        path: the file the message is about, if any; it is put in front of the message.
        hint: what the user should do about it.
    """

    exit_code: ClassVar[int] = 1

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = self.message.rstrip(". ")
        if self.path is not None:
            text = f"{self.path}: {text}"
        if self.hint:
            text = f"{text}; {self.hint.rstrip('. ')}"
        return text + "."


class InputError(DiffclipError, OSError):
    """An input file is missing, unreadable, truncated or not a usable raster or vector."""

    exit_code = 3


class GridError(DiffclipError, ValueError):
    """Inputs cannot be put on one pixel grid (CRS missing or mixed, no overlap)."""

    exit_code = 4


class LabelError(DiffclipError, ValueError):
    """Labels are unusable: empty, unknown class field, no pixel inside the scene, too few."""

    exit_code = 5


class ModelError(DiffclipError, ValueError):
    """A model file is missing, untrusted, from a newer version, or made for other inputs."""

    exit_code = 6


class OutputError(DiffclipError, OSError):
    """An output cannot be written: it exists, its folder is missing or read-only, disk full."""

    exit_code = 7


class UsageError(DiffclipError, ValueError):
    """A command-line option (or the library argument behind it) that cannot be used.

    Args:
        message: what is wrong.
        hint: what to do about it.
        option: the command-line option the value came from (``--split``), so a command can
            name it; ``None`` when the library cannot tell.
    """

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None,
                 option: str | None = None) -> None:
        self.option = option
        super().__init__(message, hint=hint)


class DeviceError(UsageError):
    """The requested device does not exist on this machine (a usage error, like a bad option)."""


class OverrideError(UsageError):
    """A recipe override that cannot apply (a usage error of the option that set it).

    Args:
        key: the preset field, e.g. ``model.window``.
        value: the value refused.
        reason: why, as a sentence fragment (the command adds the option's name).
    """

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key, self.value, self.reason = key, value, reason
        super().__init__(reason)

    @classmethod
    def misfit(cls, key: str, value: object, preset: str, error: DiffclipError
               ) -> OverrideError:
        """``value`` does not fit the preset ``preset``, for the preset's ``error``."""
        return cls(key, value, f"{value} does not fit the preset {preset!r}: {error.message}"
                   + (f"; {error.hint}" if error.hint else ""))

    @classmethod
    def fixed_by_pretrained(cls, key: str, value: object) -> OverrideError:
        """``key`` belongs to the architecture, which a pretrained model fixes."""
        return cls(key, value, f"{value} cannot be used with a pretrained model: the "
                   "pretrained model fixes the architecture, its "
                   f"{key.partition('.')[2]} included")

    @classmethod
    def skipped_by_pretrained(cls, key: str, value: object) -> OverrideError:
        """``key`` sets stage 1, which a pretrained model skips (it would be ignored)."""
        return cls(key, value, f"{value} cannot be used with a pretrained model: stage 1 "
                   "(pretraining) is skipped, so it would be ignored")


class BatchError(DiffclipError):
    """At least one scene of a batch failed (the others were still processed)."""

    exit_code = 8


class Interrupted(DiffclipError):  # noqa: N818 (reads better at the call site)
    """The run was stopped by Ctrl-C or SIGTERM; partial outputs were removed."""

    exit_code = 130


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without its full stop.

    The reason a one-sentence error quotes from a library's (the type's name when the
    message is empty).
    """
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


EXIT_CODES: dict[str, int] = {
    "success": 0,
    "internal error": 1,
    "usage error": 2,
    **{cls.__name__: cls.exit_code for cls in (
        InputError, GridError, LabelError, ModelError, OutputError, BatchError, Interrupted
    )},
}
