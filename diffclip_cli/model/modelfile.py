"""Self-describing model files: everything needed to use a model on a new scene.

A model file is a ``torch.save`` archive of plain types only: a format tag and version, the
metadata as one JSON string (configuration, band counts and names, normalisation statistics,
classes, prompts, vocabulary, provenance), the weights as a flat dict of tensors, and a free
``extras`` dict of tensors and primitives, and (from format 2) a SHA-256 digest of the
metadata, every weight record and the extras. It is read with
``torch.load(weights_only=True)``, so a file whose pickle would run code is refused without
running it; the archive's own CRCs and the digest are checked, and the metadata is validated
(statistics, classes, prompts and configuration against the band counts and the weights),
so a damaged file is refused instead of giving a wrong map.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pickle
import pickletools
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from diffclip_cli import __version__
from diffclip_cli.errors import ModelError
from diffclip_cli.io.atomic import atomic_path
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.config import (
    ConfigBase,
    FinetuneConfig,
    ModelConfig,
    Preset,
    PretrainConfig,
)
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.text import Vocabulary

if TYPE_CHECKING:  # at run time imported where needed: it brings rasterio
    from diffclip_cli.sampling.normalise import SceneStats

__all__ = [
    "FORMAT_TAG",
    "FORMAT_VERSION",
    "KINDS",
    "MEMBERS_KEY",
    "WAVELENGTH_TOLERANCE_NM",
    "ModelBundle",
    "build_classifier",
    "build_classifiers",
    "build_network",
    "bundle_from_classifier",
    "bundle_from_network",
    "check_archive",
    "load_model",
    "save_model",
    "torch_save",
]

log = logging.getLogger("diffclip")

_Cfg = TypeVar("_Cfg", bound=ConfigBase)

#: Identifies diffclip model files.
FORMAT_TAG = "diffclip-model"
#: The newest model-file format this diffclip reads and the one it writes (2: with the
#: integrity digest; format 1 files, which have none, are still read).
FORMAT_VERSION = 2
#: The first format whose files must carry the digest.
DIGEST_VERSION = 2
#: ``pretrained``: stage 1 only (image side); ``classifier``: a fine-tuned classifier.
KINDS = ("pretrained", "classifier")

_PRIMITIVES = (str, int, float, bool, type(None))
#: HSI band centres of a model and a scene may differ by this much (nanometres).
WAVELENGTH_TOLERANCE_NM = 1.0


def _check_plain(value: Any, where: str) -> None:
    """Refuse anything but tensors, primitives and lists/tuples/str-keyed dicts of them."""
    if isinstance(value, (torch.Tensor, *_PRIMITIVES)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has a non-string key {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where} holds a {type(value).__name__}; model files store only tensors "
                    "and plain Python values")


@dataclass
class ModelBundle:
    """Everything a model file holds, parsed once into typed objects.

    :func:`load_model` checks and parses the file's metadata once; the bundle then holds the
    configuration, statistics, classes and vocabulary as the objects the library works with,
    and :func:`save_model` writes them back in the file's plain JSON form (byte for byte what
    it was: every object round-trips through its ``to_dict``/``from_dict``).

    Attributes:
        kind: ``"pretrained"`` or ``"classifier"``.
        preset_config: the full configuration: the preset's name, the network
            (:attr:`config`, the model's own, not a reference to a preset file), pretraining
            and fine-tuning. Model files store no preset description.
        hsi_bands: HSI bands the model reads.
        lidar_bands: LiDAR channels (0: HSI only).
        band_names: ``{"hsi": [...], "lidar": [...]}``.
        scene_stats: the normalisation statistics of both modalities.
        state_dict: the weights.
        class_table: the classes, in output order; ``None`` for a pretrained model.
        template: the prompt template (``p1`` .. ``p5`` or a custom text); ``None`` if none.
        prompts: one prompt per class; ``None`` for a pretrained model.
        vocabulary: the prompts' vocabulary; ``None`` for a pretrained model.
        provenance: input files, shots, seed, package version, dates, training times, ...
        extras: further tensors and plain values (e.g. a distilled student).
        format_version: the file format.
        wavelengths: the HSI band centres in nanometres the model was trained on, or
            ``None`` when the training scene did not give them (and in files written before
            diffclip stored them; such files still load).

    The plain forms the file stores are read-only views of these attributes:
    :attr:`preset` (the name), :attr:`model_config`, :attr:`pretrain_config`,
    :attr:`finetune_config`, :attr:`stats` and :attr:`classes`.
    """

    kind: str
    preset_config: Preset
    hsi_bands: int
    lidar_bands: int
    band_names: dict[str, list[str]]
    scene_stats: SceneStats
    state_dict: dict[str, torch.Tensor]
    class_table: ClassTable | None = None
    template: str | None = None
    prompts: list[str] | None = None
    vocabulary: Vocabulary | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    wavelengths: list[float] | None = None

    # -- typed shortcuts and the stored plain forms ------------------------------------------

    @property
    def config(self) -> ModelConfig:
        """The model configuration (``preset_config.model``)."""
        return self.preset_config.model

    @property
    def preset(self) -> str:
        """The name of the preset the configuration came from."""
        return self.preset_config.name

    @property
    def model_config(self) -> dict[str, Any]:
        """The model configuration as stored in the file (plain JSON types; a copy)."""
        return self.preset_config.model.to_dict()

    @property
    def pretrain_config(self) -> dict[str, Any]:
        """The pretraining configuration as stored in the file (a copy)."""
        return self.preset_config.pretrain.to_dict()

    @property
    def finetune_config(self) -> dict[str, Any]:
        """The fine-tuning configuration as stored in the file (a copy)."""
        return self.preset_config.finetune.to_dict()

    @property
    def stats(self) -> dict[str, Any]:
        """The normalisation statistics as stored in the file (plain JSON types; a copy)."""
        return self.scene_stats.to_dict()

    @property
    def classes(self) -> list[dict[str, Any]] | None:
        """The class table as stored in the file (``ClassTable.to_records()``; a copy)."""
        return None if self.class_table is None else self.class_table.to_records()

    def require_classes(self) -> ClassTable:
        """The classes, in output order.

        Raises:
            ModelError: a pretrained model (no classes yet).
        """
        table = self.class_table
        if table is None or self.kind != "classifier":
            raise ModelError("this is a pretrained model without classes",
                             hint="fine-tune it on labelled pixels first (diffclip fewshot "
                                  "--pretrained)")
        return table

    # -- checks -------------------------------------------------------------------------------

    def check_inputs(self, hsi_bands: int, lidar_bands: int, *,
                     path: str | os.PathLike[str] | None = None,
                     wavelengths: Sequence[float] | None = None,
                     band_names: Sequence[str] | None = None) -> None:
        """Refuse a scene whose bands differ from the model's.

        Band counts must match. When ``wavelengths`` or ``band_names`` (of the scene's HSI)
        are given, the bands are compared too: wavelengths known on both sides must agree
        within :data:`WAVELENGTH_TOLERANCE_NM` (else a :class:`ModelError`); otherwise band
        names that differ from the model's, or wavelengths known on one side only, are a
        warning (the counts match, and names alone do not prove other bands).

        Args:
            hsi_bands: the scene's HSI bands.
            lidar_bands: the scene's LiDAR channels (0 when no LiDAR is given).
            path: the model file, named in the message.
            wavelengths: the scene's HSI band centres in nanometres, if known.
            band_names: the scene's HSI band names.

        Raises:
            ModelError: naming both counts, saying LiDAR is missing or unexpected, or naming
                the first band whose wavelength differs.
        """
        if hsi_bands != self.hsi_bands:
            raise ModelError(
                f"the model was trained on {self.hsi_bands} HSI bands but the scene has "
                f"{hsi_bands}", path=path,
                hint="use an HSI file with the same bands as the training scene, or train a "
                     "model on this one")
        if self.lidar_bands and not lidar_bands:
            raise ModelError(
                f"the model needs LiDAR ({self.lidar_bands} channel"
                f"{'s' if self.lidar_bands > 1 else ''}) but none was given", path=path,
                hint="pass the LiDAR raster(s) the model was trained with")
        if lidar_bands and not self.lidar_bands:
            raise ModelError(
                f"the model was trained on HSI alone but {lidar_bands} LiDAR channel"
                f"{'s were' if lidar_bands > 1 else ' was'} given", path=path,
                hint="drop the LiDAR input or train a model with LiDAR")
        if lidar_bands != self.lidar_bands:
            raise ModelError(
                f"the model was trained on {self.lidar_bands} LiDAR channel"
                f"{'s' if self.lidar_bands > 1 else ''} but the scene has {lidar_bands}",
                path=path,
                hint="pass the same LiDAR rasters as for training")
        if wavelengths is not None or band_names is not None:
            self._check_spectrum(wavelengths, band_names, path=path)

    def _check_spectrum(self, wavelengths: Sequence[float] | None,
                        band_names: Sequence[str] | None, *,
                        path: str | os.PathLike[str] | None) -> None:
        """Compare the scene's HSI band wavelengths (or names) with the model's."""
        if wavelengths is not None and self.wavelengths is not None:
            diffs = [abs(float(a) - float(b)) for a, b in zip(self.wavelengths, wavelengths,
                                                               strict=True)]
            if diffs and max(diffs) > WAVELENGTH_TOLERANCE_NM:
                first = next(i for i, d in enumerate(diffs) if d > WAVELENGTH_TOLERANCE_NM)
                raise ModelError(
                    f"the model was trained on HSI bands at {_span(self.wavelengths)} but the "
                    f"scene's bands are at {_span(wavelengths)}: band {first + 1} is at "
                    f"{float(wavelengths[first]):g} nm, not {self.wavelengths[first]:g} nm "
                    f"({sum(d > WAVELENGTH_TOLERANCE_NM for d in diffs)} of {len(diffs)} "
                    f"bands differ by more than {WAVELENGTH_TOLERANCE_NM:g} nm)", path=path,
                    hint="classify scenes of the training sensor and band subset, or train a "
                         "model on this one")
            return
        model_names = list(self.band_names.get("hsi", []))
        pairs = [] if band_names is None or len(model_names) != len(band_names) else [
            (i, a, str(b)) for i, (a, b) in enumerate(zip(model_names, band_names, strict=True))
            if a != str(b)]
        one_side = (wavelengths is None) != (self.wavelengths is None)
        if not pairs and not one_side:
            return
        parts = []
        if pairs:
            i, a, b = pairs[0]
            parts.append(f"the scene's HSI band names differ from the model's ({len(pairs)} of "
                         f"{len(model_names)}; band {i + 1} is {b!r}, the model's {a!r})")
        if one_side:
            parts.append("the model's wavelengths are unknown (its training scene gave none)"
                         f" while the scene's bands are at {_span(wavelengths)}"
                         if wavelengths is not None else
                         f"the scene's wavelengths are unknown while the model was trained on "
                         f"bands at {_span(self.wavelengths or [])}")
        log.warning("%s: %s, so the bands could not be checked; the counts match, so the map "
                    "is made: make sure the scene has the training sensor's bands, in the same "
                    "order", path or "model", "; ".join(parts))

    # -- (de)serialisation ----------------------------------------------------------------------

    def _metadata(self) -> dict[str, Any]:
        """The metadata in the file's plain JSON form."""
        return {
            "kind": self.kind,
            "preset": self.preset,
            "model_config": self.model_config,
            "pretrain_config": self.pretrain_config,
            "finetune_config": self.finetune_config,
            "hsi_bands": int(self.hsi_bands),
            "lidar_bands": int(self.lidar_bands),
            "band_names": self.band_names,
            "stats": self.stats,
            "classes": self.classes,
            "template": self.template,
            "prompts": self.prompts,
            "vocabulary": None if self.vocabulary is None else self.vocabulary.to_dict(),
            "provenance": self.provenance,
            "wavelengths": self.wavelengths,
        }


def save_model(bundle: ModelBundle, path: str | os.PathLike[str], *,
               overwrite: bool = False) -> Path:
    """Write a model file atomically.

    Args:
        bundle: the model.
        path: the output file (conventionally ``.pt``).
        overwrite: replace an existing file.

    Returns:
        The path written.

    Raises:
        OutputError: the file exists (without ``overwrite``) or cannot be written.
        ValueError: the bundle holds values that are not JSON-able or not plain.
    """
    if bundle.kind not in KINDS:
        raise ValueError(f"unknown model kind {bundle.kind!r}; use one of {KINDS}")
    try:
        metadata = json.dumps(bundle._metadata(), sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model metadata is not JSON-able: {exc}") from None
    state = {k: v.detach().cpu().contiguous() for k, v in bundle.state_dict.items()}
    extras = dict(bundle.extras)
    try:
        _check_plain(extras, "extras")
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    payload = {
        "format": FORMAT_TAG,
        "format_version": max(int(bundle.format_version), DIGEST_VERSION),
        "metadata": metadata,
        "state_dict": state,
        "extras": extras,
        "digest": _digest(metadata, state, extras),
    }
    with atomic_path(path, overwrite=overwrite) as tmp:
        torch_save(payload, tmp)
    return Path(path)


def torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save``, with its write failures raised as :class:`OSError`.

    Torch reports a full disk (or any failed write) as ``RuntimeError`` from its zip writer;
    inside :func:`~diffclip_cli.io.atomic.atomic_path` an ``OSError`` becomes the output's
    error (exit 7) instead of an internal error.
    """
    try:
        torch.save(obj, path)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        raise OSError(errno.EIO, "torch could not write the file"
                      + (f" ({lines[0]})" if lines else "")) from None


def _feed(h: Any, value: Any) -> None:
    """Feed a plain value (tensors, primitives, lists, str-keyed dicts) to a hash, canonically."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for k in sorted(value):
            _feed(h, str(k))
            _feed(h, value[k])
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}".encode())
        for v in value:
            _feed(h, v)
    else:
        text = repr(value).encode("utf-8", "surrogatepass")
        h.update(f"P{type(value).__name__}{len(text)}:".encode() + text)


def _digest(metadata: str, state: dict[str, torch.Tensor], extras: dict[str, Any]
            ) -> dict[str, str]:
    """SHA-256 digests of the metadata, the weight records and the extras."""
    out = {"algorithm": "sha256"}
    for name, value in (("metadata", metadata), ("state_dict", state), ("extras", extras)):
        h = hashlib.sha256()
        _feed(h, value)
        out[name] = h.hexdigest()
    return out


def check_archive(path: Path, *, what: str = "model file",
                  hint: str = "copy the model again or re-train it") -> None:
    """Check the CRC of every record of the zip archive ``torch.save`` writes.

    Raises:
        ModelError: the archive cannot be read or a record does not match its CRC.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        log.debug("zip check of %s failed: %r", path, exc)
        raise ModelError(f"the {what} is truncated or damaged (its archive cannot be read)",
                         path=path, hint=hint) from None
    if bad is not None:
        raise ModelError(f"the {what} is damaged: its record {bad.split('/')[-1]!r} does "
                         "not match the checksum stored with it", path=path, hint=hint)


def _check_digest(payload: dict[str, Any], version: int, path: Path) -> None:
    """Compare the stored digest with the content (format 2 files must have one)."""
    stored = payload.get("digest")
    if stored is None:
        if version >= DIGEST_VERSION:
            raise ModelError("the model file is damaged: its integrity digest is missing",
                             path=path, hint="copy the model again or re-train it")
        log.info("%s: a model file of format %d has no integrity digest; re-save it with "
                 "this diffclip to add one", path, version)
        return
    if not isinstance(stored, dict) or stored.get("algorithm") != "sha256":
        raise ModelError("the model file is damaged: its integrity digest is unreadable",
                         path=path, hint="copy the model again or re-train it")
    actual = _digest(payload["metadata"], dict(payload["state_dict"]),
                     dict(payload.get("extras") or {}))
    damaged = [what for what, name in (("metadata", "metadata"), ("weights", "state_dict"),
                                       ("extras", "extras")) if stored.get(name) != actual[name]]
    if damaged:
        raise ModelError(f"the model file is damaged: its {' and '.join(damaged)} do not match "
                         "the checksum stored in it, so it was not used", path=path,
                         hint="copy the model again or re-train it")


def load_model(path: str | os.PathLike[str]) -> ModelBundle:
    """Read a model file without ever running code stored in it.

    Raises:
        ModelError: the file is missing, not a diffclip model, carries code (refused unrun),
            or was made by a newer diffclip.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError("model file not found", path=path,
                         hint="check the path or train a model first")
    if not path.is_file():
        raise ModelError("is a directory, not a model file", path=path,
                         hint="give the .pt file written by diffclip")
    if path.stat().st_size == 0:
        raise ModelError("is an empty file (0 bytes), not a model", path=path,
                         hint="copy the model again or re-train it")
    if _is_zip(path):
        check_archive(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _carries_code(path, exc):
            raise ModelError("refused: the file holds code or objects a model file never "
                             "holds, so it was not loaded (nothing in it was run)", path=path,
                             hint="only load model files made by diffclip from a source you "
                                  "trust") from None
        raise ModelError("is not a diffclip model file", path=path,
                         hint="give a .pt file written by diffclip") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError,
            AttributeError, KeyError, IndexError, TypeError) as exc:
        log.debug("torch.load failed on %s: %r", path, exc)
        if _is_zip(path):
            raise ModelError("the model file is truncated or damaged (its archive cannot be "
                             "read)", path=path,
                             hint="copy the model again or re-train it") from None
        raise ModelError("is not a diffclip model file", path=path,
                         hint="give a .pt file written by diffclip") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        raise ModelError("not a diffclip model file", path=path,
                         hint="give a .pt file written by diffclip")
    version = payload.get("format_version")
    if not isinstance(version, int):
        raise ModelError("the model file has no format version", path=path,
                         hint="re-save it with diffclip")
    if version > FORMAT_VERSION:
        raise ModelError(
            f"made by a newer diffclip (model format {version}; this diffclip {__version__} "
            f"reads up to {FORMAT_VERSION})", path=path,
            hint="upgrade diffclip to use this model")
    if not isinstance(payload.get("metadata"), str) or not isinstance(
            payload.get("state_dict"), dict):
        raise ModelError("the model file is damaged (no metadata or weights)", path=path,
                         hint="re-train or re-copy the model")
    _check_digest(payload, version, path)
    return _parse(payload, version, path)


def _parse(payload: dict[str, Any], version: int, path: Path) -> ModelBundle:
    """The bundle of a checked payload: its metadata parsed once into typed objects.

    Raises:
        ModelError: the metadata is unreadable, names an unknown kind or configuration field
            (a newer diffclip made the file), or is inconsistent with itself or the weights.
    """
    try:
        meta = json.loads(payload["metadata"])
        kind = meta["kind"]
        name = meta["preset"]
        configs = (meta["model_config"], meta["pretrain_config"], meta["finetune_config"])
        hsi_bands, lidar_bands = int(meta["hsi_bands"]), int(meta["lidar_bands"])
        band_names = meta["band_names"]
        stats = meta["stats"]
        classes = meta["classes"]
        template = meta["template"]
        prompts = meta["prompts"]
        vocabulary = meta["vocabulary"]
        provenance = meta["provenance"]
        wavelengths = _wavelengths(meta.get("wavelengths"), hsi_bands)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"the model file is damaged (metadata: {exc})", path=path,
                         hint="re-train or re-copy the model") from None
    if kind not in KINDS:
        raise ModelError(f"unknown model kind {kind!r}", path=path, hint="upgrade diffclip")
    if kind == "classifier" and (not prompts or vocabulary is None or classes is None):
        raise ModelError("the classifier file lacks its classes, prompts or vocabulary",
                         path=path, hint="re-train the model")
    state_dict = dict(payload["state_dict"])
    model = _config(ModelConfig, "model", configs[0], path)
    pretrain = _config(PretrainConfig, "pretraining", configs[1], path)
    finetune = _config(FinetuneConfig, "fine-tuning", configs[2], path)
    try:
        preset = Preset(name=str(name), model=model, pretrain=pretrain, finetune=finetune)
    except ModelError as exc:
        raise _damaged(f"its configurations do not fit together ({exc.message})",
                       path) from None
    if hsi_bands < 1 or lidar_bands < 0:
        raise _damaged(f"it claims {hsi_bands} HSI bands and {lidar_bands} LiDAR channels",
                       path)
    scene_stats = _stats(stats, hsi_bands, lidar_bands, path)
    if not isinstance(band_names, dict) or [
            len(band_names.get(k) or []) for k in ("hsi", "lidar")] != [hsi_bands, lidar_bands]:
        raise _damaged("its band names do not match its band counts", path)
    table = vocab = None
    if kind == "classifier":
        table, vocab = _classes(classes, vocabulary, prompts, state_dict,
                                model.context_length, path)
    return ModelBundle(
        kind=kind, preset_config=preset, hsi_bands=hsi_bands, lidar_bands=lidar_bands,
        band_names=band_names, scene_stats=scene_stats, state_dict=state_dict,
        class_table=table, template=template, prompts=prompts, vocabulary=vocab,
        provenance=provenance, extras=dict(payload.get("extras") or {}),
        format_version=version, wavelengths=wavelengths)


def _span(wavelengths: Sequence[float]) -> str:
    """``400-2500 nm (204 bands)``: a band set's wavelengths in a few words."""
    return (f"{min(wavelengths):g}-{max(wavelengths):g} nm ({len(wavelengths)} band"
            f"{'s' if len(wavelengths) != 1 else ''})")


def _wavelengths(value: Any, bands: int) -> list[float] | None:
    """The stored wavelengths (absent in older files), checked: one number per HSI band."""
    if value is None:
        return None
    values = [float(v) for v in value]
    if len(values) != bands:
        raise ValueError(f"{len(values)} wavelengths for {bands} HSI bands")
    return values


def _damaged(what: str, path: Path) -> ModelError:
    return ModelError(f"the model file is damaged: {what}", path=path,
                      hint="copy the model again or re-train it")


def _config(cls: type[_Cfg], what: str, value: Any, path: Path) -> _Cfg:
    """One stored configuration, parsed.

    Raises:
        ModelError: a field this diffclip does not know (a newer diffclip made the file), or
            a configuration that is not a mapping or is invalid (the file is damaged).
    """
    if not isinstance(value, dict):
        raise _damaged(f"its {what} configuration is not a mapping", path)
    unknown = cls.unknown_fields(value)
    if unknown:
        raise ModelError(
            f"its {what} configuration has fields this diffclip {__version__} does not "
            f"know ({', '.join(unknown)}), so a newer diffclip made it", path=path,
            hint="upgrade diffclip to use this model")
    try:
        return cls.from_dict(value)
    except ModelError as exc:
        raise _damaged(f"its {what} configuration is invalid ({exc.message})", path) from None


def _stats(value: Any, hsi_bands: int, lidar_bands: int, path: Path) -> SceneStats:
    """The stored normalisation statistics, parsed and checked against the band counts.

    Raises:
        ModelError: unreadable statistics, or statistics that do not fit the bands.
    """
    from diffclip_cli.sampling.normalise import SceneStats

    try:
        stats = SceneStats.from_dict(value)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _damaged(f"its normalisation statistics are unreadable ({exc})", path) from None
    for what, band_stats, count in (("HSI", stats.hsi, hsi_bands),
                                    ("LiDAR", stats.lidar, lidar_bands)):
        if not count:  # HSI-only model: LiDAR statistics, if any, are never used
            continue
        if band_stats is None:
            raise _damaged(f"it has no {what} statistics for its {count} {what} bands", path)
        n = (band_stats.center.size, band_stats.scale.size)
        if band_stats.center.ndim != 1 or n != (count, count):
            raise _damaged(f"its {what} statistics cover {n[0]} bands, not the model's "
                           f"{count}", path)
        if not (np.isfinite(band_stats.center).all() and np.isfinite(band_stats.scale).all()
                and (band_stats.scale > 0).all()):
            raise _damaged(f"its {what} statistics hold non-finite or non-positive values",
                           path)
    return stats


def _classes(records: Any, vocabulary: Any, prompts: list[str],
             state_dict: dict[str, torch.Tensor], context: int, path: Path
             ) -> tuple[ClassTable, Vocabulary]:
    """A classifier's stored class table and vocabulary, parsed.

    They are checked against the prompts and the prompt token ids.

    Raises:
        ModelError: unreadable records, or classes, prompts and token ids that disagree.
    """
    try:
        table = ClassTable.from_records(records or [])
        vocab = Vocabulary.from_dict(vocabulary or {})
    except Exception as exc:  # any malformed record: the file is damaged
        raise _damaged(f"its class table or vocabulary is unreadable ({exc})", path) from None
    if len(prompts) != len(table):
        raise _damaged(f"it has {len(table)} classes but {len(prompts)} prompts", path)
    ids = state_dict.get("prompt_ids")
    if not isinstance(ids, torch.Tensor) or tuple(ids.shape) != (len(table), context):
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else None
        raise _damaged(f"its prompt token ids have shape {shape}, not ({len(table)}, "
                       f"{context}) for its {len(table)} classes", path)
    if ids.is_floating_point() or (ids.numel() and (
            int(ids.min()) < 0 or int(ids.max()) >= len(vocab))):
        raise _damaged(f"its prompt token ids fall outside its vocabulary of "
                       f"{len(vocab)} words", path)
    return table, vocab


def _is_zip(path: Path) -> bool:
    """Whether the file starts like a zip archive (the container ``torch.save`` writes)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


#: Pickle opcodes that import or call something: what a model file must never need.
_CODE_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ",
                           "NEWOBJ_EX"})


def _carries_code(path: Path, exc: BaseException) -> bool:
    """Whether a file refused by the weights-only unpickler asks to import or call code.

    Torch says so for zip archives ("unsupported global"); a bare pickle is scanned opcode by
    opcode (:func:`pickletools.genops` only parses, it never executes anything).
    """
    text = str(exc).lower()
    if "global" in text and ("unsupported" in text or "blocked" in text):
        return True
    if _is_zip(path):
        return False
    try:
        with open(path, "rb") as f:
            data = f.read(64 * 1024 * 1024)
        return any(op.name in _CODE_OPCODES for op, _, _ in pickletools.genops(data))
    except Exception:  # not a pickle at all (text, an image, ...): no code either
        return False


def _provenance(provenance: dict[str, Any] | None) -> dict[str, Any]:
    out = {"package": "diffclip", "version": __version__,
           "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out.update(provenance or {})
    return out


def _check_names(band_names: dict[str, list[str]] | None, hsi: int, lidar: int
                 ) -> dict[str, list[str]]:
    names = {"hsi": [f"band {i + 1}" for i in range(hsi)],
             "lidar": [f"lidar {i + 1}" for i in range(lidar)]}
    for key, given in (band_names or {}).items():
        if key not in names or len(given) != len(names[key]):
            raise ValueError(f"band_names[{key!r}] must name {len(names.get(key, []))} bands")
        names[key] = [str(n) for n in given]
    return names


def bundle_from_network(
    net: DiffCLIPNet,
    *,
    preset: Preset,
    stats: SceneStats,
    band_names: dict[str, list[str]] | None = None,
    provenance: dict[str, Any] | None = None,
    extras: dict[str, Any] | None = None,
    wavelengths: Sequence[float] | None = None,
) -> ModelBundle:
    """A ``pretrained`` bundle of a stage-1 network.

    Args:
        net: the pretrained image side.
        preset: the preset used: its name and its pretraining/fine-tuning configuration are
            stored (the model configuration is the network's own; the description is not).
        stats: the normalisation statistics.
        band_names: ``{"hsi": [...], "lidar": [...]}``; defaults to numbered names.
        provenance: what to record about how the model was made (merged over the package
            name, version and creation date).
        extras: further tensors and plain values.
        wavelengths: the HSI band centres in nanometres (``Scene.wavelengths``), if known.
    """
    if wavelengths is not None and len(wavelengths) != net.hsi_bands:
        raise ValueError(f"{len(wavelengths)} wavelengths for {net.hsi_bands} HSI bands")
    return ModelBundle(
        kind="pretrained",
        preset_config=Preset(name=preset.name, model=net.config, pretrain=preset.pretrain,
                             finetune=preset.finetune),
        hsi_bands=net.hsi_bands,
        lidar_bands=net.lidar_bands,
        band_names=_check_names(band_names, net.hsi_bands, net.lidar_bands),
        scene_stats=stats,
        state_dict={k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        provenance=_provenance(provenance),
        extras=dict(extras or {}),
        wavelengths=None if wavelengths is None else [float(v) for v in wavelengths],
    )


#: The key of an ensemble's further members in :attr:`ModelBundle.extras`: a list of their
#: state dicts (member 0 is the bundle's own ``state_dict``).
MEMBERS_KEY = "members"


def bundle_from_classifier(
    classifier: DiffCLIPClassifier | Sequence[DiffCLIPClassifier],
    *,
    preset: Preset,
    stats: SceneStats,
    classes: ClassTable,
    template: str | None,
    band_names: dict[str, list[str]] | None = None,
    provenance: dict[str, Any] | None = None,
    extras: dict[str, Any] | None = None,
    wavelengths: Sequence[float] | None = None,
) -> ModelBundle:
    """A ``classifier`` bundle of a fine-tuned classifier (or of an ensemble's members).

    Args:
        classifier: the classifier, its prompts the classes in ``classes`` order; or the
            members of an ensemble (same architecture and prompts): the first is the
            bundle's weights, the others go to ``extras["members"]``
            (:func:`build_classifiers` builds them all).
        preset: the preset used.
        stats: the normalisation statistics.
        classes: the class table (same length and order as the prompts).
        template: the prompt template the prompts were built with.
        band_names: ``{"hsi": [...], "lidar": [...]}``; defaults to numbered names.
        provenance: how the model was made (seed, shots, inputs, training times, ...).
        extras: further tensors and plain values.
        wavelengths: the HSI band centres in nanometres (``Scene.wavelengths``), if known.

    Raises:
        ModelError: the class table and the prompts differ in length.
    """
    members = ([classifier] if isinstance(classifier, DiffCLIPClassifier)
               else list(classifier))
    if not members:
        raise ModelError("a classifier bundle needs at least one classifier")
    classifier = members[0]
    net = classifier.net
    if len(classes) != classifier.num_classes:
        raise ModelError(f"{len(classes)} classes but the classifier has "
                         f"{classifier.num_classes} prompts")
    bundle = bundle_from_network(net, preset=preset, stats=stats, band_names=band_names,
                                 provenance=provenance, extras=extras,
                                 wavelengths=wavelengths)
    bundle.kind = "classifier"
    bundle.class_table = classes
    bundle.template = template
    bundle.prompts = classifier.prompts
    bundle.vocabulary = classifier.vocabulary
    bundle.state_dict = {k: v.detach().cpu().clone()
                         for k, v in classifier.state_dict().items()}
    if len(members) > 1:
        for other in members[1:]:
            if (other.prompts != classifier.prompts
                    or other.net.input_bands != net.input_bands):
                raise ModelError("the members of an ensemble must share prompts and inputs")
        bundle.extras[MEMBERS_KEY] = [{k: v.detach().cpu().clone()
                                       for k, v in m.state_dict().items()}
                                      for m in members[1:]]
    return bundle


def _load_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"the weights do not fit the stored configuration ({first})",
                         hint="the model file is damaged; re-train it") from None


def build_network(bundle: ModelBundle) -> DiffCLIPNet:
    """The image side of a bundle (either kind), weights loaded, in eval mode."""
    net = DiffCLIPNet(bundle.config, hsi_bands=bundle.hsi_bands,
                      lidar_bands=bundle.lidar_bands,
                      context_bands=bundle.scene_stats.context_bands())
    if bundle.kind == "pretrained":
        _load_state(net, bundle.state_dict)
    else:
        prefix = "net."
        _load_state(net, {k[len(prefix):]: v for k, v in bundle.state_dict.items()
                          if k.startswith(prefix)})
    return net.eval()


def build_classifier(bundle: ModelBundle) -> DiffCLIPClassifier:
    """The classifier of a ``classifier`` bundle, weights loaded, in eval mode.

    For an ensemble, its first member (:func:`build_classifiers` gives them all).

    Raises:
        ModelError: the bundle is a pretrained model (no classes yet), or is damaged.
    """
    return _classifier(bundle, bundle.state_dict)


def build_classifiers(bundle: ModelBundle) -> list[DiffCLIPClassifier]:
    """Every member of a ``classifier`` bundle (one unless it is an ensemble), in eval mode.

    Raises:
        ModelError: the bundle is a pretrained model (no classes yet), or is damaged.
    """
    extra = bundle.extras.get(MEMBERS_KEY) or []
    if not isinstance(extra, list) or not all(isinstance(s, dict) for s in extra):
        raise ModelError("the ensemble's members are unreadable",
                         hint="the model file is damaged; re-train it")
    return [_classifier(bundle, state) for state in (bundle.state_dict, *extra)]


def _classifier(bundle: ModelBundle, state: dict[str, torch.Tensor]) -> DiffCLIPClassifier:
    if bundle.kind != "classifier" or bundle.vocabulary is None:
        raise ModelError("this is a pretrained model without classes",
                         hint="fine-tune it on labelled pixels first")
    net = DiffCLIPNet(bundle.config, hsi_bands=bundle.hsi_bands,
                      lidar_bands=bundle.lidar_bands,
                      context_bands=bundle.scene_stats.context_bands())
    clf = DiffCLIPClassifier(net, vocabulary=bundle.vocabulary)
    ids = state.get("prompt_ids")
    if ids is None:
        raise ModelError("the classifier weights lack the prompt tokens",
                         hint="the model file is damaged; re-train it")
    clf.set_token_ids(ids)
    _load_state(clf, state)
    return clf.eval()
