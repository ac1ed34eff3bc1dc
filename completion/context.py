"""Context from the rest of the project, as a header before the file's text.

The model otherwise sees one file's last 2k tokens.  The header holds (a) the signatures
and docstrings of what the code around the cursor uses and the project defines elsewhere
(found by name in the other open documents and the workspace files), and (b) snippets of
other files most similar to the text around the cursor (Jaccard over identifier sets, as
Copilot's neighbouring-tab matcher does), within `header_tokens`.

It is kept in the KV cache like the file's text: the header changes rarely (`Headers` keeps
one per document and replaces it only when a clearly better set of snippets comes up, or
the cursor moved far), and when it changes, the file's cached keys after it move and are
re-rotated by PIE: a header change costs the changed header tokens, not a re-encode of the
file (`bench/context.py` measures it).

Formats: models with repository-level FIM tokens (Qwen2.5-Coder's `<|repo_name|>` /
`<|file_sep|>`) get `<|repo_name|>name\\n<|file_sep|>path\\ncode...<|file_sep|>path of
this file\\n`; the others (the default model) a comment-delimited form,
`# ---- path ----\\ncode...# ---- path of this file ----\\n`.
"""

from __future__ import annotations

import keyword
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Mapping

from .kvcache import Cancelled
from .workspace import doc_key, scan_workspace

CHUNK_LINES = 10  # a snippet: this many lines (~80 tokens: a snippet that changes costs its
CHUNK_STRIDE = 5  # tokens only) ... every this many lines
QUERY_LINES = 20  # the text around the cursor that snippets are compared with
SIGNATURE_SHARE = 0.35  # of the header's tokens, at most this much for signatures
SWITCH_GAIN = 1.3  # a new set of snippets replaces the header's when it scores this much higher
MOVED_LINES = 60  # or when the cursor is this many lines away from where the header was made
INDEX_MAX_BYTES = 3_000_000  # workspace files read for the index (all roots together)

_IDENT = re.compile(r"[A-Za-z_][A-Za-z_0-9]{2,}")
_STOP = frozenset(keyword.kwlist) | {"self", "cls", "None", "True", "False", "return", "def", "class", "import",
                                     "from", "len", "str", "int", "isinstance", "list", "dict", "print"}
_DEF = re.compile(r"^[ \t]*(?:async[ \t]+)?(def|class)[ \t]+([A-Za-z_][A-Za-z_0-9]*)", re.M)


def identifiers(text: str) -> frozenset[str]:
    return frozenset(w for w in _IDENT.findall(text) if w not in _STOP)


def defined_names(text: str) -> frozenset[str]:
    """The names `text` defines (def/class): their signatures are not worth a header's room."""
    return frozenset(m.group(2) for m in _DEF.finditer(text))


@dataclass(frozen=True)
class Chunk:
    key: str  # the file's key (workspace.doc_key)
    path: str  # as shown in the header
    line: int
    text: str
    idents: frozenset[str]


@dataclass
class FileIndex:
    chunks: list[Chunk]
    defs: dict[str, str]  # name -> signature (+ the docstring's first line)


