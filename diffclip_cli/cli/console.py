"""Console and logging shared by the commands (Rich on stderr, results on stdout)."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

__all__ = ["console", "err_console", "setup_logging"]

#: Results (tables, paths of written files) go to stdout.
console = Console(highlight=False)
#: Messages, warnings, errors and progress bars go to stderr.
err_console = Console(stderr=True, highlight=False)


def setup_logging(verbosity: int) -> None:
    """Configure the ``diffclip`` logger: ``-v`` (1) debug, 0 info, ``-q`` (-1) errors only."""
    level = {-1: logging.ERROR, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    logger = logging.getLogger("diffclip")
    logger.setLevel(level)
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        handler = RichHandler(console=err_console, show_time=False, show_path=False,
                              markup=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.propagate = False
    # GDAL's messages reach Python through rasterio's loggers; a failure they report is an
    # error of ours already (one sentence), so they are shown only with -v, never raw.
    gdal = logging.getLogger("rasterio")
    if not any(isinstance(h, logging.NullHandler) for h in gdal.handlers):
        gdal.addHandler(logging.NullHandler())
    for h in [h for h in gdal.handlers if isinstance(h, RichHandler)]:
        gdal.removeHandler(h)
    if verbosity > 0:
        gdal.addHandler(logger.handlers[0])
    gdal.propagate = False
    logging.captureWarnings(True)
