"""Transformer building blocks shared by the image and text sides, and seeded initialisation."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Attention",
    "Block",
    "TimestepEmbedder",
    "init_linear_layers",
    "keeps_global_rng",
    "sincos_pos_embed_2d",
    "timestep_embedding",
]


_F = TypeVar("_F", bound=Callable[..., Any])


def keeps_global_rng(fn: _F) -> _F:
    """Run ``fn`` with torch's global CPU random state saved and restored.

    Layer constructors draw default weights from the global generator before the seeded
    re-initialisation replaces them; this keeps that from touching the caller's random state.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.random.fork_rng(devices=[]):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class Attention(nn.Module):
    """Multi-head self-attention on ``(N, L, D)`` tokens with ``scaled_dot_product_attention``.

    Args:
        dim: token width.
        heads: number of heads (must divide ``dim``).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
        """Attend; with ``causal`` each token sees only itself and earlier tokens."""
        n, length, dim = x.shape
        qkv = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``.

    Args:
        dim: token width.
        heads: attention heads.
        mlp_ratio: hidden width of the MLP as a multiple of ``dim``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = max(1, round(dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
        """Apply the block to ``(N, L, dim)`` tokens."""
        x = x + self.attn(self.norm1(x), causal=causal)
        return x + self.mlp(self.norm2(x))


def timestep_embedding(t: torch.Tensor, dim: int, *, max_period: float = 10000.0
                       ) -> torch.Tensor:
    """Sinusoidal embedding of integer diffusion steps (as in DiT).

    Args:
        t: ``(N,)`` timesteps.
        dim: embedding width (even).
        max_period: the longest wavelength.

    Returns:
        ``(N, dim)`` float32 ``[cos, sin]`` features.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Diffusion timestep -> sinusoidal features -> MLP (Linear, SiLU, Linear), as in DiT.

    Args:
        dim: output width.
        frequency_dim: width of the sinusoidal features.
    """

    def __init__(self, dim: int, *, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``(N,)`` integer steps -> ``(N, dim)`` embeddings."""
        return self.mlp(timestep_embedding(t, self.frequency_dim))


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1).double()[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_pos_embed_2d(dim: int, size: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positional embedding of a ``size x size`` grid (as in MAE).

    Args:
        dim: embedding width, a multiple of 4.
        size: grid side.

    Returns:
        ``(size * size, dim)`` float32, row-major over the grid; half the channels encode the
        row, half the column.
    """
    coords = torch.arange(size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, rows), _sincos_1d(dim // 2, cols)], dim=1)
    return emb.float()


def init_linear_layers(module: nn.Module, generator: torch.Generator) -> None:
    """Seeded default initialisation of every layer under ``module``.

    Linear and 1x1-conv weights get Xavier-uniform values, biases zero; norms get unit scale
    and zero shift. Other parameters are left to their owner.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
