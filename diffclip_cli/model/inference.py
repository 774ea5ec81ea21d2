"""An inference-only form of a fine-tuned classifier, arranged for throughput.

:class:`InferenceModel` computes the function of ``DiffCLIPClassifier.predict_proba`` (eval
mode, ``t = 0``, no masking), with the work arranged differently:

- **Per-pixel embedding.** The spectral stems (1x1 convolutions) and the token embedding act on
  each pixel alone, so :meth:`InferenceModel.embed` runs them once per pixel of a tile, not once
  per window position (a pixel lies in ``w * w`` windows). BatchNorm in eval mode is a
  per-channel affine map and is folded into the preceding convolution (in float64, then rounded).
- **Token windows are gathered** from the embedded pixels, plus the positional embedding, after
  a precomputed class token (``cls + time_embed(0)``, constant at ``t = 0``).
- **One batch for both modalities** through the shared encoder, as ``(S * L, d)`` matrices so
  every projection is one large matrix product.
- **The last block runs only the class token's query**: the classifier reads nothing but the
  encoded class token, so the other tokens' attention outputs and MLPs there are skipped (their
  keys and values are still needed).
- **Constants once**: the text features times the temperature, the projection, the norms.
- **Matrix products through oneDNN on CPUs** (``torch.ops.mkldnn._linear_pointwise``, the
  kernels ``torch.compile`` uses on CPUs), with the GELU and the residual addition fused into
  the product, when this torch provides them and they reproduce ``torch.nn.functional.linear``
  on a probe; plain ``torch`` operations otherwise. On some CPUs (AMD EPYC among them) oneDNN's
  float32 kernels run at more than twice the speed of the MKL ones ``torch.matmul`` uses.

Precision ``"fp32"`` keeps every product in float32 (probabilities within about ``1e-5`` of
the reference). ``"bf16"`` runs the products and the attention in bfloat16 with float32
accumulation, the residual stream, norms, class-token head and softmax in float32; it is an
explicit option, with small probability differences (labels almost always agree).

The model is a snapshot: it copies the classifier's weights when built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F

from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.layers import Block
from diffclip_cli.model.network import SpectralStem, centre_slice

__all__ = ["PRECISIONS", "InferenceModel", "onednn_available"]

log = logging.getLogger("diffclip")

#: Accepted values of ``precision``.
PRECISIONS = ("fp32", "bf16")

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _onednn_op() -> Any:
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return getattr(ops, "_linear_pointwise", None) if ops is not None else None
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the torch build
        return None


_ONEDNN_STATE: dict[torch.dtype, bool] = {}


def onednn_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN's fused linear kernels exist here and reproduce torch's on a probe.

    The probe checks the plain, GELU-fused and residual-fused forms against
    ``torch.nn.functional`` (float32: ``2e-5`` relative; bfloat16: a loose bound, since the
    roundings differ). The answer is cached per dtype.
    """
    if dtype in _ONEDNN_STATE:
        return _ONEDNN_STATE[dtype]
    op = _onednn_op()
    ok = False
    if op is not None and torch.backends.mkldnn.is_available():
        try:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(37, 24, generator=gen)
            w = torch.randn(40, 24, generator=gen) / 5
            b = torch.randn(40, generator=gen)
            r = torch.randn(37, 40, generator=gen)
            xd, wd, bd = x.to(dtype), w.to(dtype), b.to(dtype)
            tol = 2e-5 if dtype == torch.float32 else 5e-2
            ref = F.linear(x, w, b)
            got = [
                (op(xd, wd, bd, "none", [], "").float(), ref),
                (op(xd, wd, bd, "gelu", [], "none").float(), F.gelu(ref)),
                (op(xd, wd, bd, "relu", [], "").float(), F.relu(ref)),
            ]
            if dtype == torch.float32:
                got.append((op.binary(xd, r, wd, bd, "add"), r + ref))
            ok = all(g.shape == e.shape and bool(torch.allclose(g, e, rtol=tol, atol=tol * 4))
                     for g, e in got)
        except (RuntimeError, TypeError, AttributeError, NotImplementedError) as err:
            log.debug("oneDNN linear kernels unusable: %s", err)
            ok = False
    _ONEDNN_STATE[dtype] = ok
    return ok


@dataclass
class _Linear:
    """``y = x W^T + b`` with weights in the compute dtype."""

    weight: torch.Tensor
    bias: torch.Tensor | None


@dataclass
class _Norm:
    weight: torch.Tensor
    bias: torch.Tensor
    eps: float


@dataclass
class _Block:
    norm1: _Norm
    qkv: _Linear
    proj: _Linear
    norm2: _Norm
    fc1: _Linear
    fc2: _Linear


