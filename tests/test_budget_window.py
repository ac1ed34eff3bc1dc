"""A request answers inside its budget (issue 14): the first line first, a short window for a
cold or far-moved cursor made whole in idle time, answers ahead of the user."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import ForwardCounter, engine_without_clock, stdlib_source
from draftline.completion.kvcache import Cancelled

BODY = "import os\n\n\ndef join_all(parts):\n    out = []\n    for p in parts:\n"


engine = engine_without_clock


def _textwrap_and_far_edits() -> tuple[str, list[str]]:
    """textwrap.py up to a line in `TextWrapper.wrap`, and three edits far above it."""
    src = stdlib_source("textwrap.py")
    text = src[:src.index("        chunks = self._split_chunks(text)")]
    at = text.index("class TextWrapper:")
    return text, [text[:at] + "\n" + text[at:],  # a blank line far above
                  text.replace("# Hardcode the recognized whitespace characters", "# The recognized whitespace characters"),
                  "# a comment the user added\n" + text]


# -- the window a request can afford --------------------------------------------------------------
def test_a_cold_request_encodes_at_most_its_cap_nearest_the_cursor(tiny):
    eng = engine(tiny, k=1, max_tokens=2, request_cap=96, far_tokens=0)  # (the header: test_far.py)
    src = stdlib_source("textwrap.py")[:6000]
    res = eng.complete("file:///w.py", src, len(src))
    assert res.short_window and res.tokens["computed"] <= 96 + 2
    full = eng.prompt_for("file:///w.py", src, len(src))
    assert res.tokens["prompt"] < len(full.tokens)
    # idle time encodes the full window anew, in one call: exactly the no-budget K/V, nothing
    # stale (growing it at its front left every token it held stale, to be refreshed)
    st = eng.prepare("file:///w.py", src, len(src))
    assert st.mode == "rebuild" and not st.more
    cache = eng.cache_of("file:///w.py")
    assert cache.tokens == full.tokens[:-1] and cache.stale == 0
    ref = engine(tiny, k=1, max_tokens=2, latency_budget_ms=0)
    ref.complete("file:///w.py", src, len(src))  # no budget: the whole window at once
    n = len(full.tokens) - 1
    rc = ref.cache_of("file:///w.py")
    assert rc.tokens == cache.tokens
    assert torch.allclose(cache.k[:, :, :n], rc.k[:, :, :n], atol=1e-4)
    assert torch.allclose(cache.v[:, :, :n], rc.v[:, :, :n], atol=1e-4)
    # an edit afterwards is PIE's splice again, not a rebuild
    at = src.index("class TextWrapper")
    edited = src[:at] + "\n" + src[at:]
    assert eng.prepare("file:///w.py", edited, len(edited)).mode == "pie"


def test_a_warm_request_never_pays_to_grow_a_short_window(tiny):
    eng = engine(tiny, k=1, max_tokens=2, request_cap=320)
    src = stdlib_source("textwrap.py")[:8000]
    eng.complete("file:///g.py", src, len(src))  # cold: a short window of ~320 tokens
    text = src + "x"  # a keystroke
    res = eng.complete("file:///g.py", text, len(text))
    assert res.short_window and res.tokens["computed"] <= 8


def _whole_window(lm, doc: str):
    """An engine whose cache holds the whole window at the end of `_textwrap_and_far_edits`'
    text (a cold request, then idle time), and that text."""
    eng = engine(lm, k=1, max_tokens=2, request_cap=256, far_tokens=0)
    text, _ = _textwrap_and_far_edits()
    eng.complete(doc, text, len(text))
    while eng.prepare(doc, text, len(text)).more:
        pass
    return eng, text


def test_a_cursor_that_jumped_up_inside_the_window_does_not_answer_from_what_was_above_it(tiny):
    """A jump up leaves the cache the window above the new cursor: the request encodes up to
    its cap more in front of it instead of answering from that remnant, and a keystroke
    after that costs nothing again."""
    from draftline.completion.engine import GROW_SLACK, MIN_CONTEXT

    eng, text = _whole_window(tiny, doc := "file:///j.py")
    up = len(text)
    for _ in range(30):  # 30 lines up
        up = text.rindex("\n", 0, up - 1) + 1
    near = eng.prompt_for(doc, text, up, cap=GROW_SLACK)
    assert near.body_end - near.window_start >= MIN_CONTEXT  # enough for the keystroke rule alone
    res = eng.complete(doc, text, up)
    assert 64 < res.tokens["computed"] <= 256 + 8
    assert res.tokens["prompt"] > len(near.tokens) + 64
    typed = text[:up] + "d" + text[up:]
    res = eng.complete(doc, typed, up + 1)
    assert res.tokens["computed"] <= 8


def test_a_mid_sized_edit_stays_a_splice_and_a_deletion_before_the_cursor_is_no_jump(tiny):
    """An insertion of ~200 tokens above the cursor into the whole window is spliced in
    (PIE) in idle time, not encoded anew.  Deleting it again leaves the cursor's window
    shorter than the cache's last one, as a jump up does, but the text after the cursor is
    the same: the request answers from the window the cache holds (nothing to encode)."""
    eng, text = _whole_window(tiny, doc := "file:///del.py")
    cut = text.rindex("\n", 0, len(text) - 1200) + 1
    block = text[cut - 800:cut]  # ~25 lines
    pasted = text[:cut] + block + text[cut:]
    st = eng.prepare(doc, pasted, len(pasted))
    assert st.mode == "pie" and 128 < st.computed < 384
    res = eng.complete(doc, text, len(text))  # deleted again
    assert res.tokens["computed"] <= 8 and res.tokens["prompt"] < len(eng.prompt_for(doc, text, len(text)).tokens)


def test_after_the_caches_are_freed_idle_time_starts_over_without_the_old_header(tiny):
    """`release_memory` (after a MemoryError) drops every cache: what the engine knew of them
    goes too, so idle time encodes the cursor's capped window first and the next request
    answers from it, instead of asking for the short window's old header the cache lacks."""
    eng = engine(tiny, k=1, max_tokens=2, request_cap=320, far_tokens=160)
    src = stdlib_source("textwrap.py")[:9000]
    doc = "file:///freed.py"
    assert eng.complete(doc, src, len(src)).short_window and eng.header_ids(doc, None)
    eng.release_memory()
    assert eng.header_ids(doc, None) == []
    assert eng.prepare(doc, src, len(src)).more
    typed = src + "x"
    assert eng.complete(doc, typed, len(typed)).tokens["computed"] <= 8


