"""Small text inputs (classes tables, descriptions, manifests), read with one clear error."""

from __future__ import annotations

import os
from pathlib import Path

from diffclip_cli.errors import InputError

__all__ = ["read_text_file"]


def read_text_file(path: str | os.PathLike[str], *, what: str, hint: str) -> str:
    """The text of a small UTF-8 input file (a byte-order mark is dropped).

    Args:
        path: the file.
        what: what the file is meant to be, for messages ("classes table", "manifest", ...).
        hint: what to give instead, for messages.

    Raises:
        InputError: the file is missing, a directory, unreadable or not UTF-8 text.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} not found", path=p, hint="check the path")
    if p.is_dir():
        raise InputError(f"is a directory, not a {what}", path=p, hint=hint)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the {what} ({exc.strerror or exc})", path=p,
                         hint=hint) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if b"\x00" in data[:65536]:  # binary: an image, a spreadsheet, ...
            raise InputError(f"is not a text file, so not a {what}", path=p,
                             hint=hint) from None
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(
            f"is text but not UTF-8 (byte 0x{data[exc.start]:02x} on line {line} is not UTF-8; "
            f"Latin-1 or Windows-1252?), so it cannot be read as a {what}", path=p,
            hint="save it as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet, or iconv -f latin1 "
                 "-t utf-8)") from None
