"""The paper's few-shot evaluation protocol, for DiffCLIP, its ablations and the baselines.

**Random k-shot protocol** (the paper's Table 1): for every shot count k and every seed, k
labelled pixels per class are drawn at random from *all* labelled pixels of the scene (the
standard training and test maps merged); the test set is every other labelled pixel. OA, AA and
kappa are reported as mean +- standard deviation over the seeds. **Fixed split**: the standard
training map is the training set (all of its pixels, or k per class drawn from it) and the
standard test map is the test set.

Every method of a run sees the same splits: one split per (seed, k), drawn once and handed to
each method (and stored under ``splits/``). No test label is used for anything but the final
score: models keep their last epoch's weights.

Pretraining (stage 1) sees only unlabelled windows of the scene, never a label, so it does not
depend on k: one pretrained model per seed (and per pretraining variant of the ablations) is
fine-tuned for every k. That saves ``len(shots) - 1`` pretrainings per seed and is stated in the
outputs.

Outputs in the output folder, each written atomically:

* ``runs.csv``: one row per (method, shots, seed): scores in percent, pixel counts, seconds per
  stage, the device. A rerun skips the rows already there (resumable).
* ``reports/<method>_k<shots>_s<seed>.json``: each run's full accuracy report.
* ``splits/k<shots>_s<seed>.npz``: each split's training and test pixels (``rows``/``cols``).
* ``models/``: the pretrained models (reused when resuming; deleted unless ``keep_models``).
* ``summary.json`` and ``summary.md``: mean +- std per (method, shots), the paper's published
  rows beside them when the dataset is one of the paper's, the wall time per stage and the
  device.
* ``protocol.json``: the settings, checked when resuming.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.ablations import (
    ABLATIONS,
    PRETRAIN_VARIANTS,
    LinearHeadClassifier,
    ablation_preset,
    finetune_linear_head,
)
from benchmarks.baselines import random_forest, rbf_svm
from benchmarks.datasets import (
    Dataset,
    identify,
    paper_provenance,
    paper_rows,
    write_geotiffs,
)
from benchmarks.machine import cpu_model
from diffclip_cli import __version__
from diffclip_cli.errors import LabelError, OutputError
from diffclip_cli.io.atomic import atomic_path
from diffclip_cli.io.classes import ClassInfo, ClassTable
from diffclip_cli.io.labels import LabelSet, read_labels
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.archive import load_model, save_model
from diffclip_cli.model.config import Preset
from diffclip_cli.model.device import resolve_device
from diffclip_cli.model.modelfile import (
    ModelBundle,
    build_networks,
    bundle_from_network,
)
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.progress import ProgressEvent
from diffclip_cli.report.baseline import (
    SPATIAL_COMPONENTS,
    SPATIAL_SCALES,
    spectral_spatial_svm,
)
from diffclip_cli.report.metrics import AccuracyReport, summarize
from diffclip_cli.sampling.context import read_context, scene_projection
from diffclip_cli.sampling.defaults import DEFAULT_PRETRAIN_SAMPLES
from diffclip_cli.sampling.normalise import SceneStats, compute_stats
from diffclip_cli.sampling.shots import Split, sample_shots
from diffclip_cli.sampling.windows import read_windows
from diffclip_cli.train.data import WindowData
from diffclip_cli.train.finetune import member_seed, member_start
from diffclip_cli.train.spatial import ContextChoice, choose_context
from diffclip_cli.workflows.fewshot import FewshotRequest, fewshot_scene
from diffclip_cli.workflows.pretrain import pretrain_scene, remove_checkpoints

__all__ = [
    "ALL_METHODS",
    "CSV_FIELDS",
    "DEFAULT_METHODS",
    "ProtocolConfig",
    "ProtocolEvent",
    "ProtocolInputs",
    "ProtocolResult",
    "inputs_from_dataset",
    "inputs_from_files",
    "read_runs",
    "run_protocol",
    "summarize_runs",
    "summary_markdown",
]

log = logging.getLogger("diffclip")

#: Methods run by default: the full method, the paper's "CLIP" row, the two per-pixel baselines
#: and the spectral-spatial one (``report.baseline.spectral_spatial_svm``).
DEFAULT_METHODS: tuple[str, ...] = ("diffclip", "clip", "rf", "svm", "ss-svm")
#: Every method the runner knows: the defaults and the ablations.
ALL_METHODS: tuple[str, ...] = (*DEFAULT_METHODS, *ABLATIONS)
#: The paper's name of our methods, to put its published rows beside ours.
PAPER_NAMES: dict[str, str] = {"diffclip": "DiffCLIP", "clip": "CLIP"}
#: Columns of ``runs.csv``. Scores in percent (kappa x 100); ``shots`` is ``all`` for a fixed
#: split used whole; ``pretrain_s`` is the seconds of the pretraining the run started from,
#: shared by every run with the same ``pretrain_id``; ``train_s`` is fine-tuning (for the
#: baselines: fitting and predicting); ``evaluate_s`` scoring the test pixels.
CSV_FIELDS: tuple[str, ...] = (
    "dataset", "mode", "method", "shots", "seed", "oa", "aa", "kappa", "n_train", "n_test",
    "pretrain_id", "pretrain_s", "train_s", "evaluate_s", "device",
)
_NEURAL = frozenset(PRETRAIN_VARIANTS)
_BASELINES = frozenset({"rf", "svm", "ss-svm"})
_CHUNK = 4096
_ALL = 0  # shots value meaning "every pixel of the fixed training map"


# ------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class ProtocolInputs:
    """What the protocol runs on: GeoTIFF (or any raster) inputs and label files.

    Attributes:
        name: the dataset's name, written in every record.
        hsi: the HSI raster.
        lidar: LiDAR rasters (none for HSI only).
        labels: every labelled pixel (raster or vector); ``None`` when ``train`` and ``test``
            are given (then their union is used).
        train: the standard training map, for the fixed split.
        test: the standard test map, for the fixed split.
        classes: a classes table (CSV ``id,name,...``) shared by every label file.
        class_field: the class field of vector label files.
        layer: the layer of vector label files.
        paper_key: the paper's dataset key (``houston2013``, ``trento``, ``muufl``) whose
            published rows are shown beside the results, or ``None``.
    """

    name: str
    hsi: Path
    lidar: tuple[Path, ...] = ()
    labels: Path | None = None
    train: Path | None = None
    test: Path | None = None
    classes: Path | None = None
    class_field: str | None = None
    layer: str | None = None
    paper_key: str | None = None

    @property
    def has_split(self) -> bool:
        """Whether a fixed standard split is available."""
        return self.train is not None and self.test is not None

    def describe(self) -> dict[str, Any]:
        """Plain JSON facts (paths as strings)."""
        return {
            "name": self.name, "hsi": str(self.hsi), "lidar": [str(p) for p in self.lidar],
            "labels": None if self.labels is None else str(self.labels),
            "train": None if self.train is None else str(self.train),
            "test": None if self.test is None else str(self.test),
            "classes": None if self.classes is None else str(self.classes),
            "paper_key": self.paper_key,
        }


def inputs_from_files(
    hsi: str | os.PathLike[str],
    *,
    lidar: Sequence[str | os.PathLike[str]] = (),
    labels: str | os.PathLike[str] | None = None,
    train: str | os.PathLike[str] | None = None,
    test: str | os.PathLike[str] | None = None,
    classes: str | os.PathLike[str] | None = None,
    class_field: str | None = None,
    layer: str | None = None,
    name: str | None = None,
    paper_key: str | None = None,
) -> ProtocolInputs:
    """Protocol inputs from raster files and label files (raster or vector).

    Args:
        hsi: the HSI raster.
        lidar: LiDAR rasters.
        labels: every labelled pixel; may be omitted when ``train`` and ``test`` are given.
        train: the standard training map (fixed-split mode).
        test: the standard test map (fixed-split mode).
        classes: a classes table shared by the label files.
        class_field: the class field of vector label files.
        layer: the layer of vector label files.
        name: the dataset's name (default: the HSI file's name without suffix).
        paper_key: show the paper's rows of this dataset (see :func:`identify`).

    Raises:
        LabelError: with neither ``labels`` nor both ``train`` and ``test``.
    """
    if labels is None and (train is None or test is None):
        raise LabelError("the protocol needs labels: every labelled pixel, or a training and "
                         "a test map", hint="pass labels, or train and test")
    if (train is None) != (test is None):
        raise LabelError("a fixed split needs both a training and a test map",
                         hint="pass both train and test, or neither")
    def opt(p: str | os.PathLike[str] | None) -> Path | None:
        return None if p is None else Path(p)

    return ProtocolInputs(
        name=name or Path(hsi).stem, hsi=Path(hsi), lidar=tuple(Path(p) for p in lidar),
        labels=opt(labels), train=opt(train), test=opt(test), classes=opt(classes),
        class_field=class_field, layer=layer, paper_key=paper_key)


def inputs_from_dataset(dataset: Dataset, folder: str | os.PathLike[str]) -> ProtocolInputs:
    """Protocol inputs from a dataset read with ``load_mat_folder``, via GeoTIFFs.

    The dataset is written to ``folder`` with :func:`write_geotiffs` (replacing earlier files),
    so the protocol reads it through the same scene and label code as any other input. The
    paper's rows are shown when :func:`identify` recognises the dataset.

    Args:
        dataset: the dataset.
        folder: where to write the GeoTIFFs.
    """
    paths = write_geotiffs(dataset, folder, overwrite=True)
    return ProtocolInputs(
        name=dataset.name, hsi=paths["hsi"],
        lidar=(paths["lidar"],) if "lidar" in paths else (),
        labels=paths["labels"], train=paths.get("train"), test=paths.get("test"),
        classes=paths["classes"], paper_key=identify(dataset))


# ------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class ProtocolConfig:
    """What to run.

    Attributes:
        preset: architecture and recipes (``load_preset(...)`` with any overrides).
        shots: shot counts k. In ``fixed`` mode, 0 means every pixel of the training map.
        seeds: the seeds; an int ``n`` means ``0..n-1``. A seed drives the split, the
            pretraining (pixel sample, initialisation, noise, masks) and the fine-tuning.
        methods: among :data:`ALL_METHODS`: ``diffclip``, ``clip`` (no pretraining), ``rf``,
            ``svm``, and the ablations ``no-text``, ``no-diffusion``, ``no-mask``.
        mode: ``random`` (the paper's protocol) or ``fixed`` (the standard split).
        pretrain_samples: unlabelled windows for each pretraining.
        template: the prompt template (default: the preset's).
        device: torch device name (``cpu``, ``cuda``, ``auto``).
        batch_size: windows per forward pass when scoring.
        keep_models: keep the pretrained models under ``models/`` after the run.
    """

    preset: Preset
    shots: tuple[int, ...] = (2, 8, 20)
    seeds: tuple[int, ...] | int = 10
    methods: tuple[str, ...] = DEFAULT_METHODS
    mode: str = "random"
    pretrain_samples: int = DEFAULT_PRETRAIN_SAMPLES
    template: str | None = None
    device: str = "cpu"
    batch_size: int | None = None
    keep_models: bool = False

    def __post_init__(self) -> None:
        seeds = self.seeds
        seeds = tuple(range(seeds)) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "shots", tuple(int(k) for k in self.shots))
        object.__setattr__(self, "methods", tuple(dict.fromkeys(self.methods)))
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError("give at least one seed, each once")
        if not self.shots or len(set(self.shots)) != len(self.shots):
            raise ValueError("give at least one shot count, each once")
        if self.mode not in ("random", "fixed"):
            raise ValueError(f"unknown mode {self.mode!r}: use 'random' or 'fixed'")
        low = 0 if self.mode == "fixed" else 1
        if min(self.shots) < low:
            raise ValueError("shot counts must be positive (0 = the whole training map, "
                             "fixed mode only)")
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown or not self.methods:
            raise ValueError(f"unknown methods {unknown}; choose among {list(ALL_METHODS)}")
        if self.pretrain_samples < 1:
            raise ValueError("pretrain_samples must be positive")

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The seeds (``seeds`` given as a count ``n`` are ``0..n-1``)."""
        seeds = self.seeds
        return tuple(range(seeds)) if isinstance(seeds, int) else seeds

    def settings(self) -> dict[str, Any]:
        """What makes runs comparable, checked when resuming: preset, samples, template, mode."""
        return {"preset": self.preset.to_dict(), "pretrain_samples": self.pretrain_samples,
                "template": self.template or self.preset.model.template, "mode": self.mode}


@dataclass(frozen=True)
class ProtocolEvent:
    """A progress report of :func:`run_protocol`.

    Attributes:
        kind: ``pretrain`` (a pretraining step), ``stage`` (a run's step or scored pixels),
            ``run`` (a run finished; ``record`` holds its CSV row) or ``skip`` (a run found in
            ``runs.csv``).
        seed: the seed.
        method: the method (``None`` for a pretraining).
        shots: k (``None`` for a pretraining).
        stage: ``pretrain``, ``finetune`` or ``evaluate`` for ``pretrain``/``stage`` events;
            the pretraining variant for ``pretrain`` events is in ``variant``.
        done: optimiser steps or pixels done (for ``run``/``skip``: runs done so far).
        total: of how many (for ``run``/``skip``: all runs of the protocol).
        variant: the pretraining variant (``method``, ``no-diffusion``, ``no-mask``).
        record: the CSV row of a finished or skipped run.
    """

    kind: str
    seed: int
    method: str | None = None
    shots: int | None = None
    stage: str | None = None
    done: int = 0
    total: int = 0
    variant: str | None = None
    record: dict[str, Any] | None = None


ProtocolProgress = Callable[[ProtocolEvent], None]


@dataclass
class ProtocolResult:
    """What :func:`run_protocol` produced.

    Attributes:
        records: every run's CSV row (those of earlier invocations included).
        summary: one entry per (method, shots): ``method``, ``shots``, ``n_runs`` and
            ``oa``/``aa``/``kappa`` as ``{"mean", "std"}`` in percent, plus the paper's
            ``paper`` row when there is one.
        markdown: the text of ``summary.md``.
        paths: files written: ``runs``, ``summary_json``, ``summary_md``.
        seconds: wall time of this invocation.
        skipped: runs found already done.
        pretrainings: seconds of each pretrained model used by this invocation, by
            ``pretrain_id`` (``<variant>-s<seed>``).
    """

    records: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    markdown: str
    paths: dict[str, Path]
    seconds: float
    skipped: int = 0
    pretrainings: dict[str, float] = field(default_factory=dict)


# -------------------------------------------------------------------------------------- labels


def _union_table(tables: Iterable[ClassTable]) -> ClassTable:
    items: dict[int, ClassInfo] = {}
    for table in tables:
        for c in table:
            items.setdefault(c.id, c)
    return ClassTable([items[i] for i in sorted(items)])


def _concat(parts: Sequence[LabelSet], classes: ClassTable) -> LabelSet:
    rows = np.concatenate([p.rows for p in parts])
    cols = np.concatenate([p.cols for p in parts])
    ids = np.concatenate([p.class_ids for p in parts])
    first = parts[0]
    return LabelSet(rows, cols, ids, classes, first.report, first.grid)


def _read(path: Path, scene: Scene, inputs: ProtocolInputs,
          classes: ClassTable | None) -> LabelSet:
    return read_labels(path, scene.grid, class_field=inputs.class_field, layer=inputs.layer,
                       classes=classes if classes is not None else inputs.classes)


def _with_classes(labels: LabelSet, classes: ClassTable) -> LabelSet:
    return LabelSet(labels.rows, labels.cols, labels.class_ids, classes, labels.report,
                    labels.grid)


def _fixed_labels(scene: Scene, inputs: ProtocolInputs) -> tuple[LabelSet, int]:
    """Training-map pixels then test-map pixels (valid ones), and how many are training."""
    assert inputs.train is not None and inputs.test is not None
    train = _read(inputs.train, scene, inputs, None)
    test = _read(inputs.test, scene, inputs, None)
    classes = train.classes if inputs.classes else _union_table([train.classes, test.classes])
    train = _with_classes(train, classes).drop_invalid(scene)
    test = _with_classes(test, classes).drop_invalid(scene)
    key_train = train.rows * scene.grid.width + train.cols
    both = np.isin(test.rows * scene.grid.width + test.cols, key_train)
    if both.any():
        log.warning("%d pixels are in both the training and the test map; they are used for "
                    "training only", int(both.sum()))
        test = test.subset(~both)
    return _concat([train, test], classes), len(train)


def _all_labels(scene: Scene, inputs: ProtocolInputs) -> LabelSet:
    """Every labelled pixel (valid ones): the labels file, or the two split maps merged."""
    if inputs.labels is not None:
        return _read(inputs.labels, scene, inputs, None).drop_invalid(scene)
    merged, _ = _fixed_labels(scene, inputs)
    order = np.lexsort((merged.cols, merged.rows))
    return merged.subset(order)


def _split(labels: LabelSet, k: int, seed: int, *, mode: str, n_train_map: int) -> Split:
    if mode == "random":
        return sample_shots(labels, k, seed=seed)
    train_map = np.arange(n_train_map, dtype=np.int64)
    test = np.arange(n_train_map, len(labels), dtype=np.int64)
    if k == _ALL:
        return Split(train_map, test)
    picked = sample_shots(labels.subset(train_map), k, seed=seed)
    return Split(train_map[picked.train], test, picked.warnings)


# ------------------------------------------------------------------------------------- records


def _context_id(stats: SceneStats) -> str:
    """``""`` without spatial context, else ``"-ctx<largest scale>"`` (a file-name part)."""
    if stats.context is None:
        return ""
    return f"-ctx{stats.context.scales[-1]:g}"


def _shots_text(k: int) -> str:
    return "all" if k == _ALL else str(k)


def _run_key(method: str, shots: int | str, seed: int | str) -> tuple[str, str, str]:
    return str(method), str(shots), str(seed)


def _report_path(out: Path, method: str, k: int, seed: int) -> Path:
    return out / "reports" / f"{method}_k{_shots_text(k)}_s{seed}.json"


def read_runs(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a ``runs.csv`` (numbers as floats, ``seed`` as int; empty if missing)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["seed"] = int(row["seed"])
        for key in ("oa", "aa", "kappa", "pretrain_s", "train_s", "evaluate_s"):
            row[key] = float(row[key]) if row.get(key) not in (None, "") else None
        for key in ("n_train", "n_test"):
            row[key] = int(row[key])
    return rows


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_runs(path: Path, records: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_FIELDS), lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: rec.get(k, "") for k in CSV_FIELDS})
    _write_text(path, buf.getvalue())


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100.0 * x, 4)


