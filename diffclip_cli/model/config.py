"""Model and training configuration, and the named presets that ship with the package.

A preset is a YAML file with four parts: ``name``/``description``, ``model`` (the network),
``pretrain`` (masked-diffusion stage) and ``finetune`` (few-shot stage). The presets are data
files of the package (``diffclip_cli/presets/``, in the wheel as in a checkout). Every field can
be overridden with :func:`dataclasses.replace` or the ``with_overrides`` methods, which validate
the result.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from diffclip_cli.errors import DiffclipError, ModelError

__all__ = [
    "TEMPLATE_NAMES",
    "ConfigBase",
    "FinetuneConfig",
    "ModelConfig",
    "Preset",
    "PretrainConfig",
    "check",
    "list_presets",
    "load_preset",
    "presets_dir",
]

#: Prompt templates a preset may name (see :mod:`diffclip_cli.model.prompts`).
TEMPLATE_NAMES: tuple[str, ...] = ("p1", "p2", "p3", "p4", "p5")

_C = TypeVar("_C", bound="ConfigBase")


class ConfigBase:
    """The validation base of every configuration dataclass.

    :class:`ModelConfig`, :class:`PretrainConfig`, :class:`FinetuneConfig`, the fast path's
    :class:`~diffclip_cli.model.student.StudentConfig` and
    :class:`~diffclip_cli.train.distill.DistillConfig` are frozen dataclasses on this base, so
    each of them checks, reads and writes its values the same way and reports every error as
    a :class:`ModelError` worded the same way:

    * on construction (and :func:`dataclasses.replace`), every field's type against its
      annotation (``int``, ``float``, ``bool``, ``str``, ``tuple[int, ...]``, optionally
      ``| None``): ``"<field> must be <kind>, got <value>"``; YAML lists become tuples (so
      configurations stay hashable and comparable) and numpy integers plain ``int``;
    * then the subclass's :meth:`validate` (ranges and relations), through :func:`check`;
    * :meth:`from_dict` refuses unknown fields (``"unknown <Class> fields [...]"``, hint: the
      valid ones) and turns a missing required field into ``"invalid <Class> (...)"``;
    * :meth:`to_dict` gives plain JSON types (tuples become lists), field by field in
      declaration order, and :meth:`with_overrides` a validated copy.
    """

    def validate(self) -> None:  # pragma: no cover - overridden
        """Raise :class:`ModelError` when a value is out of range (through :func:`check`)."""

    def __post_init__(self) -> None:
        self._coerce()
        self.validate()

    @classmethod
    def field_names(cls) -> list[str]:
        """The fields, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def unknown_fields(cls, data: Mapping[str, Any]) -> list[str]:
        """The keys of ``data`` that are not fields of this configuration, sorted."""
        return sorted(set(data) - set(cls.field_names()))

    def _coerce(self) -> None:
        """Check every field's type; lists become tuples, numpy numbers plain ones."""
        hints = _type_hints(type(self))
        for name in self.field_names():
            value = getattr(self, name)
            coerced = _checked(name, value, hints[name])
            if coerced is not value:
                object.__setattr__(self, name, coerced)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dictionary (tuples become lists)."""
        out: dict[str, Any] = {}
        for name in self.field_names():
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any], *, source: str | None = None) -> _C:
        """Build from a dictionary, refusing unknown keys.

        Args:
            data: field values; missing fields keep their defaults.
            source: the file the values come from, named in error messages.

        Raises:
            ModelError: on an unknown key, a missing required field or an invalid value.
        """
        unknown = cls.unknown_fields(data)
        if unknown:
            raise ModelError(f"unknown {cls.__name__} fields {unknown}", path=source,
                             hint=f"valid fields are {cls.field_names()}")
        try:
            return cls(**data)
        except ModelError as exc:
            raise ModelError(exc.message, path=source or exc.path, hint=exc.hint) from None
        except DiffclipError:  # a ValueError too, already worded
            raise
        except (TypeError, ValueError) as exc:
            raise ModelError(f"invalid {cls.__name__} ({exc})", path=source) from None

    def with_overrides(self: _C, **overrides: Any) -> _C:
        """A validated copy with some fields replaced.

        Raises:
            ModelError: on an unknown field or an invalid value.
        """
        data = self.to_dict()
        data.update(overrides)
        return type(self).from_dict(data)


def check(ok: bool, message: str, hint: str | None = None) -> None:
    """Raise :class:`ModelError` with ``message`` (and ``hint``) unless ``ok``.

    What every :meth:`ConfigBase.validate` reports its range errors with.
    """
    if not ok:
        raise ModelError(message, hint=hint)


#: The resolved annotations of each configuration class (they never change).
_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a configuration class, resolved once."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _checked(name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the annotation ``hint``, lists as tuples.

    Raises:
        ModelError: ``"<name> must be <kind>, got <value>"``.
    """
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return value
        (hint,) = [a for a in args if a is not type(None)]
        args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        check(isinstance(value, (list, tuple)),
              f"{name} must be a list of {_KINDS[args[0]][1]}, got {value!r}")
        items = tuple(_scalar(f"{name} entries", v, args[0]) for v in value)
        return value if isinstance(value, tuple) and all(
            a is b for a, b in zip(items, value, strict=True)) else items
    return _scalar(name, value, hint)


