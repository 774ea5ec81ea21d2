"""The model inside a prediction graph: the inference engine and who runs it.

:func:`make_engine` builds a classifier model's engine (faithful,
:class:`~diffclip_cli.infer.engine.TileEngine`, or the distilled fast path,
:class:`~diffclip_cli.infer.fast.FastEngine`); a :class:`Runner` carries a model and its
engine options into the graph's tile tasks, builds the engine once per process, and
:func:`compute_slot` says what a tile holds while it runs the network.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from diffclip_cli.errors import ModelError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from diffclip_cli.model.modelfile import ModelBundle
    from diffclip_cli.sampling.tiles import TileData

__all__ = ["Engine", "Runner", "compute_slot", "load_model", "make_engine"]


class Engine(Protocol):
    """What the classifier needs of an inference engine (faithful or fast)."""

    @property
    def window(self) -> int:
        """Window size (tiles are read with a halo of ``window // 2``)."""
        ...

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        ...

    def predict_tile(self, data: TileData) -> np.ndarray:
        """``(K, h, w)`` probabilities of a tile's core, 0 on invalid pixels."""
        ...


def load_model(path: str | os.PathLike[str]) -> ModelBundle:
    """Load a model file written by ``diffclip fewshot`` (never unpickles code).

    Raises:
        ModelError: the file is missing, damaged or not a diffclip model.
    """
    from diffclip_cli.model.archive import load_model as _load

    if not Path(path).exists():
        raise ModelError("model file not found", path=Path(path),
                         hint="train one with `diffclip fewshot ... -o MODEL`")
    return _load(path)


def make_engine(bundle: ModelBundle, *, fast: bool = False,
                device: str | torch.device = "cpu",
                batch_size: int | None = None, precision: str | None = None,
                threads: int | None = None) -> Engine:
    """The inference engine of a classifier model file.

    Args:
        bundle: a ``classifier`` model.
        fast: use the distilled fast path stored in the model.
        device: a :class:`torch.device` or a name (resolved by the engine).
        batch_size: windows per forward pass (faithful) / pixels per strip (fast).
        precision: ``"fp32"`` or ``"bf16"`` (faithful engine; default by device).
        threads: torch intra-op threads while predicting (faithful engine).

    Raises:
        ModelError: a pretrained model (no classes), or ``fast`` without a fast path.
    """
    bundle.require_classes()
    if fast:
        from diffclip_cli.infer.fast import FastEngine

        return FastEngine(bundle, device=device, batch_size=batch_size)
    from diffclip_cli.infer.engine import TileEngine
    from diffclip_cli.model.modelfile import build_classifiers

    return TileEngine(build_classifiers(bundle), device=device, batch_size=batch_size,
                      precision=precision, threads=threads)


# -- the model inside the graph -----------------------------------------------------------

_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


#: One tile runs the network at a time in a process outside dask.distributed workers.
_LOCAL_SLOT = threading.Lock()


def compute_slot() -> Any:
    """What a tile holds while it runs the network.

    On dask's local threads: one lock, so one tile at a time uses torch's threads (all cores
    by default) while the other threads read and write; two tiles at once would also double
    the engine's working memory. In a ``distributed`` worker nothing: the worker's threads
    are its parallelism (its torch runs one thread per task).
    """
    distributed = sys.modules.get("distributed")
    if distributed is not None:
        try:
            distributed.get_worker()
        except ValueError:
            pass
        else:
            return contextlib.nullcontext()
    return _LOCAL_SLOT


class Runner:
    """A model and the engine options a graph's tile tasks run it with.

    The graph holds one runner under one key, so a ``distributed`` cluster ships the model once
    per worker; each process builds the engine once (kept per runner, not pickled).

    Args:
        bundle: a classifier model.
        fast: the distilled fast path.
        device: a :class:`torch.device` or a name, resolved where the engine is built (in
            each process; ``"cpu"`` on cluster workers).
        batch_size: engine batch size.
        precision: ``"fp32"``/``"bf16"`` (faithful engine).
        threads: torch threads while predicting (faithful engine).
    """

    def __init__(self, bundle: ModelBundle, *, fast: bool = False,
                 device: str | torch.device = "cpu",
                 batch_size: int | None = None, precision: str | None = None,
                 threads: int | None = None) -> None:
        self.bundle = bundle
        self.fast = fast
        self.device = device
        self.batch_size = batch_size
        self.precision = precision
        self.threads = threads
        self.token = uuid.uuid4().hex
        self._engine: Engine | None = None

    def engine(self) -> Engine:
        """The engine, built on first use in this process."""
        if self._engine is None:
            with _ENGINES_LOCK:
                engine = _ENGINES.get(self.token)
            if engine is None:
                engine = make_engine(self.bundle, fast=self.fast, device=self.device,
                                     batch_size=self.batch_size, precision=self.precision,
                                     threads=self.threads)
                with _ENGINES_LOCK:
                    if len(_ENGINES) > 4:  # a long-lived worker: forget old models
                        _ENGINES.clear()
                    engine = _ENGINES.setdefault(self.token, engine)
            self._engine = engine
        return self._engine

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_engine"] = None
        return state

    def __dask_tokenize__(self) -> str:
        return self.token
