"""The fewshot workflow: a scene and its labels to a model file (with its fast path) and report.

Two levels, the command's and the library's:

* :func:`fewshot_scene` (on an open scene and its labels): the split, the spatial context
  chosen on the shots, the plan, stage 1 unless a pretrained model is given
  (:func:`~diffclip_cli.workflows.pretrain.pretrain_scene`), stage 2 (``finetune.members``
  fine-tunings), the fast path's distillation, the held-out score and the baselines;
* :func:`run_fewshot` (what ``diffclip fewshot`` runs, on files): every output checked before
  any work, the descriptions and the pretrained model read before training, then
  :func:`fewshot_scene`, the model saved and the held-out accuracy report (with the
  baselines) written beside it; all renamed into place together at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffclip_cli import __version__
from diffclip_cli.errors import OverrideError
from diffclip_cli.io.labels import LabelSet
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.device import resolve_device
from diffclip_cli.model.modelfile import ModelBundle, build_networks, bundle_from_classifier
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.prompts import check_template, class_prompts
from diffclip_cli.progress import Progress
from diffclip_cli.report.baseline import SPATIAL_COMPONENTS, Baseline, score_baselines
from diffclip_cli.report.metrics import AccuracyReport
from diffclip_cli.report.scoring import evaluate_pixels
from diffclip_cli.sampling.defaults import DEFAULT_PRETRAIN_SAMPLES
from diffclip_cli.sampling.normalise import SceneStats, compute_stats
from diffclip_cli.sampling.shots import Split, check_split, given_split, split_labels
from diffclip_cli.train.budget import Plan, PlanFn, format_seconds, scaled_preset
from diffclip_cli.train.calibrate import plan_training, restores_threads
from diffclip_cli.train.data import WindowData, window_data
from diffclip_cli.train.distill import DistillConfig, add_fast_path
from diffclip_cli.train.finetune import finetune_members
from diffclip_cli.train.pretrain import input_paths
from diffclip_cli.train.spatial import ContextChoice, choose_context
from diffclip_cli.workflows.common import (
    TrainingOptions,
    TrainingSettings,
    open_scene,
    override_preset,
    read_label_files,
    warn_if_out_of_distribution,
)
from diffclip_cli.workflows.pretrain import pretrain_scene

if TYPE_CHECKING:

    from diffclip_cli.model.config import Preset

__all__ = ["FewshotOptions", "FewshotOutcome", "FewshotRequest", "FewshotResult",
           "FewshotSettings", "fewshot_scene", "plan_fewshot",
           "report_stem", "run_fewshot"]

log = logging.getLogger("diffclip")



@dataclass
class FewshotResult:
    """What stage 2 produced.

    Attributes:
        bundle: the ``classifier`` model, ready to save.
        classifier: the fine-tuned classifier (an ensemble's first member).
        labels: the labels used (invalid pixels dropped).
        split: training (shots) and test indices into ``labels``.
        report: accuracy on the test pixels (every labelled pixel not trained on), or ``None``
            when there are none or evaluation was not asked for.
        baselines: the classical baselines' accuracy on the same test pixels
            (:func:`~diffclip_cli.report.baseline.score_baselines`: per-pixel, then
            spectral-spatial); empty without a report or when not asked for.
        pretrain_history: stage-1 records (empty with a given pretrained model).
        finetune_history: stage-2 records.
        timings: seconds per stage (``total``: the whole call).
        plan: the schedule planned before training (with a budget or ``on_plan``).
        members: every fine-tuned classifier (``finetune.members`` of them; the model's
            probabilities are their mean).
    """

    bundle: ModelBundle
    classifier: DiffCLIPClassifier
    labels: LabelSet
    split: Split
    report: AccuracyReport | None
    pretrain_history: list[dict[str, Any]] = field(default_factory=list)
    finetune_history: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    baselines: list[Baseline] = field(default_factory=list)
    plan: Plan | None = None
    members: list[DiffCLIPClassifier] = field(default_factory=list)


@dataclass
class _Prepared:
    """What fine-tuning needs, ready before any training (see :func:`_prepare`)."""

    labels: LabelSet
    chosen: Split
    given: Split | None
    preset: Preset
    template: str
    prompts: list[str]
    stats: SceneStats
    nets: list[DiffCLIPNet] | None
    train: WindowData
    read_seconds: float
    pretrained: bool
    context: ContextChoice | None = None


@dataclass(frozen=True, kw_only=True)
class FewshotSettings(TrainingSettings):
    """How to train a few-shot model: the options both levels share, declared once.

    Shared by the scene-level request and the file-level options, and checked once.

    The base of :class:`FewshotRequest` (what :func:`fewshot_scene` is asked, on an open scene)
    and :class:`FewshotOptions` (what :func:`run_fewshot` and ``diffclip fewshot`` are asked, on
    files).

    Attributes:
        shots: labelled pixels per class to train on (with a given split, only recorded).
        pretrain_samples: unlabelled windows for stage 1 (``None``: the default,
            :data:`~diffclip_cli.sampling.defaults.DEFAULT_PRETRAIN_SAMPLES`).
        template: prompt template ``p1``..``p5`` or a text with ``{class}`` (``None``: the
            preset's).
        split: ``"random"`` (the paper's protocol) or ``"spatial"`` (test pixels away from
            the shots), or a given :class:`~diffclip_cli.sampling.shots.Split` of the labels
            (e.g. a fixed standard split; ``shots`` is then only recorded). Indices refer to
            the labels as given; pixels on invalid data are dropped from both sides.
        evaluate: score the model on the test pixels.
        fast: also distil the fast path (``classify --fast``) into the model.
        fast_steps: optimiser steps of the distillation (``None``: by the recipe).
        batch_size: windows per forward pass when scoring (``None``: by device).

    With the :class:`~diffclip_cli.workflows.common.TrainingSettings` fields (seed, device,
    budget, pinned: here ``pretrain_windows``, ``pretrain_epochs``, ``finetune_epochs``,
    ``distill_steps``).

    Raises:
        UsageError: an unknown split or prompt template (``p5`` with nothing to describe
            the classes included).
        ValueError: an option out of its range (a budget that is not positive included).
    """

    shots: int
    pretrain_samples: int | None = None
    template: str | None = None
    split: str | Split = "random"
    evaluate: bool = True
    fast: bool = False
    fast_steps: int | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.split, Split):  # (a given split has its shots already)
            check_split(self.split)
            if self.shots < 1:
                raise ValueError(f"shots must be at least 1, not {self.shots}")
        check_template(self.template, descriptions=self._may_describe())
        for name in ("pretrain_samples", "fast_steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")

    def _may_describe(self) -> bool:
        """Whether class descriptions may be there for ``p5`` (a subclass knows better)."""
        return True

    @property
    def samples(self) -> int:
        """Unlabelled windows for stage 1 (the default when ``pretrain_samples`` is ``None``)."""
        return DEFAULT_PRETRAIN_SAMPLES if self.pretrain_samples is None \
            else self.pretrain_samples

    @property
    def distill(self) -> DistillConfig | None:
        """The fast path's settings (``None``: no fast path)."""
        if not self.fast:
            return None
        return DistillConfig.from_dict({} if self.fast_steps is None
                                       else {"steps": self.fast_steps})


@dataclass(frozen=True, kw_only=True)
class FewshotRequest(FewshotSettings):
    """What :func:`fewshot_scene` and :func:`plan_fewshot` are asked, on an open scene.

    Attributes:
        preset: architecture and recipes; with ``pretrained``, its fine-tuning recipe is used
            and the architecture is the pretrained model's.
        pretrained: a stage-1 model of a scene with the same bands (its statistics are
            used); ``None`` runs stage 1 first.
        descriptions: class descriptions for ``p5`` (a mapping or a file); default the
            classes table's description column.

    With the :class:`FewshotSettings` fields.

    Example::

        request = FewshotRequest(shots=5, preset=load_preset("cpu"), seed=1)
        result = fewshot_scene(scene, labels, request)
    """

    preset: Preset
    pretrained: ModelBundle | None = None
    descriptions: Mapping[str, str] | str | Path | None = None


def _prepare(scene: Scene, labels: LabelSet, request: FewshotRequest) -> _Prepared:
    """The split, the prompts, the statistics and the training windows of :func:`fewshot_scene`.

    The network is the pretrained one, or ``None`` (stage 1 builds it).
    """
    split, seed, pretrained = request.split, request.seed, request.pretrained
    preset = request.preset
    given = split if isinstance(split, Split) else None
    if given is not None:
        given = given_split(given, labels, scene)
    labels = labels.drop_invalid(scene)
    for sentence in labels.report.summary():
        log.info("%s", sentence)
    all_classes = labels.classes.names
    if given is not None:
        chosen = given
    else:
        labels, chosen = split_labels(labels, request.shots, seed=seed, mode=str(split))
    left_out = [n for n in all_classes if n not in labels.classes.names]
    if pretrained is not None:
        pretrained.check_inputs(scene.hsi_bands, scene.lidar_bands,
                                wavelengths=scene.wavelengths,
                                band_names=scene.band_names["hsi"])
        preset = dataclasses.replace(pretrained.preset_config, finetune=preset.finetune)
    # The prompts first: a bad descriptions file fails before any training.
    template = request.template or preset.model.template
    prompts = class_prompts(labels.classes, template, request.descriptions,
                            left_out=left_out)
    nets = None
    context: ContextChoice | None = None
    if pretrained is not None:
        nets = build_networks(pretrained)
        stats = pretrained.scene_stats
    else:
        # The spatial context the network reads is chosen on the shots (train/spatial.py).
        train_px = chosen.train
        context = choose_context(scene, compute_stats(scene, seed=seed), preset.model,
                                 labels.rows[train_px], labels.cols[train_px],
                                 labels.class_ids[train_px])
        stats = context.stats
    tic = time.perf_counter()
    train = window_data(scene, labels.rows[chosen.train], labels.cols[chosen.train],
                     window=preset.model.window, stats=stats,
                     labels=labels.index[chosen.train])
    return _Prepared(labels, chosen, given, preset, template, prompts, stats, nets, train,
                     time.perf_counter() - tic, pretrained is not None, context)


def _plan_prepared(scene: Scene, prep: _Prepared, request: FewshotRequest, *, started: float
                   ) -> Plan:
    """:func:`plan_training` for a prepared few-shot run."""
    if prep.nets:
        net = prep.nets[0]
    else:  # the network stage 1 will build (only copies of it are trained here)
        net = DiffCLIPNet(prep.preset.model, hsi_bands=scene.hsi_bands,
                          lidar_bands=scene.lidar_bands, seed=request.seed,
                          context_bands=prep.stats.context_bands())
    return plan_training(
        scene, preset=prep.preset, net=net, stats=prep.stats,
        pretrain_samples=0 if prep.pretrained else request.samples, train=prep.train,
        prompts=prep.prompts,
        score_pixels=int(prep.chosen.test.size) if request.evaluate else 0,
        distill=request.distill, budget=request.budget, pinned=request.pinned,
        seed=request.seed, device=request.device, batch_size=request.batch_size,
        started=started)


def plan_fewshot(scene: Scene, labels: LabelSet, request: FewshotRequest) -> Plan:
    """The plan :func:`fewshot_scene` would make for ``request``, without training.

    For scripts that fix a schedule once and reuse it (e.g. a benchmark protocol). On a busy
    CPU the calibration may leave torch at one thread, where the estimate holds (see
    :func:`plan_training`).
    """
    begin = time.perf_counter()
    request = dataclasses.replace(request, device=resolve_device(request.device))
    return _plan_prepared(scene, _prepare(scene, labels, request), request, started=begin)


@restores_threads
def fewshot_scene(
    scene: Scene,
    labels: LabelSet,
    request: FewshotRequest,
    *,
    provenance: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    baseline: bool = True,
    on_plan: PlanFn | None = None,
) -> FewshotResult:
    """Stage 2 (and stage 1 unless ``request.pretrained`` is given): a few-shot classifier.

    ``request.shots`` labelled pixels per class are drawn with ``request.seed``; every other
    labelled pixel is a test pixel, used only to score the final model (never to select it).
    With a budget (``request.budget``) the schedule is sized to fit from a few timed steps of
    each stage (:func:`plan_training`); ``request.pinned`` recipe fields are kept as asked.

    Args:
        scene: the scene.
        labels: labelled pixels (pixels on invalid data are dropped and reported).
        request: what to train and how (:class:`FewshotRequest`); its device is resolved
            here once for every stage.
        provenance: extra facts to record in the model file (input paths, ...).
        progress: called with :class:`~diffclip_cli.progress.ProgressEvent` s of the stages
            ``"pretrain"``, ``"finetune"`` (optimiser steps), with the fast path
            ``"teacher"`` (pixels) and ``"distill"`` (steps), and ``"evaluate"`` (pixels).
        baseline: with the report, also score the classical baselines
            (:func:`~diffclip_cli.report.baseline.score_baselines`) on the same test pixels.
        on_plan: called with the plan before any training; a plan is made (and recorded in
            the provenance with the time taken) when this or a budget is given.

    Returns:
        The classifier, its model file contents, the split, the held-out report and the
        baseline's.
    """
    begin = time.perf_counter()
    timings: dict[str, float] = {}
    device = resolve_device(request.device)
    request = dataclasses.replace(request, device=device)
    shots, seed, split, pretrained = request.shots, request.seed, request.split, \
        request.pretrained
    pretrain_samples, batch_size, distill = request.samples, request.batch_size, \
        request.distill
    prep = _prepare(scene, labels, request)
    labels, chosen, given, preset, template, prompts = (
        prep.labels, prep.chosen, prep.given, prep.preset, prep.template, prep.prompts)
    stats, nets, train = prep.stats, prep.nets, prep.train
    pre_history: list[dict[str, Any]] = []
    plan = None
    if request.budget is not None or on_plan is not None:
        plan = _plan_prepared(scene, prep, request, started=begin)
        preset = scaled_preset(preset, plan.recipe)
        if pretrained is None:
            pretrain_samples = plan.recipe.pretrain_windows
        if distill is not None:
            distill = dataclasses.replace(distill, steps=plan.recipe.distill_steps)
        if on_plan is not None:
            on_plan(plan)
    if nets is None:  # no pretrained model: stage 1 builds the networks
        stage1 = pretrain_scene(scene, preset=preset, samples=pretrain_samples, seed=seed,
                                stats=stats, device=device, progress=progress)
        nets, pre_history = stage1.networks, stage1.history
        timings["pretrain"] = stage1.seconds

    start = time.perf_counter()
    members = finetune_members(nets, train, prompts, preset, seed=seed, device=device,
                                progress=progress)
    classifier, history = members[0]
    classifiers = [m for m, _ in members]
    timings["finetune"] = time.perf_counter() - start + prep.read_seconds

    counts = np.bincount(labels.index[chosen.train], minlength=len(labels.classes))
    record = {
        "inputs": input_paths(scene),
        "seed": seed,
        "shots": shots,
        "split": "given" if given is not None else split,
        "train_pixels_per_class": {c.name: int(n) for c, n in zip(labels.classes, counts,
                                                                     strict=True)},
        "pretrained": None if pretrained is None else pretrained.provenance,
        "pretrain_samples": None if pretrained is not None else pretrain_samples,
        "context": None if prep.context is None else prep.context.to_dict(),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "version": __version__,
        **dict(provenance or {}),
    }
    if plan is not None:
        record["plan"] = plan.to_dict()
    bundle = bundle_from_classifier([c.cpu() for c in classifiers], preset=preset, stats=stats,
                                    classes=labels.classes, template=template,
                                    band_names=scene.band_names,
                                    wavelengths=scene.wavelengths, provenance=record)
    if distill is not None:
        start = time.perf_counter()
        bundle = add_fast_path(scene, bundle, classifier=classifiers, seed=seed, device=device,
                               batch_size=batch_size, progress=progress,
                               config=distill)
        timings["fast path"] = time.perf_counter() - start
    report = None
    if request.evaluate and chosen.test.size:
        start = time.perf_counter()
        report = evaluate_pixels(scene, bundle, labels.subset(chosen.test), device=device,
                                 batch_size=batch_size, progress=progress,
                                 classifier=classifiers)
        timings["evaluate"] = time.perf_counter() - start
    bases: list[Baseline] = []
    if report is not None and baseline:
        start = time.perf_counter()
        reuse = (prep.context is not None
                 and preset.model.context_components == SPATIAL_COMPONENTS)
        bases = score_baselines(scene, labels, chosen, stats=stats, seed=seed,
                                projection=prep.context.projection if reuse and prep.context
                                else None)
        timings["baseline"] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - begin
    seconds = {k: round(v, 1) for k, v in timings.items()}
    bundle = dataclasses.replace(bundle, provenance={**bundle.provenance, "seconds": seconds})
    if plan is not None:
        log.info("Took %s (estimated %s).", format_seconds(timings["total"]),
                 format_seconds(plan.total_s))
    return FewshotResult(bundle, classifier, labels, chosen, report, pre_history, history,
                         timings, baselines=bases, plan=plan, members=classifiers)


@dataclass(frozen=True, kw_only=True)
class FewshotOptions(FewshotSettings, TrainingOptions):
    """What :func:`run_fewshot` trains on, from files, and how.

    Attributes:
        labels: labelled pixels, a vector file or a label raster, or several of them (e.g.
            the first labels and a filled-in ``diffclip suggest`` file): the first defines the
            classes, pixels labelled twice count once, with different classes they are
            dropped and reported with their files.
        classes: a classes table naming a label raster's ids (and describing classes).
        class_field: the vector attribute holding classes (default: guessed).
        layer: the layer of a multi-layer vector file.
        pretrained: a model file from stage 1 (skips it); ``None`` runs stage 1 first.
        preset: the recipe, overrides applied; ``None`` trains with the pretrained model's
            own recipe, with ``overrides`` applied to it.
        overrides: preset fields set explicitly (``{"model.window": 7}``); applied to the
            pretrained model's recipe when ``preset`` is ``None`` (else already in ``preset``).
            With a pretrained model, none of the architecture (``model.*``): it is the
            pretrained model's.
        descriptions: class descriptions for ``p5`` (CSV, YAML or JSON).

    With the :class:`FewshotSettings` fields (shots, pretrain samples, template, split,
    fast path, batch size, seed, device, budget, pinned) and ``overwrite``; :meth:`request`
    turns them into the scene-level :class:`FewshotRequest`.

    Raises:
        OverrideError: an override of the architecture (``model.*``) with a pretrained
            model, which fixes it, or of stage 1 (``pretrain.*``, ``pretrain_samples``),
            which it skips (a ``ValueError``).
        UsageError: an unknown split or prompt template (``p5`` with neither a descriptions
            file nor a classes table included).
        ValueError: an option out of its range, no labels file, or neither a preset nor a
            pretrained model.
    """

    labels: str | Path | tuple[str | Path, ...]
    classes: Path | None = None
    class_field: str | None = None
    layer: str | None = None
    pretrained: Path | None = None
    preset: Preset | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    descriptions: Path | None = None

    @property
    def label_files(self) -> tuple[str | Path, ...]:
        """The labels files, as a tuple (one or several)."""
        return self.labels if isinstance(self.labels, tuple) else (self.labels,)

    def _may_describe(self) -> bool:
        return self.descriptions is not None or self.classes is not None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.labels, tuple):
            object.__setattr__(self, "labels", (self.labels,))
        if not self.labels:
            raise ValueError("give at least one labels file")
        if self.preset is None and self.pretrained is None:
            raise ValueError("give a preset, or a pretrained model whose recipe to use")
        if self.pretrained is not None:
            for key, value in self.overrides.items():
                if key.startswith("model."):
                    raise OverrideError.fixed_by_pretrained(key, value)
                if key.startswith("pretrain."):
                    raise OverrideError.skipped_by_pretrained(key, value)
            if self.pretrain_samples is not None:
                raise OverrideError.skipped_by_pretrained("pretrain.samples",
                                                          self.pretrain_samples)

    def request(self, preset: Preset, pretrained: ModelBundle | None) -> FewshotRequest:
        """The scene-level request of these options.

        Args:
            preset: the recipe (``preset``, or the pretrained model's with ``overrides``).
            pretrained: the model read from ``pretrained``, or ``None``.
        """
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(FewshotSettings)}
        return FewshotRequest(**settings, preset=preset, pretrained=pretrained,
                              descriptions=self.descriptions)


