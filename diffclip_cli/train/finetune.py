"""Stage 2: few-shot, language-driven fine-tuning with a class-aware contrastive loss.

The image encoder starts from stage 1 and sees clean windows, no mask, ``t = 0``. Each batch is
scored against all K class prompts:

* image -> text: cross-entropy of each image's logits over the K prompts, target its class;
* text -> image: for each class present in the batch, a softmax over the batch's images;
  every image of that class is a positive: the loss is ``-mean(log p)`` over the positives.
  This equals cross-entropy against soft targets uniform over the positives, so two windows of
  one class are never pushed apart (the published code's arange targets did that).

The total is the mean of both directions. Adam + MultiStepLR, stepped once per epoch, as
published. The final epoch's weights are kept: no test label is used to pick a checkpoint.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffclip_cli.errors import LabelError
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.config import FinetuneConfig, Preset
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.rng import derive_seed, make_generator
from diffclip_cli.model.text import Vocabulary
from diffclip_cli.progress import Progress
from diffclip_cli.train.data import WindowData
from diffclip_cli.train.loop import Step, train_epochs
from diffclip_cli.train.pretrain import check_data

__all__ = ["check_labels", "class_contrastive_loss", "finetune", "finetune_members",
           "member_seed", "member_start"]

log = logging.getLogger("diffclip")


def class_contrastive_loss(logits: torch.Tensor, labels: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The symmetric contrastive loss with class targets.

    Args:
        logits: ``(B, K)`` scaled similarities of B images to K class prompts.
        labels: ``(B,)`` class indices.

    Returns:
        ``(loss, image_to_text, text_to_image)``; ``loss`` is the mean of the two.
    """
    image_to_text = F.cross_entropy(logits, labels)
    present = labels.unique()
    log_p = F.log_softmax(logits.T[present], dim=1)  # (K_present, B) over the batch's images
    positives = (labels[None, :] == present[:, None]).to(log_p.dtype)
    text_to_image = -((log_p * positives).sum(1) / positives.sum(1)).mean()
    return (image_to_text + text_to_image) / 2, image_to_text, text_to_image


def make_optimizer(model: nn.Module, cfg: FinetuneConfig
                   ) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.MultiStepLR]:
    """The fine-tuning optimiser and its learning-rate schedule.

    Adam over every parameter but the pretraining decoders (unused after stage 1), with the
    recipe's step decay (stepped once per epoch).
    """
    params = [p for name, p in model.named_parameters() if not name.startswith("net.decoders.")]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    return optimizer, scheduler



def check_labels(data: WindowData, k: int, *, of: str = "classes") -> torch.Tensor:
    """Refuse fine-tuning data without labels, or with labels outside ``0..k-1``.

    Args:
        data: the labelled windows.
        k: the number of classes (the model's outputs).
        of: what ``k`` counts, for the message (``classes``, ``prompts``).

    Returns:
        The labels, ``(N,)``.

    Raises:
        LabelError: no labelled window, or a label outside ``0..k-1``.
    """
    if data.labels is None or len(data) == 0:
        raise LabelError("fine-tuning needs labelled windows", hint="give a few per class")
    if int(data.labels.min()) < 0 or int(data.labels.max()) >= k:
        raise LabelError(f"labels must be class indices 0..{k - 1} for {k} {of}, got "
                         f"{int(data.labels.min())}..{int(data.labels.max())}")
    return data.labels