# ------------------------------------------------------------------------------------- methods


def _device_text(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return (f"cpu ({cpu_model()}, {os.cpu_count()} cores visible, "
            f"{torch.get_num_threads()} torch threads)")


def _score_linear_head(scene: Scene, models: Sequence[LinearHeadClassifier], test: LabelSet,
                       *, window: int, stats: SceneStats, batch_size: int | None
                       ) -> AccuracyReport:
    """The mean probabilities of the members (as the full method's ensemble is scored)."""
    ids = np.asarray(test.classes.ids)
    predicted = np.empty(len(test), np.int64)
    for start in range(0, len(test), _CHUNK):
        sl = slice(start, start + _CHUNK)
        batch = read_windows(scene, test.rows[sl], test.cols[sl], size=window, stats=stats)
        probs = sum(np.asarray(m.predict_proba(batch.hsi, batch.lidar,
                                               batch_size=batch_size or 1024))
                    for m in models)
        predicted[sl] = ids[np.asarray(probs).argmax(axis=1)]
    return AccuracyReport.from_labels(test.class_ids, predicted, test.classes)


class _Runner:
    """One invocation of the protocol: the scene, labels, caches, outputs."""

    def __init__(self, scene: Scene, inputs: ProtocolInputs, out: Path,
                 config: ProtocolConfig, progress: ProtocolProgress | None) -> None:
        self.scene, self.inputs, self.out, self.config = scene, inputs, out, config
        self.progress = progress
        self.device = resolve_device(config.device)  # once; every stage gets this device
        self.device_text = _device_text(self.device)
        if config.mode == "fixed":
            self.labels, self.n_train_map = _fixed_labels(scene, inputs)
        else:
            self.labels, self.n_train_map = _all_labels(scene, inputs), 0
        self._features: np.ndarray | None = None
        self._stats: dict[int, SceneStats] = {}
        self._context: dict[tuple[int, int], ContextChoice] = {}
        self._spatial: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.pretrain_seconds: dict[str, float] = {}

    def emit(self, event: ProtocolEvent) -> None:
        if self.progress is not None:
            self.progress(event)

    # -- shared pieces -----------------------------------------------------------------

    def split(self, k: int, seed: int) -> Split:
        split = _split(self.labels, k, seed, mode=self.config.mode,
                       n_train_map=self.n_train_map)
        path = self.out / "splits" / f"k{_shots_text(k)}_s{seed}.npz"
        if not path.exists():
            lab = self.labels
            with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as f:
                np.savez_compressed(
                    f, train_rows=lab.rows[split.train], train_cols=lab.cols[split.train],
                    train_ids=lab.class_ids[split.train], test_rows=lab.rows[split.test],
                    test_cols=lab.cols[split.test], test_ids=lab.class_ids[split.test])
        return split

    def stats(self, seed: int) -> SceneStats:
        if seed not in self._stats:
            self._stats = {seed: compute_stats(self.scene, seed=seed)}
        return self._stats[seed]

    def context(self, k: int, seed: int, split: Split) -> ContextChoice:
        """The spatial context the networks of this split get (chosen on its shots)."""
        key = (k, seed)
        if key not in self._context:
            lab = self.labels
            self._context = {key: choose_context(
                self.scene, self.stats(seed), self.config.preset.model,
                lab.rows[split.train], lab.cols[split.train], lab.class_ids[split.train])}
        return self._context[key]

    def spatial_features(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The spectral-spatial baseline's features of every labelled pixel."""
        if seed not in self._spatial:
            stats = self.stats(seed)
            projection = scene_projection(self.scene, stats, n_components=SPATIAL_COMPONENTS)
            self._spatial = {seed: read_context(self.scene, self.labels.rows, self.labels.cols,
                                                stats=stats, projection=projection,
                                                scales=SPATIAL_SCALES)}
        return self._spatial[seed]

    def features(self) -> np.ndarray:
        """Per-pixel HSI + LiDAR values of every labelled pixel (the baselines' input)."""
        if self._features is None:
            values = self.scene.read_pixels(self.labels.rows, self.labels.cols)
            parts = [values.hsi] + ([values.lidar] if values.lidar is not None else [])
            self._features = np.concatenate(parts, axis=1)
        return self._features

    def pretrained(self, variant: str, seed: int, stats: SceneStats
                   ) -> tuple[ModelBundle, str, float]:
        """The pretrained model of a variant, seed and input context: loaded if saved, else
        trained (one per seed and context: the splits of a seed share it when their shots
        chose the same context)."""
        cfg = self.config
        pid = f"{variant}-s{seed}" + _context_id(stats)
        path = self.out / "models" / f"pretrained-{pid}.pt"
        if path.exists():
            bundle = load_model(path)
            seconds = float(bundle.provenance.get("pretrain_seconds", 0.0))
            log.info("reusing the pretrained model %s", path)
        else:
            preset = ablation_preset(cfg.preset, variant)
            path.parent.mkdir(parents=True, exist_ok=True)
            ckpt = path.with_suffix(".ckpt")

            def report(event: ProgressEvent) -> None:
                self.emit(ProtocolEvent("pretrain", seed, stage=event.stage, done=event.done,
                                        total=event.total, variant=variant))

            stage1 = pretrain_scene(self.scene, preset=preset, samples=cfg.pretrain_samples,
                                    seed=seed, stats=stats, checkpoint=ckpt,
                                    resume=True, device=self.device, progress=report)
            seconds = stage1.seconds
            bundle = stage1.bundle
            bundle.provenance["pretrain_seconds"] = round(seconds, 3)
            bundle.provenance["variant"] = variant
            save_model(bundle, path, overwrite=True)
            remove_checkpoints(ckpt, preset.pretrain.encoders)
        self.pretrain_seconds[pid] = seconds
        return bundle, pid, seconds

    def random_init(self, seed: int, stats: SceneStats) -> ModelBundle:
        """The ``clip`` method's starting point: an image encoder never pretrained."""
        cfg = self.config
        net = DiffCLIPNet(cfg.preset.model, hsi_bands=self.scene.hsi_bands,
                          lidar_bands=self.scene.lidar_bands, seed=seed,
                          context_bands=stats.context_bands())
        return bundle_from_network(net, preset=cfg.preset, stats=stats,
                                   band_names=self.scene.band_names,
                                   provenance={"seed": seed, "pretrained": False})

    # -- one run -----------------------------------------------------------------------

    def run(self, method: str, k: int, seed: int, split: Split,
            start: ModelBundle | None) -> tuple[AccuracyReport, dict[str, float]]:
        cfg = self.config
        labels = self.labels

        def report(event: ProgressEvent) -> None:
            self.emit(ProtocolEvent("stage", seed, method=method, shots=k, stage=event.stage,
                                    done=event.done, total=event.total))

        if method == "ss-svm":
            bands, smooth = self.spatial_features(seed)
            tic = time.perf_counter()
            predicted, _ = spectral_spatial_svm(
                (bands[split.train], smooth[split.train]), labels.class_ids[split.train],
                (bands[split.test], smooth[split.test]))
            test = labels.subset(split.test)
            return (AccuracyReport.from_labels(test.class_ids, predicted, labels.classes),
                    {"train": time.perf_counter() - tic})
        if method in ("rf", "svm"):
            x = self.features()
            tic = time.perf_counter()
            fit = random_forest if method == "rf" else rbf_svm
            predicted = fit(x[split.train], labels.class_ids[split.train], x[split.test],
                            seed=seed)
            seconds = time.perf_counter() - tic
            test = labels.subset(split.test)
            return (AccuracyReport.from_labels(test.class_ids, predicted, labels.classes),
                    {"train": seconds})
        assert start is not None
        if method == "no-text":
            tic = time.perf_counter()
            stats = start.scene_stats
            window = start.config.window
            train = labels.subset(split.train)
            batch = read_windows(self.scene, train.rows, train.cols, size=window, stats=stats)
            data = WindowData(batch, train.index)
            # As many members as the full method averages, each with its own head seed,
            # spread over the stage-1 encoders as the full method spreads them.
            models = []
            encoders = build_networks(start)
            n = cfg.preset.finetune.members
            for member in range(n):
                s = member_seed(seed, member)
                model = LinearHeadClassifier(member_start(encoders, member, n),
                                             num_classes=len(labels.classes), seed=s)
                finetune_linear_head(model, data, cfg.preset.finetune, seed=s,
                                     device=self.device, progress=report)
                models.append(model)
            timings = {"train": time.perf_counter() - tic}
            tic = time.perf_counter()
            result = _score_linear_head(self.scene, models, labels.subset(split.test),
                                        window=window, stats=stats,
                                        batch_size=cfg.batch_size)
            timings["evaluate"] = time.perf_counter() - tic
            return result, timings
        res = fewshot_scene(
            self.scene, labels,
            FewshotRequest(shots=k, preset=cfg.preset, pretrained=start, template=cfg.template,
                           split=split, seed=seed, device=self.device,
                           batch_size=cfg.batch_size),
            progress=report, provenance={"protocol": {"method": method, "mode": cfg.mode}},
            baseline=False)  # the protocol scores its own baselines
        if not (np.array_equal(res.split.train, split.train)
                and np.array_equal(res.split.test, split.test)):
            raise RuntimeError("the fine-tuning used another split than the protocol drew")
        assert res.report is not None
        return res.report, {"train": res.timings.get("finetune", 0.0),
                            "evaluate": res.timings.get("evaluate", 0.0)}


# ------------------------------------------------------------------------------------- summary


def summarize_runs(out: str | os.PathLike[str], records: Sequence[dict[str, Any]], *,
                   paper_key: str | None = None) -> list[dict[str, Any]]:
    """Mean +- std (percent) per (method, shots) from the runs' saved accuracy reports.

    Uses :func:`~diffclip_cli.report.metrics.summarize` (population std over seeds).

    Args:
        out: the protocol's output folder (holding ``reports/``).
        records: the rows of ``runs.csv``.
        paper_key: the paper's dataset key, to attach its published rows.

    Returns:
        One entry per (method, shots), in method then shots order.
    """
    out = Path(out)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault((rec["method"], str(rec["shots"])), []).append(rec)
    order = {m: i for i, m in enumerate(ALL_METHODS)}

    def sort_key(key: tuple[str, str]) -> tuple[int, int]:
        return order.get(key[0], 99), -1 if key[1] == "all" else int(key[1])

    summary = []
    for method, shots in sorted(groups, key=sort_key):
        recs = sorted(groups[(method, shots)], key=lambda r: int(r["seed"]))
        reports = []
        for rec in recs:
            path = out / "reports" / f"{method}_k{shots}_s{rec['seed']}.json"
            reports.append(AccuracyReport.from_dict(json.loads(path.read_text("utf-8"))))
        stats = summarize(reports)

        def pct(key: str, stats: dict[str, Any] = stats) -> dict[str, float | None]:
            s = stats[key]
            return {"mean": None if s["mean"] is None else 100.0 * s["mean"],
                    "std": None if s["std"] is None else 100.0 * s["std"]}

        entry: dict[str, Any] = {
            "method": method, "shots": shots, "n_runs": stats["n_runs"],
            "seeds": [int(r["seed"]) for r in recs],
            "oa": pct("overall_accuracy"), "aa": pct("average_accuracy"),
            "kappa": pct("kappa"),
            "train_s": float(np.mean([r["train_s"] or 0.0 for r in recs])),
            "evaluate_s": float(np.mean([r["evaluate_s"] or 0.0 for r in recs])),
        }
        if paper_key and method in PAPER_NAMES and shots != "all":
            for row in paper_rows(paper_key, int(shots)):
                if row["method"] == PAPER_NAMES[method]:
                    entry["paper"] = {k: row[k] for k in ("oa", "aa", "kappa")}
        summary.append(entry)
    return summary


def _ms(value: dict[str, float | None]) -> str:
    if value["mean"] is None:
        return "–"
    return f"{value['mean']:.2f} ± {value['std']:.2f}"


def summary_markdown(
    summary: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any]],
    *,
    dataset: str,
    config: ProtocolConfig,
    paper_key: str | None,
    device: str,
    seconds: float | None = None,
) -> str:
    """The Markdown report of a protocol run (see the module documentation)."""
    cfg = config
    p = cfg.preset
    seeds = sorted({int(r["seed"]) for r in records})
    if cfg.mode == "random":
        mode = ("random k-shot (the paper's protocol): k labelled pixels per class drawn at "
                "random from all labelled pixels (standard train and test maps merged); the "
                "test set is every other labelled pixel")
    else:
        mode = ("fixed standard split: training map (whole, or k pixels per class drawn from "
                "it) for training, test map for testing")
    lines = [
        f"# Few-shot protocol: {dataset}",
        "",
        f"- Mode: {mode}.",
        f"- Seeds: {', '.join(map(str, seeds))} ({len(seeds)}); scores are mean ± standard "
        "deviation over seeds (population std), in percent (kappa × 100).",
        f"- Preset `{p.name}`: window {p.model.window}, width {p.model.dim}, depth "
        f"{p.model.depth}; pretraining {p.pretrain.epochs} epochs on "
        f"{cfg.pretrain_samples} unlabelled windows (batch {p.pretrain.batch_size}, lr "
        f"{p.pretrain.lr:g}); fine-tuning {p.finetune.epochs} epochs (batch "
        f"{p.finetune.batch_size}, lr {p.finetune.lr:g}, milestones "
        f"{list(p.finetune.milestones)}); prompt template "
        f"{cfg.template or p.model.template}.",
        "- Pretraining uses unlabelled windows only, so one pretrained model per seed (and per "
        "pretraining variant of the ablations) is fine-tuned for every k.",
        "- No test label is used for model selection: every model keeps its last epoch.",
        f"- Device: {device}.",
        "",
        "| method | k | runs | OA % | AA % | κ × 100 |"
        + (" paper OA | paper AA | paper κ |" if paper_key else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if paper_key else ""),
    ]
    for e in summary:
        row = (f"| {e['method']} | {e['shots']} | {e['n_runs']} | {_ms(e['oa'])} | "
               f"{_ms(e['aa'])} | {_ms(e['kappa'])} |")
        if paper_key:
            pr = e.get("paper")
            row += (f" {pr['oa']:.2f} | {pr['aa']:.2f} | {pr['kappa']:.2f} |" if pr
                    else " | | |")
        lines.append(row)
    if paper_key and cfg.mode == "random":
        shots = sorted({int(e["shots"]) for e in summary if e["shots"] != "all"})
        rows = [r for k in shots for r in paper_rows(paper_key, k)]
        if rows:
            lines += ["", f"The paper's Table 1 on `{paper_key}` ({paper_provenance()}):",
                      "", "| k | method | OA % | AA % | κ × 100 |", "|---:|---|---:|---:|---:|"]
            lines += [f"| {r['shots']} | {r['method']} | {r['oa']:.2f} | {r['aa']:.2f} | "
                      f"{r['kappa']:.2f} |" for r in rows]
    # wall time
    pre: dict[str, float] = {}
    for r in records:
        if r.get("pretrain_id"):
            pre[r["pretrain_id"]] = float(r["pretrain_s"] or 0.0)
    lines += ["", "Wall time per stage (seconds):", "",
              "| method | pretraining per seed (shared by every k) | fine-tuning / fitting "
              "per run | evaluation per run |", "|---|---:|---:|---:|"]
    for method in dict.fromkeys(r["method"] for r in records):
        recs = [r for r in records if r["method"] == method]
        ids = {r["pretrain_id"] for r in recs if r.get("pretrain_id")}
        pre_s = f"{np.mean([pre[i] for i in ids]):.1f}" if ids else "–"
        lines.append(f"| {method} | {pre_s} | {np.mean([r['train_s'] or 0 for r in recs]):.1f}"
                     f" | {np.mean([r['evaluate_s'] or 0 for r in recs]):.1f} |")
    total = sum(pre.values()) + sum((r["train_s"] or 0) + (r["evaluate_s"] or 0)
                                    for r in records)
    lines += ["", f"Total of the stages: {total:.0f} s ({len(pre)} pretrainings, "
              f"{len(records)} runs)."]
    if seconds is not None:
        lines.append(f"Wall time of the last invocation: {seconds:.0f} s.")
    lines += ["", f"diffclip {__version__}.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- runner


def _prepare(out: Path, config: ProtocolConfig, inputs: ProtocolInputs, *,
             resume: bool) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "protocol.json"
    settings = {"dataset": inputs.name, **config.settings()}
    runs_path = out / "runs.csv"
    if resume and settings_path.exists():
        before = json.loads(settings_path.read_text("utf-8"))
        if before != json.loads(json.dumps(settings)):
            changed = sorted(k for k in settings if before.get(k) != json.loads(
                json.dumps(settings[k])))
            raise OutputError(f"holds runs made with other settings ({', '.join(changed)})",
                              path=out, hint="use another output folder, or resume=False "
                                             "to start over")
    if not resume:
        runs_path.unlink(missing_ok=True)
        for sub in ("reports", "splits", "models"):
            shutil.rmtree(out / sub, ignore_errors=True)
    _write_text(settings_path, json.dumps(settings, indent=1) + "\n")
    (out / "reports").mkdir(exist_ok=True)
    (out / "splits").mkdir(exist_ok=True)
    records = read_runs(runs_path)
    return [r for r in records
            if _report_path(out, r["method"], 0 if r["shots"] == "all" else int(r["shots"]),
                            r["seed"]).exists()]


def run_protocol(
    inputs: ProtocolInputs,
    out: str | os.PathLike[str],
    *,
    config: ProtocolConfig,
    resume: bool = True,
    progress: ProtocolProgress | None = None,
) -> ProtocolResult:
    """Run the few-shot protocol: every (seed, k, method), then the summary.

    Args:
        inputs: the scene and labels (:func:`inputs_from_files`, :func:`inputs_from_dataset`).
        out: the output folder (created if missing).
        config: shots, seeds, methods, mode, preset, device.
        resume: skip the runs already in ``out/runs.csv`` (made with the same settings);
            ``False`` starts over, deleting earlier runs.
        progress: called with a :class:`ProtocolEvent` per optimiser step, scored chunk and
            run.

    Returns:
        The records, the summary and the paths written.

    Raises:
        LabelError: no labels, or ``fixed`` mode without a training and a test map.
        OutputError: ``out`` holds runs of other settings (with ``resume``).
    """
    tic = time.perf_counter()
    out = Path(out)
    cfg = config
    if cfg.mode == "fixed" and not inputs.has_split:
        raise LabelError("the fixed-split mode needs a training and a test map",
                         hint="give train and test label files, or use mode='random'")
    records = _prepare(out, cfg, inputs, resume=resume)
    done = {_run_key(r["method"], r["shots"], r["seed"]) for r in records}
    plan = [(seed, k, m) for seed in cfg.seed_list for k in cfg.shots for m in cfg.methods]
    total = len(plan)
    skipped = sum(_run_key(m, _shots_text(k), seed) in done for seed, k, m in plan)
    runs_path = out / "runs.csv"
    with Scene.open(inputs.hsi, list(inputs.lidar)) as scene:
        runner = _Runner(scene, inputs, out, cfg, progress)
        count = 0
        for seed in cfg.seed_list:
            todo = [(k, m) for k in cfg.shots for m in cfg.methods
                    if _run_key(m, _shots_text(k), seed) not in done]
            for k, m in [(k, m) for k in cfg.shots for m in cfg.methods
                         if _run_key(m, _shots_text(k), seed) in done]:
                count += 1
                runner.emit(ProtocolEvent("skip", seed, method=m, shots=k, done=count,
                                          total=total))
            if not todo:
                continue
            for k in cfg.shots:
                split = runner.split(k, seed)
                stats = None
                if any(m in _NEURAL and _run_key(m, _shots_text(k), seed) not in done
                       for m in cfg.methods):
                    stats = runner.context(k, seed, split).stats
                for method in cfg.methods:
                    if _run_key(method, _shots_text(k), seed) in done:
                        continue
                    variant = PRETRAIN_VARIANTS.get(method)
                    start: ModelBundle | None = None
                    pid, pre_s = "", 0.0
                    if method not in _BASELINES:
                        assert stats is not None
                        if variant:
                            start, pid, pre_s = runner.pretrained(variant, seed, stats)
                        else:
                            start = runner.random_init(seed, stats)
                    log.info("run %s, k=%s, seed %d", method, _shots_text(k), seed)
                    report, timings = runner.run(method, k, seed, split, start)
                    report.extra = {"protocol": {"dataset": inputs.name, "method": method,
                                                 "shots": _shots_text(k), "seed": seed,
                                                 "mode": cfg.mode}}
                    _write_text(_report_path(out, method, k, seed),
                                json.dumps(report.to_dict(), indent=1) + "\n")
                    record = {
                        "dataset": inputs.name, "mode": cfg.mode, "method": method,
                        "shots": _shots_text(k), "seed": seed,
                        "oa": _pct(report.overall_accuracy),
                        "aa": _pct(report.average_accuracy), "kappa": _pct(report.kappa),
                        "n_train": int(split.train.size), "n_test": int(report.n_pixels),
                        "pretrain_id": pid, "pretrain_s": round(pre_s, 3) if pid else "",
                        "train_s": round(timings.get("train", 0.0), 3),
                        "evaluate_s": round(timings.get("evaluate", 0.0), 3),
                        "device": runner.device_text,
                    }
                    records.append(record)
                    _write_runs(runs_path, records)
                    count += 1
                    runner.emit(ProtocolEvent("run", seed, method=method, shots=k, done=count,
                                              total=total, record=record))
        device_text = runner.device_text
    if not cfg.keep_models:
        shutil.rmtree(out / "models", ignore_errors=True)
    records = read_runs(runs_path)
    paper_key = inputs.paper_key if cfg.mode == "random" else None  # the paper's protocol only
    summary = summarize_runs(out, records, paper_key=paper_key)
    seconds = time.perf_counter() - tic
    markdown = summary_markdown(summary, records, dataset=inputs.name, config=cfg,
                                paper_key=paper_key, device=device_text,
                                seconds=seconds)
    paths = {"runs": runs_path, "summary_json": out / "summary.json",
             "summary_md": out / "summary.md"}
    _write_text(paths["summary_json"], json.dumps(
        {"dataset": inputs.name, "paper_key": paper_key, "device": device_text,
         "settings": cfg.settings(), "summary": summary, "seconds": round(seconds, 1)},
        indent=1) + "\n")
    _write_text(paths["summary_md"], markdown)
    return ProtocolResult(records, summary, markdown, paths, seconds, skipped,
                          dict(runner.pretrain_seconds))
