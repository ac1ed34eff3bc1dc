"""Position conversion in one place: LSP (line, character) <-> Python str index <-> UTF-8 bytes.

Why one module: the LSP speaks UTF-16 code units by default, Python indexes code points,
tree-sitter indexes UTF-8 bytes, and every off-by-one between them silently corrupts an edit
(docs/reliability.md, P6).  Every conversion in the server goes through here: the document
store's edits (`lsp_offset`), the positions of answers (`position_at`), and the byte offsets
the tree-sitter analyses need (`byte_offset`, `LineIndex.byte_offset`).

Line breaks are the LSP's only: ``\\r\\n``, ``\\r`` and ``\\n``.  ``str.splitlines`` is never
used, because it also splits on U+2028, U+0085, form feed and friends, which editors do not.

Out-of-range positions raise :class:`PositionError` (a ``ValueError``); clamping is the
caller's decision (the LSP spec says "default back to the line length", a test may not);
`lsp_offset` is that decision for positions an editor sends.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field

__all__ = [
    "PositionError",
    "ENCODINGS",
    "line_starts",
    "LineIndex",
    "offset_at",
    "position_at",
    "byte_offset",
    "str_offset",
    "units_in",
    "index_for_units",
    "lsp_offset",
]

ENCODINGS = ("utf-16", "utf-8", "utf-32")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class PositionError(ValueError):
    """A position or offset outside the text (or inside a character / line terminator)."""


def _norm_encoding(encoding: str) -> str:
    enc = encoding.lower().replace("_", "-")
    if enc in ("utf16", "utf-16"):
        return "utf-16"
    if enc in ("utf8", "utf-8"):
        return "utf-8"
    if enc in ("utf32", "utf-32"):
        return "utf-32"
    raise ValueError(f"unknown position encoding {encoding!r}")


def line_starts(text: str) -> list[int]:
    """Str index of the start of every line (the first is 0; a trailing break opens a last empty line)."""
    starts = [0]
    starts.extend(m.end() for m in _LINE_BREAK.finditer(text))
    return starts


def units_in(segment: str, encoding: str = "utf-16") -> int:
    """Length of ``segment`` in the code units of ``encoding``."""
    enc = _norm_encoding(encoding)
    if enc == "utf-32" or segment.isascii():
        return len(segment)
    if enc == "utf-8":
        return len(segment.encode("utf-8", "surrogatepass"))
    # UTF-16: one unit per BMP code point, two per astral code point.
    return len(segment) + sum(1 for ch in segment if ord(ch) > 0xFFFF)


def index_for_units(segment: str, units: int, encoding: str = "utf-16") -> int:
    """Str index inside ``segment`` that lies ``units`` code units from its start.

    Raises PositionError when ``units`` is negative, past the end, or splits a character.
    """
    enc = _norm_encoding(encoding)
    if units < 0:
        raise PositionError(f"negative character {units}")
    if enc == "utf-32" or segment.isascii():
        if units > len(segment):
            raise PositionError(f"character {units} past line length {len(segment)}")
        return units
    count = 0
    for i, ch in enumerate(segment):
        if count == units:
            return i
        o = ord(ch)
        if enc == "utf-16":
            count += 2 if o > 0xFFFF else 1
        else:
            count += 1 if o < 0x80 else 2 if o < 0x800 else 3 if o < 0x10000 else 4
        if count > units:
            raise PositionError(f"character {units} splits a code point")
    if count == units:
        return len(segment)
    raise PositionError(f"character {units} past line length {count}")


@dataclass
class LineIndex:
    """Line starts of one text, precomputed once so conversions are O(line length).

    The LSP document store keeps one per document version; it is cheap to rebuild (a regex pass).
    """

    text: str
    starts: list[int] = field(default_factory=list)
    _byte_starts: list[int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.starts:
            self.starts = line_starts(self.text)

    @property
    def line_count(self) -> int:
        return len(self.starts)

    def line_end(self, line: int) -> int:
        """Str index of the end of ``line``'s content (before its terminator)."""
        if line + 1 < len(self.starts):
            end = self.starts[line + 1]
            # Strip the terminator that opened the next line.
            if self.text[end - 1] == "\n":
                end -= 1
                if end > self.starts[line] and self.text[end - 1] == "\r":
                    end -= 1
            else:  # a lone "\r"
                end -= 1
            return end
        return len(self.text)

    def line_text(self, line: int) -> str:
        self._check_line(line)
        return self.text[self.starts[line] : self.line_end(line)]

    def _check_line(self, line: int) -> None:
        if not 0 <= line < len(self.starts):
            raise PositionError(f"line {line} outside 0..{len(self.starts) - 1}")

    def offset_at(self, line: int, character: int, encoding: str = "utf-16") -> int:
        """Str index of an LSP position."""
        self._check_line(line)
        start = self.starts[line]
        content = self.text[start : self.line_end(line)]
        return start + index_for_units(content, character, encoding)

    def position_at(self, offset: int, encoding: str = "utf-16") -> tuple[int, int]:
        """LSP (line, character) of a str index; an index inside ``\\r\\n`` raises."""
        if not 0 <= offset <= len(self.text):
            raise PositionError(f"offset {offset} outside 0..{len(self.text)}")
        line = bisect_right(self.starts, offset) - 1
        end = self.line_end(line)
        if offset > end:
            raise PositionError(f"offset {offset} inside a line terminator")
        return line, units_in(self.text[self.starts[line] : offset], encoding)

    # --- UTF-8 bytes (tree-sitter) -------------------------------------------------------
    def _bytes_starts(self) -> list[int]:
        if self._byte_starts is None:
            acc = 0
            out = []
            prev = 0
            for s in self.starts:
                acc += units_in(self.text[prev:s], "utf-8")
                out.append(acc)
                prev = s
            self._byte_starts = out
        return self._byte_starts

    def byte_offset(self, offset: int) -> int:
        """UTF-8 byte offset of a str index."""
        if not 0 <= offset <= len(self.text):
            raise PositionError(f"offset {offset} outside 0..{len(self.text)}")
        line = bisect_right(self.starts, offset) - 1
        return self._bytes_starts()[line] + units_in(self.text[self.starts[line] : offset], "utf-8")

    def str_offset(self, byte: int) -> int:
        """Str index of a UTF-8 byte offset (raises inside a multi-byte character)."""
        bstarts = self._bytes_starts()
        total = bstarts[-1] + units_in(self.text[self.starts[-1] :], "utf-8")
        if not 0 <= byte <= total:
            raise PositionError(f"byte {byte} outside 0..{total}")
        line = bisect_right(bstarts, byte) - 1
        start = self.starts[line]
        seg_end = self.starts[line + 1] if line + 1 < len(self.starts) else len(self.text)
        return start + index_for_units(self.text[start:seg_end], byte - bstarts[line], "utf-8")


