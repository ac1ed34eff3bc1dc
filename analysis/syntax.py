"""tree-sitter: the grammars of the languages we parse, fresh parsers, cursor walks.

Why here: the scopes (`scopes`), the monitors' names (`session`) and the trim of drafts
(`trim`) all parse with tree-sitter; this module is where a language name (an LSP
languageId or a file extension) becomes a grammar, and where trees are walked with
``TreeCursor`` loops, never recursion (deep nesting would overflow the Python stack).
Every parse is a fresh one of the text at hand (the analyses parse a window or one
request's document, once).  A document above the parse budget (`DEFAULT_MAX_PARSE_BYTES`,
``MonitorSettings.max_parse_bytes``) is not parsed at all: a 4 MB file takes seconds in
tree-sitter 0.26 and it has no timeout, so analysis then answers "unknown" and nothing is
masked (docs/reliability.md, P5).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from functools import lru_cache

from tree_sitter import Language, Node, Parser

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_PARSE_BYTES",
    "LANGUAGES",
    "language_for",
    "get_language",
    "new_parser",
    "walk",
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
