"""P3 (no stale edits), P4 (cancellation within one decode step), P5 (one decode job at a
time, superseded work never starts) and P7 (engine faults): the real server object in
this process (tests/support/clients.InProc) with a gated fake engine, and P4 again with the
real scheduler and a real (tiny random-weight) model. Ordering is forced with barriers (the
engine blocks on a semaphore the test releases), never with sleeps."""

from __future__ import annotations

import asyncio

import pytest

from support.clients import InProc, RawServer
from support.fake_engine import fingerprint

URI = "file:///work/s.py"
TEXT_A = "def f(x):\n    return x\n"


def pos(line, ch):
    return {"line": line, "character": ch}


def insert(line, ch, text):
    return {"range": {"start": pos(line, ch), "end": pos(line, ch)}, "text": text}


async def started(eng, timeout=10.0):
    """Wait (in a thread, no polling) until the engine has entered a completion."""
    ok = await asyncio.to_thread(eng.entered.wait, timeout)
    assert ok, "the engine never started"
    eng.entered.clear()


@pytest.fixture
async def gated():
    h = InProc(fake="steps:3,delay_ms:0,gated:1")
    await h.initialize()
    eng = await h.engine()
    h.open(URI, TEXT_A)
    yield h, eng
    if eng.gate is not None:
        eng.gate.release(1000)
    await h.close()


def items(msg):
    assert "result" in msg, msg
    return msg["result"]["items"]


# -- P3 ---------------------------------------------------------------------------------------
async def test_edit_while_engine_blocked_gives_no_stale_drafts(gated):
    h, eng = gated
    mid = h.inline(URI, 1, 12)
    await started(eng)  # the engine holds the snapshot of TEXT_A and is blocked at step 1
    h.change(URI, 2, [insert(1, 12, " + 1")])
    await h.sync()  # the edit is applied while the engine is still blocked
    eng.gate.release(100)
    got = items(await h.wait(mid))
    assert got == []  # never drafts computed for the old text
    assert h.ls.counters["cancelled"] + h.ls.counters["stale"] >= 1
    # the next request sees the new text
    mid = h.inline(URI, 1, 16)
    await started(eng)
    eng.gate.release(100)
    got = items(await h.wait(mid))
    new_text = "def f(x):\n    return x + 1\n"
    assert got and all(fingerprint(new_text) in it["insertText"] for it in got)


async def test_version_check_catches_an_engine_that_ignores_cancel():
    """Even if the engine finishes the old job, its drafts are dropped by the version check."""
    h = InProc(fake="steps:3,delay_ms:0,gated:1,ignore_cancel:1")
    try:
        await h.initialize()
        eng = await h.engine()
        h.open(URI, TEXT_A)
        mid = h.inline(URI, 1, 12)
        await started(eng)
        h.change(URI, 2, [insert(1, 12, " + 1")])
        await h.sync()
        eng.gate.release(100)
        assert items(await h.wait(mid)) == []
        assert eng.lm.info["completed"] == 1  # the engine did answer, for the old text
        assert eng.seen[-1] == (URI, fingerprint(TEXT_A))
        assert h.ls.counters["stale"] == 1
    finally:
        eng.gate.release(1000)
        await h.close()


async def test_edit_sent_right_after_the_request_is_not_applied_before_the_snapshot():
    """The request and the edit arrive in one read: the request's handler must snapshot the
    text the request was made for (its positions refer to it), so the answer is empty; it
    must not compute drafts for the edited text at the old position."""
    h = InProc(fake="steps:2,delay_ms:0,ignore_cancel:1")
    try:
        await h.initialize()
        eng = await h.engine()
        h.open(URI, TEXT_A)
        mid = h.inline(URI, 1, 12)
        h.change(URI, 2, [insert(0, 0, "import os\n")])  # queued behind the request
        assert items(await h.wait(mid)) == []
        # the engine ran on the request's text, or not at all (the edit cancelled the job
        # before it started); never on the edited text
        assert all(fp == fingerprint(TEXT_A) for _, fp in eng.seen), eng.seen
    finally:
        await h.close()


