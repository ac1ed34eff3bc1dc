"""The network matches transformers' own forward; cached decoding matches uncached."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_dir


def _hf_logits(path, ids):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("arch,extra", [
    ("llama", {}),
    ("qwen2", {}),  # q/k/v bias, GQA
    ("llama", {"rope": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}),
    ("llama", {"rope": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 256, "rope_theta": 500000.0}}),
    ("llama", {"rope": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256,
                        "rope_theta": 10000.0}}),
])
def test_logits_match_transformers(tmp_path, default_model_dir, arch, extra):
    from draftline.completion import model as M

    d = make_tiny_dir(tmp_path / arch, default_model_dir, arch=arch, **extra)
    lm = M.load(str(d), quantize="none")
    ids = list(range(100, 400, 3))
    k, v = lm.net.new_cache(256)
    ours = lm.net.forward(torch.tensor(ids), torch.arange(len(ids)), k, v, 0, logits_rows=slice(None))
    ref = _hf_logits(d, ids)
    assert torch.allclose(ours, ref, atol=2e-4, rtol=1e-4), (ours - ref).abs().max()


def test_cached_equals_uncached(tiny):
    net = tiny.net
    ids = list(range(500, 560))
    k, v = net.new_cache(128)
    full = net.forward(torch.tensor(ids), torch.arange(60), k, v, 0, logits_rows=slice(None))
    k2, v2 = net.new_cache(128)
    net.forward(torch.tensor(ids[:40]), torch.arange(40), k2, v2, 0, logits_rows=None)
    rows = []
    for i in range(40, 60):  # one token at a time against the cache
        rows.append(net.forward(torch.tensor([ids[i]]), torch.tensor([i]), k2, v2, i)[0])
    assert torch.allclose(torch.stack(rows), full[40:], atol=1e-4)
    assert torch.equal(k2[:, :, :60], k[:, :, :60]) or torch.allclose(k2[:, :, :60], k[:, :, :60], atol=1e-5)


def test_tree_mask_rows_equal_separate_sequences(tiny):
    """k draft rows in one forward (each sees the prompt + its own tokens) == k sequences."""
    net = tiny.net
    prompt = list(range(300, 340))
    n = len(prompt)
    drafts = [[7, 8, 9], [10, 11, 12], [13, 14, 15]]
    k, v = net.new_cache(128)
    net.forward(torch.tensor(prompt), torch.arange(n), k, v, 0, logits_rows=None)
    slots = [[] for _ in drafts]
    nxt = n
    outs = None
    for step in range(3):
        for i in range(3):
            slots[i].append(nxt + i)
        mask = torch.zeros(3, nxt + 3, dtype=torch.bool)
        mask[:, :n] = True
        for i in range(3):
            mask[i, slots[i]] = True
        ids = torch.tensor([d[step] for d in drafts])
        outs = net.forward(ids, torch.full((3,), n + step), k, v, nxt, mask=mask, logits_rows=slice(None))
        nxt += 3
    for i, d in enumerate(drafts):
        k2, v2 = net.new_cache(128)
        ref = net.forward(torch.tensor(prompt + d), torch.arange(n + 3), k2, v2, 0)[0]
        assert torch.allclose(outs[i], ref, atol=1e-4)


def test_int8_close_to_fp32(tiny_dir):
    from draftline.completion import model as M

    a = M.load(str(tiny_dir), quantize="none")
    b = M.load(str(tiny_dir), quantize="int8")
    ids = list(range(1000, 1050))
    ka, va = a.net.new_cache(64)
    kb, vb = b.net.new_cache(64)
    la = a.net.forward(torch.tensor(ids), torch.arange(50), ka, va, 0, logits_rows=slice(None))
    lb = b.net.forward(torch.tensor(ids), torch.arange(50), kb, vb, 0, logits_rows=slice(None))
    assert b.net.weight_bytes < a.net.weight_bytes / 3
    rel = (la - lb).norm() / la.norm()
    assert rel < 0.05, rel  # weight-only int8, bf16 activations in the matmuls
    # decoding rows (int8 GEMV) and prefill rows (dequantized GEMM) agree with each other
    kc, vc = b.net.new_cache(64)
    b.net.forward(torch.tensor(ids[:40]), torch.arange(40), kc, vc, 0, logits_rows=None)
    steps = [b.net.forward(torch.tensor([ids[i]]), torch.tensor([i]), kc, vc, i)[0] for i in range(40, 50)]
    assert torch.allclose(torch.stack(steps), lb[40:], atol=0.05 * float(lb.abs().max()))


def test_int4_only_where_exact_and_equal_to_fp32():
    from draftline.completion.quantize import Int4Linear
    from draftline.completion.transformer import Linear

    torch.manual_seed(0)
    n, k = 96, 128
    codes = torch.randint(0, 16, (n, k)).float()
    codes[:, ::32], codes[:, 1::32] = 0, 15  # a Q4_1 quantizer maps each group's min and max to 0 and 15
    step = torch.rand(n, k // 32, 1) * 0.02 + 0.001
    low = torch.randn(n, k // 32, 1) * 0.05
    w = (codes.reshape(n, k // 32, 32) * step + low).reshape(n, k)  # 4-bit per group of 32, like GGUF Q4_1
    q = Int4Linear.exact(w)
    assert q is not None and q.nbytes < n * k  # half a byte per weight plus the group scales
    for rows in (1, 5, 40):  # the int4 GEMV kernel and the dequantized GEMM (prefill) path
        x = torch.randn(rows, k)
        ref = Linear(w)(x)
        assert torch.allclose(q(x), ref, atol=0.02 * float(ref.abs().max())), rows
    assert Int4Linear.exact(torch.randn(n, k)) is None  # not 4-bit: int8 is used instead
    assert Int4Linear.exact(torch.randn(n, 100)) is None  # no whole groups


@pytest.mark.parametrize("approx", ["int8", "int4"])
def test_rescored_head_gives_exact_logits_for_its_top_rows(approx):
    """RescoredHead: a quantized first pass, then the `top` best rows recomputed exactly:
    those logits equal the exact head's, the rest stay approximations."""
    from draftline.completion.quantize import Int4Linear, Int8Linear, RescoredHead

    torch.manual_seed(0)
    w = torch.randn(512, 64)
    head = RescoredHead(w, top=16, approx=approx)
    assert isinstance(head.approx, Int4Linear if approx == "int4" else Int8Linear)
    x = torch.randn(3, 64)
    out, exact = head(x), x @ w.t()
    assert torch.equal(out.argmax(-1), exact.argmax(-1))
    idx = head.approx(x).float().topk(16, dim=-1).indices
    assert torch.allclose(out.gather(1, idx), exact.gather(1, idx), atol=1e-4)
    rest = torch.ones_like(out, dtype=torch.bool).scatter_(1, idx, False)
    assert not torch.allclose(out[rest], exact[rest], atol=1e-4)  # (approximations there)


