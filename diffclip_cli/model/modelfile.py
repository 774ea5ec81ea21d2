"""What a model is: :class:`ModelBundle`, built from trained networks and back into them.

A bundle holds everything needed to use a model on a new scene (configuration, band counts
and names, normalisation statistics and spatial context, classes, prompts, vocabulary,
weights, an ensemble's further members, provenance). :func:`bundle_from_network` and
:func:`bundle_from_classifier` make one, :func:`build_network`, :func:`build_classifier` and
:func:`build_classifiers` rebuild the networks. The file format (the archive, its digest and
its validation) is :mod:`diffclip_cli.model.archive`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from diffclip_cli import __version__
from diffclip_cli.errors import ModelError
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.config import (
    ConfigBase,
    ModelConfig,
    Preset,
)
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.text import Vocabulary

if TYPE_CHECKING:  # at run time imported where needed: it brings rasterio
    from diffclip_cli.sampling.normalise import SceneStats

__all__ = [
    "ENCODERS_KEY",
    "FORMAT_TAG",
    "FORMAT_VERSION",
    "KINDS",
    "MEMBERS_KEY",
    "WAVELENGTH_TOLERANCE_NM",
    "ModelBundle",
    "build_classifier",
    "build_classifiers",
    "build_network",
    "build_networks",
    "bundle_from_classifier",
    "bundle_from_network",
    "bundle_from_networks",
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

#: HSI band centres of a model and a scene may differ by this much (nanometres).
WAVELENGTH_TOLERANCE_NM = 1.0


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


def _span(wavelengths: Sequence[float]) -> str:
    """``400-2500 nm (204 bands)``: a band set's wavelengths in a few words."""
    return (f"{min(wavelengths):g}-{max(wavelengths):g} nm ({len(wavelengths)} band"
            f"{'s' if len(wavelengths) != 1 else ''})")


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
        state_dict=_weights(net),
        provenance=_provenance(provenance),
        extras=dict(extras or {}),
        wavelengths=None if wavelengths is None else [float(v) for v in wavelengths],
    )


#: The key of an ensemble's further members in :attr:`ModelBundle.extras`: a list of their
#: state dicts (member 0 is the bundle's own ``state_dict``).
MEMBERS_KEY = "members"
#: The key of a pretrained model's further encoders in :attr:`ModelBundle.extras`
#: (``pretrain.encoders`` > 1): a list of their state dicts (encoder 0 is the bundle's own
#: ``state_dict``).
ENCODERS_KEY = "encoders"


def bundle_from_networks(nets: Sequence[DiffCLIPNet], **kwargs: Any) -> ModelBundle:
    """A ``pretrained`` bundle of one or more stage-1 networks of the same architecture.

    The first is the bundle's weights, the others go to ``extras["encoders"]``
    (:func:`build_networks` builds them all); ``kwargs`` as :func:`bundle_from_network`.

    Raises:
        ValueError: no network, or networks with different inputs or configurations.
    """
    if not nets:
        raise ValueError("a pretrained bundle needs at least one network")
    first = nets[0]
    for other in nets[1:]:
        if other.config != first.config or other.input_bands != first.input_bands:
            raise ValueError("the encoders of a pretrained bundle must share their "
                             "architecture and inputs")
    bundle = bundle_from_network(first, **kwargs)
    if len(nets) > 1:
        bundle.extras[ENCODERS_KEY] = [_weights(n) for n in nets[1:]]
    return bundle


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
    bundle.state_dict = _weights(classifier)
    if len(members) > 1:
        for other in members[1:]:
            if (other.prompts != classifier.prompts
                    or other.net.input_bands != net.input_bands):
                raise ModelError("the members of an ensemble must share prompts and inputs")
        bundle.extras[MEMBERS_KEY] = [_weights(m) for m in members[1:]]
    return bundle


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module``'s state dict (what a bundle stores)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _extra_states(bundle: ModelBundle, key: str, what: str) -> list[dict[str, torch.Tensor]]:
    """The further state dicts a bundle keeps under ``extras[key]`` (members, encoders).

    Raises:
        ModelError: they are not a list of state dicts (``what`` names them).
    """
    extra = bundle.extras.get(key) or []
    if not isinstance(extra, list) or not all(isinstance(s, dict) for s in extra):
        raise ModelError(f"{what} are unreadable", hint="the model file is damaged; re-train it")
    return extra


def _empty_network(bundle: ModelBundle) -> DiffCLIPNet:
    """The image side a bundle describes (architecture, bands, context), weights not loaded."""
    return DiffCLIPNet(bundle.config, hsi_bands=bundle.hsi_bands,
                       lidar_bands=bundle.lidar_bands,
                       context_bands=bundle.scene_stats.context_bands())


def _load_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"the weights do not fit the stored configuration ({first})",
                         hint="the model file is damaged; re-train it") from None


def build_network(bundle: ModelBundle) -> DiffCLIPNet:
    """The image side of a bundle (either kind), weights loaded, in eval mode."""
    net = _empty_network(bundle)
    if bundle.kind == "pretrained":
        _load_state(net, bundle.state_dict)
    else:
        prefix = "net."
        _load_state(net, {k[len(prefix):]: v for k, v in bundle.state_dict.items()
                          if k.startswith(prefix)})
    return net.eval()


def build_networks(bundle: ModelBundle) -> list[DiffCLIPNet]:
    """Every encoder of a bundle, weights loaded, in eval mode.

    A pretrained model's ``pretrain.encoders`` of them, else the one of
    :func:`build_network`.

    Raises:
        ModelError: the bundle's further encoders are unreadable.
    """
    out = [build_network(bundle)]
    if bundle.kind != "pretrained":
        return out
    for state in _extra_states(bundle, ENCODERS_KEY, "the pretrained model's encoders"):
        net = _empty_network(bundle)
        _load_state(net, state)
        out.append(net.eval())
    return out


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
    extra = _extra_states(bundle, MEMBERS_KEY, "the ensemble's members")
    return [_classifier(bundle, state) for state in (bundle.state_dict, *extra)]


def _classifier(bundle: ModelBundle, state: dict[str, torch.Tensor]) -> DiffCLIPClassifier:
    if bundle.kind != "classifier" or bundle.vocabulary is None:
        raise ModelError("this is a pretrained model without classes",
                         hint="fine-tune it on labelled pixels first")
    net = _empty_network(bundle)
    clf = DiffCLIPClassifier(net, vocabulary=bundle.vocabulary)
    ids = state.get("prompt_ids")
    if ids is None:
        raise ModelError("the classifier weights lack the prompt tokens",
                         hint="the model file is damaged; re-train it")
    clf.set_token_ids(ids)
    _load_state(clf, state)
    return clf.eval()
