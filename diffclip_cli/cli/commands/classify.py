"""``diffclip classify``: a georeferenced land-cover map of a whole scene."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffclip_cli.cli.app import app
from diffclip_cli.cli.common import (
    StageProgress,
    about_model,
    classify_scene,
    interruptible,
    open_scene,
    start,
    warn_if_out_of_distribution,
)
from diffclip_cli.cli.console import console
from diffclip_cli.cli.options import (
    DEFAULT_MODEL,
    BatchSizeOpt,
    DeviceOpt,
    HsiArg,
    LidarArg,
    OverwriteOpt,
    QuietOpt,
    TileSizeOpt,
    VerboseOpt,
)
from diffclip_cli.errors import ModelError

_OUT = "Outputs"
_PERF = "Performance"

ModelOpt = Annotated[
    Path,
    typer.Option("--model", "-m", help="Model file from `diffclip fewshot`."),
]


def parse_creation_options(values: list[str] | None, *, cog: bool = False) -> dict[str, str]:
    """``["COMPRESS=ZSTD", ...]`` -> ``{"COMPRESS": "ZSTD"}``, checked.

    Malformed items, and options or values GDAL does not know (it would ignore them
    silently), are usage errors.
    """
    from diffclip_cli.io.maps import check_creation_options

    options: dict[str, str] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--co")
        options[name.strip().upper()] = value.strip()
    try:
        return check_creation_options(options, cog=cog)
    except ValueError as exc:
        raise typer.BadParameter(f"GDAL refuses these creation options: {exc}",
                                 param_hint="--co") from None


def run_classify(
    hsi: str | Path,
    lidar: list[str] | list[Path] | None,
    output: Path,
    *,
    model: Path,
    confidence: Path | None = None,
    probabilities: Path | None = None,
    quicklook: Path | None = None,
    tile_size: int | None = None,
    batch_size: int | None = None,
    cog: bool = False,
    creation_options: dict[str, str] | None = None,
    fast: bool = False,
    scheduler: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict[str, object]:
    """Classify one scene and write its outputs; what the command and ``batch`` call.

    Returns:
        A summary: output paths, pixels, per-class counts, seconds, pixels per second.
    """
    from diffclip_cli.io.atomic import output_set
    from diffclip_cli.io.maps import check_geotiff_name, map_files
    from diffclip_cli.model.device import resolve_device
    from diffclip_cli.model.modelfile import load_model
    from diffclip_cli.report.quicklook import quicklook as draw_quicklook

    outputs = {"map": map_files(output), "confidence raster": confidence,
               "probability raster": probabilities, "quicklook": quicklook}
    inputs = {"the HSI": hsi, "a LiDAR raster": lidar, "the model": model}
    # An output that would destroy an input is named first, then one of another format.
    with interruptible(), output_set(outputs, inputs=inputs, overwrite=overwrite) as outs:
        for raster in (p for p in (output, confidence, probabilities) if p is not None):
            check_geotiff_name(raster)
        if not model.exists():
            raise ModelError("model file not found", path=model,
                             hint="train one with `diffclip fewshot ... -o MODEL` or pass "
                                  "--model")
        bundle = load_model(model)
        if bundle.class_table is None:
            raise ModelError("is a pretrained model without classes", path=model,
                             hint="fine-tune it first with `diffclip fewshot --pretrained "
                                  f"{model}` and classify with that model")
        if fast:
            from diffclip_cli.infer.fast import load_student

            with about_model(model):
                load_student(bundle)
        dev = str(resolve_device(device))
        with open_scene(hsi, lidar) as scene:
            bundle.check_inputs(scene.hsi_bands, scene.lidar_bands, path=model)
            warn_if_out_of_distribution(scene, bundle, model=model)
            with StageProgress(enabled=show_progress) as progress, about_model(model):
                result = classify_scene(
                    scene, bundle, output, confidence=confidence, probabilities=probabilities,
                    tile_size=tile_size, batch_size=batch_size, device=dev, fast=fast,
                    cog=cog, creation_options=creation_options, overwrite=overwrite,
                    scheduler=scheduler, metadata={"model_file": str(model)},
                    progress=progress.pixels("classify"))
            if quicklook is not None:  # drawn from the complete map before it is renamed
                draw_quicklook(outs.pending(output), bundle.class_table, quicklook,
                               overwrite=overwrite, title=output.name)
    return {
        "output": str(result.output),
        "confidence": None if result.confidence is None else str(result.confidence),
        "probabilities": None if result.probabilities is None else str(result.probabilities),
        "quicklook": None if quicklook is None else str(quicklook),
        "pixels": result.pixels,
        "valid_pixels": result.valid_pixels,
        "class_pixels": result.class_pixels,
        "seconds": round(result.seconds, 2),
        "pixels_per_second": round(result.pixels_per_second, 1),
        "engine": result.engine,
    }


@app.command(rich_help_panel="Map")
def classify(
    hsi: HsiArg,
    lidar: LidarArg = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="The class map (GeoTIFF).",
                                         rich_help_panel=_OUT)] = ...,  # type: ignore[assignment]
    model: ModelOpt = DEFAULT_MODEL,
    confidence: Annotated[Path | None, typer.Option(
        "--confidence", help="Also write the top-class probability (float32, nodata -1).",
        rich_help_panel=_OUT, show_default=False)] = None,
    probabilities: Annotated[Path | None, typer.Option(
        "--probabilities", help="Also write one probability band per class (float32).",
        rich_help_panel=_OUT, show_default=False)] = None,
    quicklook: Annotated[Path | None, typer.Option(
        "--quicklook", help="Also draw the map as a PNG with a legend.",
        rich_help_panel=_OUT, show_default=False)] = None,
    cog: Annotated[bool, typer.Option(
        "--cog", help="Write Cloud-Optimized GeoTIFFs (tiled, with overviews).",
        rich_help_panel=_OUT)] = False,
    co: Annotated[list[str] | None, typer.Option(
        "--co", help="GDAL creation option NAME=VALUE (repeatable), e.g. COMPRESS=ZSTD.",
        rich_help_panel=_OUT, show_default=False)] = None,
    fast: Annotated[bool, typer.Option(
        "--fast", help="Use the model's distilled fast path (much faster on CPUs, "
        "slightly less faithful).", rich_help_panel=_PERF)] = False,
    tile_size: TileSizeOpt = None,
    batch_size: BatchSizeOpt = None,
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", help="Run the tiles on a dask.distributed scheduler at this address.",
        rich_help_panel=_PERF, show_default=False)] = None,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Classify every pixel of a scene into a georeferenced land-cover map.

    The map is on the HSI grid (CRS, transform, shape), uint8 (uint16 above 255 classes), with
    nodata 0 where any input band is nodata or LiDAR does not reach, a colour table, the class
    names in its tags and a sidecar MAP.json. Tiles are processed lazily, so memory does not
    grow with the scene; outputs appear only when complete.
    """
    level = start(verbose, quiet)
    summary = run_classify(
        hsi, lidar, output, model=model, confidence=confidence, probabilities=probabilities,
        quicklook=quicklook, tile_size=tile_size, batch_size=batch_size, cog=cog,
        creation_options=parse_creation_options(co, cog=cog), fast=fast, scheduler=scheduler,
        device=device, overwrite=overwrite, show_progress=level >= 0)
    console.print(f"Map: {summary['output']}  ({summary['valid_pixels']:,} of "
                  f"{summary['pixels']:,} pixels classified, {summary['seconds']} s, "
                  f"{summary['pixels_per_second']:,} px/s, {summary['engine']} engine)")
    for key in ("confidence", "probabilities", "quicklook"):
        if summary[key]:
            console.print(f"{key.capitalize()}: {summary[key]}")
