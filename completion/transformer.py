"""A rotary decoder (Llama / Mistral / Qwen2 families) written for batch-size-1 serving.

Why not the transformers module: the per-document KV cache must be one explicit tensor
per document that PIE re-rotates in place, decode steps must feed several draft tokens (or
a superposed embedding) with an arbitrary attention mask over one shared cache, and the
per-step Python overhead must stay near zero on a 2-core CPU. The math is the HF Llama
forward (rotate_half rope, RMSNorm, SwiGLU, GQA); tests compare logits with transformers.

Cache layout: `k[layer]`/`v[layer]` are [n_kv_heads, capacity, head_dim]; slot i holds the
token at position i of the document prompt (PIE keeps it that way), draft tokens go after.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .rope import Rope, apply_rotary, rope_from_config

SUPPORTED_ARCHS = {"llama", "mistral", "qwen2"}


class ArchitectureError(ValueError):
    """The model's architecture is not one draftline can run."""


@dataclass
class ModelConfig:
    """The shape of a rotary decoder, read from a HF config.json dict."""

    model_type: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    norm_eps: float
    max_positions: int
    tie_embeddings: bool
    attention_bias: bool
    sliding_window: int | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    raw: dict[str, Any]

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "ModelConfig":
        mt = cfg.get("model_type", "")
        if mt not in SUPPORTED_ARCHS:
            raise ArchitectureError(
                f"model_type {mt!r} is not supported (supported: {', '.join(sorted(SUPPORTED_ARCHS))})"
            )
        n_heads = int(cfg["num_attention_heads"])
        dim = int(cfg["hidden_size"])
        head_dim = int(cfg.get("head_dim") or dim // n_heads)
        sw = cfg.get("sliding_window")
        if mt == "qwen2" and not cfg.get("use_sliding_window", False):
            sw = None
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        return cls(
            model_type=mt,
            vocab_size=int(cfg["vocab_size"]),
            dim=dim,
            n_layers=int(cfg["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
            head_dim=head_dim,
            intermediate=int(cfg["intermediate_size"]),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_positions=int(cfg.get("max_position_embeddings", 4096)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", mt == "qwen2")),
            sliding_window=int(sw) if sw else None,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
            raw=cfg,
        )


class Linear:
    """y = x W^T (+ b) with fp weights; `Int8Linear` replaces it when quantized."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight = weight
        self.bias = bias

    def __call__(self, x: torch.Tensor, native: bool = False) -> torch.Tensor:
        """`native`: y in the weights' dtype (no cast back to x's; see Transformer.forward)."""
        xd = x.dtype
        if xd != self.weight.dtype:  # reduced-precision weights, fp32 activations
            x = x.to(self.weight.dtype)
        if x.shape[0] == 1:
            y = F.linear(x, self.weight)
        else:
            # several rows: W @ x^T is measured 1.2-6x faster than F.linear here (MKL packs
            # the small operand instead of the weight matrix)
            y = torch.mm(self.weight, x.t()).t()
        if not native:
            y = y.to(xd)
        return y + self.bias if self.bias is not None else y

    @property
    def nbytes(self) -> int:
        n = self.weight.numel() * self.weight.element_size()
        return n + (self.bias.numel() * self.bias.element_size() if self.bias is not None else 0)


@dataclass
class Layer:
    attn_norm: torch.Tensor
    wqkv: Linear  # or a completion.quantize projection (same call signature)
    wo: Linear
    ffn_norm: torch.Tensor
    w13: Linear  # gate and up fused
    w2: Linear


def _attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, nkv: int, hd: int) -> torch.Tensor:
    """Attention of one query row (a decode step) over the cache: q [nh, 1, hd], k/v
    [nkv, S, hd] -> [nh, 1, hd].  Two batched matmuls with the query heads of each KV group
    as rows: measured 7.6 ms vs SDPA's 10.3 ms for 30 layers at 2k context here (SDPA's CPU
    kernel splits one query row poorly over threads); same math, no mask needed."""
    nh = q.shape[0]
    qg = q.reshape(nkv, nh // nkv, hd) * (hd ** -0.5)
    p = torch.softmax(torch.bmm(qg, k.transpose(1, 2)), -1)
    return torch.bmm(p, v).reshape(nh, 1, hd)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, split: int = 0) -> torch.Tensor:
    """Attention of T query rows over S cache slots: q [nh, T, hd], k/v [nkv, S, hd] (GQA:
    nh a multiple of nkv), mask [T, S] bool (True = attend) or None -> [nh, T, hd].

    Three shapes, each the fastest measured for its case on this CPU:
    - one row, no mask (a decode step): `_attend_one`, two batched matmuls (SDPA's kernel
      was 35% slower for one row);
    - `split` > 0 (an edit's rows mid-file, then the prompt's last token): rows [0, T-1)
      attend by SDPA over slots [0, split) only, the last row over all S (one-row
      attention): 19 vs 25 ms for 14 rows at 2k;
    - otherwise (prefill chunks, draft trees): SDPA with the mask.
    """
    nh, T, hd = q.shape
    nkv = k.shape[0]
    if T == 1 and mask is None:
        return _attend_one(q, k, v, nkv, hd)
    # q comes out of the rotation with its head_dim strided (strides (T*hd, 1, T)): SDPA's
    # CPU kernel then ran 256 rows behind 1.5k cached slots in 677 instead of 223 ms per
    # forward (30 layers; 298 vs 180 ms behind 1k, 122 vs 98 at the start; 2026-12-05)
    q = q.contiguous()
    if split:
        head = F.scaled_dot_product_attention(q[:, :-1].unsqueeze(0), k[:, :split].unsqueeze(0),
                                              v[:, :split].unsqueeze(0), attn_mask=mask[:-1, :split],
                                              enable_gqa=nh != nkv)[0]  # [nh, T-1, hd]
        return torch.cat([head, _attend_one(q[:, -1:], k, v, nkv, hd)], 1)
    return F.scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attn_mask=mask,
                                          enable_gqa=nh != nkv)[0]


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:  # (the casts below cost a dispatch each even as no-ops)
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


class Transformer:
    """The network. Holds weights only; caches are passed in (one per document)."""

    def __init__(self, cfg: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32):
        self.cfg = cfg
        self.dtype = dtype
        self.rope: Rope = rope_from_config(cfg.raw, cfg.head_dim)
        g = lambda k: state[k].to(dtype)  # noqa: E731
        self.embed = g("model.embed_tokens.weight")
        head = state.get("lm_head.weight")
        self.lm_head = Linear(self.embed if (head is None or cfg.tie_embeddings) else head.to(dtype))
        self.norm = g("model.norm.weight")
        self.layers: list[Layer] = []
        for i in range(cfg.n_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            wqkv = torch.cat([g(a + "q_proj.weight"), g(a + "k_proj.weight"), g(a + "v_proj.weight")])
            bqkv = None
            if (a + "q_proj.bias") in state:
                bqkv = torch.cat([g(a + "q_proj.bias"), g(a + "k_proj.bias"), g(a + "v_proj.bias")])
            w13 = torch.cat([g(p + "mlp.gate_proj.weight"), g(p + "mlp.up_proj.weight")])
            self.layers.append(
                Layer(
                    attn_norm=g(p + "input_layernorm.weight"),
                    wqkv=Linear(wqkv, bqkv),
                    wo=Linear(g(a + "o_proj.weight")),
                    ffn_norm=g(p + "post_attention_layernorm.weight"),
                    w13=Linear(w13),
                    w2=Linear(g(p + "mlp.down_proj.weight")),
                )
            )
        self.quantized: str | None = None  # None, "int8", "int4", "int4+int8" or a reduced weight dtype

    # -- weights -----------------------------------------------------------------------
    def quantize_int8(self, int4_where_exact: bool = False) -> None:
        """Swap every projection (and the lm_head) for weight-only int8; with
        `int4_where_exact`, projections whose weights are exactly 4-bit per group of 32
        become Int4Linear instead (lossless, half the bytes)."""
        from .quantize import Int4Linear, Int8Linear, RescoredHead

        kinds = set()
        for L in self.layers:
            for name in ("wqkv", "wo", "w13", "w2"):
                lin = getattr(L, name)
                q = Int4Linear.exact(lin.weight, lin.bias) if int4_where_exact else None
                setattr(L, name, q if q is not None else Int8Linear(lin.weight, lin.bias))
                kinds.add("int4" if q is not None else "int8")
        self.lm_head = RescoredHead(self.lm_head.weight, approx="int4" if int4_where_exact else "int8")
        self.quantized = "+".join(sorted(kinds))

    def cast_weights(self, dtype: torch.dtype) -> None:
        """Projection and lm_head weights in `dtype` (e.g. bf16: half the bytes to read),
        activations, norms and the KV cache stay in the model dtype."""
        for L in self.layers:
            for name in ("wqkv", "wo", "w13", "w2"):
                lin = getattr(L, name)
                setattr(L, name, Linear(lin.weight.to(dtype), lin.bias))
        self.lm_head = Linear(self.lm_head.weight.to(dtype))
        self.quantized = str(dtype).replace("torch.", "")

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights read by one decode step (the embedding row read is negligible)."""
        n = self.lm_head.nbytes + self.norm.numel() * self.norm.element_size()
        for L in self.layers:
            n += sum(x.nbytes for x in (L.wqkv, L.wo, L.w13, L.w2))
            n += (L.attn_norm.numel() + L.ffn_norm.numel()) * L.attn_norm.element_size()
        return n

    @property
    def param_bytes(self) -> int:
        """Bytes of all weights held in memory (embedding included when untied)."""
        head = self.lm_head
        if hasattr(head, "exact"):  # RescoredHead: its approximation counted in weight_bytes; exact rows held too
            extra = self.embed.nbytes + (0 if head.exact is self.embed else head.exact.nbytes)
        else:
            extra = 0 if isinstance(head, Linear) and head.weight is self.embed else self.embed.nbytes
        return self.weight_bytes + extra

    # -- forward -----------------------------------------------------------------------
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embed)

    @torch.inference_mode()
    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        start: int,
        mask: torch.Tensor | None = None,
        logits_rows: slice | torch.Tensor | None = slice(-1, None),
        slots: torch.Tensor | None = None,
        stop: threading.Event | None = None,
    ) -> torch.Tensor | None:
        """Run T inputs written at cache slots [start, start+T).

        x: token ids [T] (long) or embeddings [T, dim]. positions: [T] rotary positions.
        k_cache/v_cache: [n_layers, n_kv, capacity, head_dim]. Attention covers slots
        [0, start+T); `mask` [T, start+T] (True = attend) or None for causal.
        `slots` (increasing, instead of `start`): scattered slots to write the T inputs at;
        attention then covers [0, slots[-1]] and row r sees the slots up to slots[r] (the
        tokens of an edit in mid-file and the prompt's last token in one forward).
        Returns logits (fp32) for `logits_rows` of the T outputs, or None if it is None.
        `stop`: once set, the forward returns None after the layer in flight, its slots
        written for some layers only (for work in scratch tensors that is redone: a request
        waited 82 ms p50, up to 129, for a 128-token chunk of the idle-time rebuild to end;
        replay 2026-12-05 15:58).
        """
        cfg = self.cfg
        h = self.embed_tokens(x) if x.dtype == torch.long else x.to(self.dtype)
        T = h.shape[0]
        split = 0
        if slots is not None:
            S = int(slots[-1]) + 1
            mask = torch.arange(S)[None, :] <= slots[:, None]
            if T > 1 and int(slots[-2]) + 1 < S - 1:
                # an edit's tokens mid-file plus the prompt's last token: the edit's rows
                # attend to the slots up to their own only (SDPA over that prefix), the
                # last row to all (one-row attention): 19 vs 25 ms for 14 rows at 2k here
                split = int(slots[-2]) + 1
        else:
            S = start + T
        if mask is None and T > 1:
            mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=start)
        cos, sin = self.rope.cos_sin(positions)
        cos, sin = cos.to(self.dtype), sin.to(self.dtype)
        nh, nkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qd, kd = nh * hd, nkv * hd
        half = hd // 2
        # rotate_half(x) * sin == x.roll(half) * (sin with its first half negated): two ops
        # per layer instead of five (bitwise the same); partial rotary keeps apply_rotary
        sin_signed = torch.cat([-sin[:, :half], sin[:, half:]], -1) if cos.shape[-1] == hd else None
        # Per layer, few tensor ops (~0.5-2 us of dispatch each): projections return their
        # kernels' dtype (`native`: bf16 for int4/int8) and type promotion does the casts:
        # q/k come out of the rotation in fp32, v is cast by the cache write, the SwiGLU gate
        # runs in fp32 as before, the residual adds promote to fp32.  Bitwise the same logits;
        # 17.3 vs 17.5 ms per decode step at 2k (medians of 40, the two forwards alternating).
        for li, L in enumerate(self.layers):
            if stop is not None and stop.is_set():
                return None
            kc, vc = k_cache[li], v_cache[li]
            a = rms_norm(h, L.attn_norm, cfg.norm_eps)
            qkv = L.wqkv(a, native=True)
            # q and k rotated together (one set of elementwise ops for both)
            x_qk = qkv[:, : qd + kd].view(T, nh + nkv, hd).transpose(0, 1)
            if sin_signed is not None:
                qk = x_qk * cos + x_qk.roll(half, -1) * sin_signed
            else:
                qk = apply_rotary(x_qk.to(self.dtype), cos, sin)
            q, k = qk[:nh], qk[nh:]
            v = qkv[:, qd + kd :].view(T, nkv, hd).transpose(0, 1)
            if slots is None:
                kc[:, start:S] = k
                vc[:, start:S] = v
            else:
                kc.index_copy_(1, slots, k)
                vc.index_copy_(1, slots, v.to(vc.dtype))
            o = attend(q, kc[:, :S], vc[:, :S], mask, split)  # [nh, T, hd]
            o = o.reshape(1, qd) if T == 1 else o.transpose(0, 1).reshape(T, qd)
            h = h + L.wo(o, native=True)
            m = rms_norm(h, L.ffn_norm, cfg.norm_eps)
            gu = L.w13(m, native=True)
            inter = gu.shape[-1] // 2
            h = h + L.w2(F.silu(gu[:, :inter].float()) * gu[:, inter:], native=True)
        if logits_rows is None:
            return None
        out = rms_norm(h[logits_rows], self.norm, cfg.norm_eps)
        return self.lm_head(out).float()

    def new_cache(self, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        shape = (c.n_layers, c.n_kv_heads, capacity, c.head_dim)
        return torch.zeros(shape, dtype=self.dtype), torch.zeros(shape, dtype=self.dtype)

    def cache_bytes_per_token(self) -> int:
        c = self.cfg
        return 2 * c.n_layers * c.n_kv_heads * c.head_dim * torch.finfo(self.dtype).bits // 8
