"""Ablations of DiffCLIP for the benchmark: the switches, and the "w/o text" classifier.

The paper's ablation (Houston 2013, OA): w/o text 89.35, w/o diffusion 89.67, w/o mask 90.78,
w/o unsupervised stage 87.82, full 94.80. Each ablation removes one part of the method and keeps
everything else (data, seeds, schedules, shots) as the full method has it:

* ``no-diffusion``: pretraining without diffusion noise, i.e. masked reconstruction of the clean
  input at ``t = 0`` (:attr:`ModelConfig.diffusion` = ``False``).
* ``no-mask``: pretraining with diffusion noise but no masking, every token visible
  (:attr:`ModelConfig.masking` = ``False``).
* ``no-text``: the pretrained image encoder and its embedding with a linear classification head
  trained by cross-entropy instead of scoring class prompts (:class:`LinearHeadClassifier`).
* ``clip`` (the paper's "CLIP" row, "w/o unsupervised stage"): the full classifier fine-tuned
  from a randomly initialised image encoder.

The switches are ablation tools only: the presets keep the method (``True``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffclip_cli.model.config import FinetuneConfig, Preset
from diffclip_cli.model.layers import init_linear_layers, keeps_global_rng
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.rng import make_generator
from diffclip_cli.progress import Progress
from diffclip_cli.train.data import WindowData
from diffclip_cli.train.finetune import check_labels, make_optimizer
from diffclip_cli.train.loop import Step, train_epochs
from diffclip_cli.train.pretrain import check_data

__all__ = [
    "ABLATIONS",
    "PRETRAIN_VARIANTS",
    "LinearHeadClassifier",
    "ablation_preset",
    "finetune_linear_head",
]

log = logging.getLogger("diffclip")

#: Ablation names and what each removes.
ABLATIONS: dict[str, str] = {
    "no-text": "a linear head on the image embedding, cross-entropy, instead of class prompts",
    "no-diffusion": "pretraining without diffusion noise (masked reconstruction of clean input)",
    "no-mask": "pretraining with diffusion noise but without masking (all tokens visible)",
}

#: The pretraining each method needs: ``None`` for none (random initialisation), else the
#: name of a pretraining variant (see :func:`ablation_preset`).
PRETRAIN_VARIANTS: dict[str, str | None] = {
    "diffclip": "method",
    "no-text": "method",
    "no-diffusion": "no-diffusion",
    "no-mask": "no-mask",
    "clip": None,
}


def ablation_preset(preset: Preset, variant: str) -> Preset:
    """The preset of a pretraining variant: ``method``, ``no-diffusion`` or ``no-mask``.

    Raises:
        ValueError: on an unknown variant.
    """
    if variant == "method":
        return preset
    if variant == "no-diffusion":
        return preset.with_overrides(**{"model.diffusion": False})
    if variant == "no-mask":
        return preset.with_overrides(**{"model.masking": False})
    raise ValueError(f"unknown pretraining variant {variant!r}")


class LinearHeadClassifier(nn.Module):
    """The "w/o text" classifier: image encoder, embedding projection, linear class head.

    ``logits = head(Linear(concat(class tokens)))``: the same image embedding as
    :class:`~diffclip_cli.model.classifier.DiffCLIPClassifier` (before its L2 normalisation,
    which would bound the logits), scored by a learnt linear layer instead of class prompts.

    Args:
        net: the image side (usually pretrained).
        num_classes: K.
        seed: seeds the projection and the head.
    """

    @keeps_global_rng
    def __init__(self, net: DiffCLIPNet, *, num_classes: int, seed: int = 0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"need at least one class, got {num_classes}")
        self.net = net
        self.image_projection = nn.Linear(net.feature_dim, net.config.embed_dim)
        self.head = nn.Linear(net.config.embed_dim, num_classes)
        gen = make_generator(seed, "init/linear-head")
        init_linear_layers(self.image_projection, gen)
        init_linear_layers(self.head, gen)

    @property
    def num_classes(self) -> int:
        """K."""
        return int(self.head.out_features)

    def forward(self, hsi: torch.Tensor, lidar: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, K)`` logits of clean windows (``t = 0``, no masking)."""
        return self.head(self.image_projection(self.net.features(hsi, lidar)))

    @torch.no_grad()
    def predict_proba(self, hsi: torch.Tensor | np.ndarray,
                      lidar: torch.Tensor | np.ndarray | None = None, *,
                      batch_size: int = 1024) -> np.ndarray:
        """``(N, K)`` float32 probabilities, deterministically (eval mode)."""
        self.eval()
        device = self.head.weight.device
        n = int(hsi.shape[0])
        out = np.empty((n, self.num_classes), np.float32)
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            h = torch.as_tensor(hsi[sl], dtype=torch.float32).to(device)
            li = None if lidar is None else torch.as_tensor(lidar[sl],
                                                            dtype=torch.float32).to(device)
            out[sl] = torch.softmax(self(h, li), dim=-1).float().cpu().numpy()
        return out


def finetune_linear_head(
    model: LinearHeadClassifier,
    data: WindowData,
    cfg: FinetuneConfig,
    *,
    seed: int,
    progress: Progress | None = None,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """Fine-tune the "w/o text" classifier with cross-entropy, on the full method's schedule.

    Adam + MultiStepLR stepped once per epoch, the decoders frozen, the final weights kept:
    the same recipe as :func:`~diffclip_cli.train.finetune.finetune`, only the loss differs.

    Args:
        model: trained in place (left in eval mode on ``device``).
        data: normalised labelled windows (labels are class indices ``0..K-1``).
        cfg: the schedule.
        seed: drives the shuffling.
        progress: called after every optimiser step with a ``"finetune"``
            :class:`~diffclip_cli.progress.ProgressEvent` (an epoch's last carries its record).
        device: where to train.

    Returns:
        One record per epoch: ``epoch``, ``loss``, ``train_accuracy``, ``lr``, ``seconds``.

    Raises:
        LabelError: no labels, or labels outside ``0..K-1``.
    """
    check_data(model.net, data)
    targets = check_labels(data, model.num_classes)
    model.to(device)
    optimizer, scheduler = make_optimizer(model, cfg)
    gen = make_generator(seed, "finetune")

    def forward(idx: torch.Tensor) -> Step:
        hsi, lidar, _ = data.batch(idx, device)
        labels = targets[idx].to(device)
        logits = model(hsi, lidar)
        return Step(F.cross_entropy(logits, labels), len(idx),
                    {"train_accuracy": float((logits.argmax(1) == labels).sum())})

    return train_epochs(model, forward, samples=len(data), batch_size=cfg.batch_size,
                        epochs=cfg.epochs, optimizer=optimizer, scheduler=scheduler,
                        generator=gen, stage="finetune", progress=progress)

