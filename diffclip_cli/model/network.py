"""The image side of DiffCLIP: stems, pixel tokens, shared encoder, masked-diffusion decoders.

Data flow for one modality ``m`` with ``B_m`` bands and ``w x w`` windows (``P = w * w``):

``x (N, B_m, w, w)`` -> spectral stem (1x1 conv, BN, ReLU, 1x1 conv, BN, ReLU) ->
one token per pixel, linearly embedded to ``d`` + fixed 2-D sine-cosine position ->
``[class token + timestep embedding, tokens]`` -> the shared pre-norm encoder -> LayerNorm.

Pretraining (:meth:`DiffCLIPNet.pretrain_loss`) adds DDPM noise **to the normalised input
windows** (band space): ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with one ``t`` per
sample shared by both modalities and independent noise per modality; so the encoder sees only
the visible tokens of the noised input, and the decoders' targets, the clean ``x_0``, live in
the same space the noise was added in. Then ``mask_ratio`` of each modality's tokens are masked,
drawn independently per modality; each modality's decoder fills the masked positions with a
learnable mask token and predicts ``x_0`` for every token, mapped back to the modality's bands
by a per-token linear layer (a 1x1 conv).

Inference (:meth:`DiffCLIPNet.features`) encodes clean windows at ``t = 0`` with no masking;
all modalities go through the shared encoder as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from diffclip_cli.errors import ModelError
from diffclip_cli.model.config import ModelConfig
from diffclip_cli.model.layers import (
    Block,
    TimestepEmbedder,
    init_linear_layers,
    keeps_global_rng,
    sincos_pos_embed_2d,
)
from diffclip_cli.model.rng import make_generator

__all__ = [
    "DiffCLIPNet",
    "PretrainOutput",
    "SpectralStem",
    "centre_slice",
    "linear_betas",
    "random_masking",
]


def linear_betas(timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """The DDPM linear beta schedule, float64, ``(timesteps,)``."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def random_masking(
    tokens: torch.Tensor, keep: int, *, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random ``keep`` of each sample's tokens.

    The kept positions are drawn by shuffling (argsort of uniform noise) and then sorted, so the
    kept tokens are exactly ``tokens[~mask]`` in position order: the tokens and the mask cannot
    disagree.

    Args:
        tokens: ``(N, P, D)``.
        keep: tokens kept per sample, ``1 <= keep <= P``.
        generator: the CPU generator drawing the shuffle.

    Returns:
        ``(kept (N, keep, D), mask (N, P) bool, True where masked, ids_keep (N, keep))``.
    """
    n, p, d = tokens.shape
    noise = torch.rand(n, p, generator=generator).to(tokens.device)
    ids_keep = torch.argsort(noise, dim=1)[:, :keep].sort(dim=1).values
    kept = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, d))
    mask = torch.ones(n, p, dtype=torch.bool, device=tokens.device)
    mask.scatter_(1, ids_keep, False)
    return kept, mask, ids_keep


def centre_slice(window: int) -> tuple[int, int]:
    """Rows (and columns) ``[lo, hi)`` of a window's centre 3 x 3 (all of a smaller window)."""
    half = min(1, window // 2)
    return window // 2 - half, window // 2 + half + 1


class SpectralStem(nn.Sequential):
    """1x1 conv bands->h, BatchNorm, ReLU, 1x1 conv h->h, BatchNorm, ReLU."""

    def __init__(self, bands: int, hidden: int) -> None:
        super().__init__(
            nn.Conv2d(bands, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(),
        )


class _Decoder(nn.Module):
    """One modality's decoder: mask tokens fill the masked positions, predicts ``x_0``."""

    pos_embed: torch.Tensor  # a buffer

    def __init__(self, config: ModelConfig, bands: int) -> None:
        super().__init__()
        c = config
        self.embed = nn.Linear(c.dim, c.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(c.decoder_dim, c.window)[None],
                             persistent=False)
        self.blocks = nn.ModuleList(
            Block(c.decoder_dim, c.decoder_heads, c.mlp_ratio) for _ in range(c.decoder_depth)
        )
        self.norm = nn.LayerNorm(c.decoder_dim)
        self.head = nn.Linear(c.decoder_dim, bands)

    def forward(self, latent: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """``latent (N, 1 + keep, d)``, ``ids_keep (N, keep)`` -> ``x_0`` ``(N, P, bands)``."""
        x = self.embed(latent)
        n, _, dd = x.shape
        p = self.pos_embed.shape[1]
        full = self.mask_token.expand(n, p, dd).scatter(
            1, ids_keep[..., None].expand(-1, -1, dd), x[:, 1:]
        )
        x = torch.cat([x[:, :1], full + self.pos_embed], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 1:])


@dataclass
class PretrainOutput:
    """What one masked-diffusion step computes.

    Attributes:
        loss: the scalar to minimise: sum over modalities of visible MSE + lambda * masked MSE.
        losses: that loss per modality (detached floats), keyed ``hsi``/``lidar``.
        predictions: per modality, the predicted clean windows ``(N, bands, w, w)``.
        masks: per modality, ``(N, w, w)`` bool, True where the token was masked.
        timesteps: the ``(N,)`` diffusion steps drawn.
    """

    loss: torch.Tensor
    losses: dict[str, float]
    predictions: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    timesteps: torch.Tensor


class DiffCLIPNet(nn.Module):
    """The image side: stems, pixel tokens, the modality-shared encoder, the decoders.

    Args:
        config: the model configuration.
        hsi_bands: HSI bands (at least 1).
        lidar_bands: LiDAR channels; 0 for an HSI-only network.
        seed: seeds the weight initialisation (no global random state is used).
        context_bands: channels of spatial context that follow the HSI bands and the LiDAR
            channels in the input windows (``SceneStats.context_bands()``; docs/model.md).
            They are read and reconstructed like bands.

    Attributes:
        modalities: ``("hsi",)`` or ``("hsi", "lidar")``, the order of the concatenated
            features.
    """

    # buffers
    pos_embed: torch.Tensor
    sqrt_abar: torch.Tensor
    sqrt_one_minus_abar: torch.Tensor

    @keeps_global_rng
    def __init__(self, config: ModelConfig, *, hsi_bands: int, lidar_bands: int = 0,
                 seed: int = 0, context_bands: tuple[int, int] = (0, 0)) -> None:
        super().__init__()
        if hsi_bands < 1 or lidar_bands < 0 or min(context_bands) < 0 or (
                context_bands[1] and not lidar_bands):
            raise ModelError(f"need at least one HSI band and no negative LiDAR or context "
                             f"channel count, got {hsi_bands}, {lidar_bands} and "
                             f"{context_bands}")
        c = config
        self.config = config
        self.hsi_bands = int(hsi_bands)
        self.lidar_bands = int(lidar_bands)
        self.context_bands = (int(context_bands[0]), int(context_bands[1]))
        bands = {"hsi": self.hsi_bands + self.context_bands[0],
                 "lidar": self.lidar_bands + self.context_bands[1]}
        self.input_bands = bands
        self.modalities: tuple[str, ...] = ("hsi", "lidar") if lidar_bands else ("hsi",)
        self.stems = nn.ModuleDict({m: SpectralStem(bands[m], c.stem_hidden)
                                    for m in self.modalities})
        self.token_embed = nn.ModuleDict({m: nn.Linear(c.stem_hidden, c.dim)
                                          for m in self.modalities})
        self.cls_token = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, c.dim))
                                           for m in self.modalities})
        self.register_buffer("pos_embed", sincos_pos_embed_2d(c.dim, c.window)[None],
                             persistent=False)
        self.time_embed = TimestepEmbedder(c.dim)
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)
        if c.pixel_readout:
            self.pixel_norm = nn.ModuleDict({m: nn.LayerNorm(c.dim) for m in self.modalities})
        self.decoders = nn.ModuleDict({m: _Decoder(c, bands[m]) for m in self.modalities})

        abar = torch.cumprod(1.0 - linear_betas(c.timesteps, c.beta_start, c.beta_end), 0)
        self.register_buffer("sqrt_abar", abar.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_one_minus_abar", (1.0 - abar).sqrt().float(),
                             persistent=False)
        self.reset_parameters(seed)

    @property
    def feature_dim(self) -> int:
        """Width of :meth:`features`: ``dim`` per modality, twice that with ``pixel_readout``."""
        per = 2 if self.config.pixel_readout else 1
        return self.config.dim * len(self.modalities) * per

    def reset_parameters(self, seed: int) -> None:
        """(Re)initialise every weight from ``seed`` alone."""
        gen = make_generator(seed, "init/image")
        with torch.no_grad():
            init_linear_layers(self, gen)
            for m in self.modalities:
                nn.init.normal_(self.cls_token[m], std=0.02, generator=gen)
                nn.init.normal_(cast(_Decoder, self.decoders[m]).mask_token, std=0.02,
                                generator=gen)
            for layer in self.time_embed.mlp:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02, generator=gen)

    # -- shared pieces ---------------------------------------------------------------------

    def _check(self, hsi: torch.Tensor, lidar: torch.Tensor | None) -> dict[str, torch.Tensor]:
        w = self.config.window
        inputs = {"hsi": hsi}
        if self.lidar_bands:
            if lidar is None:
                raise ModelError(f"this network needs LiDAR windows ({self.lidar_bands} "
                                 "channels) but none were given")
            inputs["lidar"] = lidar
        elif lidar is not None:
            raise ModelError("this network was built without LiDAR but LiDAR windows were given")
        for m, x in inputs.items():
            want = self.input_bands[m]
            if x.ndim != 4 or x.shape[1] != want or x.shape[2:] != (w, w):
                raise ModelError(f"{m} windows must be (N, {want}, {w}, {w}), "
                                 f"got {tuple(x.shape)}")
        if "lidar" in inputs and inputs["lidar"].shape[0] != hsi.shape[0]:
            raise ModelError("HSI and LiDAR batches differ in size")
        return inputs

    def tokens(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """Windows ``(N, bands, w, w)`` -> positioned pixel tokens ``(N, P, d)``."""
        h = self.stems[modality](x).flatten(2).transpose(1, 2)
        return self.token_embed[modality](h) + self.pos_embed

    def encode(self, sequences: torch.Tensor) -> torch.Tensor:
        """Run the shared encoder (blocks + final LayerNorm) on ``(N, L, d)`` sequences."""
        for block in self.blocks:
            sequences = block(sequences)
        return self.norm(sequences)

    # -- inference ---------------------------------------------------------------------------

    def features(self, hsi: torch.Tensor, lidar: torch.Tensor | None = None) -> torch.Tensor:
        """Class-token features of clean windows: ``t = 0``, no masking, no noise.

        With ``pixel_readout`` each modality's class token is followed by the mean of the
        centre 3 x 3 pixel tokens (before the encoder, after a LayerNorm of its own).

        Args:
            hsi: ``(N, hsi_bands, w, w)`` normalised windows.
            lidar: ``(N, lidar_bands, w, w)``, or ``None`` for an HSI-only network.

        Returns:
            ``(N, feature_dim)``: the encoded class tokens of the modalities (each followed by
            its centre 3 x 3 token mean with ``pixel_readout``), concatenated in :attr:`modalities`
            order. Deterministic in eval mode.
        """
        inputs = self._check(hsi, lidar)
        n = hsi.shape[0]
        t0 = self.time_embed(torch.zeros(1, dtype=torch.long, device=hsi.device))[:, None]
        tokens = {m: self.tokens(x, m) for m, x in inputs.items()}
        seqs = [torch.cat([(self.cls_token[m] + t0).expand(n, -1, -1), tok], dim=1)
                for m, tok in tokens.items()]
        cls = self.encode(torch.cat(seqs, dim=0))[:, 0].split(n, dim=0)
        if not self.config.pixel_readout:
            return torch.cat(cls, dim=1)
        parts = [part for m, c in zip(tokens, cls, strict=True)
                 for part in (c, self.pixel_norm[m](self.centre_mean(tokens[m])))]
        return torch.cat(parts, dim=1)

    def centre_mean(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean of the pixel tokens of the centre 3 x 3 (the whole window if smaller).

        Args:
            tokens: ``(N, w * w, d)`` positioned pixel tokens (:meth:`tokens`), row-major.

        Returns:
            ``(N, d)``.
        """
        w = self.config.window
        lo, hi = centre_slice(w)
        return tokens.view(tokens.shape[0], w, w, -1)[:, lo:hi, lo:hi].mean(dim=(1, 2))

    # -- pretraining -------------------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward diffusion: ``sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise`` per sample."""
        shape = (-1,) + (1,) * (x0.ndim - 1)
        return (self.sqrt_abar[t].view(shape) * x0
                + self.sqrt_one_minus_abar[t].view(shape) * noise)

    def pretrain_loss(self, hsi: torch.Tensor, lidar: torch.Tensor | None = None, *,
                      generator: torch.Generator) -> PretrainOutput:
        """One masked-diffusion step's loss on clean normalised windows.

        Draws, in this order from ``generator``: one timestep per sample (shared by both
        modalities), the noise of each modality, the mask of each modality. The ablation
        switches of the configuration make the same draws, so the masks stay those of the
        method: ``diffusion=False`` then encodes the clean input at ``t = 0``;
        ``masking=False`` keeps every token visible (the masked-token term is 0).

        Args:
            hsi: ``(N, hsi_bands, w, w)`` clean windows.
            lidar: ``(N, lidar_bands, w, w)`` or ``None`` for an HSI-only network.
            generator: the CPU generator for every random draw.

        Returns:
            The loss and what it was computed from.
        """
        c = self.config
        inputs = self._check(hsi, lidar)
        n, device = hsi.shape[0], hsi.device
        t = torch.randint(0, c.noise_steps or c.timesteps, (n,), generator=generator).to(device)
        noised = {
            m: self.q_sample(x, t, torch.randn(x.shape, generator=generator).to(device))
            for m, x in inputs.items()
        }
        if not c.diffusion:  # "w/o diffusion" ablation: same draws, clean input at t = 0
            t = torch.zeros_like(t)
            noised = dict(inputs)
        temb = self.time_embed(t)[:, None]
        seqs, masks, keeps = [], {}, {}
        for m, x in noised.items():
            kept, masks[m], keeps[m] = random_masking(self.tokens(x, m), c.kept_tokens,
                                                      generator=generator)
            seqs.append(torch.cat([self.cls_token[m] + temb, kept], dim=1))
        latents = self.encode(torch.cat(seqs, dim=0)).split(n, dim=0)

        total = hsi.new_zeros(())
        losses: dict[str, float] = {}
        preds: dict[str, torch.Tensor] = {}
        w = c.window
        for (m, x0), latent in zip(inputs.items(), latents, strict=True):
            pred = self.decoders[m](latent, keeps[m])  # (N, P, bands)
            target = x0.flatten(2).transpose(1, 2)
            per_token = (pred - target).pow(2).mean(dim=-1)
            masked = masks[m].float()
            visible_mse = (per_token * (1 - masked)).sum() / (1 - masked).sum()
            # Without masking ("w/o mask" ablation) there is no masked token: that term is 0.
            masked_mse = (per_token * masked).sum() / masked.sum().clamp(min=1.0)
            loss = visible_mse + c.masked_loss_weight * masked_mse
            total = total + loss
            losses[m] = float(loss.detach())
            preds[m] = pred.transpose(1, 2).reshape(n, -1, w, w)
        return PretrainOutput(
            loss=total,
            losses=losses,
            predictions=preds,
            masks={m: k.view(n, w, w) for m, k in masks.items()},
            timesteps=t,
        )
