"""A short window's header of the file's own lines from above it (`completion.far`): picked
by similarity to the cursor's lines, within its budget, put first while the window is short
and dropped once idle time has grown the window back."""

from __future__ import annotations

import time

import pytest
from conftest import engine_without_clock, stdlib_source

DOC = "file:///far.py"


def sibling_tests(n_filler: int = 40) -> tuple[str, str]:
    """A test module whose last test repeats a line only a sibling far above has; the text up
    to that line, and the line."""
    head = ("import math\n\n\nclass TestRank:\n    def test_empty(self):\n"
            "        e = spectral_rank_score(empty_graph(), 0.1)\n        assert e == {}\n\n")
    filler = "".join(f"    def test_case_{i}(self):\n        value = compute_{i % 7}(seed={i})\n"
                     f"        assert value.size == {i * 3}\n        assert value.name == 'case {i}'\n\n"
                     for i in range(n_filler))
    tail = "\nclass TestRankWeighted:\n" + "".join(
        f"    def test_weighted_{i}(self):\n        e = spectral_rank_score(make_graph(weighted=True), 0.{i})\n"
        f"        assert e[{i}] == {i}\n\n" for i in range(1, 7)) + "    def test_empty(self):\n"
    return head + filler + tail, "        e = spectral_rank_score(empty_graph(), 0.1)"


def test_the_header_holds_the_lines_most_like_the_cursors_within_its_budget(default_tokenizer):
    from draftline.completion.far import far_header

    text, line = sibling_tests()
    at = text.index("class TestRankWeighted")
    above, window = text[:at], text[at:]
    h = far_header(above, window, text, default_tokenizer, 128)
    assert line in h
    assert len(default_tokenizer.encode(h)) <= 128 + 8
    assert "# ----" not in h  # no marker lines: drafts copied them
    assert far_header(above, window, text, default_tokenizer, 0) == ""
    assert far_header("\n\n", window, text, default_tokenizer, 128) == ""
    # two siblings like the cursor's lines: both, in the file's order
    second = "\nclass TestRankSmall:\n    def test_empty(self):\n        e = spectral_rank_score(empty_graph(3), 0.4)\n"
    cut = above.index("    def test_case_20(")
    above2 = above[:cut] + second + above[cut:]
    big = far_header(above2, window, above2 + window, default_tokenizer, 512)
    assert line in big and "empty_graph(3), 0.4)" in big
    assert big.index(line) < big.index("empty_graph(3), 0.4)")


def test_the_header_search_is_bounded_in_a_huge_text(default_tokenizer):
    from draftline.completion.far import FAR_MAX_CHARS, far_header

    text, line = sibling_tests(4000)  # ~600 KB of tests above the window
    at = text.index("class TestRankWeighted")
    near = line.replace("0.1", "0.3")  # a sibling within the searched text
    text = text[:at - 2000] + f"\nclass TestRankNear:\n    def test_empty(self):\n{near}\n\n" + text[at - 2000:]
    at = text.index("class TestRankWeighted")
    t = time.perf_counter()
    h = far_header(text[:at], text[at:], text, default_tokenizer, 256)
    took = time.perf_counter() - t
    assert near in h and line not in h  # the first sibling is 600 KB up: not searched
    assert all(chunk in text[at - FAR_MAX_CHARS:at] for chunk in h.strip("\n").split("\n\n"))
    print(f"far_header over {FAR_MAX_CHARS} of {at} chars: {took * 1000:.1f} ms")


def engine(lm, **kw):
    return engine_without_clock(lm, **{"k": 1, "max_tokens": 2, "request_cap": 96, **kw})


def test_a_short_window_reads_the_header_until_idle_time_has_the_whole_window(tiny):
    src = stdlib_source("textwrap.py")[:9000]
    eng = engine(tiny, far_tokens=160, request_cap=320)
    res = eng.complete(DOC, src, len(src))
    header = eng.header_ids(DOC, None)
    assert res.short_window and header
    cache = eng.cache_of(DOC)
    assert cache.tokens[:len(header)] == header
    assert res.tokens["computed"] <= 320 + len(header) + 2  # the cap is the window's
    above = src[:src.index(eng.tok.decode(cache.tokens[len(header):len(header) + 8]))]
    assert all(ln in above for ln in eng.tok.decode(header).split("\n") if ln.strip())  # lines from above the window
    # a keystroke keeps it (a request never pays for a header change)
    typed = src + "x"
    assert eng.complete(DOC, typed, len(typed)).tokens["computed"] <= 8
    assert eng.cache_of(DOC).tokens[:len(header)] == header
    while eng.prepare(DOC, typed, len(typed)).more:  # idle time: the whole window, the header dropped
        pass
    assert eng.header_ids(DOC, None) == []
    ref = engine(tiny, latency_budget_ms=0)  # no budget: the whole window at once, no header
    assert eng.cache_of(DOC).tokens == ref.prompt_for(DOC, typed, len(typed)).tokens[:-1]
    # a cap that affords the whole window: no header (it would only push window text out)
    whole = engine(tiny, far_tokens=160, request_cap=4096)
    assert not whole.complete(DOC, src, len(src)).short_window and whole.header_ids(DOC, None) == []
    # off: the short window alone
    off = engine(tiny, far_tokens=0, request_cap=320)
    off.complete(DOC, src, len(src))
    assert off.header_ids(DOC, None) == [] and off.cache_of(DOC).tokens[0] != header[0]


@pytest.mark.real_model
def test_the_real_model_copies_a_line_only_the_header_shows(default_model):
    """The first answer after opening reads a short window; the line the cursor wants is in a
    sibling test far above it, which the header brings in (replay, 2026-12-05, 48 files: the first
    request after opening 0.537 edit similarity with the header vs 0.491 without)."""
    text, line = sibling_tests()
    eng = engine(default_model, k=3, max_tokens=24, request_cap=256, latency_budget_ms=600_000)
    res = eng.complete(DOC, text, len(text))
    assert res.short_window
    header = eng.header_ids(DOC, None)
    assert line in eng.tok.decode(header)
    assert line not in eng.tok.decode(eng.cache_of(DOC).tokens[len(header):])  # not in the window
    # the window says `make_graph(weighted=True)` six times; only the header `empty_graph()`
    assert res.drafts and "empty_graph()" in res.drafts[0].text.split("\n")[0]
    off = engine(default_model, k=3, max_tokens=24, request_cap=256, latency_budget_ms=600_000, far_tokens=0)
    assert not any("empty_graph" in d.text for d in off.complete(DOC, text, len(text)).drafts)
