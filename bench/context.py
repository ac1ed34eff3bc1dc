"""What a change of the project-context header costs, against a re-encode of the same prompt.

For --files files of jedi (a cursor mid-file, a window of about --tokens tokens): the header
completion.context builds for it (snippets and signatures from the rest of jedi) goes before
the file's text; the cache is synced and refreshed exactly; then the header changes (its last
snippet out, another in) and the cache is synced again.  Side by side, in the same run, the
same new prompt encoded from scratch.

    python bench/context.py [--files 3] [--tokens 2048] [--json]
Last line with --json: {"header_sync_ms", "reencode_ms", "ratio", ...}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import package_dir  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    import torch

    from draftline.completion import model as M
    from draftline.completion.engine import Engine, EngineConfig

    torch.set_num_threads(2)
    lm = M.load(None)
    from draftline.completion.context import ProjectIndex, render, select

    files = sorted(p for p in (package_dir("jedi") / "inference").glob("*.py") if p.stat().st_size > 20000)[: a.files]
    index = ProjectIndex()
    index.build([str(package_dir("jedi"))]).join()

    class Fixed:
        text = ""

        def current(self, doc):
            return self.text

        def update(self, doc, text, cursor, others):
            return self.text

        def drop(self, doc):
            pass

    sync_ms, full_ms, computed, moved, header_len = [], [], [], [], []
    for i, f in enumerate(files):
        text = f.read_text()
        cursor = text.find("\n", len(text) // 2) + 1
        eng = Engine(lm, EngineConfig(k=1, max_tokens=1, latency_budget_ms=0, context_tokens=a.tokens,
                                      project_context=True, monitors=False, ahead=False))
        eng.warm_up()
        key = str(f.resolve())
        fis = index.all_files({}, exclude=key)
        picked, sigs, _ = select(text[:cursor], frozenset(), fis, eng.tok, budget=eng.config.header_tokens)
        others = [c for fi in fis for c in fi.chunks if c not in picked][:50]
        eng.headers = Fixed()
        eng.headers.text = render(picked, sigs, f.name, None)
        doc = f"file:///bench/{f.name}"
        eng._sync(doc, eng.prompt_for(doc, text, cursor), None)  # the file behind its first header
        eng.refresh(doc)
        # a snippet out, another in (what a header change is)
        swapped = picked[:-1] + [others[len(others) // 2]] if picked else others[:1]
        eng.headers.text = render(swapped, sigs, f.name, None)
        pr = eng.prompt_for(doc, text, cursor)
        t = time.perf_counter()
        st = eng._sync(doc, pr, None)
        sync_ms.append((time.perf_counter() - t) * 1000)
        computed.append(st.computed)
        moved.append(st.moved)
        header_len.append(len(eng.header_ids(doc, None)))
        ref = Engine(lm, EngineConfig(k=1, max_tokens=1, latency_budget_ms=0, context_tokens=a.tokens, monitors=False))
        c = ref.caches.get(doc)
        t = time.perf_counter()
        c.sync(pr.tokens[:-1], mode="full")
        full_ms.append((time.perf_counter() - t) * 1000)
        print(f"  {f.name}: prompt {len(pr.tokens)} tokens (header {header_len[-1]}, {len(picked)} snippets, "
              f"{len(sigs)} signatures): header change synced in {sync_ms[-1]:.0f} ms ({st.computed} computed, "
              f"{st.moved} moved), re-encode {full_ms[-1]:.0f} ms", flush=True)
    out = {"header_sync_ms": round(statistics.median(sync_ms), 1), "reencode_ms": round(statistics.median(full_ms), 1),
           "ratio": round(statistics.median(full_ms) / statistics.median(sync_ms), 1),
           "computed": computed, "moved": moved, "header_tokens": header_len, "date": time.strftime("%Y-%m-%d")}
    print(f"header change at ~{a.tokens} tokens: {out['header_sync_ms']} ms vs re-encode {out['reencode_ms']} ms "
          f"({out['ratio']}x), same run")
    if a.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
