"""The classify workflow: one scene and a model file to a map and its side files.

What ``diffclip classify`` and each scene of ``diffclip batch`` run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffclip_cli.errors import ModelError
from diffclip_cli.infer.classify import classify_scene
from diffclip_cli.progress import Progress, counting
from diffclip_cli.workflows.common import about_model, open_scene, warn_if_out_of_distribution

if TYPE_CHECKING:
    import torch

__all__ = ["ClassifyOptions", "run_classify"]


@dataclass(frozen=True, kw_only=True)
class ClassifyOptions:
    """How to classify a scene: the model, the optional side outputs and the execution.

    Attributes:
        model: the model file (from ``diffclip fewshot``); it must have classes.
        confidence: also write the top-class probability here (float32 GeoTIFF).
        probabilities: also write one probability band per class here.
        quicklook: also draw the map as a PNG with a legend here.
        tile_size: tile edge in pixels (``None``: from the band count).
        batch_size: windows per forward pass (``None``: by device).
        cog: write Cloud-Optimized GeoTIFFs.
        creation_options: GDAL creation options, already checked
            (:func:`~diffclip_cli.io.maps.check_creation_options`).
        fast: use the model's distilled fast path.
        scheduler: address of a dask.distributed scheduler to run the tiles on.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (or a :class:`torch.device`),
            resolved once by :func:`run_classify`.
        overwrite: replace existing outputs.

    Raises:
        ValueError: a size below its minimum (16 pixels per tile, 1 window per batch).
    """

    model: Path
    confidence: Path | None = None
    probabilities: Path | None = None
    quicklook: Path | None = None
    tile_size: int | None = None
    batch_size: int | None = None
    cog: bool = False
    creation_options: Mapping[str, str] = field(default_factory=dict)
    fast: bool = False
    scheduler: str | None = None
    device: str | torch.device = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.tile_size is not None and self.tile_size < 16:
            raise ValueError(f"tile_size must be at least 16, not {self.tile_size}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size}")


def run_classify(hsi: str | Path, lidar: Sequence[str | Path] | None, output: Path, *,
                 options: ClassifyOptions, progress: Progress | None = None
                 ) -> dict[str, Any]:
    """Classify one scene and write its outputs (all renamed together when complete).

    Args:
        hsi: the hyperspectral raster (path or GDAL dataset name); its grid is the map's.
        lidar: LiDAR rasters stacked as channels, or ``None``.
        output: the class map (GeoTIFF).
        options: the model, side outputs and execution.
        progress: called with the ``classify`` stage's pixel counts.

    Returns:
        A summary: output paths, pixels, per-class counts, seconds, pixels per second, engine.

    Raises:
        DeviceError: the device is unknown or not available here.
        ModelError: the model file is missing, damaged or has no classes.
        OutputError: an output would replace an input or an existing file.
    """
    from diffclip_cli.io.atomic import output_set
    from diffclip_cli.io.maps import check_geotiff_name, map_files
    from diffclip_cli.model.device import resolve_device
    from diffclip_cli.model.modelfile import load_model
    from diffclip_cli.report.quicklook import quicklook as draw_quicklook

    model, quicklook = options.model, options.quicklook
    confidence, probabilities = options.confidence, options.probabilities
    outputs = {"map": map_files(output), "confidence raster": confidence,
               "probability raster": probabilities, "quicklook": quicklook}
    inputs = {"the HSI": hsi, "a LiDAR raster": lidar, "the model": model}
    # An output that would destroy an input is named first, then one of another format.
    with output_set(outputs, inputs=inputs, overwrite=options.overwrite) as outs:
        for raster in (p for p in (output, confidence, probabilities) if p is not None):
            check_geotiff_name(raster)
        if not model.exists():
            raise ModelError("model file not found", path=model,
                             hint="train one with `diffclip fewshot ... -o MODEL` or pass "
                                  "--model")
        bundle = load_model(model)
        try:
            classes = bundle.require_classes()
        except ModelError as exc:  # named, with the command that gives this file classes
            raise ModelError(exc.message, path=model,
                             hint="fine-tune it first with `diffclip fewshot --pretrained "
                                  f"{model}` and classify with that model") from None
        if options.fast:
            from diffclip_cli.infer.fast import load_student

            with about_model(model):
                load_student(bundle)
        device = resolve_device(options.device)
        with open_scene(hsi, lidar) as scene:
            bundle.check_inputs(scene.hsi_bands, scene.lidar_bands, path=model)
            warn_if_out_of_distribution(scene, bundle, model=model)
            with about_model(model):
                result = classify_scene(
                    scene, bundle, output, confidence=confidence, probabilities=probabilities,
                    tile_size=options.tile_size, batch_size=options.batch_size, device=device,
                    fast=options.fast, cog=options.cog,
                    creation_options=dict(options.creation_options),
                    overwrite=options.overwrite, scheduler=options.scheduler,
                    metadata={"model_file": str(model)},
                    progress=counting(progress, "classify"))
            if quicklook is not None:  # drawn from the complete map before it is renamed
                draw_quicklook(outs.pending(output), classes, quicklook,
                               overwrite=options.overwrite, title=output.name)
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
