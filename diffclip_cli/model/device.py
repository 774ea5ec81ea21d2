"""Pick the torch device from ``--device auto|cpu|cuda[:N]|mps``."""

from __future__ import annotations

import torch

from diffclip_cli.errors import DeviceError

__all__ = ["DeviceError", "resolve_device"]


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn a device name into a :class:`torch.device` that exists here.

    Args:
        spec: ``auto`` (CUDA if present, else Apple MPS, else CPU), ``cpu``, ``cuda``,
            ``cuda:N`` or ``mps``.

    Raises:
        DeviceError: the device is unknown or not available on this machine.
    """
    if isinstance(spec, torch.device):
        return spec
    text = str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise DeviceError(f"unknown device {spec!r}",
                          hint="use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("CUDA was asked for but no CUDA GPU is available",
                              hint="use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"there is no GPU {device.index} "
                              f"({torch.cuda.device_count()} found)", hint="use cuda:0")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError("MPS was asked for but is not available",
                              hint="use --device cpu or auto")
    elif device.type != "cpu":
        raise DeviceError(f"unsupported device {spec!r}", hint="use auto, cpu, cuda or mps")
    return device
