"""Distil a fine-tuned DiffCLIP classifier into the fast path's student.

The teacher (the faithful classifier) labels ``pixels`` unlabelled pixels spread over the whole
valid area of the scene with its class *probabilities*; the student
(:class:`~diffclip_cli.model.student.StudentNet`) learns to reproduce them with a soft
cross-entropy (equivalently, the KL divergence to the teacher). No label is used: the figure
reported, the agreement of the student's and the teacher's labels on sampled pixels held out
from training, measures how faithfully the student copies the teacher, not accuracy.

The student's convolutions are unpadded, so its output at a pixel depends only on the
``window x window`` square around it. Training therefore runs it densely over small patches
that contain several sampled pixels and scores it where the teacher's targets are; the patch
size is chosen to read and hold as few pixels as possible (``1``: one window per sample, for
sparse samples; larger patches where samples are dense, as on small scenes).

:func:`add_fast_path` is the hook ``diffclip fewshot`` calls: it distils the student and stores
it in the model file's ``extras``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffclip_cli import __version__
from diffclip_cli.infer.engine import TileEngine
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.config import ConfigBase, check
from diffclip_cli.model.device import resolve_device
from diffclip_cli.model.modelfile import ModelBundle, build_classifiers
from diffclip_cli.model.rng import derive_seed
from diffclip_cli.model.student import (
    EXTRAS_KEY,
    StudentConfig,
    StudentNet,
    default_layout,
    student_to_extras,
)
from diffclip_cli.progress import Progress, counting
from diffclip_cli.sampling.normalise import SceneStats
from diffclip_cli.sampling.unlabelled import sample_unlabelled, valid_mask
from diffclip_cli.sampling.windows import read_windows
from diffclip_cli.train.budget import StepTimer, distill_steps_for
from diffclip_cli.train.loop import Step, WarmupCosineLR, train_steps

__all__ = ["DistillConfig", "DistillProbe", "DistillReport", "add_fast_path", "attach_student",
           "distill_student", "probe_distillation"]

log = logging.getLogger("diffclip")

#: Patch edges tried when grouping sampled pixels (odd, so patches have a centre pixel).
_PATCH_SIZES = (1, 3, 5, 7, 11, 15, 23, 31)


@dataclass(frozen=True)
class DistillConfig(ConfigBase):
    """How the student is distilled.

    Checked, read and written by :class:`~diffclip_cli.model.config.ConfigBase`: an invalid
    value or an unknown field is a :class:`~diffclip_cli.errors.ModelError` (a
    ``ValueError``).

    Attributes:
        pixels: unlabelled pixels the teacher labels (its cost dominates: about 330 MFLOP a
            pixel for the paper preset).
        block: the pixels come in ``block x block`` blocks (about ``pixels / block**2``
            blocks spread over the scene): neighbouring pixels show the student where the
            teacher puts class boundaries, and dense blocks make training cheap (a window
            per isolated pixel would cost ``window**2`` pixels of computation each).
        holdout: share of those pixels (whole blocks) kept out of training to measure
            agreement.
        steps: optimiser steps (each training pixel is seen about
            ``steps * batch_pixels / training pixels`` times); ``None``: from the scene,
            :data:`~diffclip_cli.train.budget.DISTILL_PASSES` visits per training pixel
            (:func:`~diffclip_cli.train.budget.distill_steps_for`), 6,019 steps when 8,192
            pixels are sampled, fewer on scenes with fewer valid pixels.
        batch_pixels: training pixels per optimiser step, on average.
        crop: edge of the random crops of the patches that make up a batch (pixels).
        lr: peak Adam learning rate (linear warm-up over the first 5 % of the steps, then
            cosine decay to 0).
        weight_decay: Adam weight decay.
        temperature: distillation temperature ``T``: both the teacher's log-probabilities and
            the student's logits are divided by ``T`` before the softmax, and the loss is
            multiplied by ``T**2`` (Hinton et al.); above 1 it also transfers how the teacher
            ranks the unlikely classes, which places decision boundaries more precisely.
        hidden: the student's width.
        heads: the student's attention-pooling heads.
        spectral: the student's 1x1 layers before the 3x3 ones.
        dilations: the student's 3x3 layers; ``None``: see ``pool``.
        pool: the student's attention-pooling neighbourhood; with ``dilations``, ``None``
            gives a receptive field equal to the teacher's window
            (:func:`~diffclip_cli.model.student.default_layout`).
    """

    pixels: int = 8192
    block: int = 1
    holdout: float = 0.1
    steps: int | None = None
    batch_pixels: int = 256
    crop: int = 8
    lr: float = 3e-3
    weight_decay: float = 0.0
    temperature: float = 1.0
    hidden: int = 64
    heads: int = 8
    spectral: int = 2
    dilations: tuple[int, ...] | None = None
    pool: int | None = None

    def validate(self) -> None:
        """Raise :class:`ModelError` when a value is out of range."""
        check(self.pixels >= 2, f"pixels must be at least 2, got {self.pixels}")
        check(0.0 <= self.holdout < 1.0, f"holdout must lie in [0, 1), got {self.holdout}")
        positive = min(self.batch_pixels, self.crop, self.hidden, self.block) >= 1
        check((self.steps is None or self.steps >= 0) and positive,
              "steps must not be negative, batch_pixels, crop, hidden and block positive")
        check(self.lr > 0 and self.weight_decay >= 0 and self.temperature > 0,
              "lr and temperature must be positive, weight_decay not negative")


@dataclass
class DistillReport:
    """What distillation did and how faithful the student is.

    Attributes:
        config: the options used.
        seed: the seed.
        pixels: pixels the teacher labelled.
        train_pixels: of which the student trained on.
        heldout_pixels: of which were held out.
        agreement: share of held-out pixels where the student's label is the teacher's
            (``nan`` without held-out pixels).
        train_agreement: the same on the training pixels.
        initial_agreement: held-out agreement of the untrained student (a baseline).
        kl: mean KL divergence teacher -> student on the held-out pixels, in nats.
        patch: edge of the training patches chosen.
        history: training records every 2 % of the steps (``step``, mean ``loss`` since the
            previous record, ``lr``).
        seconds: wall time of ``teacher`` inference and of ``train``-ing the student.
        macs_per_pixel: the student's multiply-adds per pixel.
        rows: the rows of the pixels the teacher labelled.
        cols: their columns.
        heldout: which of them were held out of training.
    """

    config: DistillConfig
    seed: int
    pixels: int
    train_pixels: int
    heldout_pixels: int
    agreement: float
    train_agreement: float
    initial_agreement: float
    kl: float
    patch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    macs_per_pixel: int = 0
    rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False)
    cols: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False)
    heldout: np.ndarray = field(default_factory=lambda: np.empty(0, bool), repr=False)

    def summary(self) -> dict[str, Any]:
        """Plain JSON types, without the training history (for provenance)."""
        def num(v: float) -> float | None:
            return None if math.isnan(v) else round(float(v), 5)

        return {
            "method": "distilled student (soft cross-entropy to the teacher's probabilities "
                      "on unlabelled pixels)",
            "config": self.config.to_dict(),
            "seed": self.seed,
            "pixels": self.pixels,
            "train_pixels": self.train_pixels,
            "heldout_pixels": self.heldout_pixels,
            "agreement_heldout": num(self.agreement),
            "agreement_train": num(self.train_agreement),
            "agreement_untrained": num(self.initial_agreement),
            "kl_heldout": num(self.kl),
            "patch": self.patch,
            "macs_per_pixel": self.macs_per_pixel,
            "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
            "version": __version__,
        }


@dataclass(eq=False)
class _Patches:
    """Normalised patches (plus the student's halo) and where the sampled pixels lie in them.

    Attributes:
        x: ``(P, C, s + 2 half, s + 2 half)`` float32 input channels (HSI, then LiDAR).
        target: ``(P, s, s)`` int64 index of the sampled pixel at each core position, or -1.
        size: the core edge ``s``.
    """

    x: torch.Tensor
    target: torch.Tensor
    size: int


def _patch_size(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], half: int) -> int:
    """The odd patch edge that holds every sample with the fewest pixels read."""
    best, best_cost = 1, math.inf
    for p in _PATCH_SIZES:
        if p > min(shape):
            break
        n = np.unique((rows // p) * (shape[1] // p + 1) + cols // p).size
        cost = n * (p + 2 * half) ** 2
        if cost < best_cost:
            best, best_cost = p, cost
    return best


def _read_patches(scene: Scene, rows: np.ndarray, cols: np.ndarray, *, half: int,
                  stats: SceneStats) -> _Patches:
    h, w = scene.grid.shape
    p = _patch_size(rows, cols, (h, w), half)
    pr, pc = rows // p, cols // p
    keys, inverse = np.unique(pr * (w // p + 1) + pc, return_inverse=True)
    kr, kc = keys // (w // p + 1), keys % (w // p + 1)
    r0 = np.minimum(kr * p, h - p)  # the last patches are shifted inside the scene
    c0 = np.minimum(kc * p, w - p)
    batch = read_windows(scene, r0 + p // 2, c0 + p // 2, size=p + 2 * half, stats=stats)
    x = batch.hsi if batch.lidar is None else np.concatenate([batch.hsi, batch.lidar], axis=1)
    target = np.full((keys.size, p, p), -1, np.int64)
    target[inverse, rows - r0[inverse], cols - c0[inverse]] = np.arange(rows.size)
    log.info("Distillation data: %d patches of %d x %d px (+%d halo), %.0f MB.", keys.size,
             p, p, half, x.nbytes / 1e6)
    return _Patches(torch.from_numpy(x), torch.from_numpy(target), p)


def _sample_pixels(scene: Scene, n: int, *, block: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """About ``n`` valid pixels in ``block x block`` blocks spread over the valid area.

    Returns:
        ``(rows, cols, group)``: the pixels (distinct, valid) and the block each belongs to.
        A scene with no more valid pixels than ``n`` gives all of them, one group each.
    """
    h, w = scene.grid.shape
    packed = valid_mask(scene)
    valid = np.unpackbits(packed, axis=1, count=w).astype(bool)
    total = int(valid.sum())
    if total <= n:
        rows, cols = np.nonzero(valid)
        return rows.astype(np.int64), cols.astype(np.int64), np.arange(rows.size)
    b = max(1, min(block, h, w))
    anchors = -(-n // (b * b))
    ar, ac = sample_unlabelled(scene, anchors, seed=seed)
    r0 = np.minimum(ar - b // 2, h - b).clip(0)
    c0 = np.minimum(ac - b // 2, w - b).clip(0)
    off_r, off_c = np.divmod(np.arange(b * b), b)
    rows = (r0[:, None] + off_r).ravel()
    cols = (c0[:, None] + off_c).ravel()
    group = np.repeat(np.arange(ar.size), b * b)
    keep = valid[rows, cols]
    rows, cols, group = rows[keep], cols[keep], group[keep]
    _, first = np.unique(rows * w + cols, return_index=True)  # blocks may overlap
    first = np.sort(first)
    return rows[first], cols[first], group[first]


def _holdout(group: np.ndarray, share: float, *, seed: int) -> np.ndarray:
    """A mask of about ``share`` of the pixels, whole groups at a time.

    At least one group when ``share > 0``, never all of them.
    """
    held = np.zeros(group.size, bool)
    if share <= 0 or group.size < 2:
        return held
    ids, sizes = np.unique(group, return_counts=True)
    order = np.random.default_rng(seed).permutation(ids.size)
    cum = np.cumsum(sizes[order])
    wanted = max(1, round(share * group.size))
    take = min(int(np.searchsorted(cum, wanted)) + 1, ids.size - 1)
    held[np.isin(group, ids[order[:take]])] = True
    return held


def _student_probs(student: StudentNet, patches: _Patches, n: int, *,
                   device: torch.device) -> np.ndarray:
    """The student's probabilities at every sampled pixel, from the patches."""
    out = torch.zeros((n, student.num_classes))
    chunk = max(1, 4096 // (patches.size * patches.size))
    was_training = student.training
    student.eval()
    with torch.inference_mode():
        for start in range(0, patches.x.shape[0], chunk):
            logits = student(patches.x[start:start + chunk].to(device))
            target = patches.target[start:start + chunk]
            where = target >= 0
            out[target[where]] = torch.softmax(logits.permute(0, 2, 3, 1)[where.to(device)],
                                               1).float().cpu()
    student.train(was_training)
    return out.numpy()


def _crops(patches: _Patches, train_map: torch.Tensor, index: np.ndarray, top: np.ndarray,
           left: np.ndarray, crop: int, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(B, C, crop + 2 half, ...)`` and target maps ``(B, crop, crop)`` of crops."""
    idx = torch.from_numpy(index)[:, None, None]
    span = torch.arange(crop + 2 * half)
    rows = (torch.from_numpy(top)[:, None] + span)[:, :, None]
    cols = (torch.from_numpy(left)[:, None] + span)[:, None, :]
    x = patches.x.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2).contiguous()
    core = torch.arange(crop)
    t_rows = (torch.from_numpy(top)[:, None] + core)[:, :, None]
    t_cols = (torch.from_numpy(left)[:, None] + core)[:, None, :]
    return x, train_map[idx, t_rows, t_cols]


def _student_config(scene: Scene, window: int, num_classes: int, cfg: DistillConfig,
                    context_bands: tuple[int, int] = (0, 0)) -> StudentConfig:
    """The student of a teacher with ``window`` x ``window`` windows and ``num_classes``.

    It reads what the teacher reads: the bands, then the context channels of each modality.
    """
    dilations, pool = default_layout(window)
    if cfg.dilations is not None:
        dilations = cfg.dilations
        pool = max(1, window - 2 * sum(dilations))
    return StudentConfig(hsi_bands=scene.hsi_bands + context_bands[0],
                         lidar_bands=scene.lidar_bands + context_bands[1],
                         num_classes=num_classes, hidden=cfg.hidden, dilations=dilations,
                         pool=cfg.pool or pool, heads=cfg.heads, spectral=cfg.spectral)


def _loss(student: StudentNet, x: torch.Tensor, where: torch.Tensor, target: torch.Tensor,
          temperature: float, device: torch.device) -> Step:
    """The soft cross-entropy of the student at ``where`` to ``target`` (weight: pixels)."""
    logits = student(x.to(device))
    z = logits.permute(0, 2, 3, 1)[where.to(device)]
    t = target.to(device)
    loss = -(t * F.log_softmax(z / temperature, dim=1)).sum(1).mean() * temperature ** 2
    return Step(loss, int(z.shape[0]))


@dataclass(frozen=True)
class DistillProbe:
    """What a distillation on a scene will do and what one of its steps costs.

    Attributes:
        pixels: pixels the teacher will label.
        train_pixels: of which the student trains on.
        steps: the steps :class:`DistillConfig` asks for (resolved from the scene if ``None``).
        patch: edge of the training patches.
        patches: how many patches are read.
        read_pixels: pixels read for them (halo included).
        step_s: seconds of one optimiser step, measured (0 when ``steps_timed`` is 0).
    """

    pixels: int
    train_pixels: int
    steps: int
    patch: int
    patches: int
    read_pixels: int
    step_s: float


def probe_distillation(scene: Scene, *, window: int, num_classes: int,
                       config: DistillConfig | None = None, seed: int = 0,
                       device: str | torch.device = "cpu", steps_timed: int = 8,
                       context_bands: tuple[int, int] = (0, 0)) -> DistillProbe:
    """Plan a distillation without running the teacher: its sizes and the cost of a step.

    Draws the same pixels :func:`distill_student` will (same seed), and times
    ``steps_timed`` optimiser steps of a student of the right shape on batches of the right
    geometry (random values: the cost does not depend on them).

    Args:
        scene: the scene.
        window: the teacher's window.
        num_classes: the teacher's classes.
        config: the distillation options.
        seed: the fewshot seed.
        device: a :class:`torch.device` or a name.
        steps_timed: steps to run (the first two are a warm-up, the others timed).
        context_bands: the teacher's context channels (``SceneStats.context_bands()``).
    """
    cfg = config or DistillConfig()
    rows, cols, group = _sample_pixels(scene, cfg.pixels, block=cfg.block,
                                       seed=derive_seed(seed, "distill/pixels"))
    held = _holdout(group, cfg.holdout, seed=derive_seed(seed, "distill/holdout"))
    train_pixels = int((~held).sum())
    steps = cfg.steps if cfg.steps is not None else distill_steps_for(train_pixels,
                                                                      cfg.batch_pixels)
    student_cfg = _student_config(scene, window, num_classes, cfg, context_bands)
    half = student_cfg.window // 2
    h, w = scene.grid.shape
    p = _patch_size(rows, cols, (h, w), half)
    n_patches = int(np.unique((rows // p) * (w // p + 1) + cols // p).size) if rows.size else 0
    step_s = 0.0
    if steps_timed > 0 and n_patches:
        torch_device = resolve_device(device)
        student = StudentNet(student_cfg, seed=seed).to(torch_device)
        opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
        crop = min(cfg.crop, p)
        per_crop = max(train_pixels / (n_patches * p * p) * crop * crop, 1e-9)
        per_step = max(1, round(cfg.batch_pixels / per_crop))
        # A few patches of the real geometry with random values (the cost ignores them),
        # cropped and stepped exactly as distill_student does.
        gen = torch.Generator().manual_seed(seed)
        m = min(n_patches, 64)
        channels = student_cfg.in_channels
        fake = _Patches(torch.randn((m, channels, p + 2 * half, p + 2 * half), generator=gen),
                        torch.zeros((m, p, p), dtype=torch.int64), p)
        density = min(1.0, train_pixels / (n_patches * p * p))
        train_map = torch.where(torch.rand((m, p, p), generator=gen) < density,
                                torch.arange(m * p * p).reshape(m, p, p), -1)
        train_map[:, 0, 0] = torch.arange(m) * p * p
        targets = torch.softmax(torch.randn((m * p * p, num_classes), generator=gen), 1)
        rng = np.random.default_rng(seed)

        def forward(step: int) -> Step | None:
            index = rng.integers(0, m, per_step)
            top = rng.integers(0, p - crop + 1, per_step)
            left = rng.integers(0, p - crop + 1, per_step)
            x, tmap = _crops(fake, train_map, index, top, left, crop, half)
            where = tmap >= 0
            if not bool(where.any()):
                return None
            return _loss(student, x, where, targets[tmap[where]], cfg.temperature,
                         torch_device)

        timer = StepTimer()
        train_steps(student, forward, steps=steps_timed, optimizer=opt, stage="distill",
                    progress=timer)
        step_s = timer.per_step(skip=2)
    return DistillProbe(pixels=int(rows.size), train_pixels=train_pixels, steps=int(steps),
                        patch=p, patches=n_patches, read_pixels=n_patches * (p + 2 * half) ** 2,
                        step_s=step_s)


def distill_student(
    scene: Scene,
    bundle: ModelBundle,
    *,
    classifier: DiffCLIPClassifier | Sequence[DiffCLIPClassifier] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    config: DistillConfig | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> tuple[StudentNet, DistillReport]:
    """Distil a classifier bundle's teacher into a student on the scene's unlabelled pixels.

    Args:
        scene: the scene the classifier was trained on (or any scene with its bands).
        bundle: a ``classifier`` model; its normalisation statistics are used.
        classifier: the bundle's classifier (or its ensemble's members) when already built
            (skips rebuilding them).
        seed: drives the pixel sample, the held-out split, initialisation and shuffling.
        device: torch device for the teacher and the student's training.
        batch_size: windows per teacher forward pass.
        config: the distillation options (default :class:`DistillConfig`).
        progress: called with :class:`~diffclip_cli.progress.ProgressEvent` s of stages
            ``"teacher"`` (pixels labelled) and ``"distill"`` (optimiser steps; every 2 % of
            them one carries the history record).
        **options: :class:`DistillConfig` fields overriding ``config``'s (``pixels``,
            ``block``, ``holdout``, ``steps``, ``batch_pixels``, ``crop``, ``lr``, ``weight_decay``,
            ``temperature``, ``hidden``, ``heads``, ``spectral``, ``dilations``, ``pool``).

    Returns:
        The trained student (eval mode, on the CPU) and the report.

    Raises:
        ModelError: the bundle is not a classifier or does not fit the scene's bands.
        ValueError: unknown or invalid options.
    """
    cfg = DistillConfig.from_dict({**(config or DistillConfig()).to_dict(), **options})
    bundle.check_inputs(scene.hsi_bands, scene.lidar_bands)
    torch_device = resolve_device(device)
    teacher = TileEngine(classifier if classifier is not None else build_classifiers(bundle),
                         device=torch_device, batch_size=batch_size)
    stats = bundle.scene_stats
    seconds: dict[str, float] = {}

    # 1. Pixels in small blocks spread over the valid area; the teacher labels them.
    start = time.perf_counter()
    rows, cols, group = _sample_pixels(scene, cfg.pixels, block=cfg.block,
                                       seed=derive_seed(seed, "distill/pixels"))
    if rows.size < 2:
        raise ValueError("the scene has fewer than two valid pixels to distil on")
    log.info("Teacher labelling %d unlabelled pixels for the fast path.", rows.size)
    probs = teacher.predict_pixels(scene, rows, cols, stats=stats,
                                   progress=counting(progress, "teacher"))
    seconds["teacher"] = time.perf_counter() - start

    # 2. Held-out split (whole blocks, so held-out pixels are not next to training ones in
    # the same block) and training data.
    start = time.perf_counter()
    held = _holdout(group, cfg.holdout, seed=derive_seed(seed, "distill/holdout"))
    steps = cfg.steps
    if steps is None:
        steps = distill_steps_for(int((~held).sum()), cfg.batch_pixels)
        cfg = dataclasses.replace(cfg, steps=steps)
    student_cfg = _student_config(scene, teacher.window, teacher.num_classes, cfg,
                                  stats.context_bands())
    student = StudentNet(student_cfg, seed=seed).to(torch_device)
    patches = _read_patches(scene, rows, cols, half=student.window // 2, stats=stats)
    log_p = np.log(np.clip(probs, 1e-12, None)) / cfg.temperature
    targets = torch.softmax(torch.from_numpy(log_p), 1)
    train_map = patches.target.clone()  # the held-out pixels are no training targets
    sampled = train_map >= 0
    train_map[sampled] = torch.where(torch.from_numpy(held)[train_map[sampled]], -1,
                                     train_map[sampled])
    counts = (train_map >= 0).flatten(1).sum(1).numpy()
    usable = np.flatnonzero(counts)
    teacher_labels = probs.argmax(1)

    def agreement(mask: np.ndarray, student_probs: np.ndarray) -> float:
        if not mask.any():
            return float("nan")
        return float((student_probs[mask].argmax(1) == teacher_labels[mask]).mean())

    initial = agreement(held, _student_probs(student, patches, rows.size, device=torch_device))

    # 3. Training: soft cross-entropy to the teacher's probabilities on random crops of the
    # patches (many small batches, whatever the patch size), warm-up then cosine decay.
    gen = np.random.default_rng(derive_seed(seed, "distill/batches"))
    crop = min(cfg.crop, patches.size)
    half = student.window // 2
    weights = counts[usable] / counts[usable].sum()
    per_crop = counts[usable].sum() / (usable.size * patches.size ** 2) * crop ** 2
    per_step = max(1, round(cfg.batch_pixels / max(per_crop, 1e-9)))
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = WarmupCosineLR(opt, warmup=max(1, steps // 20), steps=steps)

    def forward(step: int) -> Step | None:
        index = usable[gen.choice(usable.size, per_step, p=weights)]
        top = gen.integers(0, patches.size - crop + 1, per_step)
        left = gen.integers(0, patches.size - crop + 1, per_step)
        x, tmap = _crops(patches, train_map, index, top, left, crop, half)
        where = tmap >= 0
        if not bool(where.any()):
            return None
        return _loss(student, x, where, targets[tmap[where]], cfg.temperature, torch_device)

    history = train_steps(student, forward, steps=steps, optimizer=opt, scheduler=schedule,
                          stage="distill", progress=progress, every=max(1, steps // 50))
    student = student.cpu().eval()
    seconds["train"] = time.perf_counter() - start

    final = _student_probs(student, patches, rows.size, device=torch.device("cpu"))
    eps = 1e-8
    kl = float("nan")
    if held.any():
        p, q = probs[held], final[held]
        kl = float((p * (np.log(p + eps) - np.log(q + eps))).sum(1).mean())
    report = DistillReport(
        config=cfg, seed=seed, pixels=int(rows.size), train_pixels=int((~held).sum()),
        heldout_pixels=int(held.sum()), agreement=agreement(held, final),
        train_agreement=agreement(~held, final), initial_agreement=initial, kl=kl,
        patch=patches.size, history=history, seconds=seconds,
        macs_per_pixel=student_cfg.macs_per_pixel, rows=rows, cols=cols, heldout=held)
    log.info("Fast path: the student agrees with the teacher on %.1f %% of %d held-out "
             "pixels (%.0f kMAC/px).", 100 * report.agreement, report.heldout_pixels,
             student_cfg.macs_per_pixel / 1e3)
    return student, report


def add_fast_path(
    scene: Scene,
    bundle: ModelBundle,
    *,
    classifier: DiffCLIPClassifier | Sequence[DiffCLIPClassifier] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> ModelBundle:
    """Distil the fast path and return the bundle with the student stored in its extras.

    The student goes to ``extras["fast_student"]`` (with its distillation summary) and the
    summary also to ``provenance["fast_path"]``, so ``diffclip info`` can show it.

    Args:
        scene: the scene the classifier was trained on.
        bundle: a ``classifier`` model (not modified; a copy is returned).
        classifier: the bundle's classifier (or its ensemble's members) when already built.
        seed: the seed of every random choice.
        device: a :class:`torch.device` or a name.
        batch_size: windows per teacher forward pass.
        progress: called with :class:`~diffclip_cli.progress.ProgressEvent` s (see
            :func:`distill_student`).
        **options: :class:`DistillConfig` fields.

    Returns:
        A copy of ``bundle`` carrying the student.
    """
    student, report = distill_student(scene, bundle, classifier=classifier, seed=seed,
                                      device=device, batch_size=batch_size, progress=progress,
                                      **options)
    return attach_student(bundle, student, report)


def attach_student(bundle: ModelBundle, student: StudentNet, report: DistillReport
                   ) -> ModelBundle:
    """A copy of ``bundle`` carrying ``student`` and its distillation summary.

    Args:
        bundle: the classifier the student was distilled from.
        student: the student.
        report: its distillation report (the summary goes to the extras and provenance).
    """
    summary = report.summary()
    extras = {**bundle.extras, EXTRAS_KEY: student_to_extras(student, provenance=summary)}
    provenance = {**bundle.provenance, "fast_path": summary}
    return dataclasses.replace(bundle, extras=extras, provenance=provenance)
