"""Rotary position math: the model's own cos/sin for the forward pass, and the pure
rotation R(d) that Positional Integrity Encoding (PIE) applies to cached keys.

Why two things: the forward uses cos/sin multiplied by the rope type's attention scaling
(YaRN's mscale), while a key that is already rotated and scaled only needs the extra
rotation by d positions. Building R(d) from the model's cos/sin would scale it twice.
Everything here computes in fp32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

#: rope types whose frequencies do not depend on sequence length, so a cached key moved by
#: d positions equals R(d) applied to it, exactly.
SHIFTABLE = {"default", "linear", "llama3", "yarn"}
#: rope types whose frequencies change with the sequence length: PIE is not exact there,
#: the cache falls back to exact re-encoding.
LENGTH_DEPENDENT = {"dynamic", "longrope"}


class RopeError(ValueError):
    """A rope configuration draftline cannot run."""


@dataclass
class Rope:
    """Inverse frequencies plus what the forward needs: attention scaling, rotary width."""

    rope_type: str
    inv_freq: torch.Tensor  # [rot_dim // 2], fp32
    attention_scaling: float
    head_dim: int
    rot_dim: int
    theta: float

    @property
    def shiftable(self) -> bool:
        """True when moving a cached key by d positions is exactly R(d)."""
        return self.rope_type in SHIFTABLE

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [T, rot_dim] (rotate_half layout), scaled for the forward."""
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling

    def shift_cos_sin(self, d: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos(d·θ), sin(d·θ) for a pure shift; no attention scaling (see module doc)."""
        dt = torch.as_tensor(d, dtype=torch.float64).reshape(-1)
        # fp64 for the angle: d·θ for d up to 1e5 keeps full fp32 precision after cos/sin.
        freqs = dt[:, None] * self.inv_freq.double()[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().float(), emb.sin().float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """HF's rotate_half: the first and second halves of the rotary dims pair up."""
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., T, head_dim] with cos/sin [T, rot_dim]; dims past rot_dim pass through."""
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    xr, xp = x[..., :rot], x[..., rot:]
    return torch.cat([xr * cos + rotate_half(xr) * sin, xp], dim=-1)


def shift_keys(keys: torch.Tensor, d: int, rope: Rope, out: torch.Tensor | None = None) -> torch.Tensor:
    """Keys [..., T, head_dim] that sat at position p, re-rotated to sit at p + d.

    Computed in fp32 whatever the cache dtype, returned in the keys' dtype.  `out` (not
    overlapping `keys`, e.g. the destination slots in the cache): written in place, in three
    passes over fp32 keys instead of apply_rotary's five temporaries plus a copy (a mid-file
    edit in a 2k-token file moves ~1,000 keys x 30 layers: 16 -> 8 ms here).
    """
    if d == 0:
        return keys if out is None else out.copy_(keys)
    cos, sin = rope.shift_cos_sin(d)
    cos, sin = cos[0], sin[0]
    if out is None or keys.dtype != torch.float32 or out.dtype != torch.float32:
        res = apply_rotary(keys.float(), cos, sin).to(keys.dtype)
        return res if out is None else out.copy_(res)
    rot = cos.shape[-1]
    h = rot // 2
    # x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1)
    torch.mul(keys[..., :rot], cos, out=out[..., :rot])
    out[..., :h].addcmul_(keys[..., h:rot], sin[:h], value=-1)
    out[..., h:rot].addcmul_(keys[..., :h], sin[h:])
    if rot < keys.shape[-1]:
        out[..., rot:] = keys[..., rot:]
    return out


def _rope_params(cfg: dict[str, Any]) -> dict[str, Any]:
    """Rope parameters from a config.json dict, old (`rope_scaling`) or new (`rope_parameters`)."""
    params: dict[str, Any] = {}
    if isinstance(cfg.get("rope_scaling"), dict):
        params.update(cfg["rope_scaling"])
    if isinstance(cfg.get("rope_parameters"), dict):
        params.update(cfg["rope_parameters"])
    if "rope_theta" not in params:
        params["rope_theta"] = cfg.get("rope_theta", 10000.0)
    rtype = params.get("rope_type") or params.get("type") or "default"
    params["rope_type"] = rtype
    return params


def rope_from_config(cfg: dict[str, Any], head_dim: int) -> Rope:
    """Build the Rope for a HF config dict.

    `default` and `linear` are computed here (no transformers import: start-up stays fast);
    other types use transformers' own init functions so the forward matches HF exactly.
    """
    params = _rope_params(cfg)
    rtype = params["rope_type"]
    theta = float(params["rope_theta"])
    partial = float(cfg.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0)))
    rot_dim = int(head_dim * partial)
    if rot_dim % 2:
        raise RopeError(f"odd rotary dimension {rot_dim}")
    if rtype in ("default", "linear"):
        inv = 1.0 / (theta ** (torch.arange(0, rot_dim, 2, dtype=torch.int64).float() / rot_dim))
        if rtype == "linear":
            inv = inv / float(params["factor"])
        return Rope(rtype, inv, 1.0, head_dim, rot_dim, theta)
    if rtype in ("llama3", "yarn", "dynamic", "longrope"):
        try:
            from transformers import AutoConfig
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
        except ImportError as e:  # pragma: no cover - transformers is a dependency
            raise RopeError(f"rope type {rtype} needs transformers: {e}") from e
        conf = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "architectures"})
        inv, scaling = ROPE_INIT_FUNCTIONS[rtype](conf, torch.device("cpu"))
        if rtype in LENGTH_DEPENDENT:
            log.warning(
                "rope type %s changes frequencies with sequence length: the KV cache will be "
                "re-encoded exactly after edits instead of re-rotated (PIE off)", rtype
            )
        return Rope(rtype, inv.float(), float(scaling), head_dim, rot_dim, theta)
    raise RopeError(f"unsupported rope type {rtype!r}")

