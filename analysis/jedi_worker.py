"""The jedi child process (see `python._ProcessWorker`): JSON lines in on stdin, one answer
line per query out on the original stdout; anything else that prints goes to stderr.

Each query names its analyzer's configuration (workspace root, extra import roots); one
`PythonAnalyzer` per configuration keeps jedi's caches warm (and the per-type member cache).
Open documents arrive as {path: [hash, text or null]}: null = the text sent before.
Runs at a lower CPU priority than the server, whose decoder wants the cores (nice 5;
DRAFTLINE_JEDI_NICE overrides it: 0 vs 5 measured no clear difference, 4 runs at 2k).
"""

from __future__ import annotations

import json
import os
import sys
import time

NICE = int(os.environ.get("DRAFTLINE_JEDI_NICE", "5"))


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
    analyzers: dict[tuple, PythonAnalyzer] = {}
    texts: dict[str, tuple[int, str]] = {}
    for line in sys.stdin:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
