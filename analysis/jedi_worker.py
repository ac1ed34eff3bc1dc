"""The jedi child process (see `python._ProcessWorker`): JSON lines in on stdin, one answer
line per query out on the original stdout; anything else that prints goes to stderr.

Each query names its analyzer's configuration (workspace root, extra import roots); one
`PythonAnalyzer` per configuration keeps jedi's caches warm (and the per-type member cache).
Open documents arrive as {path: [hash, text or null]}: null = the text sent before.
Runs at a lower CPU priority than the server, whose decoder wants the cores (nice 5;
DRAFTLINE_JEDI_NICE overrides it: 0 vs 5 measured no clear difference, 4 runs at 2k).

Garbage collection runs on the child's schedule, not the allocator's (`_Collector`): with
jedi's stub and inference caches loaded, an automatic full collection took 200-730 ms and
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

    The long-lived heap (builtins and typeshed stubs, the warm-up's library types) is moved
    out of the collector's sight once warm (`gc.freeze()` after the warm-up job), full
    collections are left to idle moments (no query waiting for IDLE_S) instead of the
    allocation count, and young generations stay automatic (cheap).  A child that is never
    idle still runs a full collection after FULL_EVERY young ones (memory stays bounded).
    """

    IDLE_S = 1.0
    FULL_EVERY = 400  # generation-1 collections between automatic full ones (default: 10)

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self.dirty = False
        self.log = log
        self._t0 = 0.0
        g0, g1, _ = gc.get_threshold()
        gc.set_threshold(g0, g1, self.FULL_EVERY)
        if log is not None:
            gc.callbacks.append(self._timed)

    def _timed(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        elif (ms := (time.perf_counter() - self._t0) * 1000) > 5 and self.log is not None:
            self.log(f"gc generation {info['generation']}: {ms:.0f} ms")

    def ran_query(self, kind: str) -> None:
        self.dirty = True
        if kind == "warm":  # what the warm-up loaded stays for the child's life
            gc.collect()
            gc.freeze()
            self.dirty = False

    def idle(self) -> None:
        if self.dirty:
            gc.collect()
            self.dirty = False


def _lines(fd: int, idle_s: float, on_idle: Callable[[], None]) -> Iterator[bytes]:
    """Lines read from `fd`; `on_idle()` runs whenever no input came for `idle_s`."""
    buf = bytearray()
    while True:
        nl = buf.find(b"\n")
        if nl >= 0:
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            yield line
            continue
        ready, _, _ = select.select([fd], [], [], idle_s)
        if not ready:
            on_idle()
            select.select([fd], [], [])
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return
        buf += chunk


def main() -> int:
    out = os.fdopen(os.dup(1), "w", encoding="ascii")
    os.dup2(2, 1)  # jedi or a plugin printing must not corrupt the answers
    sys.stdout = sys.stderr
    try:
        os.nice(NICE)
    except (AttributeError, OSError):
        pass
    from draftline.analysis.python import PythonAnalyzer, _run_with_overlay

    debug = os.environ.get("DRAFTLINE_LOG", "").lower() == "debug"
    collector = _Collector((lambda m: print(f"jedi worker: {m}", file=sys.stderr, flush=True)) if debug else None)
    analyzers: dict[tuple, PythonAnalyzer] = {}
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
            an = analyzers.get(key)
            if an is None:
                an = analyzers[key] = PythonAnalyzer(root, tuple(added), isolated=False)
            docs = {}
            for path, (h, text) in (msg.get("docs") or {}).items():
                if text is not None:
                    texts[path] = (h, text)
                known = texts.get(path)
                if known is not None and known[0] == h:
                    docs[path] = known[1]
            fn = getattr(an, "_" + msg["kind"])
            t0 = time.perf_counter()
            res = _run_with_overlay(lambda: fn(msg["before"], msg["after"], msg["path"]), docs or None)
            if debug:
                print(f"jedi worker: {msg['kind']} {msg['before'][-30:]!r}: {(time.perf_counter() - t0) * 1000:.0f} ms",
                      file=sys.stderr, flush=True)
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
