"""PIE's rotation: a key at position p shifted by d equals the key computed at p + d."""

from __future__ import annotations

import pytest
import torch

from draftline.completion.rope import apply_rotary, rope_from_config, shift_keys

BASE = {"model_type": "llama", "hidden_size": 256, "num_attention_heads": 4, "vocab_size": 100,
        "num_hidden_layers": 1, "intermediate_size": 8, "max_position_embeddings": 8192}


@pytest.mark.parametrize("rope", [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 1024, "rope_theta": 500000.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024, "rope_theta": 10000.0},
])
@pytest.mark.parametrize("d", [1, -3, 17, 700])
def test_shift_equals_recompute(rope, d):
    r = rope_from_config(dict(BASE, rope_parameters=rope), 64)
    assert r.shiftable
    torch.manual_seed(0)
    x = torch.randn(3, 50, 64)  # [heads, T, head_dim] un-rotated keys
    p = torch.arange(1000, 1050)
    cos, sin = r.cos_sin(p)
    k_at_p = apply_rotary(x, cos, sin)
    cos2, sin2 = r.cos_sin(p + d)
    k_at_pd = apply_rotary(x, cos2, sin2)
    shifted = shift_keys(k_at_p, d, r)
    # the reference itself computes p·θ in fp32 (error ~1e-4 rad at p ~ 1.7k)
    assert torch.allclose(shifted, k_at_pd, atol=1e-3 * max(1.0, r.attention_scaling)), (shifted - k_at_pd).abs().max()
    # written in place into a (strided) destination: the same keys
    dest = torch.zeros(3, 60, 64)
    got = shift_keys(k_at_p, d, r, out=dest[:, 5:55])
    assert got.data_ptr() == dest[:, 5:55].data_ptr()
    assert torch.allclose(dest[:, 5:55], shifted, atol=1e-5) and not dest[:, :5].any()


def test_in_place_shift_with_partial_rotary_keeps_the_pass_through_dims():
    r = rope_from_config(dict(BASE, partial_rotary_factor=0.5,
                              rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), 64)
    k = torch.randn(2, 7, 64)
    out = shift_keys(k, 9, r, out=torch.empty(2, 7, 64))
    assert torch.allclose(out, shift_keys(k, 9, r), atol=1e-5) and torch.equal(out[..., 32:], k[..., 32:])


def test_yarn_scaling_not_applied_twice():
    r = rope_from_config(dict(BASE, rope_parameters={"rope_type": "yarn", "factor": 16.0,
                                                      "original_max_position_embeddings": 512,
                                                      "rope_theta": 10000.0}), 64)
    assert r.attention_scaling > 1.0  # YaRN scales the keys once, in the forward
    x = torch.randn(1, 4, 64)
    k = apply_rotary(x, *r.cos_sin(torch.arange(4)))
    # a shift never changes the norm of a key
    assert torch.allclose(shift_keys(k, 5, r).norm(dim=-1), k.norm(dim=-1), rtol=1e-5)


@pytest.mark.parametrize("rtype", ["dynamic", "longrope"])
def test_length_dependent_rope_not_shiftable(rtype):
    params = {"rope_type": rtype, "factor": 2.0, "rope_theta": 10000.0}
    if rtype == "longrope":
        params.update(short_factor=[1.0] * 32, long_factor=[2.0] * 32, original_max_position_embeddings=1024)
    r = rope_from_config(dict(BASE, rope_parameters=params), 64)
    assert not r.shiftable


def test_bf16_keys_rotated_in_fp32():
    r = rope_from_config(dict(BASE, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), 64)
    x = torch.randn(2, 8, 64)
    k = apply_rotary(x, *r.cos_sin(torch.arange(8))).to(torch.bfloat16)
    out = shift_keys(k, 3, r)
    assert out.dtype == torch.bfloat16
    ref = apply_rotary(x, *r.cos_sin(torch.arange(3, 11)))
    assert (out.float() - ref).abs().max() < 0.05
