"""The text side: a word-level tokenizer and a CLIP-style causal text transformer.

The tokenizer needs no download; the transformer is trained from scratch.

The vocabulary is built from the prompts themselves (lower-cased words and punctuation marks)
plus four special tokens, and is stored in the model file, so a model always reads its prompts
the way it was trained to.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from diffclip_cli.errors import ModelError
from diffclip_cli.model.layers import Block, keeps_global_rng
from diffclip_cli.model.rng import make_generator

__all__ = ["EOT", "PAD", "SOT", "SPECIALS", "UNK", "TextEncoder", "Vocabulary", "words"]

log = logging.getLogger("diffclip")

PAD, SOT, EOT, UNK = "<pad>", "<sot>", "<eot>", "<unk>"
#: Special tokens, with ids 0..3 in this order.
SPECIALS: tuple[str, ...] = (PAD, SOT, EOT, UNK)

_WORD = re.compile(r"[^\W_]+|[^\w\s]", re.UNICODE)
_NO_SPACE_BEFORE = set(".,;:!?)]}%'-/")
_NO_SPACE_AFTER = set("([{-/")


def words(text: str) -> list[str]:
    """Split text into lower-cased words and single punctuation marks.

    Underscores separate words (``"Lettuce_romaine_4wk"`` -> ``lettuce romaine 4wk``).
    """
    return _WORD.findall(text.replace("_", " ").lower())


class Vocabulary:
    """A word-level vocabulary: ``<pad>``, ``<sot>``, ``<eot>``, ``<unk>``, then words.

    Args:
        tokens: the vocabulary, specials first (as :meth:`to_dict` stores it).

    Raises:
        ModelError: when the tokens do not start with the specials or repeat.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS or len(set(tokens)) != len(tokens):
            raise ModelError("the stored vocabulary is damaged (specials missing or repeated "
                             "tokens)", hint="re-train or re-download the model")
        self.tokens = tokens
        self._ids = {t: i for i, t in enumerate(tokens)}

    pad_id = 0
    sot_id = 1
    eot_id = 2
    unk_id = 3

    @classmethod
    def build(cls, texts: Iterable[str]) -> Vocabulary:
        """The vocabulary of every word in ``texts``, sorted (so it is order independent)."""
        found = sorted({w for text in texts for w in words(text)} - set(SPECIALS))
        return cls([*SPECIALS, *found])

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    def __hash__(self) -> int:
        return hash(tuple(self.tokens))

    def __contains__(self, word: object) -> bool:
        return word in self._ids

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` this vocabulary does not know."""
        return [w for w in words(text) if w not in self._ids]

    def encode(self, text: str, *, context_length: int) -> list[int]:
        """``<sot>`` + word ids + ``<eot>``, unknown words as ``<unk>``.

        A text too long for ``context_length`` is cut, keeping ``<eot>`` last (with a warning).
        """
        ids = [self._ids.get(w, self.unk_id) for w in words(text)]
        if len(ids) + 2 > context_length:
            log.warning("prompt %r has %d tokens; cut to the context length %d",
                        text, len(ids) + 2, context_length)
            ids = ids[: context_length - 2]
        return [self.sot_id, *ids, self.eot_id]

    def encode_batch(self, texts: Sequence[str], *, context_length: int) -> torch.Tensor:
        """``(len(texts), context_length)`` int64 token ids, padded with ``<pad>`` (0)."""
        out = torch.full((len(texts), context_length), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text, context_length=context_length)
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Words back to text: specials other than ``<unk>`` dropped, punctuation attached.

        ``words(decode(encode(text)))`` equals ``words(text)`` for known words.
        """
        text = ""
        for i in ids:
            i = int(i)
            if i == self.eot_id:
                break
            if i in (self.pad_id, self.sot_id):
                continue
            tok = self.tokens[i] if 0 <= i < len(self.tokens) else UNK
            if text and tok not in _NO_SPACE_BEFORE and text[-1] not in _NO_SPACE_AFTER:
                text += " "
            text += tok
        return text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form, stored in model files."""
        return {"kind": "word", "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        """Rebuild from :meth:`to_dict`.

        Raises:
            ModelError: when the data is not a stored vocabulary.
        """
        if not isinstance(data, dict) or data.get("kind") != "word" or not isinstance(
                data.get("tokens"), list):
            raise ModelError("the stored vocabulary is not a word-level vocabulary",
                             hint="re-train the model with this diffclip")
        return cls([str(t) for t in data["tokens"]])


class TextEncoder(nn.Module):
    """A CLIP-style causal text transformer, trained from scratch.

    Token + learned position embeddings -> ``layers`` pre-norm causal blocks -> LayerNorm ->
    the feature at the ``<eot>`` token -> linear projection -> L2 normalisation.

    Args:
        vocab_size: tokens in the vocabulary.
        width: transformer width.
        layers: blocks.
        heads: attention heads.
        context_length: longest token sequence.
        embed_dim: output (joint embedding) width.
        seed: seeds the initialisation.
    """

    @keeps_global_rng
    def __init__(self, *, vocab_size: int, width: int, layers: int, heads: int,
                 context_length: int, embed_dim: int, seed: int = 0) -> None:
        super().__init__()
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, width))
        self.blocks = nn.ModuleList(Block(width, heads, 4.0) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self.projection = nn.Linear(width, embed_dim, bias=False)
        self.reset_parameters(seed)

    def reset_parameters(self, seed: int) -> None:
        """CLIP's initialisation, drawn from ``seed`` alone."""
        gen = make_generator(seed, "init/text")
        width = self.token_embedding.embedding_dim
        layers = max(1, len(self.blocks))
        attn_std = width**-0.5
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        fc_std = (2 * width) ** -0.5
        with torch.no_grad():
            nn.init.normal_(self.token_embedding.weight, std=0.02, generator=gen)
            nn.init.normal_(self.positional_embedding, std=0.01, generator=gen)
            for block in cast(list[Block], list(self.blocks)):
                fc1, fc2 = cast(nn.Linear, block.mlp[0]), cast(nn.Linear, block.mlp[2])
                nn.init.normal_(block.attn.qkv.weight, std=attn_std, generator=gen)
                nn.init.normal_(block.attn.proj.weight, std=proj_std, generator=gen)
                nn.init.normal_(fc1.weight, std=fc_std, generator=gen)
                nn.init.normal_(fc2.weight, std=proj_std, generator=gen)
                for lin in (block.attn.qkv, block.attn.proj, fc1, fc2):
                    nn.init.zeros_(lin.bias)
                for norm in (block.norm1, block.norm2):
                    nn.init.ones_(norm.weight)
                    nn.init.zeros_(norm.bias)
            nn.init.ones_(self.ln_final.weight)
            nn.init.zeros_(self.ln_final.bias)
            nn.init.normal_(self.projection.weight, std=attn_std, generator=gen)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``(K, context_length)`` token ids -> ``(K, embed_dim)`` unit-length features."""
        if ids.ndim != 2 or ids.shape[1] > self.context_length:
            raise ModelError(f"token ids must be (K, <= {self.context_length}), "
                             f"got {tuple(ids.shape)}")
        eot = (ids == Vocabulary.eot_id).int().argmax(dim=1)
        # Causal attention: tokens after <eot> cannot change it, so cut the padding.
        length = int(eot.max()) + 1 if ids.numel() else 1
        x = self.token_embedding(ids[:, :length]) + self.positional_embedding[:length]
        for block in self.blocks:
            x = block(x, causal=True)
        x = self.ln_final(x)[torch.arange(ids.shape[0], device=ids.device), eot]
        return F.normalize(self.projection(x), dim=-1)

