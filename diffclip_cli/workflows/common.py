"""Steps the workflows share: scene, labels, model errors, drift warnings, preset overrides.

Light at import time: the library is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffclip_cli.errors import InputError, ModelError, OverrideError

if TYPE_CHECKING:
    import torch

    from diffclip_cli.io.classes import ClassTable
    from diffclip_cli.io.labels import LabelSet
    from diffclip_cli.io.raster import Scene
    from diffclip_cli.model.config import Preset

__all__ = ["TrainingOptions", "TrainingSettings", "about_model", "open_scene", "override_preset",
           "read_label_file", "read_label_files",
           "warn_if_out_of_distribution"]

log = logging.getLogger("diffclip")


@contextlib.contextmanager
def about_model(path: Path) -> Iterator[None]:
    """Name ``path`` in model errors raised inside the block that name no file.

    Building a classifier or its fast path from a damaged model raises a
    :class:`~diffclip_cli.errors.ModelError` that cannot know the file it came from.
    """
    try:
        yield
    except ModelError as exc:
        if exc.path is not None:
            raise
        raise ModelError(exc.message, path=path, hint=exc.hint) from None


def open_scene(hsi: str | Path, lidar: Sequence[str | Path] | None, *,
               resampling: str = "bilinear") -> Scene:
    """Open the HSI and LiDAR inputs as one scene on the HSI grid."""
    from diffclip_cli.io.raster import Scene

    return Scene.open(hsi, list(lidar or []), resampling=resampling)


def warn_if_out_of_distribution(scene: Scene, bundle: Any, *, model: Path) -> None:
    """Warn when the scene's values are clearly not those the model was trained on.

    E.g. reflectance 0-1 against a model trained on 0-10000: the map would be mostly wrong
    without any error. See :func:`diffclip_cli.sampling.drift.distribution_shift`.
    """
    from diffclip_cli.sampling.drift import describe_shift, distribution_shift

    shifts = distribution_shift(scene, bundle.scene_stats)
    for modality, label, files, count in (
            ("hsi", "HSI", [scene.hsi_path], bundle.hsi_bands),
            ("lidar", "LiDAR", list(scene.lidar_paths), bundle.lidar_bands)):
        off = [s for s in shifts if s.modality == modality]
        if not off:
            continue
        log.warning("%s: the values of %d of %d %s bands are far from those the model %s was "
                    "trained on: %s; the map is likely wrong: check the inputs' units and "
                    "scale (e.g. reflectance 0-1 against 0-10000) or train a model on this "
                    "scene", ", ".join(str(f) for f in files), len(off), count, label, model,
                    describe_shift(off))


def read_label_file(path: str | Path, scene_or_grid: Any, *,
                    classes: Path | ClassTable | None, class_field: str | None,
                    layer: str | None) -> LabelSet:
    """Read labels (vector or raster) onto a scene's grid, with an optional classes table."""
    from diffclip_cli.io.classes import ClassTable
    from diffclip_cli.io.labels import read_labels
    from diffclip_cli.io.raster import is_gdal_name

    grid = getattr(scene_or_grid, "grid", scene_or_grid)
    table = ClassTable.from_csv(classes) if isinstance(classes, Path) else classes
    if not is_gdal_name(path) and not Path(path).exists():
        raise InputError("label file not found", path=path, hint="check the --labels path")
    return read_labels(path, grid, class_field=class_field, layer=layer, classes=table)


def read_label_files(paths: Sequence[str | Path], scene_or_grid: Any, *,
                     classes: Path | None, class_field: str | None,
                     layer: str | None) -> LabelSet:
    """Read one or several label files onto a scene's grid as one set.

    The first file (with ``classes``, if given) defines the classes; the others are read
    with its class table, so a class they name that it does not know is an error naming the
    file (e.g. a filled-in ``diffclip suggest`` file with a misspelt class). Pixels labelled
    in several files count once; with different classes they are dropped and the report
    names them and their files (:func:`~diffclip_cli.io.labels.merge_labels`).

    Raises:
        InputError: a file is missing or unreadable.
        LabelError: a later file names a class the first does not have, or nothing is left.
    """
    from diffclip_cli.errors import LabelError
    from diffclip_cli.io.labels import merge_labels

    if not paths:
        raise LabelError("no label file given", hint="pass --labels FILE")
    first = read_label_file(paths[0], scene_or_grid, classes=classes,
                            class_field=class_field, layer=layer)
    sets = [first]
    for path in paths[1:]:
        try:
            sets.append(read_label_file(path, scene_or_grid, classes=first.classes,
                                        class_field=class_field, layer=layer))
        except LabelError as exc:
            if "not in the classes table" not in exc.message:
                raise
            raise LabelError(exc.message.replace("the classes table", "the classes of "
                                                 f"{Path(str(paths[0])).name}"),
                             path=exc.path or path,
                             hint="use those class names (case does not matter), or give "
                                  "--classes with every class") from None
    return merge_labels(sets)


@dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    """How a training runs: the fields every training request shares, files or not.

    The base of :class:`TrainingOptions` (the commands' file-level options) and of
    :class:`~diffclip_cli.workflows.fewshot.FewshotRequest` (the library's scene-level
    request), so each field is declared and checked once.

    Attributes:
        seed: the seed of every random choice.
        device: where to train: a :class:`torch.device` (as the command resolves it) or a
            name (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), resolved once by the
            workflow.
        budget: a time budget in seconds the schedule is sized to, or ``None``.
        pinned: recipe fields set explicitly, which a budget never changes.

    Raises:
        ValueError: a budget that is not a positive number of seconds.
    """

    seed: int = 0
    device: str | torch.device = "cpu"
    budget: float | None = None
    pinned: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.budget is not None and not self.budget > 0:
            raise ValueError(f"budget must be a positive number of seconds, not {self.budget}")


@dataclass(frozen=True, kw_only=True)
class TrainingOptions(TrainingSettings):
    """How a training workflow on files runs: :class:`TrainingSettings` and ``overwrite``.

    The base of :class:`~diffclip_cli.workflows.fewshot.FewshotOptions` and
    :class:`~diffclip_cli.workflows.pretrain.PretrainOptions`.

    Attributes:
        overwrite: replace existing outputs.
    """

    overwrite: bool = False


def override_preset(preset: Preset, overrides: Mapping[str, Any]) -> Preset:
    """``preset`` with ``overrides`` (``{"model.window": 7, ...}``), applied one at a time.

    Raises:
        OverrideError: an override does not fit; it names the one at fault.
    """
    for key, value in overrides.items():  # one at a time, to name the override at fault
        try:
            preset = preset.with_overrides(**{key: value})
        except ModelError as exc:
            raise OverrideError.misfit(key, value, preset.name, exc) from None
    return preset
