"""Steps the workflows share: opening a scene, naming the model in its errors, drift warnings.

Light at import time: the library is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffclip_cli.errors import ModelError

if TYPE_CHECKING:
    from diffclip_cli.io.raster import Scene

__all__ = ["about_model", "open_scene", "warn_if_out_of_distribution"]

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

    shifts = distribution_shift(scene, bundle.stats)
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
