"""Background work reads snapshots, never live server state (issue 15, part 1).

The monitor guides of a completion were built on the worker thread by iterating the live
table of open documents; a didOpen / didClose dispatched on the event loop at that moment
raised "dictionary changed size during iteration" inside the job and the completion
failed.  Every job now gets an immutable snapshot taken on the event loop when it is
queued."""

from __future__ import annotations

import asyncio
import sys

from draftline.lsp.config import Settings


async def test_open_and_close_in_a_tight_loop_while_completions_run(tiny_dir):
    from support.clients import InProc

    s = Settings(model=str(tiny_dir), quantize="none", max_tokens=4, drafts=2)
    h = InProc(settings=s, fake=None)
    old = sys.getswitchinterval()
    try:
        await h.initialize()
        await h.engine(timeout=120)
        main = "file:///work/snap/main.py"
        h.open(main, "import os\n\ndef f(x):\n    return os.path.join(x, 'a')\n\nvalue = f(")
        # many other open documents: the worker's walk over them takes long enough to be
        # interrupted by the loop thread (switch interval lowered to make that likely)
        for i in range(200):
            h.open(f"file:///work/snap/o{i}.py", f"x{i} = {i}\n")
        await h.sync()
        sys.setswitchinterval(1e-6)
        churn = [f"file:///work/snap/c{i}.py" for i in range(5)]
        errors = []
        for _ in range(12):
            mid = h.inline(main, 5, 10)
            while not h.responses.get(mid):
                for u in churn:  # didOpen / didClose dispatched while the job runs
                    h.open(u, "y = 1\n")
                for u in churn:
                    h.notify("textDocument/didClose", {"textDocument": {"uri": u}})
                await asyncio.sleep(0.002)
            r = h.responses[mid][0]
            if "error" in r:
                errors.append(r["error"])
        assert errors == []
        # the snapshot is of this request's moment: the documents are all still there (once
        # the last round of didOpen / didClose sent before the answer came has been
        # dispatched: counted before that, 205 of 201 in a CI run, 2026-12-05)
        await h.sync()
        assert len(h.ls.docs.docs) == 201
    finally:
        sys.setswitchinterval(old)
        await h.close()
