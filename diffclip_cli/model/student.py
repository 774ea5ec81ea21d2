"""The fast path's student: a small fully-convolutional network distilled from a classifier.

The student reads the same normalised bands as the DiffCLIP classifier (HSI then LiDAR, stacked
as channels) and maps every pixel to class logits from the square neighbourhood the teacher
sees (its window). It mirrors the teacher's structure at a fraction of the cost:

* spectral features per pixel (the teacher's stems): a 1x1 convolution from the bands to
  ``hidden`` channels, ReLU, then ``spectral - 1`` residual 1x1 layers;
* local context: one unpadded 3x3 convolution per entry of ``dilations``, ReLU, residual;
* attention pooling (the teacher's class token attending to every pixel of the window): each
  of ``heads`` heads scores every pixel of a ``pool x pool`` neighbourhood by its content
  (a 1x1 convolution) plus a learnt bias per position, and averages the pixels' value vectors
  with the softmax of those scores; computed for all pixels at once with depthwise
  convolutions (``exp(content) * exp(position)`` factorises the softmax weights);
* a head: the pooled vector and the centre pixel's features -> 1x1, ReLU -> 1x1 to ``K`` logits.

All convolutions are *valid* (no padding): an input of ``H x W`` gives logits for its
``(H - window + 1) x (W - window + 1)`` interior, where ``window = pool + 2 * sum(dilations)``
is the receptive field (the teacher's window by default). A ``window x window`` window
therefore gives the logits of its centre pixel, and a tile read with a halo of ``window // 2``
gives the logits of its whole core: the same numbers for the same pixel either way. Per pixel
it costs :attr:`StudentConfig.macs_per_pixel` multiply-adds, about 0.15 MFLOP for 204 bands
and ``hidden = 64``, against about 330 MFLOP for the paper's classifier.

The student lives inside a model file's ``extras`` (:func:`student_to_extras`,
:func:`student_from_extras`) as plain values and tensors, so model files stay loadable with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffclip_cli.errors import ModelError
from diffclip_cli.model.config import ConfigBase, check
from diffclip_cli.model.layers import keeps_global_rng
from diffclip_cli.model.rng import make_generator

__all__ = [
    "EXTRAS_KEY",
    "STUDENT_FORMAT",
    "StudentConfig",
    "StudentNet",
    "default_layout",
    "student_from_extras",
    "student_to_extras",
]

#: The key of the student in :attr:`ModelBundle.extras`.
EXTRAS_KEY = "fast_student"
#: The layout version of the stored student.
STUDENT_FORMAT = 1


def default_layout(window: int) -> tuple[tuple[int, ...], int]:
    """``(dilations, pool)`` of a student whose receptive field is exactly ``window`` pixels.

    One undilated 3x3 convolution gathers local context and attention pooling covers the
    rest: 11 -> ((1,), 9), 5 -> ((1,), 3); a window of 1 or 3 is pooling alone.

    Args:
        window: the receptive field, a positive odd number (the teacher's window).

    Raises:
        ValueError: an even or non-positive window.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    if window <= 3:
        return (), window
    return (1,), window - 2


@dataclass(frozen=True)
class StudentConfig(ConfigBase):
    """The student's architecture.

    Checked, read and written by :class:`~diffclip_cli.model.config.ConfigBase` (all fields
    are stored in the model file's extras; :func:`student_from_extras` reads them back).

    Attributes:
        hsi_bands: HSI bands read (the teacher's).
        lidar_bands: LiDAR channels read (0 for an HSI-only model).
        num_classes: output classes, in the teacher's class order.
        hidden: width of the features (a multiple of ``heads``).
        dilations: one 3x3 convolution per entry, with that dilation.
        pool: edge of the attention-pooling neighbourhood (odd).
        heads: attention-pooling heads.
        spectral: 1x1 layers before the 3x3 ones (the first reduces the bands to ``hidden``,
            the others are residual ``hidden -> hidden`` layers: a per-pixel spectral MLP).
    """

    hsi_bands: int
    lidar_bands: int
    num_classes: int
    hidden: int = 64
    dilations: tuple[int, ...] = field(default=(1,))
    pool: int = 9
    heads: int = 8
    spectral: int = 2

    def validate(self) -> None:
        """Raise :class:`ModelError` when a value is out of range."""
        check(self.hsi_bands >= 1 and self.lidar_bands >= 0,
              f"a student needs HSI bands and no negative LiDAR channels, got "
              f"{self.hsi_bands} and {self.lidar_bands}")
        check(min(self.num_classes, self.hidden, self.spectral, self.heads) >= 1,
              f"num_classes, hidden, heads and spectral must be at least 1, got "
              f"{self.num_classes}, {self.hidden}, {self.heads} and {self.spectral}")
        check(self.hidden % self.heads == 0,
              f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        check(self.pool >= 1 and self.pool % 2 == 1,
              f"pool must be a positive odd number, got {self.pool}")
        check(all(d >= 1 for d in self.dilations),
              f"dilations must be positive, got {list(self.dilations)}")

    @property
    def in_channels(self) -> int:
        """Input channels: HSI bands, then LiDAR channels."""
        return self.hsi_bands + self.lidar_bands

    @property
    def window(self) -> int:
        """The receptive field (odd): logits of a pixel depend on this square around it."""
        return self.pool + 2 * sum(self.dilations)

    @property
    def macs_per_pixel(self) -> int:
        """Multiply-adds per classified pixel (halo overhead of tiles not counted)."""
        h, m = self.hidden, self.heads
        return (self.in_channels * h + h * h * (self.spectral - 1)  # spectral
                + 9 * h * h * len(self.dilations)  # local
                + h * (h + m) + self.pool ** 2 * (h + m) + h  # attention pooling
                + 2 * h * h + h * self.num_classes)  # head


#: Bound of the content scores of attention pooling (``exp`` stays finite in float32).
_SCORE_BOUND = 5.0
#: Bound of the position scores.
_POSITION_BOUND = 8.0


class StudentNet(nn.Module):
    """Spectral 1x1 layers, residual 3x3 convolutions, attention pooling, 1x1 head.

    Args:
        config: the architecture.
        seed: seeds the initialisation (the global random state is left untouched).
    """

    @keeps_global_rng
    def __init__(self, config: StudentConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        h, m = config.hidden, config.heads
        self.reduce = nn.Conv2d(config.in_channels, h, 1)
        self.mix = nn.ModuleList(nn.Conv2d(h, h, 1) for _ in range(config.spectral - 1))
        self.convs = nn.ModuleList(nn.Conv2d(h, h, 3, dilation=d) for d in config.dilations)
        self.score = nn.Conv2d(h, m, 1)
        self.value = nn.Conv2d(h, h, 1)
        self.position = nn.Parameter(torch.zeros(m, config.pool, config.pool))
        self.fuse = nn.Conv2d(2 * h, h, 1)
        self.head = nn.Conv2d(h, config.num_classes, 1)
        gen = make_generator(seed, "student/init")
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_uniform_(mod.weight, nonlinearity="relu", generator=gen)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
        # Residual branches start small, so the untrained student is nearly per-pixel.
        for conv in [*self.mix, *self.convs]:
            conv.weight.data.mul_(0.1)

    @property
    def window(self) -> int:
        """The receptive field in pixels."""
        return self.config.window

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.config.num_classes

    def _pool(self, y: torch.Tensor) -> torch.Tensor:
        """Attention pooling over ``pool x pool`` neighbourhoods (valid)."""
        h, m = self.config.hidden, self.config.heads
        group = h // m
        score = _SCORE_BOUND * torch.tanh(self.score(y) / _SCORE_BOUND)
        # Numerically safe: the content and position scores are bounded, so no max shift.
        weight = score.exp()  # (N, m, H, W)
        value = self.value(y)
        n, _, rows, cols = value.shape
        weighted = (value.view(n, m, group, rows, cols) * weight[:, :, None]).view(value.shape)
        kernel = self.position.clamp(-_POSITION_BOUND, _POSITION_BOUND).exp()[:, None]
        num = F.conv2d(weighted, kernel.repeat_interleave(group, 0), groups=h)
        den = F.conv2d(weight, kernel, groups=m)
        return num / den.repeat_interleave(group, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the interior of ``(N, C, H, W)`` normalised data.

        Returns:
            ``(N, K, H - window + 1, W - window + 1)``.
        """
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected {self.config.in_channels} channels, got {x.shape[1]}")
        y = torch.relu(self.reduce(x))
        for mix in self.mix:
            y = y + torch.relu(mix(y))
        for conv, d in zip(self.convs, self.config.dilations, strict=True):
            y = y[:, :, d:-d, d:-d] + torch.relu(conv(y))
        c = self.config.pool // 2
        centre = y[:, :, c:y.shape[2] - c, c:y.shape[3] - c]
        z = torch.relu(self.fuse(torch.cat([self._pool(y), centre], 1)))
        return self.head(z)


def student_to_extras(student: StudentNet, *, provenance: Mapping[str, Any] | None = None
                      ) -> dict[str, Any]:
    """The student as plain values and tensors, for ``bundle.extras[EXTRAS_KEY]``.

    Args:
        student: the student.
        provenance: facts about how it was made (pixels, agreement with the teacher, ...);
            plain JSON-like values only.
    """
    return {
        "format": STUDENT_FORMAT,
        "config": student.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone().contiguous()
                       for k, v in student.state_dict().items()},
        "provenance": dict(provenance or {}),
    }


def student_from_extras(extras: Mapping[str, Any]) -> StudentNet:
    """Rebuild the student stored by :func:`student_to_extras`, in eval mode.

    Args:
        extras: either a bundle's whole ``extras`` dict or its ``EXTRAS_KEY`` entry.

    Raises:
        ModelError: no student is stored, or it is damaged or too new.
    """
    entry = extras.get(EXTRAS_KEY, extras) if isinstance(extras, Mapping) else None
    if not isinstance(entry, Mapping) or "state_dict" not in entry:
        raise ModelError("the model has no fast path (no distilled student)",
                         hint="re-run diffclip fewshot (it builds the fast path by default)")
    version = entry.get("format")
    if not isinstance(version, int) or version > STUDENT_FORMAT:
        raise ModelError(f"the fast path was stored in an unknown layout ({version!r})",
                         hint="upgrade diffclip or re-run diffclip fewshot")
    stored = entry.get("config")
    if not isinstance(stored, Mapping):
        raise ModelError("the student configuration is damaged (not a mapping)",
                         hint="re-run diffclip fewshot")
    unknown = StudentConfig.unknown_fields(stored)
    if unknown:
        raise ModelError(f"unknown StudentConfig fields {unknown}",
                         hint="the model file was made by a newer diffclip; upgrade it")
    try:
        config = StudentConfig.from_dict(stored)
    except ModelError as exc:
        raise ModelError(f"the student configuration is damaged ({exc.message})",
                         hint="re-run diffclip fewshot") from None
    student = StudentNet(config)
    try:
        student.load_state_dict(dict(entry["state_dict"]), strict=True)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"the fast path's weights do not fit its configuration ({first})",
                         hint="re-run diffclip fewshot") from None
    return student.eval()
