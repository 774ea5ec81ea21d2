"""Model files: a bundle saved as a self-checking archive, and read back only if it holds.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from diffclip_cli import __version__
from diffclip_cli.errors import ModelError
from diffclip_cli.io.atomic import atomic_path
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.model.config import (
    ConfigBase,
    FinetuneConfig,
    ModelConfig,
    Preset,
    PretrainConfig,
)
from diffclip_cli.model.modelfile import (
    DIGEST_VERSION,
    FORMAT_TAG,
    FORMAT_VERSION,
    KINDS,
    ModelBundle,
)
from diffclip_cli.model.text import Vocabulary

if TYPE_CHECKING:  # at run time imported where needed: it brings rasterio
    from diffclip_cli.sampling.normalise import SceneStats

__all__ = ["check_archive", "load_model", "save_model", "torch_save"]

log = logging.getLogger("diffclip")
_Cfg = TypeVar("_Cfg", bound=ConfigBase)
_PRIMITIVES = (str, int, float, bool, type(None))


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