# -- P4 ---------------------------------------------------------------------------------------
async def test_cancel_request_stops_the_engine_within_one_step(gated):
    h, eng = gated
    eng.steps = 50
    mid = h.inline(URI, 1, 12)
    await started(eng)
    eng.gate.release(3)  # three steps run, the engine blocks before the fourth
    h.notify("$/cancelRequest", {"id": mid})
    r = await h.wait(mid)
    assert r["error"]["code"] == -32800
    eng.gate.release(100)  # plenty of permits: a loop that ignored the flag would use them
    assert await asyncio.to_thread(eng.finished.wait, 10)
    assert eng.lm.info["cancelled"] == 1
    assert eng.lm.info["max_steps_after_cancel"] <= 1
    assert eng.lm.info["steps"] <= 4


async def test_newer_edit_stops_the_engine_within_one_step(gated):
    h, eng = gated
    eng.steps = 50
    mid = h.inline(URI, 1, 12)
    await started(eng)
    eng.gate.release(2)
    h.change(URI, 2, [insert(1, 12, "!")])
    await h.sync()
    eng.gate.release(100)
    assert items(await h.wait(mid)) == []
    assert eng.lm.info["cancelled"] == 1
    assert eng.lm.info["max_steps_after_cancel"] <= 1
    assert eng.lm.info["steps"] <= 3


async def test_cancel_over_stdio_stops_decoding():
    with RawServer("steps:100000,delay_ms:2") as s:
        s.initialize()
        s.open(URI, TEXT_A)
        for how in ("cancel", "edit"):
            mid = s.inline(URI, 1, 12)
            s.until(lambda: s.engine_info().get("active") == 1)
            if how == "cancel":
                s.notify("$/cancelRequest", {"id": mid})
                assert s.wait(mid, 20)["error"]["code"] == -32800
            else:
                s.change(URI, 2, [insert(0, 0, "#\n")])
                assert s.wait(mid, 20)["result"]["items"] == []
            info = s.until(lambda: (i := s.engine_info()) and i["active"] == 0 and i)
            assert info["max_steps_after_cancel"] <= 1
        assert info["cancelled"] == 2 and info["steps"] < 100000
        assert s.shutdown_and_exit() == 0


# -- P5: one decode job at a time; superseded work never starts --------------------------------
async def test_one_job_at_a_time_and_superseded_requests_do_not_run():
    h = InProc(fake="steps:2,delay_ms:0,gated:1")
    try:
        await h.initialize()
        eng = await h.engine()
        docs = [f"file:///work/d{i}.py" for i in range(5)]
        for d in docs:
            h.open(d, TEXT_A)
        first = h.inline(docs[0], 1, 12)
        await started(eng)
        # while the engine is busy: 10 requests on one document, one on each other document
        same = [h.inline(docs[1], 1, 12) for _ in range(10)]
        others = [h.inline(d, 1, 12) for d in docs[2:]]
        await h.sync()  # all of the above have been dispatched
        eng.gate.release(1000)
        results = {m: await h.wait(m) for m in [first, *same, *others]}
        assert eng.lm.info["max_active"] == 1
        # the 9 superseded requests on docs[1] were answered empty without running
        assert eng.lm.info["calls"] == 1 + 1 + len(others)
        assert sum(1 for m in same if items(results[m])) == 1 and items(results[same[-1]])
        assert all(items(results[m]) for m in others)
    finally:
        eng.gate.release(1000)
        await h.close()


