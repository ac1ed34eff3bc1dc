"""P5: bounded resources. Memory of the server after 1,000 edits over 50 files (fake
engine, real process), the model's context budget, the KV-cache LRU budget across
documents, documents too large for the model (the parse budget: tests/test_monitors.py). (One decode
job at a time: tests/test_reliability_scheduling.py.)"""

from __future__ import annotations

import random
import time


from support.clients import RawServer

# Growth after the documents are open. The 50 texts turn from 1 to 4 bytes per character
# with their first non-ASCII edit (+20 MB, twice while the engine holds the previous
# version); the rest is allocator slack (glibc's moving mmap threshold alone cost 150-280 MB
# per 1000 edits; lsp/memory fixes the threshold and MallocTrimmer returns free heap pages
# when the worker idles). A leak of one text per edit would be 400 MB. The growth depends
# on timing too (how many snapshots are in flight while the worker runs): under 128 MB alone,
# 132 MB once in a full-suite run (2026-12-05), hence the margin.
RSS_GROWTH_BUDGET = 160 * 2**20
RSS_BUDGET = 640 * 2**20  # absolute (torch alone is ~250 MB of it)


def test_rss_after_1000_edits_over_50_files():
    rng = random.Random(7)
    base = "".join(f"def function_{i}(argument):\n    return argument * {i} + len('{'x' * 20}')\n"
                   for i in range(1200))  # ~100 KB per file, 5 MB over 50 files
    docs = {f"file:///work/rss/m{i}.py": base for i in range(50)}
    versions = {u: 1 for u in docs}
    with RawServer("steps:2,delay_ms:1") as s:
        s.initialize()
        for u, t in docs.items():
            s.open(u, t)
        s.status()
        rss0 = s.rss()
        uris = list(docs)
        ids = []
        for n in range(1000):
            u = rng.choice(uris)
            t = docs[u]
            lines = t.count("\n")
            line = rng.randrange(lines)
            ins = rng.choice(["x", "# note\n", "    pass\n", "é😀", ""])
            s.change(u, versions[u] + 1, [{"range": {"start": {"line": line, "character": 0},
                                                       "end": {"line": line, "character": 0}}, "text": ins}])
            # the client's copy (ASCII-free positions at column 0: a plain splice)
            k = -1
            for _ in range(line):
                k = t.index("\n", k + 1)
            off = k + 1 if line else 0
            docs[u] = t[:off] + ins + t[off:]
            versions[u] += 1
            if n % 10 == 0:
                ids.append(s.inline(u, line, 0))
        s.drain(120)
        assert s.missing_or_duplicate() == []
        for u in uris:  # no document lost or corrupted
            assert s.document_text(u) == {"text": docs[u], "version": versions[u]}
        rss1 = s.rss()
        assert rss1 - rss0 < RSS_GROWTH_BUDGET, (rss0 >> 20, rss1 >> 20)
        assert rss1 < RSS_BUDGET, rss1 >> 20
        for u in uris:
            s.notify("textDocument/didClose", {"textDocument": {"uri": u}})
        assert s.status()["documents"] == 0
        assert s.shutdown_and_exit() == 0


async def test_no_per_message_bookkeeping_is_left_behind():
    """pygls keeps a future per generator-handled notification (didOpen/didChange/didClose)
    forever; the protocol drops them. Same for answered requests and their ids."""
    from support.clients import InProc

    h = InProc(fake="steps:1,delay_ms:0")
    try:
        await h.initialize()
        await h.engine()
        for i in range(200):
            uri = f"file:///work/b{i % 5}.py"
            h.open(uri, "x = 1\n")
            h.change(uri, 2, [{"text": "y = 2\n"}])
            await h.wait(h.inline(uri, 0, 5))
            h.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        await h.sync()
        p = h.ls.protocol
        assert len(p._request_futures) == 0
        assert p.pending_requests() == 0
        assert len(h.ls.docs.docs) == 0
    finally:
        await h.close()


def test_documents_over_the_model_limit_never_reach_the_engine():
    from draftline.lsp.documents import MAX_DOCUMENT_CHARS

    with RawServer("steps:1") as s:
        s.initialize()
        uri = "file:///work/huge.txt"
        s.open(uri, "a" * (MAX_DOCUMENT_CHARS + 1))
        calls = s.loaded_engine_info()["calls"]
        r = s.wait(s.inline(uri, 0, 10))
        assert r["result"]["items"] == []
        assert s.loaded_engine_info()["calls"] == calls
        assert s.shutdown_and_exit() == 0