# -- the first line first --------------------------------------------------------------------------
@pytest.mark.real_model
def test_past_the_deadline_drafts_end_after_their_first_logical_line(default_model):
    from draftline.completion.guides import make_trim
    from draftline.completion.stops import logical_line_ends

    text = BODY
    slow = engine(default_model, latency_budget_ms=0, ahead=False)
    free = slow.complete("file:///b0.py", text, len(text), trim=make_trim("python"))
    quick = engine(default_model, latency_budget_ms=1, ahead=False)  # the deadline has passed at once
    got = quick.complete("file:///b1.py", text, len(text), trim=make_trim("python"))
    assert got.drafts and free.drafts
    for d in got.drafts:  # one logical line each
        assert logical_line_ends(d.text + "\n") == [len(d.text)], d.text
    anchor_free = free.drafts[0].text
    first = anchor_free[: logical_line_ends(anchor_free + "\n")[0]]
    assert got.drafts[0].text == first  # the same first line, just sooner
    assert got.tokens["generated"] < free.tokens["generated"] or "\n" not in anchor_free


@pytest.mark.real_model
def test_a_statement_stopped_mid_way_is_shown_only_as_far_as_it_parses(default_model):
    """A first line stopped before its end (the hard deadline; here `max_tokens`, which takes
    the same path without a clock) is cut back to where it parses with its brackets closed:
    `if not isinstance(` was the replay's only junk."""
    from draftline.analysis.trim import adds_parse_errors
    from draftline.completion.guides import make_trim

    src = stdlib_source("textwrap.py")
    lines = src.split("\n")
    cursors = [sum(len(x) + 1 for x in lines[:i]) + len(ln) - len(ln.lstrip())
               for i, ln in enumerate(lines) if i > 150 and len(ln.strip()) > 30 and ln.startswith("        ")
               and ln.lstrip().startswith(("if ", "while ", "for ", "elif "))][:10]
    trim = make_trim("python")
    plain = lambda p, d, s: trim(p, d, s)  # noqa: E731  (the same trim without the cut)
    eng = engine(default_model, k=1, max_tokens=8, latency_budget_ms=0, ahead=False)
    shown, cut_some = 0, False
    for c in cursors:
        text = src[:c] + src[src.index("\n", c):]
        got = eng.complete("file:///u.py", text, c, trim=trim).drafts
        raw = eng.complete("file:///u.py", text, c, trim=plain).drafts
        for d in got:
            assert not adds_parse_errors("python", text[:c], d.text, text[c:], open_ok=True), d.text
        shown += bool(got)
        if raw and adds_parse_errors("python", text[:c], raw[0].text, text[c:], open_ok=True):
            cut_some = True
            assert not got or (raw[0].text.startswith(got[0].text) and got[0].text != raw[0].text)
    assert cut_some and shown >= 3, (cut_some, shown)