def index_file(key: str, path: str, text: str) -> FileIndex:
    lines = text.split("\n")
    chunks = []
    for a in range(0, max(1, len(lines) - CHUNK_LINES // 2), CHUNK_STRIDE):
        body = "\n".join(lines[a:a + CHUNK_LINES]).strip("\n")
        ids = identifiers(body)
        if len(ids) >= 3:
            chunks.append(Chunk(key, path, a, body, ids))
    defs: dict[str, str] = {}
    for m in _DEF.finditer(text):
        name = m.group(2)
        if name in defs or name.startswith("__"):
            continue
        start = m.start()
        end = text.find(":\n", m.end())
        if end < 0 or end - start > 400:
            continue
        sig = text[start:end + 1].strip("\n")
        rest = text[end + 2:end + 400].lstrip()
        if rest.startswith(('"""', "'''")):
            doc = rest[3:].split("\n", 1)[0].strip().rstrip('"\'')
            if doc:
                ind = sig[: len(sig) - len(sig.lstrip())]
                sig += f'\n{ind}    """{doc}"""'
        defs[name] = sig
    return FileIndex(chunks, defs)


class ProjectIndex:
    """The workspace files' chunks and definitions, built once in a background thread
    (bounded: INDEX_MAX_BYTES), plus the open documents' (re-indexed when they change)."""

    def __init__(self) -> None:
        self.files: dict[str, FileIndex] = {}
        self._open: dict[str, tuple[int, FileIndex]] = {}  # key -> (hash of text, index)
        self._lock = threading.Lock()
        self.roots: list[str] = []

    def build(self, roots: list[str]) -> threading.Thread:
        self.roots = [os.path.realpath(r) for r in roots]

        def run() -> None:
            per_root = INDEX_MAX_BYTES // max(1, len(roots))
            for root in roots:
                for p, text in scan_workspace([root], max_total_bytes=per_root, exts={"py", "pyi"}):
                    key = doc_key(str(p))
                    fi = index_file(key, self.show(key), text)
                    with self._lock:
                        self.files[key] = fi

        t = threading.Thread(target=run, name="draftline-context-index", daemon=True)
        t.start()
        return t

    def show(self, key: str) -> str:
        for r in self.roots:
            if key.startswith(r + os.sep):
                return os.path.relpath(key, os.path.dirname(r))
        return os.path.basename(key)

    def open_document(self, key: str, text: str) -> FileIndex:
        h = hash(text)
        got = self._open.get(key)
        if got is None or got[0] != h:
            got = (h, index_file(key, self.show(key), text))
            self._open[key] = got
            if len(self._open) > 64:
                self._open.pop(next(iter(self._open)))
        return got[1]

    def all_files(self, others: Mapping[str, str], exclude: str) -> list[FileIndex]:
        """The open documents' indexes (their current text) and the workspace's other files."""
        out = []
        open_keys = set()
        for uri, text in others.items():
            key = doc_key(uri)
            if key == exclude:
                continue
            open_keys.add(key)
            out.append(self.open_document(key, text))
        with self._lock:
            out += [fi for k, fi in self.files.items() if k != exclude and k not in open_keys]
        return out


@dataclass
class Header:
    text: str = ""
    chunks: tuple[tuple[str, int], ...] = ()  # (file key, line) of the snippets
    score: float = 0.0
    line: int = -10**9  # the cursor line it was made for
    sigs: tuple[str, ...] = field(default_factory=tuple)


def _query(prefix: str) -> tuple[frozenset[str], int]:
    lines = prefix.split("\n")
    return identifiers("\n".join(lines[-QUERY_LINES:])), len(lines) - 1


def select(prefix: str, doc_text_idents: frozenset[str], files: list[FileIndex], tok, budget: int,
           cancel: threading.Event | None = None) -> tuple[list[Chunk], list[str], float]:
    """The snippets and signatures for the header (see module doc), within `budget` tokens.
    `cancel`: checked per file (the whole selection takes 200-900 ms over a 3 MB index here;
    it runs in idle time, and a request stops it)."""
    q, _ = _query(prefix)
    if not q:
        return [], [], 0.0
    # signatures of names used near the cursor that the file does not define itself
    sigs: list[str] = []
    sig_budget = int(budget * SIGNATURE_SHARE)
    used = 0
    own_defs = doc_text_idents
    for name in sorted(q):
        if name in own_defs:
            continue
        for fi in files:
            sig = fi.defs.get(name)
            if sig is not None:
                n = len(tok.encode(sig)) + 1
                if used + n <= sig_budget:
                    sigs.append(sig)
                    used += n
                break
    scored = []
    for fi in files:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        for c in fi.chunks:
            inter = len(q & c.idents)
            if inter:
                scored.append((inter / len(q | c.idents), c))
    scored.sort(key=lambda x: -x[0])
    picked: list[Chunk] = []
    total = 0.0
    for s, c in scored:
        if budget - used < 32:  # no snippet fits (each ~60-100 tokens): stop encoding candidates
            break
        if any(p.key == c.key and abs(p.line - c.line) < CHUNK_LINES for p in picked):
            continue
        if len(c.text) // 12 + 8 > budget - used:  # surely too long (code: ~3-4 characters a token)
            continue
        n = len(tok.encode(c.text)) + 8
        if used + n > budget:
            continue
        picked.append(c)
        total += s
        used += n
        if len(picked) >= 4:
            break
    return picked, sigs, total


def render(picked: list[Chunk], sigs: list[str], this_path: str, repo_tokens: tuple[str, str] | None,
           repo: str = "project") -> str:
    """The header's text (see module doc for the two formats)."""
    if not picked and not sigs:
        return ""
    parts = []
    if repo_tokens is not None:
        name, sep = repo_tokens
        parts.append(f"{name}{repo}\n")
        for c in picked:
            parts.append(f"{sep}{c.path}\n{c.text}\n")
        if sigs:
            parts.append(f"{sep}definitions used here\n" + "\n".join(sigs) + "\n")
        parts.append(f"{sep}{this_path}\n")
    else:
        for c in picked:
            parts.append(f"# ---- {c.path} ----\n{c.text}\n")
        if sigs:
            parts.append("# ---- definitions used here ----\n" + "\n".join(sigs) + "\n")
        parts.append(f"# ---- {this_path} ----\n")
    return "".join(parts)


class Headers:
    """One header per document, replaced only when clearly better (see module doc)."""

    def __init__(self, index: ProjectIndex, tok, budget: int) -> None:
        self.index = index
        self.tok = tok
        self.budget = budget
        self.by_doc: dict[str, Header] = {}
        names = tok.tok.get_vocab() if hasattr(tok, "tok") else {}
        self.repo_tokens = ("<|repo_name|>", "<|file_sep|>") if "<|repo_name|>" in names and "<|file_sep|>" in names \
            else None

    def current(self, doc: str) -> str:
        h = self.by_doc.get(doc)
        return h.text if h is not None else ""

    def update(self, doc: str, text: str, cursor: int, others: Mapping[str, str],
               cancel: threading.Event | None = None) -> str:
        """The header for a cursor; the kept one unless a clearly better one."""
        key = doc_key(doc)
        files = self.index.all_files(others, exclude=key)
        prefix = text[max(0, cursor - 20_000):cursor]
        own = defined_names(text[max(0, cursor - 200_000):cursor + 50_000])
        picked, sigs, score = select(prefix, own, files, self.tok, self.budget, cancel)
        line = text.count("\n", 0, cursor)
        old = self.by_doc.get(doc)
        chunks = tuple((c.key, c.line) for c in picked)
        if old is not None and (chunks == old.chunks and tuple(sigs) == old.sigs):
            return old.text
        if old is not None and abs(line - old.line) < MOVED_LINES and score < old.score * SWITCH_GAIN:
            return old.text  # not clearly better: the cache keeps its header
        h = Header(render(picked, sigs, self.index.show(key), self.repo_tokens), chunks, score, line, tuple(sigs))
        self.by_doc[doc] = h
        return h.text

    def drop(self, doc: str) -> None:
        self.by_doc.pop(doc, None)
