"""Weight-only quantized projections (as gpt-fast keeps quantize.py apart from model.py):
int8 per output channel, lossless int4 where the weights are 4-bit per group already, and
an output head whose best rows are recomputed exactly.  `completion.transformer` holds the
network; `Transformer.quantize_int8` swaps its projections for these."""

from __future__ import annotations

import torch



class _WeightOnlyLinear:
    """y = x W^T (+ b) for quantized weights and bf16 activations: few rows (decoding, draft
    trees) run the subclass's GEMV kernel (`_gemv`), many rows (prefill chunks) a bf16 GEMM
    on the dequantized weights (`_dequantized`), which is faster from ~GEMV_ROWS rows on.

    The dequantized weights are kept after their first use (`_bf16`): dequantizing all the
    projections again for every forward of more than GEMV_ROWS rows cost ~100 ms per
    forward here, whatever its size (a 79-row forward: 177 vs 72 ms, 128 rows at the start
    of a window 174 vs 69, 256 rows 229 vs 135), which is what a cold open's chunks, the
    idle-time encoding of a whole window and a project-context header change pay.  The price
    is the bf16 copy: 212 MB for the default model.

    Where the GEMM starts (`GEMV_ROWS`): at 32 rows once, measured before attention got its
    query rows contiguous (`transformer.attend`); since then a forward behind 1.8k cached
    tokens, with logits, costs 50 vs 63 ms for 16 rows, 61 vs 85 for 24, 73 vs 104 for 32,
    the same up to 10 (2026-12-05): re-verification trees and refresh chunks.  Those trees
    compute logits, so the output head's first pass gets its bf16 copy too (~57 MB more for
    the default model, once; before, only past 32 rows)."""

    GEMV_ROWS = 10
    out_features: int
    bias: torch.Tensor | None
    _bf16: torch.Tensor | None = None

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
            if self._bf16 is None:
                self._bf16 = self._dequantized()
            y = torch.mm(self._bf16, x2.t()).t()
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
