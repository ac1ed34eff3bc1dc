"""Windowed re-tokenization equals tokenizing the whole new text."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import stdlib_source
from draftline.completion.tokens import TokenizedText

SRC = stdlib_source("textwrap.py")[:6000]
ALPHABET = st.sampled_from(list(" \n\t    ()[]:.,=_abcdefxyz0123456789'\"#é€😀\r") + ["    ", "\n    ", "def ", "return "])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 30), st.lists(ALPHABET, max_size=8).map("".join)),
                      min_size=1, max_size=5))
def test_windowed_equals_full(default_tokenizer, edits):
    tok = default_tokenizer
    tt = TokenizedText.full(tok, SRC)
    text = SRC
    for pos, dele, ins in edits:
        a = pos % (len(text) + 1)
        b = min(len(text), a + dele)
        text = text[:a] + ins + text[b:]
        n = tt.edit(tok, a, b, ins)
        assert n < len(text) or len(text) < 400  # a window, not the whole file
    full = TokenizedText.full(tok, text)
    assert tt.text == text
    assert tt.ids == full.ids
    assert tt.starts == full.starts


def test_special_tokens_stay_text(default_tokenizer):
    """P12: a literal control token in a file is encoded as characters."""
    tok = default_tokenizer
    ids = tok.encode("x = '<|endoftext|>' + '<|im_end|>'")
    assert not (set(ids) & tok.special_ids)
    assert tok.decode(ids) == "x = '<|endoftext|>' + '<|im_end|>'"
