"""The suggest workflow: a scene and a model to the pixels worth labelling next, as a GeoPackage.

What ``diffclip suggest`` runs: every output checked against the inputs before any work, the
model read and checked against the scene, the pixels already labelled (``--labels``) read to
be left out, the scene scored tile by tile as ``classify`` scores it
(:func:`~diffclip_cli.infer.suggest.suggest_pixels`), the points written with what the model
says of each and an empty ``class`` field for the user, and, on request, a quicklook of the
predicted classes with the points numbered by rank; all renamed into place together.

Filled in (in QGIS, say) and given to ``diffclip fewshot`` as a second ``--labels`` file,
the points become shots (docs/suggest.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from diffclip_cli.errors import ModelError, UsageError
from diffclip_cli.progress import Progress, counting
from diffclip_cli.workflows.common import about_model, open_scene, read_label_files

if TYPE_CHECKING:
    import torch

__all__ = ["USER_FIELD", "SuggestOptions", "SuggestOutcome", "run_suggest"]

#: The field the user fills in with each point's class (``fewshot --labels`` reads it).
USER_FIELD = "class"


@dataclass(frozen=True, kw_only=True)
class SuggestOptions:
    """What to suggest and how.

    Attributes:
        model: the classifier model file.
        n: how many points.
        strategy: how they are chosen (:data:`~diffclip_cli.infer.suggest.STRATEGIES`).
        labels: label files whose pixels are already labelled (never suggested).
        classes: a classes table for a label raster among ``labels``.
        class_field: the class field of vector ``labels``.
        layer: the layer of multi-layer ``labels``.
        fast: score with the model's fast path.
        device: where to score (a name or a :class:`torch.device`).
        tile_size: tile edge (``None``: from the band count, as ``classify``).
        batch_size: windows per forward pass.
        quicklook: also draw the predicted classes with the points, as a PNG.
        seed: the ``random`` strategy's seed.
        overwrite: replace existing outputs.

    Raises:
        UsageError: ``n`` below 1, an unknown strategy, or a tile size below 16.
    """

    model: Path
    n: int = 50
    strategy: str = "cluster"
    labels: tuple[str | Path, ...] = ()
    classes: Path | None = None
    class_field: str | None = None
    layer: str | None = None
    fast: bool = False
    device: str | torch.device = "auto"
    tile_size: int | None = None
    batch_size: int | None = None
    quicklook: Path | None = None
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        from diffclip_cli.infer.suggest import STRATEGIES

        if self.n < 1:
            raise UsageError(f"the number of points must be at least 1, not {self.n}",
                             hint="pass -n 50, say")
        if self.strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy {self.strategy!r}",
                             hint=f"use one of {', '.join(STRATEGIES)}")
        if self.tile_size is not None and self.tile_size < 16:
            raise UsageError(f"the tile size must be at least 16 pixels, not {self.tile_size}")


@dataclass(frozen=True)
class SuggestOutcome:
    """What :func:`run_suggest` wrote.

    Attributes:
        output: the GeoPackage of points.
        quicklook: the PNG, if asked for.
        points: points written (fewer than asked where the scene has fewer candidates).
        candidates: valid, not yet labelled pixels scored.
        excluded: labelled pixels left out.
        strategy: how the points were chosen.
        seconds: time taken.
    """

    output: Path
    quicklook: Path | None
    points: int
    candidates: int
    excluded: int
    strategy: str
    seconds: float


def run_suggest(hsi: str | Path, lidar: Sequence[str | Path] | None, output: Path, *,
                options: SuggestOptions, progress: Progress | None = None) -> SuggestOutcome:
    """Choose the pixels to label next and write them as ranked points.

    Args:
        hsi: the hyperspectral raster (path or GDAL dataset name).
        lidar: LiDAR rasters stacked as channels, or ``None``.
        output: the GeoPackage to write (``.gpkg``).
        options: the model, how many points, how to choose them, what is labelled already.
        progress: called with the ``suggest`` stage's pixel counts.

    Raises:
        ModelError: the model file is missing, damaged, has no classes (or no fast path
            with ``fast``) or does not fit the scene.
        InputError: an input cannot be read.
        LabelError: the labels cannot be read.
        OutputError: an output would replace an input or an existing file.
    """
    from diffclip_cli.infer.predict import auto_tile_size, make_engine
    from diffclip_cli.infer.suggest import suggest_pixels
    from diffclip_cli.io.atomic import output_set
    from diffclip_cli.io.points import write_points
    from diffclip_cli.model.archive import load_model
    from diffclip_cli.model.device import resolve_device
    from diffclip_cli.report.quicklook import quicklook as draw_quicklook

    began = time.perf_counter()
    model = options.model
    outputs = {"suggestions": output, "quicklook": options.quicklook}
    inputs = {"the HSI": hsi, "a LiDAR raster": lidar, "the model": model,
              "the labels": list(options.labels), "the classes table": options.classes}
    with output_set(outputs, inputs=inputs, overwrite=options.overwrite):
        if output.suffix.lower() != ".gpkg":
            from diffclip_cli.errors import OutputError

            raise OutputError(f"ends in {output.suffix or 'no extension'}, but the points are "
                              "written as a GeoPackage", path=output,
                              hint=f"name it {output.with_suffix('.gpkg').name}")
        if not model.exists():
            raise ModelError("model file not found", path=model,
                             hint="train one with `diffclip fewshot ... -o MODEL`")
        bundle = load_model(model)
        try:
            classes = bundle.require_classes()
        except ModelError as exc:
            raise ModelError(exc.message, path=model,
                             hint="fine-tune it first with `diffclip fewshot --pretrained "
                                  f"{model}`") from None
        device = resolve_device(options.device)
        with open_scene(hsi, lidar) as scene:
            bundle.check_inputs(scene.hsi_bands, scene.lidar_bands, path=model)
            exclude = None
            if options.labels:
                known = read_label_files(list(options.labels), scene, classes=options.classes,
                                         class_field=options.class_field, layer=options.layer)
                exclude = (known.rows, known.cols)
            with about_model(model):
                engine = make_engine(bundle, fast=options.fast, device=device,
                                     batch_size=options.batch_size)
                tile = options.tile_size or auto_tile_size(
                    scene.hsi_bands + scene.lidar_bands
                    + sum(bundle.scene_stats.context_bands()))
                found = suggest_pixels(scene, engine, bundle.scene_stats, options.n,
                                       strategy=options.strategy, exclude=exclude,
                                       tile_size=tile, seed=options.seed,
                                       progress=counting(progress, "suggest"),
                                       overview=1024 if options.quicklook else 0)
            names = list(classes.names)
            write_points(output, scene.grid, found.rows, found.cols, {
                "rank": np.arange(1, len(found) + 1),
                "predicted": [names[i] for i in found.predicted],
                "probability": np.round(found.probability.astype(float), 4),
                "runner_up": [names[i] for i in found.runner_up],
                "runner_up_probability": np.round(found.runner_up_probability.astype(float),
                                                  4),
                USER_FIELD: [""] * len(found),
            }, layer="suggestions", overwrite=options.overwrite)
            if options.quicklook is not None and found.overview is not None:
                ids = np.asarray([0, *classes.ids])
                h, w = scene.grid.shape
                oh, ow = found.overview.shape
                draw_quicklook(ids[found.overview], classes, options.quicklook,
                               overwrite=options.overwrite,
                               title=f"{len(found)} pixels to label next ({found.strategy})",
                               points=((found.rows + 0.5) * oh / h - 0.5,
                                       (found.cols + 0.5) * ow / w - 0.5))
    return SuggestOutcome(output, options.quicklook, len(found), found.candidates,
                          0 if exclude is None else int(exclude[0].size), found.strategy,
                          time.perf_counter() - began)
