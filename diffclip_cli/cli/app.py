"""The ``diffclip`` command line: thin Typer commands over the library.

Errors are handled in one place, :class:`DiffclipGroup`: a
:class:`~diffclip_cli.errors.DiffclipError` prints one sentence and exits with its code; an
unexpected exception prints a one-line summary (its traceback with ``-v``) and exits 1; Ctrl-C
exits 130; a reader that closes the pipe (``diffclip ... | head``) ends it quietly (exit 1).
"""

from __future__ import annotations

import errno
import logging
import sys
import traceback
from typing import Annotated, Any

import typer
import typer.core
from rich.markup import escape

from diffclip_cli import __version__
from diffclip_cli.cli.console import err_console, setup_logging
from diffclip_cli.errors import DiffclipError, Interrupted

__all__ = ["DiffclipGroup", "app", "main"]

log = logging.getLogger("diffclip")


def _from_framework(exc: BaseException) -> bool:
    """Usage errors, --help and exits of click/Typer (Typer >= 0.29 vendors its own click)."""
    return type(exc).__module__.split(".")[0] in ("click", "typer")


def _closed_pipe(exc: BaseException) -> bool:
    """Whether the reader of our output went away (``diffclip ... | head``).

    Typer then exits quietly, as click and GDAL's tools do: it is not an internal error.
    """
    return isinstance(exc, OSError) and exc.errno == errno.EPIPE


class DiffclipGroup(typer.core.TyperGroup):
    """A Typer group that turns diffclip errors into one sentence and a distinct exit code."""

    def invoke(self, ctx: Any) -> Any:
        """Run the command; map diffclip errors to their exit code, usage errors untouched."""
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, Interrupted) as exc:
            message = (str(exc) if isinstance(exc, Interrupted)
                       else "interrupted; unfinished outputs were removed.")
            err_console.print(f"[bold red]Stopped:[/] {escape(message)}", highlight=False,
                              soft_wrap=True)
            ctx.exit(Interrupted.exit_code)
        except DiffclipError as exc:
            if log.isEnabledFor(logging.DEBUG):
                err_console.print(traceback.format_exc(), highlight=False, markup=False)
            err_console.print(f"[bold red]Error:[/] {escape(str(exc))}", highlight=False,
                              soft_wrap=True)
            ctx.exit(exc.exit_code)
        except Exception as exc:
            if _from_framework(exc) or _closed_pipe(exc):
                raise
            if log.isEnabledFor(logging.DEBUG):
                err_console.print(traceback.format_exc(), highlight=False, markup=False)
                hint = "please report it with the traceback above"
            else:
                hint = "run again with -v for the traceback and please report it"
            lines = str(exc).strip().splitlines()
            detail = f": {escape(lines[0].rstrip('.;: '))}" if lines else ""
            err_console.print(
                f"[bold red]Internal error:[/] {type(exc).__name__}{detail}; {hint}.",
                highlight=False, soft_wrap=True,
            )
            ctx.exit(1)


app = typer.Typer(
    name="diffclip",
    cls=DiffclipGroup,
    help=(
        "Few-shot, language-driven land-cover maps from hyperspectral (+ LiDAR) GeoTIFFs "
        "(DiffCLIP, AAAI 2025)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"diffclip {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Few-shot, language-driven land-cover maps from hyperspectral (+ LiDAR) GeoTIFFs."""
    setup_logging(0)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``diffclip`` console script."""
    import diffclip_cli.cli.commands  # noqa: F401  (registers the commands)

    app(args=argv if argv is not None else sys.argv[1:], prog_name="diffclip")
