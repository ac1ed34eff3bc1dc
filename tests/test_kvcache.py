"""PIE cache sync: exact where theory says exact, consistent after any edit sequence."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import ForwardCounter
from draftline.completion.kvcache import Cancelled, DocCache, plan_blocks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def fresh(net, tokens):
    c = DocCache(net)
    c.sync(tokens, mode="full")
    return c


def test_kept_prefix_bitwise_unchanged(tiny):
    toks = list(range(1000, 1300))
    c = fresh(tiny.net, toks)
    k_before = c.k[:, :, :150].clone()
    v_before = c.v[:, :, :150].clone()
    st_ = c.sync(toks[:150] + [5, 6, 7] + toks[150:])
    assert st_.mode == "pie" and st_.computed <= 3 + 2
    assert torch.equal(c.k[:, :, :149], k_before[:, :, :149])
    assert torch.equal(c.v[:, :, :149], v_before[:, :, :149])


def test_pure_shift_layer0_keys_equal_recompute(tiny):
    """Layer-0 keys depend on token and position only: after PIE they must equal a
    recompute (fp32 tolerance), wherever the tokens moved."""
    toks = list(range(2000, 2400))
    c = fresh(tiny.net, toks)
    new = [11, 12, 13, 14, 15] + toks  # everything shifts by 5
    st_ = c.sync(new)
    assert st_.moved >= 390
    ref = fresh(tiny.net, new)
    assert torch.allclose(c.k[0, :, :len(new)], ref.k[0, :, :len(new)], atol=1e-4)
    assert torch.equal(c.v[0, :, 10:len(new)], ref.v[0, :, 10:len(new)]) or \
        torch.allclose(c.v[0, :, 10:len(new)], ref.v[0, :, 10:len(new)], atol=1e-5)


def test_conflict_fast_keeps_stale_rotation(tiny):
    toks = list(range(2000, 2200))
    c = fresh(tiny.net, toks)
    c.sync([1, 2, 3] + toks, mode="conflict-fast")
    ref = fresh(tiny.net, [1, 2, 3] + toks)
    assert not torch.allclose(c.k[0, :, 10:203], ref.k[0, :, 10:203], atol=1e-3)


@pytest.mark.parametrize("where", ["mid-file edit", "edit at the end", "cold"])
def test_tail_rides_along_in_the_sync_forward(tiny, where):
    """sync(tail=t) runs t in the gap's own forward (at slot len(new), scratch): its logits
    and K/V equal the separate forward a decode would run after the sync."""
    toks = list(range(1000, 1300))
    new = {"mid-file edit": toks[:150] + [5, 6, 7] + toks[150:],
           "edit at the end": toks[:-4] + [5, 6, 7],
           "cold": toks}[where]
    tail = 77
    n = len(new)
    fused = DocCache(tiny.net) if where == "cold" else fresh(tiny.net, toks)
    sep = DocCache(tiny.net) if where == "cold" else fresh(tiny.net, toks)
    st_ = fused.sync(new, tail=tail)
    assert st_.tail_logits is not None and fused.tokens == new
    sep.sync(new)
    ref = tiny.net.forward(torch.tensor([tail]), torch.tensor([n]), sep.k, sep.v, n)[0]
    assert torch.allclose(st_.tail_logits, ref, atol=1e-4)
    assert torch.allclose(fused.k[:, :, :n + 1], sep.k[:, :, :n + 1], atol=1e-5)
    assert torch.allclose(fused.v[:, :, :n + 1], sep.v[:, :, :n + 1], atol=1e-5)
    # nothing to compute: no forward, no logits (the decode runs the tail itself)
    assert fused.sync(new, tail=tail).tail_logits is None


def test_refresh_makes_cache_exact(tiny):
    toks = list(range(3000, 3300))
    c = fresh(tiny.net, toks)
    new = toks[:100] + [42] * 7 + toks[120:]
    c.sync(new)
    assert c.stale > 0
    c.refresh()
    assert c.stale == 0
    ref = fresh(tiny.net, new)
    assert torch.allclose(c.k[:, :, :len(new)], ref.k[:, :, :len(new)], atol=1e-4)
    assert torch.allclose(c.v[:, :, :len(new)], ref.v[:, :, :len(new)], atol=1e-4)


def test_cancel_leaves_consistent_prefix(tiny):
    toks = list(range(100, 900))
    c = DocCache(tiny.net)
    ev = threading.Event()
    calls = {"n": 0}
    real = c.encode

    def enc(tokens, a, b, cancel=None, on_chunk=None, **kw):
        def cb(i):
            calls["n"] += 1
            if on_chunk:
                on_chunk(i)
            ev.set()  # cancel after the first chunk
        return real(tokens, a, b, cancel, on_chunk=cb, **kw)

    c.encode = enc
    with pytest.raises(Cancelled):
        c.sync(toks, cancel=ev)
    assert calls["n"] == 1
    assert c.tokens == toks[: len(c.tokens)] and 0 < len(c.tokens) < len(toks)


def test_plan_blocks_multi_place():
    old = list(range(100))
    new = old[:10] + [900] + old[10:50] + old[55:80] + [901, 902] + old[80:]
    blocks = plan_blocks(old, new)
    assert blocks[0].old == 0 and blocks[0].size == 10
    covered = sum(b.size for b in blocks)
    assert covered == 10 + 40 + 25 + 20
    for b in blocks:
        assert old[b.old:b.old + b.size] == new[b.new:b.new + b.size]


edit = st.tuples(st.integers(0, 10**6), st.integers(0, 40), st.lists(st.integers(500, 600), max_size=30))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(edit, min_size=1, max_size=6))
def test_random_edits_tokens_and_positions(tiny, edits):
    """After any edit sequence the cache holds the new tokens, and every slot's layer-0 key
    is the key of that token at that position (so every cached position id is right)."""
    net = tiny.net
    toks = list(range(1000, 1200))
    c = fresh(net, toks)
    for pos, dele, ins in edits:
        p = pos % (len(toks) + 1)
        toks = toks[:p] + ins + toks[p + dele:]
        if not toks:
            toks = [7]
        c.sync(toks)
        assert c.tokens == toks
    ref = fresh(net, toks)
    n = len(toks)
    assert torch.allclose(c.k[0, :, :n], ref.k[0, :, :n], atol=2e-4)


@settings(max_examples=60, deadline=None)
@given(seq=st.lists(st.integers(0, 30), min_size=0, max_size=300),
       edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 20), st.lists(st.integers(0, 30), max_size=20)),
                      max_size=5))
def test_plan_blocks_valid(seq, edits):
    """Blocks are real matches, in order in both sequences, never overlapping."""
    new = list(seq)
    for p, d, ins in edits:
        p %= len(new) + 1
        new = new[:p] + ins + new[p + d:]
    blocks = plan_blocks(seq, new)
    ea = eb = 0
    for b in blocks:
        assert b.old >= ea and b.new >= eb and b.size > 0
        assert seq[b.old:b.old + b.size] == new[b.new:b.new + b.size]
        ea, eb = b.old + b.size, b.new + b.size


def test_plan_blocks_window_shift_keeps_most_tokens():
    """A context window that moved by 128 tokens plus an edit: nearly all tokens are kept."""
    import random

    rng = random.Random(0)
    doc = [rng.choice([220, 198, 11, 25, 30, 1000, 1001]) if rng.random() < 0.5 else rng.randrange(50000)
           for _ in range(3000)]
    old = doc[0:2000]
    new = doc[128:1500] + [7, 8, 9] + doc[1500:2128]
    kept = sum(b.size for b in plan_blocks(old, new))
    assert kept >= 2000 - 128 - 20


def test_a_cancelled_front_leaves_the_cache_as_it_was_and_is_resumed(tiny):
    """A window grown at its front (`cancel_front`): the front is encoded apart in chunks
    of FRONT_CHUNK before anything moves; a cancel between chunks leaves the cache's tokens
    and K/V untouched, and the next sync encodes only the chunks not done, to the same K/V
    as a sync never cancelled."""
    from draftline.completion.kvcache import FRONT_CHUNK

    held = list(range(3000, 3200))
    front = list(range(500, 500 + 2 * FRONT_CHUNK + 40))  # three chunks
    new = front + held
    c = fresh(tiny.net, held)
    k0, v0 = c.k[:, :, :len(held)].clone(), c.v[:, :, :len(held)].clone()
    ev = threading.Event()
    rows: list[int] = []
    real = tiny.net.forward

    def fwd(x, *a, **kw):
        rows.append(x.shape[0])
        if len(rows) == 2:
            ev.set()  # a request arrives while the second chunk runs
        return real(x, *a, **kw)

    tiny.net.forward = fwd
    try:
        with pytest.raises(Cancelled):
            c.sync(new, cancel_front=ev)
        assert rows == [FRONT_CHUNK, FRONT_CHUNK]
        assert c.tokens == held and c.stale == 0
        assert torch.equal(c.k[:, :, :len(held)], k0) and torch.equal(c.v[:, :, :len(held)], v0)
        rows.clear()
        st_ = c.sync(new, cancel_front=threading.Event())
    finally:
        del tiny.net.forward
    # (the front and the held token next to it, widened: its context changed)
    assert c.tokens == new and st_.computed == len(front) + 1 and st_.moved == len(held) - 1
    # the second chunk stopped within a layer (`Transformer.forward`'s `stop`): redone, with the rest
    assert rows == [FRONT_CHUNK, st_.computed - 2 * FRONT_CHUNK]
    ref = fresh(tiny.net, held)
    ref.sync(new)  # the same sync, never cancelled
    assert torch.allclose(c.k[:, :, :len(new)], ref.k[:, :, :len(new)], atol=1e-5)
    assert torch.allclose(c.v[:, :, :len(new)], ref.v[:, :, :len(new)], atol=1e-5)
    assert c._front is None


def test_the_tail_comes_with_a_sync_whose_only_gap_is_a_front(tiny):
    """A window grown at its front by a request's sync (`cancel` given: the front path):
    the tail's logits come back as with any other sync that runs a forward."""
    held = list(range(3000, 3100))
    new = list(range(500, 540)) + held
    c = fresh(tiny.net, held)
    st_ = c.sync(new, cancel=threading.Event(), tail=77)
    ref = fresh(tiny.net, held)
    ref.sync(new)
    n = len(new)
    z = tiny.net.forward(torch.tensor([77]), torch.tensor([n]), ref.k, ref.v, n)[0]
    assert st_.tail_logits is not None and torch.allclose(st_.tail_logits, z, atol=1e-4)