def _affine(weight: torch.Tensor, bias: torch.Tensor | None, bn: torch.nn.BatchNorm2d
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold eval-mode BatchNorm into the preceding 1x1 convolution, in float64."""
    w = weight.detach().double().flatten(1)
    b = (bias.detach().double() if bias is not None
         else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device))
    var, mean = cast(torch.Tensor, bn.running_var), cast(torch.Tensor, bn.running_mean)
    scale = bn.weight.detach().double() / (var.detach().double() + bn.eps).sqrt()
    return (w * scale[:, None]).float(), ((b - mean.detach().double()) * scale
                                          + bn.bias.detach().double()).float()


class InferenceModel:
    """A fine-tuned classifier's prediction function, arranged for throughput.

    Args:
        classifier: the classifier; its weights are copied (folded) now, on its device.
        precision: ``"fp32"`` (default) or ``"bf16"`` (products and attention in bfloat16).
        onednn: use oneDNN's fused linear kernels on CPUs: ``None`` (default) when available
            (see :func:`onednn_available`), ``False`` never, ``True`` required.
        attention: ``"fused"`` (``scaled_dot_product_attention``) or ``"explicit"`` (``QK^T``
            product, float32 softmax, ``AV`` product: faster for bfloat16 on CPUs, whose
            bfloat16 softmax is slow); default ``"explicit"`` for bfloat16 on a CPU, else
            ``"fused"``.

    Attributes:
        attention_chunk: sequences per attention call (CPUs: 16, so the scores stay in cache;
            elsewhere ``None``, the whole batch).

    Raises:
        ValueError: an unknown precision or attention, or ``onednn=True`` where it is
            unavailable.
    """

    def __init__(self, classifier: DiffCLIPClassifier, *, precision: str = "fp32",
                 onednn: bool | None = None, attention: str | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if attention not in (None, "fused", "explicit"):
            raise ValueError(f"attention must be 'fused' or 'explicit', got {attention!r}")
        net = classifier.net
        c = net.config
        self.device = classifier.logit_scale.device
        self.precision = precision
        self.dtype = _DTYPES[precision]
        usable = (self.device.type == "cpu" and onednn_available(torch.float32)
                  and onednn_available(self.dtype))
        if onednn and not usable:
            raise ValueError("oneDNN linear kernels are not usable with this torch/device")
        self.onednn = usable if onednn is None else bool(onednn)
        self._op = _onednn_op() if self.onednn else None
        cpu = self.device.type == "cpu"
        if attention is None:
            attention = "explicit" if cpu and self.dtype == torch.bfloat16 else "fused"
        self.attention = attention
        self.attention_chunk: int | None = 16 if cpu else None
        self.window = c.window
        self.tokens = c.window * c.window
        self.dim = c.dim
        self.heads = c.heads
        self.modalities = net.modalities

        was_training = classifier.training
        classifier.eval()
        try:
            with torch.no_grad():
                self._build(classifier)
        finally:
            if was_training:
                classifier.train(True)

    # -- construction -------------------------------------------------------------------

    def _linear(self, layer: torch.nn.Linear | None = None, *, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, fp32: bool = False) -> _Linear:
        dtype = torch.float32 if fp32 else self.dtype
        if layer is not None:
            weight, bias = layer.weight, layer.bias
        if weight is None:
            raise ValueError("a linear layer needs a layer or a weight")
        return _Linear(weight.detach().to(dtype).contiguous(),
                       None if bias is None else bias.detach().to(dtype).contiguous())

    def _qkv(self, layer: torch.nn.Linear) -> _Linear:
        """The qkv projection; for explicit attention the query rows carry ``1/sqrt(hd)``."""
        if self.attention != "explicit":
            return self._linear(layer)
        d = self.dim
        scale = torch.ones(3 * d, dtype=torch.float64, device=self.device)
        scale[:d] = (d // self.heads) ** -0.5
        w = layer.weight.detach().double() * scale[:, None]
        b = None if layer.bias is None else layer.bias.detach().double() * scale
        return self._linear(weight=w, bias=b)

    @staticmethod
    def _norm(layer: torch.nn.LayerNorm) -> _Norm:
        return _Norm(layer.weight.detach().float().clone(), layer.bias.detach().float().clone(),
                     float(layer.eps))

    def _build(self, clf: DiffCLIPClassifier) -> None:
        net = clf.net
        d = self.dim
        # Per-pixel embedding: stems with folded BatchNorm, then the token embedding (float32:
        # it runs once per pixel, a small share of the work).
        self._stems: dict[str, tuple[_Linear, _Linear, _Linear]] = {}
        for m in self.modalities:
            stem = cast(SpectralStem, net.stems[m])
            conv1, conv2 = cast(torch.nn.Conv2d, stem[0]), cast(torch.nn.Conv2d, stem[3])
            w1, b1 = _affine(conv1.weight, conv1.bias, cast(torch.nn.BatchNorm2d, stem[1]))
            w2, b2 = _affine(conv2.weight, conv2.bias, cast(torch.nn.BatchNorm2d, stem[4]))
            self._stems[m] = (self._linear(weight=w1, bias=b1, fp32=True),
                              self._linear(weight=w2, bias=b2, fp32=True),
                              self._linear(cast(torch.nn.Linear, net.token_embed[m]),
                                           fp32=True))
        t0 = net.time_embed(torch.zeros(1, dtype=torch.long, device=self.device))
        self._cls = {m: (net.cls_token[m].detach().reshape(1, d) + t0).float()
                     for m in self.modalities}
        self.pos_embed = net.pos_embed.detach().reshape(self.tokens, d).float().clone()
        blocks = cast(list[Block], list(net.blocks))
        self._blocks = [
            _Block(self._norm(b.norm1), self._qkv(b.attn.qkv), self._linear(b.attn.proj),
                   self._norm(b.norm2), self._linear(cast(torch.nn.Linear, b.mlp[0])),
                   self._linear(cast(torch.nn.Linear, b.mlp[2])))
            for b in blocks
        ]
        last = self._blocks[-1]
        # The last block: the class token's query; every token's keys and values.
        self._last_q = _Linear(last.qkv.weight[:d].contiguous(),
                               None if last.qkv.bias is None else last.qkv.bias[:d].contiguous())
        self._last_kv = _Linear(last.qkv.weight[d:].contiguous(),
                                None if last.qkv.bias is None
                                else last.qkv.bias[d:].contiguous())
        self._final_norm = self._norm(net.norm)
        # pixel_readout: each modality's centre 3 x 3 token mean (before the encoder), normalised
        self._pixel_norms = ([self._norm(cast(torch.nn.LayerNorm, net.pixel_norm[m]))
                              for m in self.modalities] if net.config.pixel_readout else None)
        self._projection = self._linear(clf.image_projection, fp32=True)
        self.scale = clf.scale().detach().float().clone()
        self.text = clf.text_features().detach().float().clone()
        self.num_classes = int(self.text.shape[0])

    # -- primitives ---------------------------------------------------------------------

    def _mm(self, x: torch.Tensor, lin: _Linear, *, act: str = "none") -> torch.Tensor:
        """``act(x W^T + b)`` for ``x`` in the weight's dtype; ``act`` none/relu/gelu."""
        if self._op is not None and x.device.type == "cpu":
            if act == "gelu":
                return self._op(x, lin.weight, lin.bias, "gelu", [], "none")
            return self._op(x, lin.weight, lin.bias, act, [], "")
        y = F.linear(x, lin.weight, lin.bias)
        if act == "relu":
            return F.relu_(y)
        if act == "gelu":
            return F.gelu(y)
        return y

    def _mm_add(self, x: torch.Tensor, lin: _Linear, residual: torch.Tensor) -> torch.Tensor:
        """``residual + x W^T + b``; may reuse ``residual``'s storage."""
        if x.dtype == residual.dtype:
            if self._op is not None and x.device.type == "cpu":
                return self._op.binary(x, residual, lin.weight, lin.bias, "add")
            out = residual.addmm_(x, lin.weight.t())
            return out if lin.bias is None else out.add_(lin.bias)
        return residual.add_(self._mm(x, lin))

    def _ln(self, x: torch.Tensor, norm: _Norm) -> torch.Tensor:
        y = F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)
        return y if y.dtype == self.dtype else y.to(self.dtype)

    # -- the model ----------------------------------------------------------------------

    def embed(self, modality: str, pixels: torch.Tensor) -> torch.Tensor:
        """Token embeddings of single pixels: ``(P, bands)`` -> ``(P, d)`` float32.

        The stems and the token embedding, without the positional embedding.
        """
        first, second, token = self._stems[modality]
        x = pixels if pixels.dtype == torch.float32 else pixels.float()
        x = self._mm(x.contiguous(), first, act="relu")
        x = self._mm(x, second, act="relu")
        return self._mm(x, token)

    def new_sequences(self, count: int) -> torch.Tensor:
        """A ``(len(modalities) * count, 1 + w*w, d)`` float32 batch of sequences.

        The class-token slots hold the ``t = 0`` class token of each modality, modality after
        modality; the pixel-token slots are left uninitialised for the caller to fill.
        """
        seqs = torch.empty(len(self.modalities) * count, 1 + self.tokens, self.dim,
                           device=self.device)
        for i, m in enumerate(self.modalities):
            seqs[i * count:(i + 1) * count, 0] = self._cls[m]
        return seqs

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Softmax attention of ``(S, H, Lq, hd)`` queries on ``(S, H, L, hd)`` keys/values.

        Returns ``(S, Lq, H * hd)``, in chunks of :attr:`attention_chunk` sequences.
        """
        s, h, lq, hd = q.shape
        step = self.attention_chunk or s
        if step >= s:
            return self._attend(q, k, v).transpose(1, 2).reshape(s, lq, h * hd)
        out = torch.empty(s, lq, h, hd, dtype=q.dtype, device=q.device)
        for start in range(0, s, step):
            sl = slice(start, start + step)
            out[sl] = self._attend(q[sl], k[sl], v[sl]).transpose(1, 2)
        return out.view(s, lq, h * hd)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.attention == "fused":
            return F.scaled_dot_product_attention(q, k, v)
        # Explicit: on CPUs oneDNN's bfloat16 products are fast but torch's bfloat16 softmax
        # (and so its attention kernel) is slow; take the softmax in float32. The queries
        # carry the 1/sqrt(hd) factor already (folded into their weights).
        scores = torch.matmul(q, k.transpose(-1, -2))
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
        return torch.matmul(weights, v)

    def encode(self, sequences: torch.Tensor) -> torch.Tensor:
        """The encoded class tokens of a batch of sequences.

        Args:
            sequences: ``(S, L, d)`` float32, class token first, then the positioned pixel
                tokens (see :meth:`new_sequences`); may be overwritten.

        Returns:
            ``(S, d)`` float32: the class tokens after the encoder and its final LayerNorm;
            ``(S, 2 d)`` with ``pixel_readout``: each followed by its sequence's centre 3 x 3
            token mean, normalised (the sequences are modality after modality, as
            :meth:`new_sequences` makes them).
        """
        s, length, d = sequences.shape
        h = self.heads
        pixels = None
        if self._pixel_norms is not None:
            w = self.window
            lo, hi = centre_slice(w)
            pixels = sequences[:, 1:].view(s, w, w, d)[:, lo:hi, lo:hi].mean(dim=(1, 2)).float()
        x = sequences.view(s * length, d)
        for block in self._blocks[:-1]:
            qkv = self._mm(self._ln(x, block.norm1), block.qkv)
            q, k, v = qkv.view(s, length, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
            att = self._attention(q, k, v).view(s * length, d)
            x = self._mm_add(att, block.proj, x)
            x = self._mm_add(self._mm(self._ln(x, block.norm2), block.fc1, act="gelu"),
                             block.fc2, x)
        last = self._blocks[-1]
        y = self._ln(x, last.norm1)
        kv = self._mm(y, self._last_kv).view(s, length, 2, h, d // h).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        cls_y = y.view(s, length, d)[:, 0]
        q = self._mm(cls_y.contiguous(), self._last_q).view(s, 1, h, d // h).transpose(1, 2)
        att = self._attention(q, k, v).view(s, d)
        c = x.view(s, length, d)[:, 0].contiguous()
        c = self._mm_add(att, last.proj, c)
        c = self._mm_add(self._mm(self._ln(c, last.norm2), last.fc1, act="gelu"), last.fc2, c)
        f = self._final_norm
        cls = F.layer_norm(c.float(), (d,), f.weight, f.bias, f.eps)
        if pixels is None:
            return cls
        count = s // len(self.modalities)
        for i, norm in enumerate(self._pixel_norms or ()):
            sl = slice(i * count, (i + 1) * count)
            pixels[sl] = F.layer_norm(pixels[sl], (d,), norm.weight, norm.bias, norm.eps)
        return torch.cat([cls, pixels], dim=1)

    def probabilities(self, cls_tokens: torch.Tensor, count: int) -> torch.Tensor:
        """``(count, K)`` float32 probabilities from :meth:`encode`'s output.

        ``cls_tokens`` is ``(M * count, d)``, ``(M * count, 2 d)`` with ``pixel_readout``.
        """
        feats = torch.cat(cls_tokens.split(count, dim=0), dim=1)
        z = F.normalize(F.linear(feats, self._projection.weight, self._projection.bias), dim=-1)
        return torch.softmax(self.scale * z @ self.text.T, dim=-1)

    def predict_windows(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(N, K)`` probabilities of one batch of windows.

        Args:
            inputs: ``{modality: (N, bands, w, w)}`` float32 normalised windows on
                :attr:`device`.
        """
        n = inputs["hsi"].shape[0]
        seqs = self.new_sequences(n)
        for i, m in enumerate(self.modalities):
            x = inputs[m]
            pixels = x.permute(0, 2, 3, 1).reshape(n * self.tokens, x.shape[1])
            emb = self.embed(m, pixels).view(n, self.tokens, self.dim)
            torch.add(emb, self.pos_embed, out=seqs[i * n:(i + 1) * n, 1:])
        return self.probabilities(self.encode(seqs), n)
