"""tree-sitter parsers per language and one incrementally reparsed tree per document.

Why: every keystroke edits the document; reparsing with the previous tree (after
``Tree.edit``) touches only the changed region, so the tree stays current at the cost of
milliseconds.  Files above a byte budget are not parsed at all (a 4 MB file takes seconds in
tree-sitter 0.26 and it has no timeout): analysis then answers "unknown" and nothing is
masked.  Trees are walked with ``TreeCursor`` loops, never recursion (deep nesting would
overflow the Python stack).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache

from tree_sitter import Language, Node, Parser, Tree

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_PARSE_BYTES",
    "LANGUAGES",
    "language_for",
    "get_language",
    "new_parser",
    "SyntaxDocument",
    "walk",
    "has_errors",
]

DEFAULT_MAX_PARSE_BYTES = 2_000_000

#: Canonical language names this module can parse.
LANGUAGES = ("python", "javascript", "typescript", "tsx", "go", "rust", "java", "c", "cpp")

# LSP languageId -> canonical name.
_LANGUAGE_IDS = {
    "python": "python",
    "javascript": "javascript",
    "javascriptreact": "javascript",
    "jsx": "javascript",
    "typescript": "typescript",
    "typescriptreact": "tsx",
    "tsx": "tsx",
    "go": "go",
    "rust": "rust",
    "java": "java",
    "c": "c",
    "cpp": "cpp",
    "c++": "cpp",
    "cuda-cpp": "cpp",
    "objective-c": None,
}

_EXTENSIONS = {
    ".py": "python", ".pyi": "python", ".pyw": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".c++": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
    ".ipp": "cpp", ".inl": "cpp",
}


def language_for(language_id: str | None = None, path: str | None = None) -> str | None:
    """Canonical language for an LSP languageId, else for a file path's extension, else None."""
    if language_id:
        lid = language_id.lower()
        if lid in _LANGUAGE_IDS:
            return _LANGUAGE_IDS[lid]
        if lid in LANGUAGES:
            return lid
    if path:
        ext = os.path.splitext(path)[1].lower()
        return _EXTENSIONS.get(ext)
    return None


def _load_capsule(name: str):
    if name == "python":
        import tree_sitter_python as m
        return m.language()
    if name == "javascript":
        import tree_sitter_javascript as m
        return m.language()
    if name == "typescript":
        import tree_sitter_typescript as m
        return m.language_typescript()
    if name == "tsx":
        import tree_sitter_typescript as m
        return m.language_tsx()
    if name == "go":
        import tree_sitter_go as m
        return m.language()
    if name == "rust":
        import tree_sitter_rust as m
        return m.language()
    if name == "java":
        import tree_sitter_java as m
        return m.language()
    if name == "c":
        import tree_sitter_c as m
        return m.language()
    if name == "cpp":
        import tree_sitter_cpp as m
        return m.language()
    return None


@lru_cache(maxsize=None)
def get_language(name: str | None) -> Language | None:
    """The tree-sitter Language for a canonical name; None when unknown or its wheel is missing."""
    if not name:
        return None
    try:
        capsule = _load_capsule(name)
    except ImportError:
        log.warning("tree-sitter grammar for %s is not installed", name)
        return None
    return Language(capsule) if capsule is not None else None


def new_parser(name: str | None) -> Parser | None:
    """A fresh Parser (parsers hold state: one per document/thread, never shared)."""
    lang = get_language(name)
    return Parser(lang) if lang is not None else None


def walk(node: Node, descend: Callable[[Node], bool] | None = None) -> Iterator[Node]:
    """Pre-order nodes under ``node`` (itself included) with a TreeCursor: no recursion.

    ``descend(n)`` False skips ``n``'s children (``n`` itself is still yielded).
    """
    cursor = node.walk()
    while True:
        current = cursor.node
        yield current
        if (descend is None or descend(current)) and cursor.goto_first_child():
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent() or cursor.node == node:
                return
        # goto_next_sibling moved us to a sibling that may lie outside `node`'s subtree
        # only if we climbed to `node` itself, which the loop above excludes.


def has_errors(node: Node, start_byte: int = 0, end_byte: int | None = None) -> bool:
    """True when an ERROR or MISSING node overlaps [start_byte, end_byte) under ``node``."""
    if end_byte is None:
        end_byte = node.end_byte
    if not node.has_error:
        return False

    def overlaps(n: Node) -> bool:
        if n.end_byte == n.start_byte:  # zero-width (MISSING) nodes: inclusive bounds
            return start_byte <= n.start_byte <= end_byte
        return n.start_byte < end_byte and n.end_byte > start_byte

    def descend(n: Node) -> bool:
        return n.has_error and (overlaps(n) or n.start_byte == n.end_byte)

    for n in walk(node, descend):
        if (n.is_error or n.is_missing) and overlaps(n):
            return True
    return False