def test_a_rebuild_is_exact_and_a_cancel_leaves_the_cache_as_it_was(tiny):
    """`rebuild` (a short window made whole in idle time) encodes the new prompt apart:
    a request arriving mid-way stops it between chunks with the cache still holding the
    window it answered from, the next call resumes from the chunks done, and the result is
    a fresh encode's K/V, not PIE's stale ones."""
    from draftline.completion.kvcache import FRONT_CHUNK

    header = list(range(700, 760))
    window = list(range(3000, 3300))
    new = list(range(500, 900)) + window  # the window grown at its front, the header gone
    c = fresh(tiny.net, header + window)
    k0 = c.k[:, :, :len(header + window)].clone()
    with ForwardCounter(tiny.net, trigger=2) as fc, pytest.raises(Cancelled):  # a request comes in chunk 2
        c.rebuild(new, cancel=fc.cancel)
    assert fc.started_after_cancel == 0
    assert c.tokens == header + window and c.stale == 0
    assert torch.equal(c.k[:, :, :len(header + window)], k0)  # untouched
    st_ = c.rebuild(new, cancel=threading.Event())
    assert st_.computed == len(new) - FRONT_CHUNK  # the first chunk was done; the second stopped mid-way
    assert c.tokens == new and c.stale == 0
    ref = fresh(tiny.net, new)
    n = len(new)
    assert torch.allclose(c.k[:, :, :n], ref.k[:, :, :n], atol=1e-4)
    assert torch.allclose(c.v[:, :, :n], ref.v[:, :, :n], atol=1e-4)
    # PIE's splice of the same front leaves the window's keys computed without it: stale
    pie = fresh(tiny.net, header + window)
    pie.sync(new)
    assert pie.stale > 0 and not torch.allclose(pie.v[:, :, :n], ref.v[:, :, :n], atol=1e-4)