# -- the model side, on a tiny random-weight model -------------------------------------------------
def big_source() -> str:
    from conftest import stdlib_source

    return stdlib_source("textwrap.py") + stdlib_source("json/decoder.py")


def test_prompt_stays_within_context_tokens(tiny):
    from draftline.completion.engine import Engine, EngineConfig

    eng = Engine(tiny, EngineConfig(k=2, max_tokens=4, context_tokens=300, suffix_tokens=64))
    src = big_source()
    for cursor in (0, len(src) // 3, len(src) // 2, len(src)):
        res = eng.complete("file:///big.py", src, cursor)
        assert res.tokens["prompt"] <= eng.context_tokens <= 300
        assert len(eng.cache_of("file:///big.py").tokens) <= eng.context_tokens


def prefill(eng, doc: str, text: str, cursor: int) -> None:
    """What the server does in idle time: prepare steps until the window is whole."""
    while eng.prepare(doc, text, cursor).more:
        pass


def test_kv_caches_stay_under_the_lru_budget(tiny):
    from draftline.completion.engine import Engine, EngineConfig

    eng = Engine(tiny, EngineConfig(k=1, max_tokens=4, context_tokens=512))
    src = big_source()
    cur = len(src) // 2  # same cursor everywhere: caches of equal size
    prefill(eng, "file:///d0.py", src, cur)
    one = eng.caches.nbytes
    assert one > 0
    eng.caches.budget_bytes = int(one * 2.5)  # room for two documents' caches
    for i in range(1, 8):
        prefill(eng, f"file:///d{i}.py", src, cur)
        assert eng.caches.nbytes <= eng.caches.budget_bytes
        assert f"file:///d{i}.py" in eng.caches.caches  # the document in use is never evicted
    assert list(eng.caches.caches) == ["file:///d6.py", "file:///d7.py"]  # least recently used went first
    eng.complete("file:///d6.py", src, cur)  # touching d6 makes d7 the oldest
    prefill(eng, "file:///d8.py", src, cur)
    assert list(eng.caches.caches) == ["file:///d6.py", "file:///d8.py"]


def test_the_worker_runs_idle_work_once_per_quiet_period(monkeypatch):
    """Scheduler.on_idle (the server's malloc trim) runs on the worker after IDLE_S without
    jobs, once per quiet period, never between back-to-back jobs."""
    import asyncio

    from draftline.lsp.scheduler import Scheduler

    monkeypatch.setattr(Scheduler, "IDLE_S", 0.15)
    calls: list[float] = []

    async def main():
        sch = Scheduler(asyncio.get_running_loop())
        sch.on_idle = lambda: calls.append(time.monotonic())
        for _ in range(5):  # back to back: no idle work in between
            await sch.submit(None, "other", lambda cancel: time.sleep(0.03)).future
        n0 = len(calls)
        await asyncio.sleep(0.5)
        n1 = len(calls)
        await sch.submit(None, "other", lambda cancel: None).future
        await asyncio.sleep(0.5)
        sch.stop()
        return n0, n1, len(calls)

    n0, n1, n2 = asyncio.run(main())
    assert (n0, n1, n2) == (0, 1, 2)


def test_malloc_trim_runs_only_after_rss_grew(monkeypatch):
    """MallocTrimmer: no trim while RSS stays near its base (a trim would only make the next
    request fault its temporaries in again); one trim once it grew by GROWTH."""
    from draftline.lsp import memory

    rss = [500 * 2**20]
    trims: list[int] = []

    class FakeLibc:
        def malloc_trim(self, pad):
            trims.append(pad)
            rss[0] -= 100 * 2**20
            return 1

    monkeypatch.setattr(memory, "rss_bytes", lambda: rss[0])
    monkeypatch.setattr(memory, "_libc", lambda: FakeLibc())
    t = memory.MallocTrimmer()
    t()  # base
    rss[0] += t.GROWTH // 2
    t()
    assert trims == []
    rss[0] += t.GROWTH
    t()
    assert trims == [0] and t.base == rss[0]
    t()
    assert trims == [0]


def test_the_loaded_engine_is_out_of_the_cycle_collectors_sight():
    """After the model loads, the server freezes what it built (gc.freeze): a full
    collection then no longer walks the vocabulary indexes inside a request."""
    with RawServer("steps:2,delay_ms:1") as s:
        s.initialize()
        s.open("file:///work/gc/a.py", "x = 1\n")
        s.inline("file:///work/gc/a.py", 0, 5)  # waits for the model
        s.drain(60)
        assert s.status()["gc_frozen"] > 1000
        assert s.shutdown_and_exit() == 0
