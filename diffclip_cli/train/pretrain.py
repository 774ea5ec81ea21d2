"""Stage 1: unsupervised masked-diffusion pretraining on unlabelled windows of the scene.

Adam and cosine annealing with warm restarts (stepped once per epoch), as published. One
``seed`` drives the shuffling, the augmentation crops, the timesteps, the noise and the masks
(the weights were initialised from the network's own seed). A checkpoint written after every
epoch lets a killed run continue with ``resume=True`` and end bit for bit where an
uninterrupted run with the same seed ends.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffclip_cli.errors import ModelError
from diffclip_cli.io.atomic import atomic_path
from diffclip_cli.io.names import is_gdal_name
from diffclip_cli.io.raster import Scene
from diffclip_cli.model.config import PretrainConfig
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.rng import make_generator
from diffclip_cli.progress import Progress
from diffclip_cli.train.data import WindowData
from diffclip_cli.train.loop import Step, train_epochs

__all__ = ["CHECKPOINT_KIND", "centre_crop_resize", "check_data", "checkpoint_fingerprint",
           "pretrain"]

log = logging.getLogger("diffclip")

CHECKPOINT_KIND = "diffclip-pretrain-checkpoint"
_CHECKPOINT_VERSION = 1


def check_data(net: DiffCLIPNet, data: WindowData) -> None:
    """Refuse windows the network was not built for.

    Raises:
        ModelError: band counts, LiDAR presence or the window size differ.
    """
    w = net.config.window
    if data.window != w:
        raise ModelError(f"the windows are {data.window} x {data.window} pixels but the model "
                         f"uses {w} x {w}", hint="extract windows of the model's size")
    # With spatial context the windows carry the context channels after the bands.
    if data.hsi_bands != net.input_bands["hsi"]:
        raise ModelError(f"the windows have {data.hsi_bands} HSI channels but the model reads "
                         f"{net.input_bands['hsi']}", hint="use the scene the model was built for")
    if data.lidar_bands != (net.input_bands["lidar"] if net.lidar_bands else 0):
        raise ModelError(f"the windows have {data.lidar_bands} LiDAR channels but the model reads "
                         f"{net.input_bands['lidar']}",
                         hint="give the same LiDAR inputs as the model")


def centre_crop_resize(
    hsi: torch.Tensor,
    lidar: torch.Tensor | None,
    sizes: tuple[int, ...],
    *,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random centre crop per sample, resized back (bilinear) to the window size.

    Each sample draws one size from ``sizes``; its HSI and LiDAR windows get the same crop.

    Args:
        hsi: ``(N, C, w, w)``.
        lidar: ``(N, L, w, w)`` or ``None``.
        sizes: crop sizes (same parity as ``w``, at most ``w``).
        generator: the CPU generator drawing the sizes.

    Returns:
        New ``(hsi, lidar)`` tensors.
    """
    n, w = hsi.shape[0], hsi.shape[-1]
    choice = torch.randint(len(sizes), (n,), generator=generator).to(hsi.device)
    pairs = [(hsi, hsi.clone())] + ([] if lidar is None else [(lidar, lidar.clone())])
    for k, s in enumerate(sizes):
        if s == w:
            continue
        idx = (choice == k).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        o = (w - s) // 2
        for x, out in pairs:
            crop = x[idx, :, o : o + s, o : o + s]
            out[idx] = F.interpolate(crop, size=(w, w), mode="bilinear", align_corners=False)
    return pairs[0][1], None if lidar is None else pairs[1][1]


def _fingerprint(net: DiffCLIPNet, data: WindowData, cfg: PretrainConfig, seed: int, *,
                 digest: bool = True) -> dict[str, Any]:
    return {
        "seed": int(seed),
        "samples": len(data),
        "hsi_bands": net.hsi_bands,
        "lidar_bands": net.lidar_bands,
        "model": net.config.to_dict(),
        "pretrain": cfg.to_dict(),
        "data": data_digest(data) if digest else None,
    }


def data_digest(data: WindowData) -> str:
    """SHA-256 of the training windows: equal exactly when the data are (same scene, sample)."""
    h = hashlib.sha256()
    for x in (data.windows.hsi, data.windows.lidar):
        if x is None:
            h.update(b"none")
            continue
        t = x.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _mismatch(saved: dict[str, Any], now: dict[str, Any], inputs: Mapping[str, Any] | None
              ) -> str:
    """What differs between a checkpoint's fingerprint and this run's, in words."""
    if "data" not in saved:
        return "by an older diffclip, which did not record its input data"
    then = saved.get("inputs")
    if inputs is not None and then is not None and then != json.loads(json.dumps(inputs)):
        return f"from other input files ({_describe_inputs(then)}; now {_describe_inputs(inputs)})"
    differ = sorted(k for k in now if k not in ("data", "inputs")
                    and saved.get(k) != json.loads(json.dumps(now[k])))
    if differ:
        words = {"seed": "seed", "samples": "number of windows (--samples)",
                 "model": "model configuration", "pretrain": "pretraining configuration",
                 "hsi_bands": "HSI band count", "lidar_bands": "LiDAR channel count"}
        return "with another " + " and another ".join(words.get(k, k) for k in differ)
    return "from other input data (the input files' content differs)"


