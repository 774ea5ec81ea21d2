"""Options shared by the commands, as in rasterio's ``rio`` (one definition, many commands)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "DEFAULT_MODEL",
    "BatchSizeOpt",
    "ClassFieldOpt",
    "ClassesOpt",
    "DeviceOpt",
    "HsiArg",
    "LabelFilesOpt",
    "LabelsOpt",
    "LayerOpt",
    "LidarArg",
    "ModelOpt",
    "OverwriteOpt",
    "QuietOpt",
    "SeedOpt",
    "VerboseOpt",
    "creation_option_errors",
    "parse_creation_options",
    "verbosity",
]

#: Where ``fewshot`` saves and ``classify`` looks for a model when none is named.
DEFAULT_MODEL = Path("diffclip-model.pt")

_IO = "Inputs and outputs"
_LAB = "Labels"
_RUN = "Run"

# Raster inputs are kept as text: GDAL dataset names (/vsizip//abs/x.zip/hsi.tif,
# NETCDF:x.nc:var, HDF5:"x.h5"://cube) must reach GDAL verbatim, which Path would not keep.
HsiArg = Annotated[
    str,
    typer.Argument(metavar="HSI", help="Hyperspectral GeoTIFF, or any raster GDAL reads "
                   "(/vsizip/..., NETCDF:file.nc:var, an ENVI .hdr); its grid is the output grid.",
                   show_default=False),
]
LidarArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="LIDAR",
        help="LiDAR GeoTIFF(s) (DSM, intensity...), stacked as channels in this order; "
        "resampled onto the HSI grid. Optional.",
        show_default=False,
    ),
]
LabelsOpt = Annotated[
    str,
    typer.Option(
        "--labels",
        help="Labelled pixels: a vector file (GeoPackage, GeoJSON, Shapefile; points or "
        "polygons) or a label GeoTIFF (0 = unlabelled).",
        rich_help_panel=_LAB,
        show_default=False,
    ),
]
LabelFilesOpt = Annotated[
    list[str],
    typer.Option(
        "--labels",
        metavar="FILE",
        help="Labelled pixels: a vector file (GeoPackage, GeoJSON, Shapefile; points or "
        "polygons) or a label GeoTIFF (0 = unlabelled). Repeat it to add files (e.g. a "
        "filled-in `diffclip suggest` file): the first defines the classes; a pixel labelled "
        "differently in two files is dropped and reported with both files.",
        rich_help_panel=_LAB,
        show_default=False,
    ),
]
ClassesOpt = Annotated[
    Path | None,
    typer.Option(
        "--classes",
        help="Classes table, CSV id,name[,description][,color]: names for a label raster's ids.",
        rich_help_panel=_LAB,
        show_default=False,
    ),
]
ClassFieldOpt = Annotated[
    str | None,
    typer.Option(
        "--class-field",
        help="Attribute holding class names or integer ids (default: a field named like "
        "class/label/landcover).",
        rich_help_panel=_LAB,
        show_default=False,
    ),
]
LayerOpt = Annotated[
    str | None,
    typer.Option("--layer", help="Layer of a multi-layer vector file.", rich_help_panel=_LAB,
                 show_default=False),
]
ModelOpt = Annotated[
    Path,
    typer.Option("--model", "-m", help="Model file from `diffclip fewshot`."),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace existing outputs.", rich_help_panel=_IO),
]
SeedOpt = Annotated[
    int,
    typer.Option("--seed", min=0, max=2**32 - 1,
                 help="Seed of every random choice (sampling, init, masking, noise).",
                 rich_help_panel=_RUN),
]
DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=_RUN),
]
BatchSizeOpt = Annotated[
    int | None,
    typer.Option("--batch-size", min=1, help="Windows per forward pass (default: by device).",
                 rich_help_panel=_RUN, show_default=False),
]
TileSizeOpt = Annotated[
    int | None,
    typer.Option("--tile-size", min=16, help="Tile edge in pixels; memory grows with its square "
                 "(default: from the band count, 256 up to 48 bands, 128 for 144 + 1).",
                 rich_help_panel=_RUN, show_default=False),
]
VerboseOpt = Annotated[
    bool,
    typer.Option("-v", "--verbose", help="More messages; tracebacks on errors.",
                 rich_help_panel=_RUN),
]
QuietOpt = Annotated[
    bool,
    typer.Option("-q", "--quiet", help="Only errors; no progress bars.", rich_help_panel=_RUN),
]


def verbosity(verbose: bool, quiet: bool) -> int:
    """Map ``-v``/``-q`` to a level: 1 verbose, 0 normal, -1 quiet.

    Raises:
        typer.BadParameter: when both are given.
    """
    if verbose and quiet:
        raise typer.BadParameter("-v and -q exclude each other")
    return 1 if verbose else (-1 if quiet else 0)


def parse_creation_options(values: list[str] | None) -> dict[str, str]:
    """``["COMPRESS=ZSTD", ...]`` -> ``{"COMPRESS": "ZSTD"}`` (GDAL checks them later).

    A malformed item is a usage error here; options or values GDAL refuses are refused when
    the write options are built (:func:`creation_option_errors`).

    Raises:
        typer.BadParameter: an item is not NAME=VALUE.
    """
    options: dict[str, str] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--co")
        options[name.strip().upper()] = value.strip()
    return options


@contextlib.contextmanager
def creation_option_errors() -> Iterator[None]:
    """Around building the write options: what GDAL refuses is a usage error of ``--co``.

    :class:`~diffclip_cli.infer.classify.WriteOptions` checks its creation options with GDAL
    itself (GDAL would otherwise ignore an unknown option or value silently) and raises
    ``ValueError``; nothing else in it can.

    Raises:
        typer.BadParameter: GDAL refuses an option.
    """
    try:
        yield
    except ValueError as exc:
        raise typer.BadParameter(f"GDAL refuses these creation options: {exc}",
                                 param_hint="--co") from None