async def test_requests_go_before_background_cache_work_of_other_documents():
    """Opening documents queues an idle-time cache sync for each; a completion request must
    not wait behind them: it preempts the running one (within one step) and runs next."""
    h = InProc(fake="steps:1,delay_ms:0,gated:1,prepare_steps:50")
    try:
        await h.initialize(init_options={"debounceMs": 0})
        eng = await h.engine()
        docs = [f"file:///work/bg{i}.py" for i in range(6)]
        for d in docs:
            h.open(d, TEXT_A)
        ok = await asyncio.to_thread(eng.prepare_entered.wait, 10)
        assert ok  # the first document's sync is running (blocked), five more are queued
        mid = h.inline(docs[-1], 1, 12)
        await h.sync()
        eng.gate.release(10_000)
        assert items(await h.wait(mid))
        kinds = list(eng.calls)
        assert kinds[0] == ("prepare", docs[0])
        assert kinds[1] == ("complete", docs[-1]), kinds  # before the other documents' syncs
        assert h.ls.scheduler.preempted == 1
        assert eng.lm.info["prepares"] >= 1
    finally:
        eng.gate.release(10_000)
        await h.close()


async def test_the_sync_after_opening_uses_the_cursor_of_the_request_that_came_first():
    """didOpen arms a debounced sync; when a request came before it fires, the sync is for
    that request's cursor (a no-op after the request), not for the end of the file."""
    h = InProc(fake="steps:1,delay_ms:0")
    try:
        await h.initialize(init_options={"debounceMs": 50})
        eng = await h.engine()
        h.open(URI, TEXT_A)
        assert items(await h.wait(h.inline(URI, 1, 12)))
        for _ in range(500):  # until the debounced sync has run (it fires 50 ms after the open)
            if eng.lm.info["prepares"]:
                break
            await asyncio.sleep(0.01)
        assert eng.lm.info["prepare_cursor"] == len("def f(x):\n") + 12
    finally:
        await h.close()


async def test_a_request_defers_the_refreshes_of_other_documents_to_idle_time():
    h = InProc(fake="steps:1,delay_ms:0,stale:1")
    try:
        await h.initialize(init_options={"idleRefreshMs": 60_000})
        await h.engine()
        other = "file:///work/other.py"
        h.open(URI, TEXT_A)
        h.open(other, TEXT_A)
        assert items(await h.wait(h.inline(other, 1, 12)))
        loop = asyncio.get_running_loop()
        # past the staleness bound: the other document's refresh is armed soon after its request
        assert h.ls.policy._idle[other].when() - loop.time() < 1
        assert items(await h.wait(h.inline(URI, 1, 12)))
        # the user moved to URI: the other document waits for idle time, URI is refreshed soon
        assert h.ls.policy._idle[other].when() - loop.time() > 30
        assert h.ls.policy._idle[URI].when() - loop.time() < 1
    finally:
        await h.close()


# -- P7 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["exc", "oom"])
async def test_engine_exception_is_an_error_response_then_recovers(kind):
    h = InProc(fake=f"steps:1,delay_ms:0,fail:{kind},fail_first:1")
    try:
        await h.initialize()
        await h.engine()
        h.open(URI, TEXT_A)
        r = await h.wait(h.inline(URI, 1, 12))
        assert r["error"]["code"] == -32603
        r = await h.wait(h.inline(URI, 1, 12))
        assert items(r)
        assert not [n for n in h.notifications if n["method"] == "window/showMessage"]
        # out of memory frees the KV caches before the next job; a plain exception does not
        assert h.ls.engine.lm.info.get("released", 0) == (1 if kind == "oom" else 0)
    finally:
        await h.close()


