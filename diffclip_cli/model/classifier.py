"""DiffCLIPClassifier: image embeddings scored against class-prompt embeddings.

``z_img = normalise(Linear(concat(class token HSI, class token LiDAR)))`` (the HSI class token
alone for an HSI-only network); ``z_txt`` = the text encoder's embedding of each class prompt;
``logits = z_img . z_txt / tau`` with a learnable temperature ``tau`` (CLIP's initialisation,
``1 / tau`` clamped at ``max_logit_scale``); probabilities are the softmax over the prompts.
Prediction is deterministic: ``t = 0``, no masking, eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffclip_cli.errors import ModelError
from diffclip_cli.model.config import ModelConfig
from diffclip_cli.model.layers import init_linear_layers, keeps_global_rng
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.rng import make_generator
from diffclip_cli.model.text import TextEncoder, Vocabulary

__all__ = ["DiffCLIPClassifier"]


class DiffCLIPClassifier(nn.Module):
    """The stage-2 classifier: image encoder + projection, text encoder, temperature.

    Args:
        net: the image side (usually pretrained by stage 1).
        vocabulary: the tokenizer's vocabulary (sizes the text embedding table).
        prompts: one prompt per class, in class order; may be set later with
            :meth:`set_prompts` or :meth:`set_token_ids`.
        seed: seeds the initialisation of the text encoder and the image projection.
    """

    @keeps_global_rng
    def __init__(self, net: DiffCLIPNet, *, vocabulary: Vocabulary,
                 prompts: Sequence[str] | None = None, seed: int = 0) -> None:
        super().__init__()
        c = net.config
        self.net = net
        self.vocabulary = vocabulary
        self.image_projection = nn.Linear(net.feature_dim, c.embed_dim)
        self.text = TextEncoder(vocab_size=len(vocabulary), width=c.text_width,
                                layers=c.text_layers, heads=c.text_heads,
                                context_length=c.context_length, embed_dim=c.embed_dim,
                                seed=seed)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / c.init_temperature)))
        self.register_buffer("prompt_ids", torch.zeros(0, c.context_length, dtype=torch.long))
        self._text_cache: tuple[tuple[int, ...], torch.Tensor] | None = None
        init_linear_layers(self.image_projection, make_generator(seed, "init/projection"))
        if prompts is not None:
            self.set_prompts(prompts)

    @property
    def config(self) -> ModelConfig:
        """The model configuration."""
        return self.net.config

    @property
    def num_classes(self) -> int:
        """Number of class prompts."""
        return int(self.prompt_ids.shape[0])

    @property
    def prompts(self) -> list[str]:
        """The class prompts as the vocabulary reads them back."""
        return [self.vocabulary.decode(row.tolist()) for row in self.prompt_ids]

    def set_prompts(self, prompts: Sequence[str]) -> None:
        """Tokenise one prompt per class and make them the classifier's classes."""
        if not prompts:
            raise ModelError("a classifier needs at least one class prompt")
        self.set_token_ids(self.vocabulary.encode_batch(
            list(prompts), context_length=self.config.context_length))

    def set_token_ids(self, ids: torch.Tensor) -> None:
        """Use ``(K, context_length)`` token ids as the class prompts."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        c = self.config.context_length
        if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] != c:
            raise ModelError(f"prompt token ids must be (K, {c}), got {tuple(ids.shape)}")
        if int(ids.max()) >= len(self.vocabulary) or int(ids.min()) < 0:
            raise ModelError("prompt token ids fall outside the vocabulary")
        if not bool((ids == Vocabulary.eot_id).any(dim=1).all()):
            raise ModelError("every prompt needs an end-of-text token")
        self.prompt_ids = ids.to(self.logit_scale.device)
        self._text_cache = None

    def scale(self) -> torch.Tensor:
        """``1 / tau``, clamped to ``[1, max_logit_scale]``."""
        return self.logit_scale.clamp(0.0, math.log(self.config.max_logit_scale)).exp()

    def encode_image(self, hsi: torch.Tensor, lidar: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """``(N, embed_dim)`` unit-length image embeddings of clean windows."""
        return F.normalize(self.image_projection(self.net.features(hsi, lidar)), dim=-1)

    def encode_text(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """``(K, embed_dim)`` unit-length embeddings of token ids (default: the class prompts)."""
        ids = self.prompt_ids if ids is None else ids
        if ids.shape[0] == 0:
            raise ModelError("the classifier has no class prompts", hint="call set_prompts")
        return self.text(ids.to(self.logit_scale.device))

    def text_features(self) -> torch.Tensor:
        """The class prompts' embeddings; cached outside training until a weight changes."""
        if self.training or torch.is_grad_enabled():
            return self.encode_text()
        key = (self.prompt_ids.data_ptr(), *(p._version for p in self.text.parameters()))
        if self._text_cache is None or self._text_cache[0] != key:
            self._text_cache = (key, self.encode_text())
        return self._text_cache[1]

    def forward(self, hsi: torch.Tensor, lidar: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, K)`` logits ``z_img . z_txt / tau``."""
        return self.scale() * self.encode_image(hsi, lidar) @ self.text_features().T

    def train(self, mode: bool = True) -> DiffCLIPClassifier:
        """Set training mode; drops the cached text embeddings."""
        self._text_cache = None
        return super().train(mode)

    @torch.no_grad()
    def predict_proba(
        self,
        hsi: torch.Tensor,
        lidar: torch.Tensor | None = None,
        *,
        batch_size: int = 1024,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """Class probabilities of windows, deterministically (eval mode, ``t = 0``, no mask).

        Windows are moved batch by batch to the classifier's device; the result is on the CPU.

        Args:
            hsi: ``(N, hsi_bands, w, w)`` normalised windows.
            lidar: ``(N, lidar_bands, w, w)`` or ``None`` for an HSI-only model.
            batch_size: windows per forward pass.
            progress: called with ``(done, total)`` windows after each batch.

        Returns:
            ``(N, K)`` float32 probabilities, rows summing to 1.
        """
        was_training = self.training
        if was_training:
            self.eval()
        try:
            device = self.logit_scale.device
            text = self.text_features()
            scale = self.scale()
            n = hsi.shape[0]
            out = torch.empty(n, self.num_classes, dtype=torch.float32)
            for start in range(0, n, batch_size):
                sl = slice(start, start + batch_size)
                h = torch.as_tensor(hsi[sl], dtype=torch.float32).to(device)
                li = None if lidar is None else torch.as_tensor(
                    lidar[sl], dtype=torch.float32).to(device)
                z = self.encode_image(h, li)
                out[sl] = torch.softmax(scale * z @ text.T, dim=-1).float().cpu()
                if progress is not None:
                    progress(min(n, start + batch_size), n)
            return out
        finally:
            if was_training:
                self.train(True)
