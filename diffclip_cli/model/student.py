"""The fast path's student: a small fully-convolutional network distilled from a classifier.

The student reads the same normalised bands as the DiffCLIP classifier (HSI then LiDAR, stacked
as channels) and maps every pixel to class logits from a square neighbourhood the size of the
teacher's window:

* a 1x1 convolution reduces the bands to ``hidden`` channels (spectral reduction), ReLU;
* one 3x3 convolution per entry of ``dilations`` (dilated, unpadded), ReLU, each with a
  residual connection to its centre-cropped input;
* a 1x1 convolution to ``K`` logits.

All convolutions are *valid* (no padding): an input of ``H x W`` gives logits for its
``(H - window + 1) x (W - window + 1)`` interior, where ``window = 1 + 2 * sum(dilations)`` is the
receptive field. A ``window x window`` window therefore gives the logits of its centre pixel,
and a tile read with a halo of ``window // 2`` gives the logits of its whole core, the same
numbers for the same pixel either way. Per pixel it costs
``bands * hidden + 9 * hidden**2 * len(dilations) + hidden * K`` multiply-adds (about 0.1 MFLOP
for 204 bands and ``hidden = 32``), against about 330 MFLOP for the paper's classifier.

The student lives inside a model file's ``extras`` (:func:`student_to_extras`,
:func:`student_from_extras`) as plain values and tensors, so model files stay loadable with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from diffclip_cli.errors import ModelError
from diffclip_cli.model.layers import keeps_global_rng
from diffclip_cli.model.rng import make_generator

__all__ = [
    "EXTRAS_KEY",
    "STUDENT_FORMAT",
    "StudentConfig",
    "StudentNet",
    "default_dilations",
    "student_from_extras",
    "student_to_extras",
]

#: The key of the student in :attr:`ModelBundle.extras`.
EXTRAS_KEY = "fast_student"
#: The layout version of the stored student.
STUDENT_FORMAT = 1


def default_dilations(window: int) -> tuple[int, ...]:
    """Dilations of 3x3 convolutions whose receptive field is exactly ``window`` pixels.

    The first convolution is undilated and the others mostly use dilation 2, so every offset
    of the window is reachable (no gaps) with about half as many layers as plain 3x3
    convolutions: 5 -> (1, 1), 7 -> (1, 2), 9 -> (1, 2, 1), 11 -> (1, 2, 2).

    Args:
        window: the receptive field, a positive odd number.

    Raises:
        ValueError: an even or non-positive window.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    half = window // 2
    if half == 0:
        return ()
    return (1,) + (2,) * ((half - 1) // 2) + (1,) * ((half - 1) % 2)


@dataclass(frozen=True)
class StudentConfig:
    """The student's architecture.

    Attributes:
        hsi_bands: HSI bands read (the teacher's).
        lidar_bands: LiDAR channels read (0 for an HSI-only model).
        num_classes: output classes, in the teacher's class order.
        hidden: channels after the spectral reduction and in every 3x3 layer.
        dilations: one 3x3 convolution per entry, with that dilation.
    """

    hsi_bands: int
    lidar_bands: int
    num_classes: int
    hidden: int = 32
    dilations: tuple[int, ...] = field(default=(1, 2, 2))

    def __post_init__(self) -> None:
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        if self.hsi_bands < 1 or self.lidar_bands < 0:
            raise ModelError(f"a student needs HSI bands and no negative LiDAR channels, got "
                             f"{self.hsi_bands} and {self.lidar_bands}")
        if self.num_classes < 1 or self.hidden < 1:
            raise ModelError(f"num_classes and hidden must be at least 1, got "
                             f"{self.num_classes} and {self.hidden}")
        if any(d < 1 for d in self.dilations):
            raise ModelError(f"dilations must be positive, got {list(self.dilations)}")

    @property
    def in_channels(self) -> int:
        """Input channels: HSI bands, then LiDAR channels."""
        return self.hsi_bands + self.lidar_bands

    @property
    def window(self) -> int:
        """The receptive field (odd): logits of a pixel depend on this square around it."""
        return 1 + 2 * sum(self.dilations)

    @property
    def macs_per_pixel(self) -> int:
        """Multiply-adds per classified pixel (halo overhead of tiles not counted)."""
        h = self.hidden
        return self.in_channels * h + 9 * h * h * len(self.dilations) + h * self.num_classes

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {"hsi_bands": self.hsi_bands, "lidar_bands": self.lidar_bands,
                "num_classes": self.num_classes, "hidden": self.hidden,
                "dilations": list(self.dilations)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudentConfig:
        """Rebuild from :meth:`to_dict`.

        Raises:
            ModelError: unknown or missing fields, or invalid values.
        """
        names = {"hsi_bands", "lidar_bands", "num_classes", "hidden", "dilations"}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelError(f"unknown student configuration fields {unknown}",
                             hint="the model file was made by a newer diffclip; upgrade it")
        try:
            return cls(hsi_bands=int(data["hsi_bands"]), lidar_bands=int(data["lidar_bands"]),
                       num_classes=int(data["num_classes"]), hidden=int(data["hidden"]),
                       dilations=tuple(int(d) for d in data["dilations"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"the student configuration is damaged ({exc!r})",
                             hint="re-run diffclip fewshot") from None


class StudentNet(nn.Module):
    """Spectral 1x1 reduction, residual dilated 3x3 convolutions, 1x1 to class logits.

    Args:
        config: the architecture.
        seed: seeds the initialisation (the global random state is left untouched).
    """

    @keeps_global_rng
    def __init__(self, config: StudentConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        self.reduce = nn.Conv2d(config.in_channels, h, 1)
        self.convs = nn.ModuleList(nn.Conv2d(h, h, 3, dilation=d) for d in config.dilations)
        self.head = nn.Conv2d(h, config.num_classes, 1)
        gen = make_generator(seed, "student/init")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu", generator=gen)
                nn.init.zeros_(m.bias)
        # Residual branches start small, so the untrained student is nearly per-pixel.
        for conv in self.convs:
            conv.weight.data.mul_(0.1)

    @property
    def window(self) -> int:
        """The receptive field in pixels."""
        return self.config.window

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.config.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the interior of ``(N, C, H, W)`` normalised data.

        Returns:
            ``(N, K, H - window + 1, W - window + 1)``.
        """
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected {self.config.in_channels} channels, got {x.shape[1]}")
        y = torch.relu(self.reduce(x))
        for conv, d in zip(self.convs, self.config.dilations, strict=True):
            y = y[:, :, d:-d, d:-d] + torch.relu(conv(y))
        return self.head(y)


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
    config = StudentConfig.from_dict(entry.get("config") or {})
    student = StudentNet(config)
    try:
        student.load_state_dict(dict(entry["state_dict"]), strict=True)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"the fast path's weights do not fit its configuration ({first})",
                         hint="re-run diffclip fewshot") from None
    return student.eval()