def offset_at(text: str, line: int, character: int, encoding: str = "utf-16", *, starts: list[int] | None = None) -> int:
    """Str index of LSP position (line, character); raises PositionError when out of range."""
    return LineIndex(text, starts or line_starts(text)).offset_at(line, character, encoding)


def position_at(text: str, offset: int, encoding: str = "utf-16", *, starts: list[int] | None = None) -> tuple[int, int]:
    """LSP (line, character) of str index ``offset``; raises PositionError when out of range."""
    return LineIndex(text, starts or line_starts(text)).position_at(offset, encoding)


def byte_offset(text: str, offset: int) -> int:
    """UTF-8 byte offset of str index ``offset`` (one-off; use LineIndex for many)."""
    if not 0 <= offset <= len(text):
        raise PositionError(f"offset {offset} outside 0..{len(text)}")
    return units_in(text[:offset], "utf-8")


def str_offset(text: str, byte: int) -> int:
    """Str index of UTF-8 byte offset ``byte`` (one-off; use LineIndex for many)."""
    return index_for_units(text, byte, "utf-8")


def lsp_offset(text: str, line: int, character: int, encoding: str = "utf-16",
               index: LineIndex | None = None) -> int:
    """Str offset of an LSP position. A character past the end of its line means the line
    end (the spec's rule); a negative value or a line past the last one is an error."""
    if line < 0 or character < 0:
        raise PositionError(f"negative position {line}:{character}")
    idx = index or LineIndex(text)
    if line >= idx.line_count:
        raise PositionError(f"line {line} outside 0..{idx.line_count - 1}")
    start, end = idx.starts[line], idx.line_end(line)
    content = text[start:end]
    try:
        return start + index_for_units(content, character, encoding)
    except PositionError:
        if units_in(content, encoding) < character:
            return end
        raise  # inside a surrogate pair / multi-byte character