def _describe_inputs(inputs: Mapping[str, Any]) -> str:
    files = inputs.get("files", []) if isinstance(inputs, Mapping) else []
    return ", ".join(f"{f.get('path')} ({f.get('size')} bytes)" for f in files
                     if isinstance(f, Mapping)) or "unknown"


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    from diffclip_cli.model.archive import torch_save

    with atomic_path(path, overwrite=True) as tmp:
        torch_save(state, tmp)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    from diffclip_cli.model.archive import check_archive

    # A damaged checkpoint is not resumed from (torch.load does not check the CRCs).
    check_archive(path, what="checkpoint", hint="delete it to start over")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable checkpoint is reported the same way
        raise ModelError(f"cannot read the checkpoint ({type(exc).__name__})", path=path,
                         hint="delete it to start over") from None
    if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
        raise ModelError("not a diffclip pretraining checkpoint", path=path,
                         hint="give another checkpoint path")
    if int(state.get("version", 0)) > _CHECKPOINT_VERSION:
        raise ModelError("the checkpoint was made by a newer diffclip", path=path,
                         hint="upgrade diffclip or start over")
    return state


def checkpoint_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What a checkpoint was started with (seed, ``samples``, ``pretrain`` recipe, ...).

    ``None`` when there is no such file.

    Raises:
        ModelError: the file is not a usable checkpoint.
    """
    if not Path(path).exists():
        return None
    return dict(json.loads(_load_checkpoint(Path(path))["fingerprint"]))


def pretrain(
    net: DiffCLIPNet,
    data: WindowData,
    cfg: PretrainConfig,
    *,
    seed: int,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    device: str | torch.device = "cpu",
    inputs: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Pretrain the image side by masked diffusion on unlabelled windows.

    Args:
        net: the network, trained in place (and left in eval mode on ``device``).
        data: normalised windows; labels, if any, are ignored.
        cfg: the schedule.
        seed: drives shuffling, augmentation, timesteps, noise and masks.
        checkpoint: a file written (atomically) after every epoch: weights, optimiser,
            scheduler, random state, epoch and history.
        resume: continue from ``checkpoint`` if it exists (it must come from the same seed,
            data size and configuration); start afresh if it does not.
        progress: called after every optimiser step with a ``"pretrain"``
            :class:`~diffclip_cli.progress.ProgressEvent`, counted over the whole run (a
            resumed run starts at its checkpoint's count); the last step of an epoch carries
            the epoch's record and comes after its checkpoint.
        device: where to train.
        inputs: the identity of the input files (plain JSON types, e.g. their names and
            sizes), stored in the checkpoint: a checkpoint of other inputs is not resumed.
            The windows' content digest is stored in any case.

    Returns:
        One record per epoch: ``epoch``, ``loss`` (mean per window), ``loss_hsi``,
        ``loss_lidar`` (without LiDAR: absent), ``lr`` and ``seconds``.

    Raises:
        ModelError: data not for this network, or an unusable checkpoint.
    """
    check_data(net, data)
    if len(data) == 0:
        raise ModelError("no windows to pretrain on", hint="sample unlabelled pixels first")
    sizes = cfg.crops_for(net.config.window) if cfg.augment else ()
    net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=cfg.t0, T_mult=cfg.t_mult, eta_min=cfg.eta_min)
    gen = make_generator(seed, "pretrain")
    fingerprint = _fingerprint(net, data, cfg, seed, digest=checkpoint is not None)
    if inputs is not None:
        fingerprint["inputs"] = json.loads(json.dumps(dict(inputs)))
    history: list[dict[str, Any]] = []
    start = 0
    path = None if checkpoint is None else Path(checkpoint)

    if resume and path is not None and path.exists():
        state = _load_checkpoint(path)
        saved = json.loads(state["fingerprint"])
        if saved != json.loads(json.dumps(fingerprint)):
            raise ModelError(f"the checkpoint was made {_mismatch(saved, fingerprint, inputs)}, "
                             "so this run cannot resume it", path=path,
                             hint="run with the same inputs and settings, or delete the "
                                  "checkpoint (or drop --resume) to start over")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        gen.set_state(state["rng"])
        start = int(state["epoch"])
        history = json.loads(state["history"])
        log.info("resuming pretraining from %s after epoch %d", path, start)
    elif resume:
        log.info("no checkpoint to resume from; pretraining from the start")

    def forward(idx: torch.Tensor) -> Step:
        hsi, lidar, _ = data.batch(idx, device)
        if sizes:
            hsi, lidar = centre_crop_resize(hsi, lidar, sizes, generator=gen)
        out = net.pretrain_loss(hsi, lidar, generator=gen)
        k = len(idx)
        return Step(out.loss, k, {f"loss_{m}": v * k for m, v in out.losses.items()})

    def save(history: list[dict[str, Any]]) -> None:
        if path is not None:
            _save_checkpoint(path, {
                "kind": CHECKPOINT_KIND,
                "version": _CHECKPOINT_VERSION,
                "fingerprint": json.dumps(fingerprint, sort_keys=True),
                "epoch": int(history[-1]["epoch"]),
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": gen.get_state(),
                "history": json.dumps(history),
            })

    return train_epochs(net, forward, samples=len(data), batch_size=cfg.batch_size,
                        epochs=cfg.epochs, optimizer=optimizer, scheduler=scheduler,
                        generator=gen, stage="pretrain", progress=progress, start=start,
                        history=history, end_epoch=save)


def input_paths(scene: Scene) -> dict[str, Any]:
    """The scene's files as a model's provenance names them."""
    return {"hsi": str(scene.hsi_path), "lidar": [str(p) for p in scene.lidar_paths]}


def input_identity(scene: Scene) -> dict[str, Any]:
    """The scene's files as a checkpoint records them: resolved paths and sizes.

    A GDAL dataset name (``/vsizip/...``, ``NETCDF:...``) is recorded verbatim, without a
    size: it is no local path to resolve. (The content is covered by the digest of the windows
    drawn from the files.)
    """
    files: list[dict[str, Any]] = []
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
