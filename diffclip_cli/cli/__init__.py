"""The ``diffclip`` command line: thin Typer commands over the library.

Each command parses its options and calls library functions (:mod:`diffclip_cli.pipeline`,
:mod:`diffclip_cli.infer.classify`, :mod:`diffclip_cli.report`); errors are turned into one
sentence and an exit code by :class:`~diffclip_cli.cli.app.DiffclipGroup`.
"""

from diffclip_cli.cli import commands  # noqa: F401  (registers the commands on the app)
from diffclip_cli.cli.app import app, main

__all__ = ["app", "main"]