# -- ahead of the user -----------------------------------------------------------------------------
@pytest.mark.real_model
def test_typed_ahead_characters_are_answered_from_the_drafts_and_continued_when_idle(default_model):
    from draftline.completion.guides import make_trim

    eng = engine(default_model, latency_budget_ms=1)  # first line only: the rest is left for idle time
    doc, text = "file:///a.py", BODY
    res = eng.complete(doc, text, len(text), trim=make_trim("python"))
    first = res.drafts[0].text
    assert res.ahead_pending and first.strip()
    # typing what the draft says: its rest, without the model
    typed = text + first[:3]
    hit = eng.ahead.lookup(doc, typed, len(typed))
    assert hit is not None and hit[0][0] == first[3:]
    # a character the drafts did not predict: nothing
    assert eng.ahead.lookup(doc, text + "\x01", len(text) + 1) is None
    # idle time: the drafts are continued past their first line; after Enter and the
    # editor's auto-indent, the next line is known too
    assert eng.continue_ahead(doc) >= 1
    kept = eng.ahead.lookup(doc, text, len(text))[0][0]  # the first draft as it is known now
    assert kept.startswith(first + "\n")
    line2 = kept[len(first) + 1:].split("\n")[0]
    indent = line2[: len(line2) - len(line2.lstrip())]
    after = text + first + "\n" + indent  # Enter, and the line's indentation
    nxt = eng.ahead.lookup(doc, after, len(after))
    assert nxt is not None and nxt[0][0] == line2.lstrip()
    ref = engine(default_model, latency_budget_ms=0, ahead=False).complete(
        "file:///ref.py", text, len(text), trim=make_trim("python"))
    if "\n" in ref.drafts[0].text:  # what the whole request would have said next
        second = ref.drafts[0].text.split("\n")[1]
        assert nxt[0][0].split("\n")[0] == second.lstrip()
    # the cache was never touched by the continuation: still the request's prompt
    pr = eng.prompt_for(doc, text, len(text))
    assert eng.cache_of(doc).tokens == pr.tokens[:-1]


@pytest.mark.real_model
def test_an_answer_kept_for_a_place_is_reverified_after_an_edit_elsewhere(default_model):
    """An edit far above the cursor, then the same request: the kept answer is checked in
    one tree forward instead of decoded again; when it is kept, it says what decoding says
    (and when the edit changed what the model would write, it is decoded again)."""
    from draftline.completion.guides import make_trim

    text, edits = _textwrap_and_far_edits()
    reused_any = 0
    for edited in edits:
        outs = []
        for ahead in (True, False):
            eng = engine(default_model, ahead=ahead, latency_budget_ms=0)
            eng.complete("file:///r.py", text, len(text), trim=make_trim("python"))
            outs.append(eng.complete("file:///r.py", edited, len(edited), trim=make_trim("python")))
        kept, decoded = outs
        assert not decoded.tokens["reused"]
        if kept.tokens["reused"]:
            reused_any += 1
            assert kept.tokens["steps"] == 1 < decoded.tokens["steps"]
        assert kept.drafts[0].text == decoded.drafts[0].text
    assert reused_any >= 1


@pytest.mark.real_model
def test_a_short_window_answer_is_answered_again_once_the_window_grew_back(default_model):
    """A cold open is answered from a short window; once idle time has grown the window back,
    `reanswer` answers that place again from the whole window (once), and an edit far above
    the cursor is then answered by re-verifying that answer instead of decoding: what decoding
    would say, in one tree forward.  Without the re-answer the short window's answer is
    checked instead, and holds only where the whole window did not change it."""
    from draftline.completion.guides import make_trim

    text, edits = _textwrap_and_far_edits()
    trim = make_trim("python")
    reused = {True: 0, False: 0}
    for edited in edits:
        outs = {}
        for again in (True, False):
            # a budget (so a cold request gets a short window) that never runs out here
            eng = engine(default_model, request_cap=256, latency_budget_ms=600_000)
            first = eng.complete("file:///o.py", text, len(text), trim=trim)
            assert first.short_window
            while eng.prepare("file:///o.py", text, len(text)).more:  # idle time: the whole window
                pass
            eng.refresh("file:///o.py")
            if again:
                res = eng.reanswer("file:///o.py", text, len(text))
                assert res is not None and not res.short_window
                assert res.tokens["prompt"] == len(eng.prompt_for("file:///o.py", text, len(text)).tokens)
                assert eng.reanswer("file:///o.py", text, len(text)) is None  # once
                eng.continue_ahead("file:///o.py")  # as the server does next: still re-verifiable
            outs[again] = eng.complete("file:///o.py", edited, len(edited), trim=trim)
        for again, got in outs.items():
            reused[again] += got.tokens["reused"]
        assert outs[True].drafts[0].text == outs[False].drafts[0].text  # checked, or decoded: the same
    assert reused[True] >= max(1, reused[False]), reused  # where the edit changed the answer, it is decoded


