"""The files of the workspace: a key per document, and a bounded scan that respects
.gitignore (through the `pathspec` library, gitignore semantics, one spec per directory
that has a .gitignore).  Used by the workspace n-gram model and the project context."""

from __future__ import annotations

import os
from pathlib import Path

from pathspec import GitIgnoreSpec
from pygls.uris import to_fs_path

SOURCE_EXTS = frozenset("""
py pyi js jsx mjs cjs ts tsx go rs java kt kts scala c h cc cpp cxx hpp hh cs rb php swift m mm lua
sh bash zsh pl pm r jl hs ml mli ex exs erl clj dart vue svelte sql toml yaml yml json md rst
""".split())
SKIP_DIRS = frozenset({"node_modules", "__pycache__", "site-packages", "bower_components", "venv",
                       "target", "vendor"})


def doc_key(uri_or_path: str) -> str:
    """One key per file whether it comes as a file:// URI (editor) or a path (scan)."""
    if uri_or_path.startswith("file:"):
        path = to_fs_path(uri_or_path)
        if path is None:
            return uri_or_path
        uri_or_path = path
    elif "://" in uri_or_path or uri_or_path.startswith("untitled:"):
        return uri_or_path
    try:
        return os.path.normcase(os.path.realpath(uri_or_path))
    except (OSError, ValueError):
        return uri_or_path


class _Ignore:
    """A directory's .gitignore: its patterns match paths relative to that directory."""

    def __init__(self, base: str, text: str):
        self.base = base
        self.spec = GitIgnoreSpec.from_lines(text.splitlines())

    def match(self, rel: str, is_dir: bool) -> bool | None:
        """True: ignored, False: re-included (a negation), None: no pattern speaks of it."""
        if self.base:
            if not rel.startswith(self.base + "/"):
                return None
            rel = rel[len(self.base) + 1:]
        res = self.spec.check_file(rel + "/" if is_dir else rel)
        return res.include


def _ignored(rules: list[_Ignore], rel: str, is_dir: bool) -> bool:
    """The deepest .gitignore that speaks of a path decides (git's precedence)."""
    for r in reversed(rules):
        m = r.match(rel, is_dir)
        if m is not None:
            return m
    return False


def scan_workspace(roots, *, max_file_bytes: int = 1_000_000, max_total_bytes: int = 4_000_000,
                   max_entries: int = 50_000, exts=SOURCE_EXTS, exclude=()) -> list[tuple[Path, str]]:
    """(path, text) of the workspace's text files, breadth-first from each root (files near
    the root first): .gitignore respected, hidden and vendored directories skipped, binary
    files (a NUL in the first 8 KB), files over `max_file_bytes` and what passes
    `max_total_bytes` left out, at most `max_entries` directory entries looked at."""
    out: list[tuple[Path, str]] = []
    total = 0
    seen = 0
    excl = {os.path.realpath(str(e)) for e in exclude}
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        queue: list[tuple[Path, str, list[_Ignore]]] = [(root, "", [])]
        while queue:
            d, rel_d, rules = queue.pop(0)
            gi = d / ".gitignore"
            if gi.is_file():
                try:
                    rules = rules + [_Ignore(rel_d, gi.read_text(encoding="utf-8", errors="replace"))]
                except OSError:
                    pass
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError:
                continue
            subdirs = []
            for e in entries:
                seen += 1
                if seen > max_entries:
                    return out
                rel = f"{rel_d}/{e.name}" if rel_d else e.name
                try:
                    is_dir = e.is_dir(follow_symlinks=False)
                    is_file = e.is_file(follow_symlinks=False)
                except OSError:
                    continue
                if is_dir:
                    if e.name.startswith(".") or e.name in SKIP_DIRS or _ignored(rules, rel, True):
                        continue
                    subdirs.append((Path(e.path), rel, rules))
                    continue
                if not is_file or _ignored(rules, rel, False):
                    continue
                ext = e.name.rsplit(".", 1)[-1].lower() if "." in e.name else ""
                if exts is not None and ext not in exts:
                    continue
                if excl and os.path.realpath(e.path) in excl:
                    continue
                try:
                    size = e.stat(follow_symlinks=False).st_size
                    if size > max_file_bytes or size == 0:
                        continue
                    if total + size > max_total_bytes:
                        continue
                    with open(e.path, "rb") as f:
                        data = f.read(max_file_bytes + 1)
                except OSError:
                    continue
                if b"\0" in data[:8192] or len(data) > max_file_bytes:
                    continue
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                out.append((Path(e.path), text))
                total += len(data)
            queue.extend(subdirs)
    return out