async def test_dead_worker_restarts_then_disables_with_one_message():
    h = InProc(fake="steps:1,delay_ms:0,fail:die,fail_first:100")
    try:
        await h.initialize()
        eng = await h.engine()
        h.open(URI, TEXT_A)
        sched = h.ls.scheduler
        for i in range(sched.max_restarts):
            r = await h.wait(h.inline(URI, 1, 12))
            assert r["error"]["code"] == -32603 and "died" in r["error"]["message"]
            await h.sync()  # the fault report from the dying thread has been handled
            assert sched.disabled_reason is None and sched.restarts == i + 1
        r = await h.wait(h.inline(URI, 1, 12))  # one fault too many
        assert r["error"]["code"] == -32603
        await h.call("draftline/status", {})
        assert sched.disabled_reason
        calls = eng.lm.info["calls"]
        for _ in range(5):  # disabled: answered at once, the engine is not called
            r = await h.wait(h.inline(URI, 1, 12), timeout=5)
            assert r["error"]["code"] == -32603 and "disabled" in r["error"]["message"]
        assert eng.lm.info["calls"] == calls
        shown = [n for n in h.notifications if n["method"] == "window/showMessage"]
        assert len(shown) == 1 and shown[0]["params"]["type"] == 1 and "disabled" in shown[0]["params"]["message"]
        st = (await h.call("draftline/status", {}))["result"]
        assert "disabled" in st["disabled"]
    finally:
        await h.close()


def test_model_load_failure_is_reported_once_and_requests_get_errors():
    with RawServer("fail:load") as s:
        s.initialize()
        s.open(URI, TEXT_A)
        for _ in range(3):
            r = s.wait(s.inline(URI, 1, 12))
            assert r["error"]["code"] == -32603 and "load" in r["error"]["message"]
        shown = [n for n in s.messages("window/showMessage") if n["params"]["type"] == 1]
        assert len(shown) == 1 and "injected load failure" in shown[0]["params"]["message"]
        assert s.status()["model_error"]
        assert s.shutdown_and_exit() == 0


@pytest.mark.parametrize("how", ["cancel", "edit"])
async def test_a_real_decode_stops_within_one_step(tiny_dir, how):
    """P4 on the real scheduler with a real (tiny random-weight) model: `$/cancelRequest`,
    or an edit of the document, stops the decoding job within one forward pass."""
    from draftline.lsp.config import MonitorSettings, Settings

    s = Settings(model=str(tiny_dir), quantize="none", max_tokens=400, drafts=1, latency_budget_ms=0, ahead=False,
                 monitors=MonitorSettings(enabled=False))
    h = InProc(settings=s, fake=None)
    try:
        await h.initialize()
        eng = await h.engine(timeout=120)
        forwards = [0]
        at_cancel: list[int] = []
        orig = eng.net.forward

        def counted(*a, **k):
            forwards[0] += 1
            return orig(*a, **k)

        eng.net.forward = counted
        sched = h.ls.scheduler
        submit = sched.submit
        ended = asyncio.get_running_loop().create_future()

        def hooked(doc, kind, fn, supersede=()):
            if kind != "complete":
                return submit(doc, kind, fn, supersede)

            def run(cancel):
                flag_set = cancel.set

                def on_set():  # the forwards started when the job's flag went up
                    at_cancel.append(forwards[0])
                    flag_set()

                cancel.set = on_set
                try:
                    return fn(cancel)
                finally:
                    n = forwards[0]
                    h.loop.call_soon_threadsafe(lambda: ended.done() or ended.set_result(n))

            return submit(doc, kind, run, supersede)

        sched.submit = hooked
        text = "values = {\n" + "".join(f"    'k{i}': {i},\n" for i in range(40))
        h.open(URI, text)
        mid = h.inline(URI, 41, 0)
        while forwards[0] < 4:  # decoding is underway (the sync's forwards come first)
            await asyncio.sleep(0.005)
        if how == "cancel":
            h.notify("$/cancelRequest", {"id": mid})
            assert (await h.wait(mid))["error"]["code"] == -32800
        else:
            h.change(URI, 2, [insert(0, 0, "#\n")])
            assert items(await h.wait(mid)) == []
        last = await asyncio.wait_for(ended, 60)
        assert at_cancel, "the job's cancel flag was never set"
        assert last - at_cancel[0] <= 1
        eng.net.forward = orig
    finally:
        await h.close()
