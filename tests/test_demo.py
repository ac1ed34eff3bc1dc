"""`draftline demo` (the README's first command) shows what it says, on the real model."""

from __future__ import annotations

import io
import re

import pytest


@pytest.mark.real_model
def test_the_demo_shows_each_step_with_no_junk_and_the_patched_cache_computing_less(default_model_dir):
    from draftline.lsp.demo import run

    out = io.StringIO()
    assert run(str(default_model_dir), out=out) == 0
    said = out.getvalue()
    for step in ("1. first answer in the newly opened file", "2. idle time: the whole window (",
                 "3. after an edit", "the same prompt re-encoded from the edit on"):
        assert step in said, said
    assert "[JUNK" not in said and "(no draft)" not in said, said
    # the edit far above is answered from the patched cache: fewer tokens than the re-encode
    m = re.search(r"sync \d+ ms \((\d+) tokens\) vs \d+ ms patched \((\d+) tokens\)", said)
    assert m and int(m.group(2)) * 4 < int(m.group(1)), said
