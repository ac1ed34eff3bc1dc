"""glibc memory tuning of the server process: a fixed mmap threshold and idle-time trims.

Why: torch's 0.25-32 MB temporaries must be reused from the heap (fresh pages per request
cost 11-28k page faults per 2k-token request), while the holes that document-sized strings
leave must still go back to the OS when the worker idles.  See `tune_malloc`.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)


#: glibc's largest fixed mmap threshold (4 MB x sizeof(long)): blocks below it come from the heap
MMAP_THRESHOLD = 32 * 2**20
_malloc_tuned = False


def malloc_tuned() -> bool:
    """Whether tune_malloc() took effect in this process (then idle trims pay off)."""
    return _malloc_tuned


def _libc():
    import ctypes

    return ctypes.CDLL("libc.so.6")


def tune_malloc(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold` (glibc otherwise moves it with each large
    free).  Why high: torch's temporaries of 0.25-32 MB (prefill chunk activations, a sync's
    attention weights, PIE move pieces) then come from the heap and are reused; with the
    256 KB threshold used before they were fresh mmapped pages on every request (11-28k page
    faults per 2k-token request: sync 66-86 vs 53-61 ms, edit -> drafts p50 440 vs 397 ms,
    in-process, back to back).  The price: document-sized strings (a new one per edit) also
    come from the heap and leave holes (RSS crept by 150-280 MB per 1,000 edits of 50 files
    when glibc's own moving threshold did that); `MallocTrimmer` returns the holes when the
    worker is idle.  No-op elsewhere; DRAFTLINE_NO_MALLOC_TUNE=1 turns it off."""
    global _malloc_tuned
    if not sys.platform.startswith("linux"):
        return False
    try:
        M_MMAP_THRESHOLD = -3
        _malloc_tuned = bool(_libc().mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
    return _malloc_tuned


def rss_bytes() -> int:
    """Resident set size of this process (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def malloc_trim() -> bool:
    """Return free heap pages to the OS now (glibc; False elsewhere)."""
    try:
        return bool(_libc().malloc_trim(0))
    except (OSError, AttributeError):
        return False


class MallocTrimmer:
    """Idle-time `malloc_trim(0)` (free heap pages back to the OS), only once RSS has grown
    GROWTH bytes past what it was after the last trim: trimming also returns the free pages
    the next request's temporaries would reuse (they fault in again), so it runs when holes
    have piled up, not after every request."""

    GROWTH = 64 * 2**20

    def __init__(self) -> None:
        self.base = 0

    def __call__(self) -> None:
        rss = rss_bytes()
        if not rss:
            return
        if not self.base or rss < self.base:
            self.base = rss
        elif rss - self.base > self.GROWTH:
            malloc_trim()
            self.base = rss_bytes() or rss
            log.debug("malloc_trim: RSS %d -> %d MB", rss >> 20, self.base >> 20)


