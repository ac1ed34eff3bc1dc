"""Open documents: text, version, language; incremental edits in the negotiated encoding.

Our own store instead of pygls' workspace: only documents the editor opened exist (nothing
is read from disk), line breaks are LSP's (`\\r\\n`, `\\r`, `\\n`; never U+2028 or form
feed), and a change for an unknown URI or with an out-of-range position is reported and
ignored without touching the stored text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from draftline.analysis.positions import LineIndex, PositionError, lsp_offset, position_at

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
    touched: int = 0  # when it was last opened, edited or asked for (Documents.touch)
    binary: bool = field(default=False)

    def offset(self, line: int, character: int, encoding: str = "utf-16") -> int:
        return lsp_offset(self.text, line, character, encoding)

    def position(self, offset: int, encoding: str = "utf-16") -> tuple[int, int]:
        return position_at(self.text, offset, encoding)


def looks_binary(text: str) -> bool:
    """NUL bytes in the first 8 KB: a binary file the editor opened; never completed."""
    return "\x00" in text[:8192]


class Documents:
    """URI -> Document for opened documents only."""

    def __init__(self) -> None:
        self.docs: dict[str, Document] = {}
        self._clock = 0

    def __contains__(self, uri: str) -> bool:
        return uri in self.docs

    def get(self, uri: str) -> Document:
        d = self.docs.get(uri)
        if d is None:
            raise DocumentError(f"document {uri} is not open")
        return d

    def touch(self, d: Document) -> None:
        self._clock += 1
        d.touched = self._clock

    def recent(self, language: str, besides: str, count: int, max_chars: int) -> dict[str, str]:
        """The texts of up to `count` other open documents of `language`, the most recently
        touched first, `max_chars` in all: what a request's analysis may read of them (a
        snapshot pins those texts until its job is done: a burst of edits over 50 open
        documents of 100 KB, with every request pinning all of them, grew the server by
        ~200 MB; the same-language ones last touched are what jedi's overlay needs)."""
        out: dict[str, str] = {}
        total = 0
        for d in sorted(self.docs.values(), key=lambda d: -d.touched):
            if len(out) >= count:
                break
            if d.uri == besides or d.binary or d.language_id != language or total + len(d.text) > max_chars:
                continue
            out[d.uri] = d.text
            total += len(d.text)
        return out

    def open(self, uri: str, text: str, version: int, language_id: str = "") -> Document:
        d = Document(uri, text, version, language_id, binary=looks_binary(text))
        self.docs[uri] = d
        self.touch(d)
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
        self.touch(d)
        d.binary = looks_binary(text)
        return d