def finetune(
    classifier: DiffCLIPClassifier,
    data: WindowData,
    prompts_or_token_ids: Sequence[str] | torch.Tensor,
    cfg: FinetuneConfig,
    *,
    seed: int,
    progress: Progress | None = None,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """Fine-tune the classifier on a few labelled windows per class.

    Args:
        classifier: trained in place (and left in eval mode on ``device``); its image side
            normally comes from :func:`~diffclip_cli.train.pretrain.pretrain`.
        data: normalised labelled windows; ``labels`` index ``prompts_or_token_ids``.
        prompts_or_token_ids: one prompt per class (tokenised with the classifier's
            vocabulary), or ``(K, context_length)`` token ids; they become the classifier's
            classes.
        cfg: the schedule.
        seed: drives the shuffling.
        progress: called after every optimiser step with a ``"finetune"``
            :class:`~diffclip_cli.progress.ProgressEvent`; the last step of an epoch carries
            the epoch's record.
        device: where to train.

    Returns:
        One record per epoch: ``epoch``, ``loss``, ``loss_i2t``, ``loss_t2i``,
        ``train_accuracy`` (on the training windows, as seen during the epoch),
        ``temperature``, ``lr``, ``seconds``.

    Raises:
        LabelError: no labels, or labels outside the class range.
        ModelError: data not for this network.
    """
    check_data(classifier.net, data)
    if isinstance(prompts_or_token_ids, torch.Tensor):
        classifier.set_token_ids(prompts_or_token_ids)
    else:
        classifier.set_prompts(list(prompts_or_token_ids))
    k = classifier.num_classes
    targets = check_labels(data, k, of="prompts")
    missing = sorted(set(range(k)) - set(targets.tolist()))
    if missing:
        log.warning("classes %s have no labelled window; they are learnt from text alone",
                    missing)

    classifier.to(device)
    optimizer, scheduler = make_optimizer(classifier, cfg)
    gen = make_generator(seed, "finetune")

    def forward(idx: torch.Tensor) -> Step:
        hsi, lidar, _ = data.batch(idx, device)
        labels = targets[idx].to(device)
        logits = classifier.scale() * classifier.encode_image(hsi, lidar) @ \
            classifier.encode_text().T
        loss, i2t, t2i = class_contrastive_loss(logits, labels)
        b = len(idx)
        return Step(loss, b, {"loss_i2t": float(i2t.detach()) * b,
                              "loss_t2i": float(t2i.detach()) * b,
                              "train_accuracy": float((logits.argmax(1) == labels).sum())})

    return train_epochs(
        classifier, forward, samples=len(data), batch_size=cfg.batch_size, epochs=cfg.epochs,
        optimizer=optimizer, scheduler=scheduler, generator=gen, stage="finetune",
        progress=progress,
        extras=lambda: {"temperature": float(1.0 / classifier.scale().detach())})


def member_seed(seed: int, member: int) -> int:
    """The seed of an ensemble member's head (member 0 keeps the run's seed)."""
    return seed if member == 0 else derive_seed(seed, f"finetune/member{member}")


def member_start(nets: Sequence[DiffCLIPNet], member: int, members: int) -> DiffCLIPNet:
    """The encoder member ``member`` of ``members`` starts from.

    ``nets`` in turn; a copy unless it is the last member to use that encoder (which takes
    the original).
    """
    net = nets[member % len(nets)]
    return net if member + len(nets) >= members else copy.deepcopy(net)


def finetune_members(net: DiffCLIPNet | Sequence[DiffCLIPNet], train: WindowData,
                     prompts: Sequence[str], preset: Preset, *, seed: int,
                     device: torch.device, progress: Progress | None
                     ) -> list[tuple[DiffCLIPClassifier, list[dict[str, Any]]]]:
    """``preset.finetune.members`` classifiers fine-tuned from copies of ``net``.

    With several encoders (``pretrain.encoders``), member ``m`` starts from encoder
    ``m mod len(net)``.
    """
    nets = [net] if isinstance(net, DiffCLIPNet) else list(net)
    n = preset.finetune.members
    log.info("Fine-tuning %s on %d labelled windows (%d classes)%s.",
             "one classifier" if n == 1 else f"{n} classifiers (averaged)", len(train),
             len(prompts), f" from {len(nets)} pretrained encoders" if len(nets) > 1 else "")
    out = []
    for member in range(n):
        start = member_start(nets, member, n)
        s = member_seed(seed, member)
        classifier = DiffCLIPClassifier(start, vocabulary=Vocabulary.build(prompts), seed=s)
        history = finetune(classifier, train, prompts, preset.finetune, seed=s,
                           device=device, progress=progress)
        out.append((classifier, history))
    return out
