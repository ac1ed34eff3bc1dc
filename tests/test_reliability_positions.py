"""P6: positions are exact in UTF-16 (the default) and in UTF-8 / UTF-32 when the client
offers them in general.positionEncodings; line breaks are LSP's only. Checked against a
reference built on str.encode, independent of analysis/positions.py."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from draftline.analysis.positions import PositionError
from draftline.analysis.positions import lsp_offset
from draftline.lsp.documents import Documents
from support.clients import RawServer

LINE_BREAK = re.compile(r"\r\n|\r|\n")
CODECS = {"utf-16": ("utf-16-le", 2), "utf-8": ("utf-8", 1), "utf-32": ("utf-32-le", 4)}
ALPHABET = st.sampled_from(["a", "Z", " ", "é", "€", "ß", "😀", "𝔘", "\U0010fffd", "\r\n", "\n", "\r", "\u2028",
                            "\u0085", "\x0c", "\x0b", "\t", "\x00", "\ud800", "\u202e", "中"])
TEXT = st.lists(ALPHABET, max_size=40).map("".join)


def units(s: str, enc: str) -> int:
    codec, width = CODECS[enc]
    return len(s.encode(codec, "surrogatepass")) // width


def ref_lines(text: str) -> list[tuple[int, int]]:
    """(start, end-of-content) of every line, breaking on \\r\\n, \\r, \\n only."""
    out, s = [], 0
    for m in LINE_BREAK.finditer(text):
        out.append((s, m.start()))
        s = m.end()
    out.append((s, len(text)))
    return out


def ref_position(text: str, offset: int, enc: str) -> tuple[int, int]:
    for i, (s, e) in enumerate(ref_lines(text)):
        if s <= offset <= e:
            return i, units(text[s:offset], enc)
    raise ValueError("inside a line break")


@settings(max_examples=300, deadline=None)
@given(text=TEXT, data=st.data(), enc=st.sampled_from(sorted(CODECS)))
def test_offset_position_roundtrip_matches_encode(text, data, enc):
    from draftline.analysis.positions import position_at

    offset = data.draw(st.integers(0, len(text)))
    try:
        expect = ref_position(text, offset, enc)
    except ValueError:  # between \r and \n: not a position
        with pytest.raises(PositionError):
            position_at(text, offset, enc)
        return
    assert position_at(text, offset, enc) == expect
    assert lsp_offset(text, *expect, enc) == offset


@settings(max_examples=300, deadline=None)
@given(text=TEXT, line=st.integers(0, 12), ch=st.integers(0, 60), enc=st.sampled_from(sorted(CODECS)))
def test_lsp_offset_clamps_past_the_end_and_rejects_splits(text, line, ch, enc):
    lines = ref_lines(text)
    if line >= len(lines):
        with pytest.raises(PositionError):
            lsp_offset(text, line, ch, enc)
        return
    s, e = lines[line]
    # the str index whose prefix has exactly `ch` units, if any
    hits = [i for i in range(s, e + 1) if units(text[s:i], enc) == ch]
    if hits:
        assert lsp_offset(text, line, ch, enc) == hits[0]
    elif ch > units(text[s:e], enc):
        assert lsp_offset(text, line, ch, enc) == e
    else:
        with pytest.raises(PositionError):  # inside a multi-unit character
            lsp_offset(text, line, ch, enc)


@settings(max_examples=200, deadline=None)
@given(text=TEXT, data=st.data(), enc=st.sampled_from(sorted(CODECS)))
def test_incremental_change_splices_exactly(text, data, enc):
    """An edit given by offsets, turned into LSP positions with the reference, lands on
    exactly those offsets in the document store."""
    a = data.draw(st.integers(0, len(text)))
    b = data.draw(st.integers(a, len(text)))
    new = data.draw(TEXT)
    try:
        start, end = ref_position(text, a, enc), ref_position(text, b, enc)
    except ValueError:
        return
    docs = Documents()
    docs.open("u", text, 1)

    class R:  # lsprotocol-like change object
        def __init__(self):
            P = type("P", (), {})
            self.range = type("Rg", (), {})()
            self.range.start, self.range.end = P(), P()
            self.range.start.line, self.range.start.character = start
            self.range.end.line, self.range.end.character = end
            self.text = new

    d = docs.change("u", 2, [R()], enc)
    assert d.text == text[:a] + new + text[b:]
    assert d.version == 2


@pytest.mark.parametrize("enc", ["utf-8", "utf-32", "utf-16"])
def test_negotiated_encoding_end_to_end(enc):
    line = "s = 'é😀中' + foo.ba"
    text = f"import foo\n{line}\n"
    caps = {"general": {"positionEncodings": [enc, "utf-16"]}}
    with RawServer("steps:1") as s:
        r = s.initialize(capabilities=caps)
        assert r["capabilities"].get("positionEncoding", "utf-16") == enc
        uri = "file:///work/enc.py"
        s.open(uri, text)
        # insert "X" right after the emoji, addressed in the negotiated units
        col = units("s = 'é😀", enc)
        s.change(uri, 2, [{"range": {"start": {"line": 1, "character": col}, "end": {"line": 1, "character": col}},
                           "text": "X"}])
        line2 = "s = 'é😀X中' + foo.ba"
        assert s.document_text(uri)["text"] == f"import foo\n{line2}\n"
        # completion items replace from the word start to the line end, in those units
        end = units(line2, enc)
        r = s.wait(s.request("textDocument/completion", {"textDocument": {"uri": uri},
                                                           "position": {"line": 1, "character": end}}))
        items = r["result"]["items"]
        assert items
        for it in items:
            rng = it["textEdit"]["range"]
            assert rng["start"] == {"line": 1, "character": end - 2}  # start of "ba"
            assert rng["end"] == {"line": 1, "character": end}
        # a position inside the emoji is rejected in UTF-8/UTF-16 (not in UTF-32: one unit)
        inside = units("s = 'é", enc) + 1
        r = s.wait(s.request("textDocument/completion", {"textDocument": {"uri": uri},
                                                           "position": {"line": 1, "character": inside}}))
        if enc == "utf-32":
            assert "result" in r
        else:
            assert r["error"]["code"] == -32602
        assert s.shutdown_and_exit() == 0


def test_request_cursor_follows_edits():
    """The last request's cursor moves with edits above it, and into the end of an edit that
    covers it; the prepare after an edit elsewhere syncs the cache for it."""
    from types import SimpleNamespace as NS

    def change(a, b, text):
        rng = NS(start=NS(line=0, character=a), end=NS(line=0, character=b))
        return NS(range=rng, text=text)

    docs = Documents()
    d = docs.open("file:///x.py", "abcdefghij", 1)
    assert d.request_cursor is None
    d.request_cursor = 8
    docs.change("file:///x.py", 2, [change(2, 2, "XYZ")])  # insertion above: shifted
    assert d.request_cursor == 11 and d.text == "abXYZcdefghij"
    docs.change("file:///x.py", 3, [change(0, 1, "")])  # deletion above
    assert d.request_cursor == 10
    docs.change("file:///x.py", 4, [change(11, 12, "!!")])  # below: unchanged
    assert d.request_cursor == 10
    docs.change("file:///x.py", 5, [change(8, 12, "-")])  # covering it: the end of the edit
    assert d.request_cursor == 9
    docs.change("file:///x.py", 6, [NS(text="new text")])  # full replacement: unknown
    assert d.request_cursor is None
