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


class _WeightOnlyLinear:
    """y = x W^T (+ b) for quantized weights and bf16 activations: few rows (decoding, draft
    trees) run the subclass's GEMV kernel (`_gemv`), many rows (prefill chunks) a bf16 GEMM
    on the dequantized weights (`_dequantized`), which is faster from ~GEMV_ROWS rows on."""

    GEMV_ROWS = 32
    out_features: int
    bias: torch.Tensor | None

    def _gemv(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _dequantized(self) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, native: bool = False) -> torch.Tensor:
        """`native`: y in bf16, the kernels' own output (no cast back to x's dtype)."""
        flat = x.dim() == 2
        x2 = (x if flat else x.reshape(-1, x.shape[-1])).to(torch.bfloat16)
        if x2.shape[0] <= self.GEMV_ROWS:
            y = self._gemv(x2)
        else:
            y = torch.mm(self._dequantized(), x2.t()).t()
        if not native:
            y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y if flat else y.reshape(*x.shape[:-1], self.out_features)


class Int8Linear(_WeightOnlyLinear):
    """Weight-only int8: one scale per output channel, activations kept in bf16, so a
    decode step reads a quarter of fp32's weight bytes without quantizing activations
    (fbgemm's dynamic int8 linear quantizes them too and agreed with fp32 on only 87% of
    next tokens here).

    Few rows (decoding, draft trees) run ATen's `_weight_int8pack_mm` (an int8 GEMV, ~5x
    faster than the fp32 one on this CPU); many rows (prefill chunks) dequantize to bf16 and
    run one GEMM, measured faster than both the int8 kernel and fp32 from ~32 rows on.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        w = weight.float()
        scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.out_features = w.shape[0]
        self.qweight = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self.scale = scale.to(torch.bfloat16).contiguous()
        self.bias = bias.float() if bias is not None else None

    def _gemv(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(x, self.qweight, self.scale)

    def _dequantized(self) -> torch.Tensor:
        return self.qweight.to(torch.bfloat16) * self.scale[:, None]

    @property
    def nbytes(self) -> int:
        return self.qweight.numel() + self.scale.numel() * self.scale.element_size()


class Int4Linear(_WeightOnlyLinear):
    """Weight-only int4 in groups of 32 input features, used only where it is *lossless*:
    weights that are already 4-bit per group (the default model's GGUF stores every
    projection as Q4_1, w = d * q + m per block of 32, and its dequantized weights give q,
    d and m back exactly).  A decode step then reads half of int8's weight bytes and
    computes with the very weights the fp32 path uses (only the bf16 activations, scales
    and offsets of ATen's int4 kernel round).  Measured here: the 120 projections of the
    default model in 4.1 ms per token vs 8.3 ms for int8.

    Few rows run ATen's `_weight_int4pack_mm_for_cpu`; many rows (prefill chunks)
    dequantize the kept 4-bit codes to bf16 and run one GEMM, as Int8Linear does.
    """

    GROUP = 32

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                 bias: torch.Tensor | None = None):
        n, k = codes.shape
        g = self.GROUP
        self.out_features, self.in_features = n, k
        self.codes = codes.to(torch.uint8).contiguous()  # [N, K], 0..15: for the GEMM path
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 2)
        # the kernel's convention is w = (q - 8) * s + z per group: z = offset + 8 s
        self.scales_zeros = torch.stack([scale.t(), (offset + 8 * scale).t()], -1).to(torch.bfloat16).contiguous()
        self.scale = scale.to(torch.bfloat16).reshape(n, k // g, 1)
        self.offset = offset.to(torch.bfloat16).reshape(n, k // g, 1)
        self.bias = bias.float() if bias is not None else None

    @classmethod
    def exact(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "Int4Linear | None":
        """An Int4Linear holding `weight` exactly, or None when it is not 4-bit per group
        (or ATen lacks the kernel): then the caller quantizes to int8 instead."""
        return cls._fit(weight, bias, exact=True)

    @classmethod
    def approx(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "Int4Linear | None":
        """`weight` rounded to 4 bits per group of 32 (min/max per group), or None where the
        kernel is missing or refuses the shape.  Lossy: only for RescoredHead's first pass."""
        return cls._fit(weight, bias, exact=False)

    @classmethod
    def _fit(cls, weight: torch.Tensor, bias: torch.Tensor | None, exact: bool) -> "Int4Linear | None":
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            return None
        n, k = weight.shape
        g = cls.GROUP
        if k % g or n % 8:
            return None
        w = weight.float().reshape(n, k // g, g)
        lo = w.amin(-1, keepdim=True)
        step = (w.amax(-1, keepdim=True) - lo) / 15
        safe = torch.where(step > 0, step, torch.ones_like(step))
        codes = ((w - lo) / safe).round().clamp(0, 15)
        if exact:
            err = (codes * step + lo - w).abs().max().item()
            if err > 1e-6 * max(weight.abs().max().item(), 1e-12):
                return None
        try:
            return cls(codes.reshape(n, k), step.reshape(n, k // g).float(), lo.reshape(n, k // g).float(), bias)
        except RuntimeError:  # a shape the packing kernel refuses
            return None

    def _gemv(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, self.GROUP, self.scales_zeros)

    def _dequantized(self) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        codes = self.codes.reshape(n, k // self.GROUP, self.GROUP).to(torch.bfloat16)
        return torch.addcmul(self.offset, codes, self.scale).reshape(n, k)

    @property
    def nbytes(self) -> int:
        """Bytes one decode step reads (the packed codes and the group scales)."""
        return self.packed.numel() * self.packed.element_size() + self.scales_zeros.numel() * 2


class RescoredHead:
    """The output projection approximated in int8 or int4, with the `top` best rows of each
    output recomputed from the exact weights.

    The head is a fifth of the default model's weights, and an int8 head alone flipped the
    next token against fp32 on 3.6% of positions (near-ties among the top logits); the
    rescored top rows bring agreement to the exact head's own level: reading `top` rows of
    576 floats is nothing next to the 49k-row matrix.  Logits outside the top rows keep the
    approximation, and masking reaches down there: with a position's 32 best tokens banned,
    the masked argmax agreed with the exact head's on 0.47 of 1,800 stdlib positions for
    int8/top-32, 0.59 for top-128 (int8 or int4 alike: the rest is the body's rounding), and
    a member-list-like mask (50 random tokens of the top 200) 0.980 in every variant.  So
    with the int4 body the head's first pass is int4 too, with 128 rows rescored: 1.07 vs
    1.30 ms per row for int8/top-32, here (`approx` "int4"; int8 where the kernel is missing).
    """

    def __init__(self, weight: torch.Tensor, top: int = 128, approx: str = "int8"):
        self.approx = (Int4Linear.approx(weight) if approx == "int4" else None) or Int8Linear(weight)
        self.exact = weight  # tied: the embedding table itself, no extra memory
        self.top = min(top, weight.shape[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.approx(x).float()
        idx = logits.topk(self.top, dim=-1).indices  # [T, top]
        rows = self.exact[idx]  # [T, top, dim]
        exact = torch.bmm(rows.float(), x.float().unsqueeze(-1)).squeeze(-1)
        return logits.scatter_(-1, idx, exact)

    @property
    def nbytes(self) -> int:
        return self.approx.nbytes


@dataclass
class Layer:
    attn_norm: torch.Tensor
    wqkv: Linear | Int8Linear | Int4Linear
    wo: Linear | Int8Linear | Int4Linear
    ffn_norm: torch.Tensor
    w13: Linear | Int8Linear | Int4Linear  # gate and up fused
    w2: Linear | Int8Linear | Int4Linear


def _attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, nkv: int, hd: int) -> torch.Tensor:
    """Attention of one query row (a decode step) over the cache: q [nh, 1, hd], k/v
    [nkv, S, hd] -> [nh, 1, hd].  Two batched matmuls with the query heads of each KV group
    as rows: measured 7.6 ms vs SDPA's 10.3 ms for 30 layers at 2k context here (SDPA's CPU
    kernel splits one query row poorly over threads); same math, no mask needed."""
    nh = q.shape[0]
    qg = q.reshape(nkv, nh // nkv, hd) * (hd ** -0.5)
    p = torch.softmax(torch.bmm(qg, k.transpose(1, 2)), -1)
    return torch.bmm(p, v).reshape(nh, 1, hd)


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
        if isinstance(head, RescoredHead):  # int8 copy counted in weight_bytes; exact rows held too
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
    ) -> torch.Tensor | None:
        """Run T inputs written at cache slots [start, start+T).

        x: token ids [T] (long) or embeddings [T, dim]. positions: [T] rotary positions.
        k_cache/v_cache: [n_layers, n_kv, capacity, head_dim]. Attention covers slots
        [0, start+T); `mask` [T, start+T] (True = attend) or None for causal.
        `slots` (increasing, instead of `start`): scattered slots to write the T inputs at;
        attention then covers [0, slots[-1]] and row r sees the slots up to slots[r] (the
        tokens of an edit in mid-file and the prompt's last token in one forward).
        Returns logits (fp32) for `logits_rows` of the T outputs, or None if it is None.
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
            if T == 1 and mask is None:
                o = _attend_one(q, kc[:, :S], vc[:, :S], nkv, hd)
            elif split:
                o = torch.cat([
                    F.scaled_dot_product_attention(
                        q[:, :-1].unsqueeze(0),
                        kc[:, :split].unsqueeze(0),
                        vc[:, :split].unsqueeze(0),
                        attn_mask=mask[:-1, :split],
                        enable_gqa=nh != nkv,
                    )[0],
                    _attend_one(q[:, -1:], kc[:, :S], vc[:, :S], nkv, hd),
                ], 1)
            else:
                o = F.scaled_dot_product_attention(
                    q.unsqueeze(0),
                    kc[:, :S].unsqueeze(0),
                    vc[:, :S].unsqueeze(0),
                    attn_mask=mask,
                    enable_gqa=nh != nkv,
                )[0]
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
