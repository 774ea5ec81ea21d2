"""The classify workflow: one scene and a model file to a map and its side files.

What ``diffclip classify`` and each scene of ``diffclip batch`` run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffclip_cli.errors import ModelError
from diffclip_cli.infer.classify import RunOptions, WriteOptions, classify_scene
from diffclip_cli.progress import Progress, counting
from diffclip_cli.workflows.common import about_model, open_scene, warn_if_out_of_distribution

__all__ = ["ClassifyOptions", "RunOptions", "WriteOptions", "run_classify"]


def _run_anywhere() -> RunOptions:
    """The execution a command gets by default: the device chosen by ``auto``."""
    return RunOptions(device="auto")


@dataclass(frozen=True, kw_only=True)
class ClassifyOptions:
    """How to classify a scene: the model, the quicklook, what is written and how it runs.

    Attributes:
        model: the model file (from ``diffclip fewshot``); it must have classes.
        quicklook: also draw the map as a PNG with a legend here.
        write: the side rasters, COG, creation options and overwriting
            (:class:`~diffclip_cli.infer.classify.WriteOptions`, checked when built);
            ``write.overwrite`` also covers the quicklook.
        run: tile size, batch size, device, engine, precision, threads and scheduler
            (:class:`~diffclip_cli.infer.classify.RunOptions`, checked when built); its
            device (default ``auto``) is resolved once by :func:`run_classify`.
    """

    model: Path
    quicklook: Path | None = None
    write: WriteOptions = field(default_factory=WriteOptions)
    run: RunOptions = field(default_factory=_run_anywhere)


@dataclass(frozen=True)
class ClassifyOutcome:
    """What :func:`run_classify` wrote.

    Attributes:
        output: the class map.
        confidence: the confidence raster, if asked for.
        probabilities: the probability raster, if asked for.
        quicklook: the quicklook PNG, if asked for.
        pixels: pixels of the grid.
        valid_pixels: pixels classified (the others are nodata).
        class_pixels: pixels per class name.
        seconds: time taken by the classification.
        pixels_per_second: classified pixels per second.
        engine: ``"faithful"`` or ``"fast"``.
    """

    output: Path
    confidence: Path | None
    probabilities: Path | None
    quicklook: Path | None
    pixels: int
    valid_pixels: int
    class_pixels: dict[str, int]
    seconds: float
    pixels_per_second: float
    engine: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (paths as text, times rounded)."""
        return {"output": str(self.output),
                "confidence": None if self.confidence is None else str(self.confidence),
                "probabilities": (None if self.probabilities is None
                                  else str(self.probabilities)),
                "quicklook": None if self.quicklook is None else str(self.quicklook),
                "pixels": self.pixels, "valid_pixels": self.valid_pixels,
                "class_pixels": dict(self.class_pixels), "seconds": round(self.seconds, 2),
                "pixels_per_second": round(self.pixels_per_second, 1), "engine": self.engine}


def run_classify(hsi: str | Path, lidar: Sequence[str | Path] | None, output: Path, *,
                 options: ClassifyOptions, progress: Progress | None = None
                 ) -> ClassifyOutcome:
    """Classify one scene and write its outputs (all renamed together when complete).

    Args:
        hsi: the hyperspectral raster (path or GDAL dataset name); its grid is the map's.
        lidar: LiDAR rasters stacked as channels, or ``None``.
        output: the class map (GeoTIFF).
        options: the model, the quicklook, what is written and how it runs.
        progress: called with the ``classify`` stage's pixel counts.

    Returns:
        The outputs written, pixel counts (per class too), time and engine.

    Raises:
        DeviceError: the device is unknown or not available here.
        ModelError: the model file is missing, damaged or has no classes.
        OutputError: an output would replace an input or an existing file.
    """
    from diffclip_cli.io.atomic import output_set
    from diffclip_cli.io.creation import check_geotiff_name
    from diffclip_cli.io.sidecars import map_files
    from diffclip_cli.model.archive import load_model
    from diffclip_cli.model.device import resolve_device
    from diffclip_cli.report.quicklook import quicklook as draw_quicklook

    model, quicklook, write = options.model, options.quicklook, options.write
    confidence, probabilities = write.confidence, write.probabilities
    outputs = {"map": map_files(output), "confidence raster": confidence,
               "probability raster": probabilities, "quicklook": quicklook}
    inputs = {"the HSI": hsi, "a LiDAR raster": lidar, "the model": model}
    # An output that would destroy an input is named first, then one of another format.
    with output_set(outputs, inputs=inputs, overwrite=write.overwrite) as outs:
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
        if options.run.fast:
            from diffclip_cli.infer.fast import load_student

            with about_model(model):
                load_student(bundle)
        run = dataclasses.replace(options.run, device=resolve_device(options.run.device))
        with open_scene(hsi, lidar) as scene:
            bundle.check_inputs(scene.hsi_bands, scene.lidar_bands, path=model)
            warn_if_out_of_distribution(scene, bundle, model=model)
            with about_model(model):
                result = classify_scene(scene, bundle, output, write=write, run=run,
                                        metadata={"model_file": str(model)},
                                        progress=counting(progress, "classify"))
            if quicklook is not None:  # drawn from the complete map before it is renamed
                draw_quicklook(outs.pending(output), classes, quicklook,
                               overwrite=write.overwrite, title=output.name)
    return ClassifyOutcome(
        output=Path(result.output), confidence=result.confidence,
        probabilities=result.probabilities, quicklook=quicklook, pixels=result.pixels,
        valid_pixels=result.valid_pixels, class_pixels=dict(result.class_pixels),
        seconds=result.seconds, pixels_per_second=result.pixels_per_second,
        engine=result.engine)