@dataclass(frozen=True)
class Edit:
    """One text edit in Python str offsets: [start, old_end) of the old text became [start, new_end)."""

    start: int
    old_end: int
    new_end: int


def _point_of(data: bytes, byte: int) -> tuple[int, int]:
    """tree-sitter point (row, byte column) of a byte offset; rows count b'\\n' as tree-sitter does."""
    row = data.count(b"\n", 0, byte)
    last = data.rfind(b"\n", 0, byte)
    return row, byte - (last + 1)


class SyntaxDocument:
    """One document's text and tree-sitter tree, kept current by incremental reparses.

    ``tree`` is None when the language is unknown or the text is above the parse budget:
    callers treat that as "no syntactic knowledge" and constrain nothing.
    Not thread-safe: the owner (the LSP document store) serialises updates.
    """

    def __init__(self, text: str, language: str | None, *, max_bytes: int = DEFAULT_MAX_PARSE_BYTES) -> None:
        self.language = language_for(language) or (language if language in LANGUAGES else None)
        self.max_bytes = max_bytes
        self._parser = new_parser(self.language)
        self.text = text
        self.source = text.encode("utf-8", "surrogatepass")
        self.tree: Tree | None = None
        self.version = 0
        self._parse(None)

    # --- parsing ---------------------------------------------------------------------
    @property
    def over_budget(self) -> bool:
        return len(self.source) > self.max_bytes

    def _parse(self, old: Tree | None) -> None:
        if self._parser is None or self.over_budget:
            self.tree = None
            return
        try:
            self.tree = self._parser.parse(self.source, old) if old is not None else self._parser.parse(self.source)
        except Exception:  # a grammar crash must not take the server down
            log.exception("tree-sitter parse failed (%s)", self.language)
            self.tree = None

    def set_text(self, text: str) -> None:
        """Replace the whole text (full reparse)."""
        self.text = text
        self.source = text.encode("utf-8", "surrogatepass")
        self.version += 1
        self._parse(None)

    def update(self, new_text: str, start: int, old_end: int, new_end: int) -> None:
        """Apply one edit given in str offsets: old ``text[start:old_end]`` became ``new_text[start:new_end]``.

        Converts to bytes and points, edits the old tree and reparses incrementally.
        """
        old_text, old_src = self.text, self.source
        if not (0 <= start <= old_end <= len(old_text) and start <= new_end <= len(new_text)):
            raise ValueError(f"bad edit {start}, {old_end}, {new_end}")
        new_src = new_text.encode("utf-8", "surrogatepass")
        start_b = len(old_text[:start].encode("utf-8", "surrogatepass"))
        old_end_b = start_b + len(old_text[start:old_end].encode("utf-8", "surrogatepass"))
        new_end_b = start_b + len(new_text[start:new_end].encode("utf-8", "surrogatepass"))
        self.text, self.source = new_text, new_src
        self.version += 1
        tree = self.tree
        if tree is None or self.over_budget:
            self._parse(None)
            return
        tree.edit(
            start_byte=start_b,
            old_end_byte=old_end_b,
            new_end_byte=new_end_b,
            start_point=_point_of(old_src, start_b),
            old_end_point=_point_of(old_src, old_end_b),
            new_end_point=_point_of(new_src, new_end_b),
        )
        self._parse(tree)

    # --- queries -----------------------------------------------------------------------
    def byte_of(self, offset: int) -> int:
        """UTF-8 byte offset of a str index in the current text."""
        return len(self.text[:offset].encode("utf-8", "surrogatepass"))

    def has_errors_in(self, start_byte: int, end_byte: int) -> bool | None:
        """Whether the tree has ERROR/MISSING nodes in the byte range; None when not parsed."""
        if self.tree is None:
            return None
        return has_errors(self.tree.root_node, start_byte, end_byte)

    def error_count(self) -> int | None:
        """Number of ERROR/MISSING nodes in the whole tree; None when not parsed."""
        if self.tree is None:
            return None
        root = self.tree.root_node
        return sum(1 for n in walk(root, lambda n: n.has_error) if n.is_error or n.is_missing)

    def node_at(self, byte: int) -> Node | None:
        """Smallest node spanning ``byte`` (None when not parsed)."""
        if self.tree is None:
            return None
        return self.tree.root_node.descendant_for_byte_range(byte, byte)
