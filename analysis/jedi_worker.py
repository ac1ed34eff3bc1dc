"""The jedi child process (see `jedi_client._ProcessWorker`): JSON lines in on stdin, one
answer line per query out on the original stdout; anything else that prints goes to stderr.

Each query names its analyzer's configuration (workspace root, extra import roots); one
`jedi_backend.JediBackend` per configuration keeps jedi's caches warm (and the per-type
member cache).  A query's ``kind`` is looked up in that backend's table of analyses
(`JediBackend.analyses`): a message can run those and nothing else.
Open documents arrive as {path: [hash, text or null]}: null = the text sent before.
Runs at a lower CPU priority than the server, whose decoder wants the cores (nice 5;
DRAFTLINE_JEDI_NICE overrides it: 0 vs 5 measured no clear difference, 4 runs at 2k).

Garbage collection runs on the child's schedule, not the allocator's (`_Collector`): with
jedi's stub and inference caches loaded, an automatic full collection took 200-830 ms and
landed inside a query a decode step was waiting for (`self._Section.` 328 ms, 277 of them
collecting; 43 ms without).
"""

from __future__ import annotations

import gc
import json
import os
import select
import sys
import time
from collections.abc import Callable, Iterator

NICE = int(os.environ.get("DRAFTLINE_JEDI_NICE", "5"))


class _Collector:
    """When the child collects reference cycles.

    jedi's heap is mostly long-lived (builtins and typeshed stubs, library modules the
    documents import, their inferred types), and a full collection walks all of it: 200-830
    ms, landing inside a query a decode step waited for.  So:
    - full collections run in idle moments (no query for IDLE_S), not by allocation count;
    - what survives one is frozen (`gc.freeze()`): the next idle collection walks only
      what the queries since made (measured 15-140 ms instead of 200-830 ms);
    - frozen objects that later became garbage (an old parse tree of an edited document) are
      freed by a thaw (unfreeze + full collection) after THAW_EVERY freezes, once the child
      has been idle for DEEP_IDLE_S, or at the next idle moment once 4 x THAW_EVERY
      freezes have gone by without such a pause (memory stays bounded);
    - a child that is never idle still collects fully after FULL_EVERY young collections.
    """

    IDLE_S = 1.0
    DEEP_IDLE_S = 5.0
    THAW_EVERY = 20
    FULL_EVERY = 400  # generation-1 collections between automatic full ones (default: 10)

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self.dirty = False
        self.freezes = 0  # since the last thaw
        self.log = log
        self._t0 = 0.0
        g0, g1, _ = gc.get_threshold()
        gc.set_threshold(g0, g1, self.FULL_EVERY)
        if log is not None:
            gc.callbacks.append(self._timed)

    def _timed(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        elif (ms := (time.perf_counter() - self._t0) * 1000) > 5:
            self.log(f"gc generation {info['generation']}: {ms:.0f} ms")  # type: ignore[misc]

    def ran_query(self, kind: str) -> None:
        self.dirty = True
        if kind == "warm":  # the stubs the warm-up loaded stay for the child's life
            self._collect_and_freeze()

    def _collect_and_freeze(self) -> None:
        gc.collect()
        gc.freeze()
        self.freezes += 1
        self.dirty = False

    def idle(self, deep: bool = False) -> float | None:
        """Run at IDLE_S without input (deep: DEEP_IDLE_S); returns the seconds of further
        quiet after which to call it again (deep), or None."""
        if deep or self.freezes >= 4 * self.THAW_EVERY:
            gc.unfreeze()
            self._collect_and_freeze()
            self.freezes = 0
            return None
        if self.dirty:
            self._collect_and_freeze()
        return self.DEEP_IDLE_S - self.IDLE_S if self.freezes >= self.THAW_EVERY else None


def _lines(fd: int, idle_s: float, on_idle: Callable[[bool], float | None]) -> Iterator[bytes]:
    """Lines read from `fd`.  After `idle_s` without input `on_idle(False)` runs; if it
    returns a number of seconds and no input comes for that long either, `on_idle(True)`."""
    buf = bytearray()
    while True:
        nl = buf.find(b"\n")
        if nl >= 0:
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            yield line
            continue
        wait: float | None = idle_s
        deep = False
        while not select.select([fd], [], [], wait)[0]:
            wait = on_idle(deep)
            deep = True
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return
        buf += chunk


def _debug_line(m: str) -> None:
    print(f"jedi worker: {m}", file=sys.stderr, flush=True)


def main() -> int:
    out = os.fdopen(os.dup(1), "w", encoding="ascii")
    os.dup2(2, 1)  # jedi or a plugin printing must not corrupt the answers
    sys.stdout = sys.stderr
    try:
        os.nice(NICE)
    except (AttributeError, OSError):
        pass
    from draftline.analysis.jedi_backend import Analysis, JediBackend, run_with_overlay

    debug = _debug_line if os.environ.get("DRAFTLINE_LOG", "").lower() == "debug" else None
    collector = _Collector(debug)
    backends: dict[tuple, dict[str, Analysis]] = {}  # configuration -> its analyses
    texts: dict[str, tuple[int, str]] = {}
    for line in _lines(sys.stdin.fileno(), collector.IDLE_S, collector.idle):
        try:
            msg = json.loads(line)
            qid = msg["q"]
        except (ValueError, KeyError, TypeError):
            continue
        try:
            root, added = msg["config"]
            key = (root, tuple(added))
            analyses = backends.get(key)
            if analyses is None:
                analyses = backends[key] = JediBackend(root, tuple(added)).analyses()
            docs = {}
            for path, (h, text) in (msg.get("docs") or {}).items():
                if text is not None:
                    texts[path] = (h, text)
                known = texts.get(path)
                if known is not None and known[0] == h:
                    docs[path] = known[1]
            fn = analyses[msg["kind"]]
            t0 = time.perf_counter()
            res = run_with_overlay(lambda: fn(msg["before"], msg["after"], msg["path"]), docs or None)
            if debug is not None:
                debug(f"{msg['kind']} {msg['before'][-30:]!r}: {(time.perf_counter() - t0) * 1000:.0f} ms")
            if res is None:
                reply = {"q": qid, "names": None}
            else:
                reply = {"q": qid, "names": sorted(res.names), "callables": sorted(res.callables)}
        except Exception as e:  # noqa: BLE001 - a failed query is "unknown" for the server
            reply = {"q": qid, "error": repr(e)[:500]}
        out.write(json.dumps(reply) + "\n")
        out.flush()
        collector.ran_query(msg.get("kind", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