def test_int4_falls_back_to_int8_for_weights_that_are_not_4_bit(tiny_dir):
    from draftline.completion import model as M

    b = M.load(str(tiny_dir), quantize="int4")  # random weights: nothing is exactly 4-bit
    assert b.net.quantized == "int8"


def test_default_quantization_agrees_with_fp32_on_real_code(default_model_dir):
    """The default path (auto: int4 where the weights are 4-bit, all of the default model's
    projections; the head int4 with its top rows rescored exactly) keeps fp32's next token
    on real code."""
    from conftest import stdlib_source
    from draftline.completion import model as M

    a = M.load(str(default_model_dir), quantize="none")
    b = M.load(str(default_model_dir))
    assert b.net.quantized == "int4"
    ids = a.tokenizer.encode(stdlib_source("textwrap.py"))[:320]
    tops = []
    for net in (a.net, b.net):
        k, v = net.new_cache(400)
        net.forward(torch.tensor(ids[:256]), torch.arange(256), k, v, 0, logits_rows=None)
        tops.append(torch.stack([net.forward(torch.tensor([ids[i]]), torch.tensor([i]), k, v, i)[0].argmax()
                                 for i in range(256, 320)]))
    assert float((tops[0] == tops[1]).float().mean()) >= 0.95

def test_refuses_unknown_architecture(tmp_path):
    from draftline.completion.transformer import ArchitectureError, ModelConfig

    with pytest.raises(ArchitectureError):
        ModelConfig.from_hf({"model_type": "gpt2", "num_attention_heads": 2, "hidden_size": 8,
                             "vocab_size": 10, "num_hidden_layers": 1, "intermediate_size": 8})


def test_one_row_attention_fast_path_equals_sdpa_and_masks_still_apply(tiny):
    net = tiny.net
    k, v = net.new_cache(64)
    net.forward(torch.tensor(list(range(500, 540))), torch.arange(40), k, v, 0, logits_rows=None)
    x, p = torch.tensor([7]), torch.tensor([40])
    fast = net.forward(x, p, k.clone(), v.clone(), 40)  # no mask: the bmm path
    full = net.forward(x, p, k.clone(), v.clone(), 40, mask=torch.ones(1, 41, dtype=torch.bool))  # SDPA
    assert torch.allclose(fast, full, atol=1e-4)
    holes = torch.ones(1, 41, dtype=torch.bool)
    holes[0, 10:20] = False  # e.g. another draft's slots in a batched decode
    masked = net.forward(x, p, k.clone(), v.clone(), 40, mask=holes)
    assert not torch.allclose(masked, fast, atol=1e-3)
