"""The ``diffclip`` command line: thin Typer commands over the library.

Each command parses its options into an option object and calls one workflow
(:mod:`diffclip_cli.workflows`); no command imports another. Errors are turned into one
sentence and an exit code by :class:`~diffclip_cli.cli.app.DiffclipGroup`.
"""

from diffclip_cli.cli import commands  # noqa: F401  (registers the commands on the app)
from diffclip_cli.cli.app import app, main

__all__ = ["app", "main"]