def test_a_continuation_stopped_mid_way_is_kept_only_as_far_as_it_parses(tiny, monkeypatch):
    """The idle-time continuation stops at its token limit wherever it is: one continued
    docstring ended at one quote of its closing three (the replay's only junk, 2026-12-05
    05:37, indent and typing kinds).  Its text is kept only as far as it parses."""
    import draftline.completion.engine as E
    from draftline.analysis.trim import adds_parse_errors
    from draftline.completion.ahead import Entry, Pending
    from draftline.completion.drafts import Draft
    from draftline.completion.guides import make_trim

    tok = tiny.tokenizer
    prefix, suffix = "def hkn_harary_graph(k, n, create_using=None):\n    ", ""
    shown = 'r"""Return the Harary graph.'
    full = shown + '\n\n    References\n    ----------\n    .. [1] F. T. Boesch,\n       "'
    eng = engine(tiny, k=1, max_tokens=2)
    eng.complete("file:///h.py", prefix, len(prefix))  # (a cache for the document)
    ids = tok.encode(shown)
    entry = Entry(prefix, suffix, (shown,), (0,), raw=(tuple(ids),), natural=(False,))
    eng.ahead.put("file:///h.py", entry, Pending(entry, [0], [Draft(tokens=ids, text=shown)], "",
                                                 make_trim("python"), [True]))
    monkeypatch.setattr(E, "continue_drafts", lambda *a: [Draft(tokens=tok.encode(full), text=full)])
    assert eng.continue_ahead("file:///h.py") == 1
    text = eng.ahead.entries("file:///h.py")[0].texts[0]
    assert text.startswith(shown + "\n") and text.rstrip().endswith("Boesch,"), text
    assert not adds_parse_errors("python", prefix, text, suffix, open_ok=True)


def test_no_reanswer_where_nothing_was_asked_or_the_window_is_short(tiny):
    eng = engine(tiny, k=1, max_tokens=2, request_cap=96)
    src = stdlib_source("textwrap.py")[:6000]
    assert eng.reanswer("file:///n.py", src, len(src)) is None  # unknown document
    eng.complete("file:///n.py", src, len(src))  # a short window
    assert eng.reanswer("file:///n.py", src, len(src)) is None  # not whole yet: nothing to do
    with ForwardCounter(tiny.net, trigger=2) as fc, pytest.raises(Cancelled):
        eng.prepare("file:///n.py", src, len(src), fc.cancel)  # a request came mid-way: nothing changed
    assert eng.reanswer("file:///n.py", src, len(src)) is None
    while eng.prepare("file:///n.py", src, len(src)).more:
        pass
    other = src.rindex("\n", 0, len(src) - 3000)
    assert eng.reanswer("file:///n.py", src, other) is None  # a place nobody asked about
    assert eng.reanswer("file:///n.py", src, len(src)) is not None


@pytest.mark.real_model
def test_an_answer_its_deadline_cut_after_one_line_is_reverified_with_time_left(default_model):
    """A kept answer stopped after its first line by its own request's deadline (its raw
    tokens run a little into the next line) is re-verified by a request that has time left:
    the check ends each draft at its first complete line, as that deadline did."""
    from draftline.completion.guides import make_trim

    src = stdlib_source("textwrap.py")
    # the middle of a method body: with time left the rule goes on past the first line
    text = src[:src.index("        self.width = width")]
    at = text.index("class TextWrapper:")
    edited = text[:at] + "\n" + text[at:]
    trim = make_trim("python")
    # the deadline passes at once (and the window these figures came from: 640 tokens)
    eng = engine(default_model, latency_budget_ms=1, request_cap=640)
    first = eng.complete("file:///d.py", text, len(text), trim=trim)
    e = eng.ahead._by_doc["file:///d.py"][0]
    assert first.drafts and e.natural[0]
    # what the deadline cut: the raw anchor with the start of the next line (as the replay's were)
    raw0 = tuple(e.raw[0]) + tuple(eng.tok.encode("self._x"))
    said = eng.tok.decode(list(raw0))
    assert first.drafts[0].text + "\n" in said and said.endswith("self._x"), said
    eng.ahead.put("file:///d.py", dataclasses.replace(e, raw=(raw0,) + e.raw[1:]))
    eng.config.latency_budget_ms = 600_000  # now a request with all the time it wants
    got = eng.complete("file:///d.py", edited, len(edited), trim=trim)
    assert got.tokens["reused"], got.tokens
    assert got.drafts[0].text == first.drafts[0].text


