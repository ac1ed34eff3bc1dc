"""The team engine's wire format, shared by the edge (`lsp.remote`) and the replicas
(`completion.replica`): edits, not files, and the checks that keep a replica from decoding
against a text the editor no longer has.

Why edits: a keystroke is a request, and a 20 KB file sent per keystroke would cost more
than the model's answer; one edit (`[start, end, inserted]` against the text of version
`base`) is a few dozen bytes.  Why versions and a checksum: a replica may have restarted,
lost the document to its LRU, or applied a request the edge gave up on (a cancelled or
retried call); a replica that does not hold exactly `base` (version *and* text), or whose
text after the edit has another CRC than the edge's, answers `need_text` and the edge
resends the whole text once.  So a stale text is never decoded against: at worst one
extra round trip.

Versions are opaque strings chosen by the edge (`<edge nonce>.<n>`): the engine API has no
LSP version, and a reopened document restarts its LSP versions at 1.
"""

from __future__ import annotations

import hashlib
import zlib

#: the HTTP header Ray Serve's proxy reads a session id from (RAY_SERVE_SESSION_ID_HEADER_KEY's
#: default): the document id, which the sticky router (`completion.routing`) pins
SESSION_HEADER = "x-session-id"
#: the route the engine's application is served under
ROUTE = "/draftline"
#: a replica refuses larger request bodies (the edge never sends a document over 4 MB:
#: lsp.documents.MAX_DOCUMENT_CHARS; JSON escapes can double it)
MAX_BODY_BYTES = 16 * 2**20

#: what a request may set of the engine's config for itself (the edge's user settings);
#: everything else (cache budget, context size) is the replica's
REQUEST_CONFIG = {"k": int, "max_tokens": int, "method": str, "latency_budget_ms": int,
                  "ahead": bool, "monitors": bool, "stale_limit": int, "pie": bool, "speculate": int}
METHODS = ("superposed", "batched", "beam")


def crc(text: str) -> int:
    """CRC-32 of a text (lone surrogates, which editors can send, included)."""
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def doc_id(user: str, workspace: str, uri: str) -> str:
    """The stable id of a document on the engine: one user's file in one workspace (two
    users editing the same path have two caches: their texts differ)."""
    return hashlib.sha256("\0".join((user, workspace, uri)).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def common_affixes(a: str, b: str) -> tuple[int, int]:
    """Lengths of the common prefix and suffix (non-overlapping), by binary search on
    slice equality (C-speed compares, no Python loop over characters)."""
    lim = min(len(a), len(b))
    lo, hi = 0, lim
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    p = lo
    lo, hi = 0, lim - p
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid:] == b[len(b) - mid:]:
            lo = mid
        else:
            hi = mid - 1
    return p, lo


def diff(old: str, new: str) -> list:
    """One edit `[start, end, inserted]` that turns `old` into `new`."""
    p, s = common_affixes(old, new)
    return [p, len(old) - s, new[p:len(new) - s]]


def apply(old: str, edit: list) -> str:
    """`old` with the edit applied; ValueError when the edit does not fit the text."""
    if not (isinstance(edit, list) and len(edit) == 3 and isinstance(edit[0], int)
            and isinstance(edit[1], int) and isinstance(edit[2], str)):
        raise ValueError("an edit is [start, end, text]")
    a, b, ins = edit
    if not 0 <= a <= b <= len(old):
        raise ValueError(f"edit [{a}, {b}) outside a text of {len(old)} characters")
    return old[:a] + ins + old[b:]


def request_config(raw: object) -> dict:
    """The part of a request's `config` a replica accepts (unknown keys and bad types are
    dropped: a request never changes what the replica's budget is)."""
    out: dict = {}
    if not isinstance(raw, dict):
        return out
    for key, typ in REQUEST_CONFIG.items():
        v = raw.get(key)
        if v is None or (typ is int and (isinstance(v, bool) or not isinstance(v, int))) or not isinstance(v, typ):
            continue
        if typ is int and v < 0:
            continue
        if key == "method" and v not in METHODS:
            continue
        out[key] = v
    if "k" in out:
        out["k"] = max(1, min(out["k"], 8))
    if "max_tokens" in out:
        out["max_tokens"] = max(1, min(out["max_tokens"], 512))
    if "speculate" in out:
        out["speculate"] = min(out["speculate"], 16)
    return out