@dataclass(frozen=True)
class FewshotOutcome:
    """What :func:`run_fewshot` wrote.

    Attributes:
        result: what the training produced (model bundle, report, baseline, timings, plan).
        title: the report's title (``None`` without a report).
        report_paths: the report files by format (empty when no labelled pixel was left
            for a report).
    """

    result: FewshotResult
    title: str | None = None
    report_paths: dict[str, Path] = field(default_factory=dict)


def report_stem(output: Path) -> Path:
    """``model.pt`` -> ``model.report`` (the stem of the report's .json/.md/.csv/.png)."""
    return output.with_name(output.stem + ".report")


def run_fewshot(hsi: str | Path, lidar: list[str] | list[Path] | None, output: Path, *,
                options: FewshotOptions, progress: Progress | None = None,
                on_plan: PlanFn | None = None) -> FewshotOutcome:
    """Train a few-shot model of a scene; save it and its held-out accuracy report.

    Args:
        hsi: the hyperspectral raster (path or GDAL dataset name).
        lidar: LiDAR rasters stacked as channels, or ``None``.
        output: the model file; the report is written beside it (:func:`report_stem`).
        options: what to train on and how.
        progress: called with every training and scoring event.
        on_plan: called with the schedule before training.

    Raises:
        OverrideError: an override does not fit the pretrained model's recipe.
        DeviceError: the device is unknown or not available here.
        DiffclipError: an input cannot be used, an output would replace an input, ...
    """
    from diffclip_cli.io.atomic import output_set
    from diffclip_cli.model.archive import load_model, save_model
    from diffclip_cli.model.prompts import read_descriptions
    from diffclip_cli.report.render import report_paths, write_report

    pretrained, overwrite = options.pretrained, options.overwrite
    options = dataclasses.replace(options, device=resolve_device(options.device))
    stem = report_stem(output)
    outputs: dict[str, Any] = {"model": output, "report": list(report_paths(stem).values())}
    inputs = {"the HSI": hsi, "a LiDAR raster": lidar, "the labels": list(options.label_files),
              "the classes table": options.classes, "the descriptions": options.descriptions,
              "the pretrained model": pretrained}
    # Every output checked before any work; all renamed into place together at the end.
    with output_set(outputs, inputs=inputs, overwrite=overwrite):
        # Read now: a bad descriptions file must fail before hours of training, not after.
        if options.descriptions is not None:
            read_descriptions(options.descriptions)
        base = load_model(pretrained) if pretrained is not None else None
        if options.preset is not None:
            config = options.preset
        elif base is not None:  # fine-tune with the pretrained model's recipe
            config = override_preset(base.preset_config, options.overrides)
        else:  # (FewshotOptions refuses this combination)
            raise ValueError("give a preset, or a pretrained model whose recipe to use")
        with open_scene(hsi, lidar) as scene:
            if base is not None and pretrained is not None:
                warn_if_out_of_distribution(scene, base, model=pretrained)
            label_set = read_label_files(options.label_files, scene, classes=options.classes,
                                        class_field=options.class_field, layer=options.layer)
            result = fewshot_scene(
                scene, label_set, options.request(config, base), progress=progress,
                on_plan=on_plan,
                provenance={"labels": [str(p) for p in options.label_files],
                            "pretrained_file": None if pretrained is None else str(pretrained)})
            save_model(result.bundle, output, overwrite=overwrite)
        if result.report is None:
            return FewshotOutcome(result)
        title = (f"Held-out accuracy: {result.report.n_pixels} labelled pixels not used for "
                 f"training ({options.shots} shots per class, seed {options.seed})")
        paths = write_report(result.report, stem, overwrite=overwrite, title=title,
                             metadata={"model": str(output), "shots": options.shots,
                                       "seed": options.seed, "split": options.split,
                                       "labels": ", ".join(str(p) for p in
                                                           options.label_files)},
                             baselines=result.baselines)
    return FewshotOutcome(result, title, paths)
