"""Open documents: text, version, language; incremental edits in the negotiated encoding.

Our own store instead of pygls' workspace: only documents the editor opened exist (nothing
is read from disk), line breaks are LSP's (`\\r\\n`, `\\r`, `\\n`; never U+2028 or form
feed), and a change for an unknown URI or with an out-of-range position is reported and
ignored without touching the stored text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from draftline.analysis.text import LineIndex, PositionError, index_for_units, position_at, units_in

log = logging.getLogger(__name__)

MAX_DOCUMENT_CHARS = 8 * 2**20  # larger documents are kept but never sent to the model


class DocumentError(ValueError):
    """A document operation that cannot be applied (unknown URI, bad range)."""


@dataclass
class Document:
    uri: str
    text: str
    version: int
    language_id: str = ""
    # (start, old_end, new_end) of the last edit, in str offsets: the likely cursor
    last_edit: tuple[int, int, int] | None = None
    # cursor of the last completion request, moved along by later edits: where the editor's
    # next request is likely to be when the edit was elsewhere (an import added at the top)
    request_cursor: int | None = None
    edits: int = 0
    binary: bool = field(default=False)

    def offset(self, line: int, character: int, encoding: str = "utf-16") -> int:
        return lsp_offset(self.text, line, character, encoding)

    def position(self, offset: int, encoding: str = "utf-16") -> tuple[int, int]:
        return position_at(self.text, offset, encoding)


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


def looks_binary(text: str) -> bool:
    """NUL bytes in the first 8 KB: a binary file the editor opened; never completed."""
    return "\x00" in text[:8192]


class Documents:
    """URI -> Document for opened documents only."""

    def __init__(self) -> None:
        self.docs: dict[str, Document] = {}

    def __contains__(self, uri: str) -> bool:
        return uri in self.docs

    def get(self, uri: str) -> Document:
        d = self.docs.get(uri)
        if d is None:
            raise DocumentError(f"document {uri} is not open")
        return d

    def open(self, uri: str, text: str, version: int, language_id: str = "") -> Document:
        d = Document(uri, text, version, language_id, binary=looks_binary(text))
        self.docs[uri] = d
        return d

    def close(self, uri: str) -> None:
        self.docs.pop(uri, None)

    def change(self, uri: str, version: int, changes: list, encoding: str = "utf-16") -> Document:
        """Apply content changes in order. All-or-nothing: if any change is invalid the
        document keeps its previous text and version, and DocumentError is raised."""
        d = self.get(uri)
        text = d.text
        last = d.last_edit
        req = d.request_cursor
        for ch in changes:
            rng = getattr(ch, "range", None)
            new = ch.text
            if rng is None:
                text = new
                last = (0, len(text), len(text))
                req = None
                continue
            try:
                idx = LineIndex(text)
                a = lsp_offset(text, rng.start.line, rng.start.character, encoding, idx)
                b = lsp_offset(text, rng.end.line, rng.end.character, encoding, idx)
            except PositionError as e:
                raise DocumentError(f"{uri}: {e}") from e
            if b < a:
                raise DocumentError(f"{uri}: range end before start")
            text = text[:a] + new + text[b:]
            last = (a, b, a + len(new))
            if req is not None:
                req = req + len(new) - (b - a) if req >= b else (a + len(new) if req > a else req)
        d.text = text
        d.version = version
        d.last_edit = last
        d.request_cursor = req
        d.edits += 1
        d.binary = looks_binary(text)
        return d
