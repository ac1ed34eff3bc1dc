"""Position conversion: UTF-16/UTF-8/UTF-32 <-> str index, LSP line breaks only."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from draftline.analysis.positions import (
    LineIndex,
    PositionError,
    byte_offset,
    line_starts,
    offset_at,
    position_at,
    str_offset,
)

# Text with every kind of trouble: astral characters, CJK, combining marks, CR/LF mixes,
# and characters str.splitlines would wrongly treat as line breaks.
_ALPHABET = st.sampled_from(list("ab \t") + ["\n", "\r", "\r\n", "\u2028", "\x0c", "\x85", "é", "中", "😀", "\U00010348", "e\u0301"])
texts = st.lists(_ALPHABET, max_size=40).map("".join)


def _ref_lines(text: str) -> list[str]:
    """Reference line split: LSP breaks only."""
    out, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\r" and text[i + 1 : i + 2] == "\n":
            out.append("".join(cur)); cur = []; i += 2; continue
        if ch in "\r\n":
            out.append("".join(cur)); cur = []; i += 1; continue
        cur.append(ch); i += 1
    out.append("".join(cur))
    return out


def _utf16_units(s: str) -> int:
    return len(s.encode("utf-16-le", "surrogatepass")) // 2


@settings(max_examples=300, deadline=None)
@given(texts)
def test_offset_position_roundtrip_against_utf16_encoding(text):
    lines = _ref_lines(text)
    idx = LineIndex(text)
    assert idx.line_count == len(lines)
    base = 0
    for ln, line in enumerate(lines):
        for col in range(len(line) + 1):
            units = _utf16_units(line[:col])
            off = idx.offset_at(ln, units, "utf-16")
            assert text[off - col : off] == line[:col]
            assert idx.position_at(off, "utf-16") == (ln, units)
            assert idx.offset_at(ln, len(line[:col].encode("utf-8")), "utf-8") == off
            assert idx.offset_at(ln, col, "utf-32") == off
            assert idx.byte_offset(off) == len(text[:off].encode("utf-8"))
            assert idx.str_offset(len(text[:off].encode("utf-8"))) == off
        # one past the end of the line is out of range
        with pytest.raises(PositionError):
            idx.offset_at(ln, _utf16_units(line) + 1, "utf-16")
        base += len(line)


@settings(max_examples=200, deadline=None)
@given(texts)
def test_splitting_an_astral_character_is_an_error(text):
    idx = LineIndex(text)
    for ln in range(idx.line_count):
        line = idx.line_text(ln)
        units = 0
        for ch in line:
            if ord(ch) > 0xFFFF:
                with pytest.raises(PositionError):
                    idx.offset_at(ln, units + 1, "utf-16")
            units += _utf16_units(ch)


def test_only_lsp_line_breaks():
    text = "a\u2028b\x0cc\x85d\r\ne\rf\ng"
    assert line_starts(text) == [0, 9, 11, 13]
    assert offset_at(text, 1, 0) == text.index("e")
    assert position_at(text, text.index("d")) == (0, 6)
    # str.splitlines would have produced 7 lines
    assert len(text.splitlines()) == 7


def test_out_of_range_raises_position_error_which_is_a_value_error():
    text = "ab\ncd"
    for line, ch in [(-1, 0), (2, 0), (0, 3), (0, -1), (1, 3)]:
        with pytest.raises(PositionError):
            offset_at(text, line, ch)
    with pytest.raises(ValueError):
        position_at(text, 6)
    with pytest.raises(PositionError):
        position_at("a\r\nb", 2)  # between \r and \n
    assert offset_at(text, 1, 2) == 5
    assert position_at(text, 5) == (1, 2)


def test_unknown_encoding_rejected():
    with pytest.raises(ValueError):
        offset_at("x", 0, 0, "latin-1")


def test_byte_helpers():
    text = "é😀x"
    assert byte_offset(text, 2) == 6
    assert str_offset(text, 6) == 2
    with pytest.raises(PositionError):
        str_offset(text, 1)  # inside é


def test_line_index_on_10k_lines_agrees_with_a_reference():
    """A big document (10k lines, astral characters on each): every 7th line's conversions
    agree with a slow reference computed from the line list."""
    text = "".join(f"line {i} = 'é😀' + value_{i}\n" for i in range(10_000))
    lines = text.split("\n")
    starts, bstarts, off, boff = [], [], 0, 0
    for line in lines:
        starts.append(off)
        bstarts.append(boff)
        off += len(line) + 1
        boff += len(line.encode("utf-8")) + 1
    idx = LineIndex(text)
    assert idx.line_count == len(lines) == 10_001
    for ln in range(0, 10_000, 7):
        line = lines[ln]
        col = next(c for c in range(len(line) + 1) if _utf16_units(line[:c]) == 20)
        want = starts[ln] + col
        want_byte = bstarts[ln] + len(line[:col].encode("utf-8"))
        off = idx.offset_at(ln, 20)
        assert off == want, ln
        assert idx.position_at(off) == (ln, 20)
        assert idx.byte_offset(off) == want_byte
        assert idx.str_offset(want_byte) == off
        assert idx.offset_at(ln, col, "utf-32") == off
        assert idx.position_at(off, "utf-8") == (ln, len(line[:col].encode("utf-8")))
