"""Batch manifests: one scene per row (CSV) or per list item (YAML)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from diffclip_cli.errors import InputError
from diffclip_cli.io.textfiles import read_text_file

__all__ = ["SceneJob", "read_manifest"]

_KNOWN = {"name", "hsi", "lidar", "output", "labels", "classes", "class_field", "layer",
          "model"}


@dataclass
class SceneJob:
    """One scene of a batch.

    Attributes:
        name: a label for logs and the summary (default: the output's stem).
        hsi: the HSI GeoTIFF.
        lidar: LiDAR GeoTIFFs (may be empty).
        output: the class map to write.
        labels: reference labels to evaluate the map against, if any.
        classes: a classes table for a label raster.
        class_field: the vector attribute holding classes.
        layer: the vector layer.
        model: a model file for this scene (default: the batch's ``--model``).
    """

    name: str
    hsi: Path
    output: Path
    lidar: list[Path] = field(default_factory=list)
    labels: Path | None = None
    classes: Path | None = None
    class_field: str | None = None
    layer: str | None = None
    model: Path | None = None


def _paths(value: Any, base: Path) -> list[Path]:
    if value is None or value == "":
        return []
    items = value if isinstance(value, list) else str(value).split(";")
    return [base / Path(str(v).strip()) for v in items if str(v).strip()]


def _job(row: dict[str, Any], base: Path, where: str, path: Path) -> SceneJob:
    row = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
    unknown = sorted(set(row) - _KNOWN)
    if unknown:
        raise InputError(f"{where} has unknown columns {unknown}", path=path,
                         hint=f"use {sorted(_KNOWN)}")
    for key in ("hsi", "output"):
        if not row.get(key):
            raise InputError(f"{where} has no {key!r}", path=path,
                             hint="every scene needs hsi and output")
    one = {k: next(iter(_paths(row.get(k), base)), None)
           for k in ("labels", "classes", "model")}
    output = base / Path(str(row["output"]).strip())
    return SceneJob(
        name=str(row.get("name") or output.stem),
        hsi=base / Path(str(row["hsi"]).strip()),
        output=output,
        lidar=_paths(row.get("lidar"), base),
        labels=one["labels"],
        classes=one["classes"],
        class_field=str(row["class_field"]).strip() if row.get("class_field") else None,
        layer=str(row["layer"]).strip() if row.get("layer") else None,
        model=one["model"],
    )


def read_manifest(path: str | Path) -> list[SceneJob]:
    """Read a batch manifest.

    CSV: a header with ``hsi`` and ``output`` and optionally ``lidar`` (several files separated
    by ``;``), ``labels``, ``classes``, ``class_field``, ``layer``, ``model``, ``name``. YAML: a
    list of mappings with the same keys (``lidar`` may be a list), or ``{"scenes": [...]}``.
    Relative paths are relative to the manifest's folder.

    Raises:
        InputError: the file is missing, unreadable, empty or has unknown or missing columns.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("manifest not found", path=path, hint="check the path")
    if not path.is_file():
        raise InputError("is a directory, not a manifest", path=path,
                         hint="give a CSV or YAML file listing the scenes")
    base = path.parent
    text = read_text_file(path, what="manifest",
                          hint="give a CSV or YAML file listing the scenes")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError(f"the manifest is not valid YAML ({exc})", path=path) from None
        if isinstance(data, dict):
            data = data.get("scenes")
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise InputError("a YAML manifest must be a list of scenes (mappings)", path=path,
                             hint="write '- hsi: a.tif\\n  output: a_map.tif' per scene")
        rows = data
    else:
        rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise InputError("the manifest lists no scene", path=path,
                         hint="add one row per scene with hsi and output")
    jobs = [_job(r, base, f"scene {i}", path) for i, r in enumerate(rows, start=1)]
    outputs = [j.output.resolve() for j in jobs]
    if len(set(outputs)) != len(outputs):
        raise InputError("two scenes write the same output", path=path,
                         hint="give every scene its own output")
    return jobs
