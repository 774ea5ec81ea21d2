"""The few-shot workflow end to end, as library functions (the commands are thin wrappers).

:func:`pretrain_scene` runs stage 1 (masked diffusion on the scene's unlabelled pixels),
:func:`fewshot_scene` stage 2 (k shots per class, language-supervised) and scores the model on
every labelled pixel it did not train on, :func:`evaluate_pixels` scores a model on pixels.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffclip_cli import __version__
from diffclip_cli.errors import LabelError
from diffclip_cli.infer.engine import TileEngine
from diffclip_cli.io.classes import ClassTable
from diffclip_cli.io.labels import LabelSet
from diffclip_cli.io.names import is_gdal_name
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.config import Preset
from diffclip_cli.model.device import resolve_device
from diffclip_cli.model.modelfile import (
    ModelBundle,
    build_classifier,
    build_network,
    bundle_from_classifier,
    bundle_from_network,
)
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.prompts import build_prompts, class_words, read_descriptions
from diffclip_cli.model.text import Vocabulary
from diffclip_cli.report.metrics import AccuracyReport
from diffclip_cli.sampling.defaults import DEFAULT_PRETRAIN_SAMPLES
from diffclip_cli.sampling.normalise import SceneStats, compute_stats
from diffclip_cli.sampling.shots import Split, sample_shots, spatial_split
from diffclip_cli.sampling.unlabelled import sample_unlabelled
from diffclip_cli.sampling.windows import read_windows
from diffclip_cli.train.data import WindowData
from diffclip_cli.train.finetune import finetune
from diffclip_cli.train.pretrain import pretrain

__all__ = [
    "BASELINE_METHOD",
    "DEFAULT_PRETRAIN_SAMPLES",
    "FewshotResult",
    "PretrainResult",
    "ProgressFn",
    "baseline_pixels",
    "evaluate_pixels",
    "fewshot_scene",
    "input_identity",
    "predict_pixels",
    "pretrain_scene",
]

log = logging.getLogger("diffclip")

#: Progress callback: ``(stage, done, total)``; stages are ``"pretrain"`` and ``"finetune"``
#: (epochs), ``"evaluate"`` (pixels).
ProgressFn = Callable[[str, int, int], None]

#: What :func:`baseline_pixels` is, in the reports' words.
BASELINE_METHOD = ("random forest (200 trees) on each pixel's own HSI and LiDAR values, no "
                   "spatial context, trained on the same shots")


@dataclass
class PretrainResult:
    """What stage 1 produced.

    Attributes:
        bundle: the ``pretrained`` model (network, statistics, band names, provenance).
        network: the trained image side.
        stats: the normalisation statistics.
        history: one record per epoch.
        seconds: wall time of the stage.
    """

    bundle: ModelBundle
    network: DiffCLIPNet
    stats: SceneStats
    history: list[dict[str, Any]]
    seconds: float


@dataclass
class FewshotResult:
    """What stage 2 produced.

    Attributes:
        bundle: the ``classifier`` model, ready to save.
        classifier: the fine-tuned classifier.
        labels: the labels used (invalid pixels dropped).
        split: training (shots) and test indices into ``labels``.
        report: accuracy on the test pixels (every labelled pixel not trained on), or ``None``
            when there are none or evaluation was not asked for.
        baseline: the per-pixel baseline's accuracy on the same test pixels
            (:func:`baseline_pixels`), or ``None`` (no report, or not asked for).
        pretrain_history: stage-1 records (empty with a given pretrained model).
        finetune_history: stage-2 records.
        timings: seconds per stage.
    """

    bundle: ModelBundle
    classifier: DiffCLIPClassifier
    labels: LabelSet
    split: Split
    report: AccuracyReport | None
    pretrain_history: list[dict[str, Any]] = field(default_factory=list)
    finetune_history: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    baseline: AccuracyReport | None = None


def baseline_pixels(scene: Scene, labels: LabelSet, split: Split, *, seed: int = 0
                    ) -> AccuracyReport:
    """A per-pixel random forest trained on the shots and scored on the test pixels.

    The classical alternative DiffCLIP has to beat: each pixel is classified from its own
    band values (HSI then LiDAR, as read, no normalisation needed by a forest), with no
    spatial context and no text; the same training and test pixels as the model's.

    Args:
        scene: the scene.
        labels: the labelled pixels (valid ones).
        split: training and test indices into ``labels``.
        seed: the forest's seed.

    Returns:
        The baseline's accuracy on the test pixels, with the labels' classes.
    """
    from diffclip_cli.bench.baselines import random_forest

    def features(index: np.ndarray) -> np.ndarray:
        values = scene.read_pixels(labels.rows[index], labels.cols[index])
        parts = [values.hsi] if values.lidar is None else [values.hsi, values.lidar]
        return np.nan_to_num(np.concatenate(parts, axis=1))

    predicted = random_forest(features(split.train), labels.class_ids[split.train],
                              features(split.test), seed=seed)
    return AccuracyReport.from_labels(labels.class_ids[split.test], predicted, labels.classes)


def _epochs(progress: ProgressFn | None, stage: str) -> Callable[..., None] | None:
    if progress is None:
        return None
    return lambda epoch, epochs, record: progress(stage, epoch, epochs)


def _inputs(scene: Scene) -> dict[str, Any]:
    return {"hsi": str(scene.hsi_path), "lidar": [str(p) for p in scene.lidar_paths]}


def input_identity(scene: Scene) -> dict[str, Any]:
    """The scene's files as a checkpoint records them: resolved paths and sizes.

    A GDAL dataset name (``/vsizip/...``, ``NETCDF:...``) is recorded verbatim, without a
    size: it is no local path to resolve. (The content is covered by the digest of the windows
    drawn from the files.)
    """
    files = []
    for path in (scene.hsi_path, *scene.lidar_paths):
        if is_gdal_name(path):
            files.append({"path": str(path), "size": None})
            continue
        p = Path(path)
        try:
            size: int | None = p.stat().st_size
        except OSError:
            size = None
        files.append({"path": str(p.resolve()), "size": size})
    return {"files": files}


def _windows(scene: Scene, rows: np.ndarray, cols: np.ndarray, *, window: int,
             stats: SceneStats, labels: np.ndarray | None = None) -> WindowData:
    batch = read_windows(scene, rows, cols, size=window, stats=stats)
    return WindowData(batch.hsi, batch.lidar, labels)


def pretrain_scene(
    scene: Scene,
    *,
    preset: Preset,
    samples: int = DEFAULT_PRETRAIN_SAMPLES,
    seed: int = 0,
    stats: SceneStats | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    device: str = "cpu",
    progress: ProgressFn | None = None,
) -> PretrainResult:
    """Stage 1: masked-diffusion pretraining on unlabelled windows spread over the scene.

    Args:
        scene: the scene.
        preset: architecture and pretraining recipe.
        samples: unlabelled windows drawn over the whole valid area.
        seed: drives the statistics sample, the pixel sample, initialisation, masks, noise.
        stats: normalisation statistics; computed from the scene when ``None``.
        checkpoint: a file written after every epoch (see ``resume``).
        resume: continue from ``checkpoint``; ends where an uninterrupted run ends.
        device: torch device name.
        progress: ``(stage, done, total)`` callback.

    Returns:
        The pretrained model and its history.
    """
    start = time.perf_counter()
    device = str(resolve_device(device))
    stats = stats or compute_stats(scene, seed=seed)
    rows, cols = sample_unlabelled(scene, samples, seed=seed)
    log.info("Pretraining on %d unlabelled windows of %d x %d px.", rows.size,
             preset.model.window, preset.model.window)
    data = _windows(scene, rows, cols, window=preset.model.window, stats=stats)
    net = DiffCLIPNet(preset.model, hsi_bands=scene.hsi_bands, lidar_bands=scene.lidar_bands,
                      seed=seed)
    history = pretrain(net, data, preset.pretrain, seed=seed, checkpoint=checkpoint,
                       resume=resume, progress=_epochs(progress, "pretrain"), device=device,
                       inputs=input_identity(scene) if checkpoint is not None else None)
    seconds = time.perf_counter() - start
    bundle = bundle_from_network(
        net.cpu(), preset=preset, stats=stats.to_dict(), band_names=scene.band_names,
        wavelengths=scene.wavelengths,
        provenance={"inputs": _inputs(scene), "seed": seed, "pretrain_samples": int(rows.size),
                    "pretrain_seconds": round(seconds, 1), "version": __version__})
    return PretrainResult(bundle, net, stats, history, seconds)


def _split(labels: LabelSet, shots: int, *, seed: int, mode: str) -> Split:
    if mode == "random":
        split = sample_shots(labels, shots, seed=seed)  # logs its own warnings
    elif mode == "spatial":
        split = spatial_split(labels, shots, seed=seed)
    else:
        raise ValueError(f"unknown split {mode!r}: use 'random' or 'spatial'")
    return _drop_classes_without_shots(labels, split)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _drop_classes_without_shots(labels: LabelSet, split: Split) -> tuple[LabelSet, Split]:
    """Leave classes that got no training shot out of the model (with a warning).

    A class with 0 or 1 labelled pixel (or, in a spatial split, lying in one block) gives no
    shot: the network would have nothing but its name to learn it from. It is left out of the
    model, the map and the held-out report; the other classes keep their ids.

    Raises:
        LabelError: fewer than two classes are left.
    """
    counts = np.bincount(labels.index[split.train], minlength=len(labels.classes))
    empty = counts == 0
    if not empty.any():
        return labels, split
    have = labels.counts()
    kept = [c for c, e in zip(labels.classes, empty, strict=True) if not e]
    dropped = [f"'{c.name}' ({_plural(int(n), 'labelled pixel')})"
               for c, n, e in zip(labels.classes, have, empty, strict=True) if e]
    rule = "a class needs at least 2 labelled pixels, one to train on and one to test"
    if not kept:
        raise LabelError(f"no class has enough labelled pixels to train on; {rule}",
                         path=labels.report.source,
                         hint="label more pixels of each class")
    if len(kept) == 1:
        raise LabelError(f"only the class '{kept[0].name}' has enough labelled pixels to train "
                         f"on, and a map needs at least two classes; {rule}",
                         path=labels.report.source,
                         hint=f"label more pixels of {', '.join(dropped)}")
    text = (f"left out of the model, so never mapped: {', '.join(dropped)}, because {rule}; "
            "label more pixels of them to map them")
    log.warning("%s", text)
    keep = ~empty[labels.index]
    new_index = np.cumsum(keep) - 1
    train = new_index[split.train].astype(np.int64)
    test = new_index[split.test[keep[split.test]]].astype(np.int64)
    subset = labels.subset(keep)
    table = ClassTable(kept)
    report = dataclasses.replace(
        labels.report,
        pixels_per_class={c.name: labels.report.pixels_per_class.get(c.name, 0) for c in kept})
    return (dataclasses.replace(subset, classes=table, report=report),
            Split(train, test, [*split.warnings, text]))


def _given_split(split: Split, labels: LabelSet, scene: Scene) -> Split:
    """A split of ``labels`` re-indexed onto ``labels.drop_invalid(scene)``."""
    n = len(labels)
    for part in (split.train, split.test):
        if part.size and (part.min() < 0 or part.max() >= n):
            raise ValueError(f"split indices must lie in 0..{n - 1}")
    if np.intersect1d(split.train, split.test).size:
        raise ValueError("the training and test pixels of a split must be disjoint")
    valid = scene.valid_at(labels.rows, labels.cols)
    new_index = np.cumsum(valid) - 1
    train = np.sort(new_index[split.train[valid[split.train]]]).astype(np.int64)
    test = np.sort(new_index[split.test[valid[split.test]]]).astype(np.int64)
    if train.size == 0:
        raise LabelError("the given split has no valid training pixel",
                         hint="check that the training labels belong to this scene")
    return Split(train, test, list(split.warnings))


def _prompts(classes: ClassTable, template: str,
             descriptions: Mapping[str, str] | str | Path | None, *,
             left_out: Sequence[str] = ()) -> list[str]:
    """The class prompts; descriptions of classes ``left_out`` of the model are ignored."""
    if template == "p5" and descriptions is None:
        if all(c.description for c in classes):
            descriptions = {c.name: c.description for c in classes}
        else:
            missing = [c.name for c in classes if not c.description]
            raise LabelError(f"prompt template p5 needs a description for every class; "
                             f"missing for {missing}",
                             hint="pass --descriptions FILE or a classes table with a "
                                  "description column")
    source = None
    if template == "p5" and left_out and descriptions is not None:
        if isinstance(descriptions, (str, os.PathLike)):
            source = descriptions
            descriptions = read_descriptions(descriptions)
        gone = {class_words(n).casefold() for n in left_out}
        descriptions = {k: v for k, v in descriptions.items()
                        if class_words(k).casefold() not in gone}
    try:
        return build_prompts(classes.names, template=template, descriptions=descriptions)
    except LabelError as exc:
        if source is None or exc.path is not None:
            raise
        raise LabelError(exc.message, path=source, hint=exc.hint) from None


def fewshot_scene(
    scene: Scene,
    labels: LabelSet,
    *,
    shots: int,
    preset: Preset,
    pretrained: ModelBundle | None = None,
    pretrain_samples: int = DEFAULT_PRETRAIN_SAMPLES,
    template: str | None = None,
    descriptions: Mapping[str, str] | str | Path | None = None,
    split: str | Split = "random",
    seed: int = 0,
    device: str = "cpu",
    evaluate: bool = True,
    batch_size: int | None = None,
    provenance: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
    baseline: bool = True,
) -> FewshotResult:
    """Stage 2 (and stage 1 unless ``pretrained`` is given): a few-shot classifier of a scene.

    ``shots`` labelled pixels per class are drawn with ``seed``; every other labelled pixel is
    a test pixel, used only to score the final model (never to select it).

    Args:
        scene: the scene.
        labels: labelled pixels (pixels on invalid data are dropped and reported).
        shots: labelled pixels per class to train on.
        preset: architecture and recipes; with ``pretrained``, its fine-tuning recipe is used
            and the architecture is the pretrained model's.
        pretrained: a stage-1 model of a scene with the same bands (its statistics are used).
        pretrain_samples: unlabelled windows for stage 1.
        template: prompt template ``p1``..``p5`` or a text with ``{class}``; default the
            preset's.
        descriptions: class descriptions for ``p5`` (mapping or file); default the classes
            table's description column.
        split: ``"random"`` (the paper's protocol) or ``"spatial"`` (test pixels away from
            the shots), or a given :class:`~diffclip_cli.sampling.shots.Split` of ``labels``
            (e.g. a fixed standard split; ``shots`` is then only recorded). Indices refer to
            ``labels`` as given; pixels on invalid data are dropped from both sides.
        seed: the seed of every random choice.
        device: torch device name.
        evaluate: score the model on the test pixels.
        batch_size: windows per forward pass when scoring.
        provenance: extra facts to record in the model file (input paths, ...).
        progress: ``(stage, done, total)`` callback.
        baseline: with the report, also score the per-pixel baseline
            (:func:`baseline_pixels`) on the same test pixels.

    Returns:
        The classifier, its model file contents, the split, the held-out report and the
        baseline's.
    """
    timings: dict[str, float] = {}
    given = split if isinstance(split, Split) else None
    if given is not None:
        given = _given_split(given, labels, scene)
    labels = labels.drop_invalid(scene)
    for sentence in labels.report.summary():
        log.info("%s", sentence)
    all_classes = labels.classes.names
    if given is not None:
        chosen = given
    else:
        labels, chosen = _split(labels, shots, seed=seed, mode=str(split))
    left_out = [n for n in all_classes if n not in labels.classes.names]

    pre_history: list[dict[str, Any]] = []
    if pretrained is not None:
        pretrained.check_inputs(scene.hsi_bands, scene.lidar_bands,
                                wavelengths=scene.wavelengths,
                                band_names=scene.band_names["hsi"])
        preset = Preset(name=pretrained.preset, model=pretrained.config,
                        pretrain=pretrained.preset_config.pretrain, finetune=preset.finetune)
    # The prompts first: a bad descriptions file fails before any training.
    template = template or preset.model.template
    prompts = _prompts(labels.classes, template, descriptions, left_out=left_out)
    if pretrained is not None:
        net = build_network(pretrained)
        stats = SceneStats.from_dict(pretrained.stats)
    else:
        stage1 = pretrain_scene(scene, preset=preset, samples=pretrain_samples, seed=seed,
                                device=device, progress=progress)
        net, stats, pre_history = stage1.network, stage1.stats, stage1.history
        timings["pretrain"] = stage1.seconds

    start = time.perf_counter()
    classifier = DiffCLIPClassifier(net, vocabulary=Vocabulary.build(prompts), seed=seed)
    train = _windows(scene, labels.rows[chosen.train], labels.cols[chosen.train],
                     window=preset.model.window, stats=stats,
                     labels=labels.index[chosen.train])
    log.info("Fine-tuning on %d labelled windows (%d classes).", len(train),
             len(labels.classes))
    history = finetune(classifier, train, prompts, preset.finetune, seed=seed,
                       progress=_epochs(progress, "finetune"), device=str(resolve_device(device)))
    timings["finetune"] = time.perf_counter() - start

    counts = np.bincount(labels.index[chosen.train], minlength=len(labels.classes))
    record = {
        "inputs": _inputs(scene),
        "seed": seed,
        "shots": shots,
        "split": "given" if given is not None else split,
        "train_pixels_per_class": {c.name: int(n) for c, n in zip(labels.classes, counts,
                                                                     strict=True)},
        "pretrained": None if pretrained is None else pretrained.provenance,
        "pretrain_samples": None if pretrained is not None else pretrain_samples,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "version": __version__,
        **dict(provenance or {}),
    }
    bundle = bundle_from_classifier(classifier.cpu(), preset=preset, stats=stats.to_dict(),
                                    classes=labels.classes, template=template,
                                    band_names=scene.band_names,
                                    wavelengths=scene.wavelengths, provenance=record)
    report = None
    if evaluate and chosen.test.size:
        start = time.perf_counter()
        report = evaluate_pixels(scene, bundle, labels.subset(chosen.test), device=device,
                                 batch_size=batch_size, progress=progress,
                                 classifier=classifier)
        timings["evaluate"] = time.perf_counter() - start
    base = None
    if report is not None and baseline:
        start = time.perf_counter()
        base = baseline_pixels(scene, labels, chosen, seed=seed)
        timings["baseline"] = time.perf_counter() - start
    return FewshotResult(bundle, classifier, labels, chosen, report, pre_history, history,
                         timings, base)


def predict_pixels(
    scene: Scene,
    bundle: ModelBundle,
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    progress: ProgressFn | None = None,
    classifier: DiffCLIPClassifier | None = None,
) -> np.ndarray:
    """Class probabilities ``(N, K)`` of scattered pixels, reading their windows in chunks.

    Args:
        scene: the scene (its band counts must match the model's).
        bundle: a ``classifier`` model.
        rows: pixel rows.
        cols: pixel columns.
        device: torch device name.
        batch_size: windows per forward pass.
        progress: ``("evaluate", done, total)`` callback.
        classifier: the bundle's classifier when already built (skips rebuilding it).
    """
    bundle.check_inputs(scene.hsi_bands, scene.lidar_bands)
    engine = TileEngine(classifier or build_classifier(bundle), device=device,
                        batch_size=batch_size)
    report = None if progress is None else (lambda done, total: progress("evaluate", done, total))
    return engine.predict_pixels(scene, rows, cols, stats=SceneStats.from_dict(bundle.stats),
                                 progress=report)


def evaluate_pixels(
    scene: Scene,
    bundle: ModelBundle,
    labels: LabelSet,
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    progress: ProgressFn | None = None,
    classifier: DiffCLIPClassifier | None = None,
) -> AccuracyReport:
    """Score a classifier on labelled pixels (their classes must be the model's classes).

    Returns:
        OA, AA, kappa, per-class accuracies and the confusion matrix.
    """
    classes = bundle.class_table
    assert classes is not None
    probs = predict_pixels(scene, bundle, labels.rows, labels.cols, device=device,
                           batch_size=batch_size, progress=progress, classifier=classifier)
    predicted = np.asarray(classes.ids)[probs.argmax(axis=1)]
    return AccuracyReport.from_labels(labels.class_ids, predicted, classes)
