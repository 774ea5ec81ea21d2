"""Seeds and random generators: one user seed drives every random choice, via named streams.

Each consumer (weight initialisation, pretraining, fine-tuning, ...) derives its own
:class:`torch.Generator` from the one seed and a stream name, so the streams are independent of
each other and no global random state is read or changed.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "make_generator"]


def derive_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for the named stream of ``seed``.

    Args:
        seed: the user's seed.
        stream: what the numbers are for, e.g. ``"init/image"`` or ``"pretrain"``.

    Returns:
        A non-negative integer below 2**63, a pure function of both arguments.
    """
    digest = hashlib.sha256(f"{int(seed)}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_generator(seed: int, stream: str) -> torch.Generator:
    """A CPU :class:`torch.Generator` seeded for the named stream of ``seed``."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(derive_seed(seed, stream))
    return gen