def test_an_answer_from_the_stale_cache_is_answered_again_after_the_exact_refresh(tiny):
    """An edit far above leaves stale keys behind it (PIE); an answer decoded on them is
    answered again once the exact refresh has run, once."""
    eng = engine(tiny, k=1, max_tokens=2, request_cap=96)
    src = stdlib_source("textwrap.py")[:6000]
    eng.complete("file:///s.py", src, len(src))  # a short window
    while eng.prepare("file:///s.py", src, len(src)).more:
        pass
    assert eng.reanswer("file:///s.py", src, len(src)) is not None  # the whole window, exact
    at = src.index("class TextWrapper")
    edited = src[:at] + "# a comment the user added\n" + src[at:]
    res = eng.complete("file:///s.py", edited, len(edited))
    assert res.tokens["stale"] > 0
    assert eng.reanswer("file:///s.py", edited, len(edited)) is None  # nothing new to say yet
    assert eng.refresh("file:///s.py") > 0 and eng.cache_of("file:///s.py").stale == 0
    assert eng.reanswer("file:///s.py", edited, len(edited)) is not None  # exact now: answered again
    assert eng.reanswer("file:///s.py", edited, len(edited)) is None  # once


def test_a_reverified_answer_feeds_each_shared_prefix_once(tiny, monkeypatch):
    """`reverify` feeds the kept drafts as a token trie: a prefix two drafts share is one row,
    the last token of each draft no row at all (it only says what follows it), and every
    draft gets the log-probabilities it gets checked as a branch of its own."""
    import math

    from draftline.completion.ahead import Entry, reverify
    from draftline.completion.decode import decode
    from draftline.completion.drafts import DecodeSpec, DecodeStats
    from draftline.completion.kvcache import DocCache

    tok = tiny.tokenizer
    prompt = list(range(1000, 1120))
    cache = DocCache(tiny.net)
    cache.sync(prompt[:-1], mode="full")
    spec = DecodeSpec(k=1, max_tokens=6, method="greedy")
    greedy = decode(cache, prompt, tok, spec)[0][0].tokens  # the anchor: what greedy decoding writes
    assert len(greedy) == 6
    alt = greedy[:3] + [(greedy[3] + 1) % 4000 + 500, 777, 778]  # leaves the anchor after 3 tokens

    def check(raw):
        rows: list[int] = []
        real = tiny.net.forward

        def fwd(x, *a, **kw):
            rows.append(x.shape[0])
            return real(x, *a, **kw)

        tiny.net.forward = fwd
        try:
            e = Entry("", "", ("",) * len(raw), (0,) * len(raw), raw=tuple(map(tuple, raw)), natural=(True,) * len(raw))
            out = reverify(cache, prompt, e, tok, spec, None, DecodeStats())
        finally:
            del tiny.net.forward
        return out, rows

    both, rows = check([greedy, alt])
    # the prompt's last token, the anchor's first 5, the alternative's 3 after the shared 3
    assert rows == [1 + 5 + 2]
    assert both is not None and both[0].tokens == greedy
    alone, rows1 = check([greedy])
    assert rows1 == [1 + 5]
    assert math.isclose(both[0].logprob, alone[0].logprob, abs_tol=1e-4)
    # the alternative as one causal sequence after the prompt: its exact log-probabilities,
    # which the check gives it (a random model finds it unlikely: not dropped for this)
    from draftline.completion import superposed

    monkeypatch.setattr(superposed, "VERIFY_MIN_P", 1e-30)
    both, _ = check([greedy, alt])
    ref = DocCache(tiny.net)
    ref.reserve(len(prompt) + len(alt))
    seq = prompt + alt
    z = tiny.net.forward(torch.tensor(seq), torch.arange(len(seq)), ref.k, ref.v, 0, logits_rows=slice(None))
    lps = [float(torch.log_softmax(z[len(prompt) - 1 + j], -1)[t]) for j, t in enumerate(alt)]
    assert len(both) == 2 and both[1].tokens == alt
    assert math.isclose(both[1].logprob, sum(lps), abs_tol=1e-3)