#: ``annotation -> (what a value must be, the same for a list's entries)``.
_KINDS: dict[Any, tuple[str, str]] = {
    bool: ("true or false", "true/false values"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a text", "texts"),
}


def _scalar(name: str, value: Any, hint: Any) -> Any:
    """A scalar checked against ``bool``, ``int``, ``float`` or ``str``."""
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if ok and type(value) is not int:
            value = int(value)
    elif hint is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if ok and not isinstance(value, (int, float)):
            value = float(value)
    elif hint is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a field type this base does not know
        raise TypeError(f"{name}: unsupported configuration field type {hint!r}")
    check(ok, f"{name} must be {_KINDS[hint][0]}, got {value!r}")
    return value


@dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """The network: image side, text side and the diffusion/masking of pretraining.

    Attributes:
        window: window size ``w`` in pixels (odd); one token per pixel.
        stem_hidden: width ``h`` of each modality's spectral stem.
        dim: token width ``d`` of the shared encoder (a multiple of 4 for the 2-D sine-cosine
            positional embedding, and of ``heads``).
        depth: blocks of the modality-shared encoder.
        heads: attention heads of the encoder.
        mlp_ratio: hidden width of each block's MLP, as a multiple of the block width.
        decoder_depth: blocks of each modality's decoder.
        decoder_dim: width of the decoders.
        decoder_heads: attention heads of the decoders.
        embed_dim: width of the joint image-text embedding.
        text_width: width of the text transformer.
        text_layers: blocks of the text transformer.
        text_heads: attention heads of the text transformer.
        context_length: longest prompt in tokens, start and end tokens included.
        mask_ratio: share of each modality's tokens masked during pretraining, in (0, 1).
        masking: mask tokens during pretraining (the method). ``False`` is the paper's
            "w/o mask" ablation: every token is visible to the encoder and ``mask_ratio`` is
            ignored; only for ablation studies.
        diffusion: add DDPM noise to the pretraining input (the method). ``False`` is the
            paper's "w/o diffusion" ablation: the encoder sees the clean input at ``t = 0``
            and the stage is plain masked reconstruction; only for ablation studies.
        masked_loss_weight: weight of the masked-token MSE (visible tokens weigh 1).
        timesteps: diffusion steps ``T``.
        noise_steps: pretraining draws its timesteps uniformly from ``0 .. noise_steps - 1``;
            0 means all ``timesteps`` (the paper). Classification encodes clean windows at
            ``t = 0``; with the paper's ``T = 1000`` linear schedule most draws leave almost
            no signal (``sqrt(abar_t) < 0.3`` for ``t > 500``) and the encoder learns features
            of noise. ``100`` keeps ``abar_t >= 0.90`` (see docs/model.md, "What pretraining
            does, measured").
        pixel_readout: the classifier reads, beside each modality's class token, the mean of
            the centre 3 x 3 pixel tokens (the stems' output, embedded, before the encoder
            mixes the window). Labels belong to pixels, not windows: without it the labelled
            pixel reaches the classifier only through attention over the whole window, and a
            per-pixel SVM beats the window model where classes are small or mixed
            (docs/model.md). ``False`` is the paper.
        context_scales: spatial-context scales the few-shot stage may give the network
            (Gaussian standard deviations in pixels; empty: none, the paper). Each pixel's
            bands are followed by the scene's leading principal components (and LiDAR
            channels) smoothed at the chosen scales; which prefix of this list a scene gets
            (``<= 1``, ``<= 2``, ... or none) is chosen from its labelled pixels by the
            cross-validation of the spectral-spatial baseline (docs/model.md, "Spatial
            context"). Where fields are wide (Indian Pines) it is worth 20 OA points; where
            classes are small or mixed the choice is none.
        context_components: principal components of the HSI bands the context smooths; 0:
            all of them (every spectral direction, each smoothed channel normalised on its
            own: the noise of the minor components averages out at field scale, and what is
            left separates crops the leading ones do not; docs/model.md).
        beta_start: first beta of the linear schedule.
        beta_end: last beta of the linear schedule.
        init_temperature: initial softmax temperature ``tau`` (learnable).
        max_logit_scale: upper clamp of ``1 / tau``.
        template: default prompt template, ``p1`` .. ``p5``.
    """

    window: int = 11
    stem_hidden: int = 128
    dim: int = 128
    depth: int = 4
    heads: int = 8
    mlp_ratio: float = 2.0
    decoder_depth: int = 3
    decoder_dim: int = 128
    decoder_heads: int = 8
    embed_dim: int = 128
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 8
    context_length: int = 77
    mask_ratio: float = 0.7
    masking: bool = True
    diffusion: bool = True
    masked_loss_weight: float = 0.1
    timesteps: int = 1000
    noise_steps: int = 0
    pixel_readout: bool = False
    context_scales: tuple[float, ...] = ()
    context_components: int = 30
    beta_start: float = 1e-4
    beta_end: float = 0.02
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    template: str = "p4"

    def validate(self) -> None:
        """Raise :class:`ModelError` when a value is out of range."""
        check(self.window >= 1 and self.window % 2 == 1,
              f"window must be a positive odd number of pixels, got {self.window}",
              "use e.g. 5, 7 or 11 so the window has a centre pixel")
        for name in ("stem_hidden", "dim", "depth", "heads", "decoder_depth", "decoder_dim",
                     "decoder_heads", "embed_dim", "text_width", "text_layers", "text_heads",
                     "timesteps"):
            check(int(getattr(self, name)) >= 1, f"{name} must be at least 1, "
                  f"got {getattr(self, name)}")
        check(self.dim % 4 == 0, f"dim must be a multiple of 4 (2-D sine-cosine positions), "
              f"got {self.dim}")
        check(self.decoder_dim % 4 == 0,
              f"decoder_dim must be a multiple of 4, got {self.decoder_dim}")
        for width, heads in (("dim", "heads"), ("decoder_dim", "decoder_heads"),
                             ("text_width", "text_heads")):
            w, h = getattr(self, width), getattr(self, heads)
            check(w % h == 0, f"{width} ({w}) must be divisible by {heads} ({h})",
                  f"choose {heads} among the divisors of {w}")
        check(self.mlp_ratio > 0, f"mlp_ratio must be positive, got {self.mlp_ratio}")
        check(0.0 < self.mask_ratio < 1.0,
              f"mask_ratio must lie strictly between 0 and 1, got {self.mask_ratio}")
        keep = int(self.window * self.window * (1.0 - self.mask_ratio))
        check(keep >= 1, f"mask_ratio {self.mask_ratio} masks every token of a "
              f"{self.window} x {self.window} window", "lower it or use a larger window")
        check(self.masked_loss_weight >= 0,
              f"masked_loss_weight must not be negative, got {self.masked_loss_weight}")
        check(0 <= int(self.noise_steps) <= self.timesteps,
              f"noise_steps must lie in 0..timesteps ({self.timesteps}), got {self.noise_steps}",
              "use 0 for every timestep (the paper) or fewer, e.g. 100")
        check(0.0 < self.beta_start <= self.beta_end < 1.0,
              f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        scales = [float(s) for s in self.context_scales]
        check(all(s > 0 for s in scales) and scales == sorted(set(scales)),
              f"context_scales must be positive and increasing, got {scales}",
              "use e.g. [1, 2, 4, 8, 16], or [] for no spatial context")
        check(self.context_components >= 0,
              f"context_components must be 0 (all) or more, got {self.context_components}")
        check(self.context_length >= 3,
              f"context_length must be at least 3, got {self.context_length}")
        check(self.init_temperature > 0,
              f"init_temperature must be positive, got {self.init_temperature}")
        check(self.max_logit_scale >= 1.0 / self.init_temperature,
              f"max_logit_scale ({self.max_logit_scale}) is below 1 / init_temperature")
        check(self.template in TEMPLATE_NAMES,
              f"unknown prompt template {self.template!r}", f"use one of {TEMPLATE_NAMES}")

    @property
    def tokens(self) -> int:
        """Tokens per modality (one per window pixel)."""
        return self.window * self.window

    @property
    def kept_tokens(self) -> int:
        """Tokens per modality left visible by the pretraining mask (all without masking)."""
        if not self.masking:
            return self.tokens
        return int(self.tokens * (1.0 - self.mask_ratio))


@dataclass(frozen=True)
class PretrainConfig(ConfigBase):
    """Stage 1, unsupervised masked diffusion: Adam + cosine annealing with warm restarts.

    Attributes:
        epochs: passes over the unlabelled windows.
        batch_size: windows per step.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        t0: epochs of the first cosine cycle.
        t_mult: growth factor of the cycle length.
        eta_min: the learning rate at the bottom of each cycle.
        augment: random centre crop resized back to the window, the same for both modalities.
        crop_sizes: crop sizes drawn from (odd if the window is odd, at most the window);
            empty means ``(window - 2, window)``.
        encoders: independent stage-1 runs (1: one encoder, the paper). Each has its own
            seed (initialisation, unlabelled windows, masks, noise); the fine-tuning's
            ``members`` are spread over them in turn. Members fine-tuned from one pretrained
            encoder stay close to it and agree with each other, so their average gains less
            than that of members with different starts (docs/model.md, "Several
            encoders"). Costs ``encoders`` times the pretraining.
    """

    epochs: int = 400
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 1e-4
    t0: int = 5
    t_mult: int = 2
    eta_min: float = 0.0
    augment: bool = True
    crop_sizes: tuple[int, ...] = (9, 11)
    encoders: int = 1

    def validate(self) -> None:
        """Raise :class:`ModelError` when a value is out of range."""
        check(self.epochs >= 0, f"epochs must not be negative, got {self.epochs}")
        check(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        check(self.lr > 0, f"lr must be positive, got {self.lr}")
        check(self.weight_decay >= 0, f"weight_decay must not be negative, "
              f"got {self.weight_decay}")
        check(self.t0 >= 1 and self.t_mult >= 1,
              f"t0 and t_mult must be at least 1, got {self.t0} and {self.t_mult}")
        check(all(int(s) >= 1 for s in self.crop_sizes),
              f"crop_sizes must be positive, got {list(self.crop_sizes)}")
        check(self.encoders >= 1, f"encoders must be at least 1, got {self.encoders}")

    def crops_for(self, window: int) -> tuple[int, ...]:
        """The crop sizes to draw from for ``window``-pixel windows.

        Raises:
            ModelError: when a crop is larger than the window or not centred on its centre.
        """
        sizes = tuple(int(s) for s in self.crop_sizes) or (max(1, window - 2), window)
        bad = [s for s in sizes if s > window or (window - s) % 2]
        check(not bad, f"crop_sizes {list(bad)} do not fit a {window}-pixel window",
              "use sizes no larger than the window, with the window's parity (e.g. w-2 and w)")
        return sizes


@dataclass(frozen=True)
class FinetuneConfig(ConfigBase):
    """Stage 2, few-shot contrastive fine-tuning: Adam + MultiStepLR.

    Attributes:
        epochs: passes over the labelled windows; the last epoch's weights are kept.
        batch_size: windows per step.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        milestones: epochs at which the learning rate is multiplied by ``gamma``.
        gamma: the factor applied at each milestone.
        members: fine-tunings averaged (1: one classifier, the paper). Each member starts
            from the pretrained encoders in turn (``pretrain.encoders``; with one, all from
            the same) with its own head initialisation and batch order, and the model's
            probabilities are the members' mean. With 5 shots the
            head's initialisation alone moves OA by 2-3 points on one split; the mean of 4
            cuts that spread and gains 1-2 points (docs/model.md, "Several fine-tunings"), at
            ``members`` times the fine-tuning and the faithful classification cost.
    """

    epochs: int = 150
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 1e-5
    milestones: tuple[int, ...] = (100, 131)
    gamma: float = 0.1
    members: int = 1

    def validate(self) -> None:
        """Raise :class:`ModelError` when a value is out of range."""
        check(self.epochs >= 0, f"epochs must not be negative, got {self.epochs}")
        check(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        check(self.lr > 0, f"lr must be positive, got {self.lr}")
        check(self.weight_decay >= 0, f"weight_decay must not be negative, "
              f"got {self.weight_decay}")
        check(list(self.milestones) == sorted(set(self.milestones)),
              f"milestones must increase, got {list(self.milestones)}")
        check(0 < self.gamma <= 1, f"gamma must lie in (0, 1], got {self.gamma}")
        check(self.members >= 1, f"members must be at least 1, got {self.members}")


_SECTIONS = ("model", "pretrain", "finetune")


@dataclass(frozen=True)
class Preset:
    """A named set of configurations.

    Attributes:
        name: the preset's name (its file name without ``.yaml``).
        model: the network.
        pretrain: stage 1.
        finetune: stage 2.
        description: one paragraph for humans.
    """

    name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    description: str = ""

    def __post_init__(self) -> None:
        self.pretrain.crops_for(self.model.window)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dictionary, the layout of a preset file."""
        return {
            "name": self.name,
            "description": self.description,
            "model": self.model.to_dict(),
            "pretrain": self.pretrain.to_dict(),
            "finetune": self.finetune.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | None = None) -> Preset:
        """Build from the layout of a preset file.

        Raises:
            ModelError: on unknown sections or fields, or invalid values.
        """
        if not isinstance(data, dict):
            raise ModelError("a preset must be a mapping with sections model, pretrain, "
                             "finetune", path=source)
        unknown = sorted(set(data) - {"name", "description", *_SECTIONS})
        if unknown:
            raise ModelError(f"unknown preset sections {unknown}", path=source,
                             hint=f"use name, description, {', '.join(_SECTIONS)}")
        for section in _SECTIONS:
            if not isinstance(data.get(section) or {}, dict):
                raise ModelError(f"preset section {section!r} must be a mapping", path=source)
        try:
            return cls(
                name=str(data.get("name") or (Path(source).stem if source else "custom")),
                description=str(data.get("description") or "").strip(),
                model=ModelConfig.from_dict(data.get("model") or {}, source=source),
                pretrain=PretrainConfig.from_dict(data.get("pretrain") or {}, source=source),
                finetune=FinetuneConfig.from_dict(data.get("finetune") or {}, source=source),
            )
        except ModelError as exc:
            raise ModelError(exc.message, path=source or exc.path, hint=exc.hint) from None

    def with_overrides(self, **overrides: Any) -> Preset:
        """A validated copy with fields replaced.

        Keys are either a section name with a mapping (``model={"dim": 64}``) or a dotted
        ``section.field`` (``**{"pretrain.epochs": 3}``, handy for command-line ``--set``).

        Raises:
            ModelError: on an unknown section or field, or an invalid value.
        """
        data = self.to_dict()
        for key, value in overrides.items():
            section, _, name = key.partition(".")
            if section not in _SECTIONS:
                if not name and section in ("name", "description"):
                    data[section] = value
                    continue
                raise ModelError(f"unknown preset override {key!r}",
                                 hint=f"use {', '.join(_SECTIONS)} or section.field")
            if name:
                data[section][name] = value
            elif isinstance(value, dict):
                data[section].update(value)
            else:
                raise ModelError(f"override {key!r} needs a mapping of fields")
        return Preset.from_dict(data)


def presets_dir() -> Path:
    """The folder holding the preset files (``diffclip_cli/presets/``, shipped in the wheel)."""
    return Path(__file__).resolve().parents[1] / "presets"


def list_presets() -> list[str]:
    """The names of the presets that ship with diffclip, sorted."""
    folder = presets_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_preset(name_or_path: str | os.PathLike[str]) -> Preset:
    """Load a shipped preset by name, or a preset YAML file by path.

    Args:
        name_or_path: ``"paper"``, ``"tiny"``, ... or the path of a ``.yaml`` file.

    Returns:
        The validated preset.

    Raises:
        ModelError: unknown name (the message lists the available ones), unreadable file,
            unknown fields or invalid values.
    """
    text = os.fspath(name_or_path)
    path = Path(text)
    looks_like_path = path.suffix.lower() in (".yaml", ".yml") or os.sep in text or "/" in text
    if not looks_like_path:
        path = presets_dir() / f"{text}.yaml"
        if not path.is_file():
            raise ModelError(f"unknown preset {text!r}",
                             hint=f"choose one of {list_presets()} or give a preset .yaml file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError("preset file not found", path=path,
                         hint=f"check the path, or use one of {list_presets()}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelError(f"cannot read the preset ({exc})".replace("\n", " "), path=path,
                         hint="fix the YAML") from None
    return Preset.from_dict(data, source=str(path))
