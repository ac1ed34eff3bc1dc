"""Monitors on the real default model, end to end: Engine.complete + monitor_guides."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.real_model

# the case of the known bug: the prompt heals the trailing ".", so step 0 sees `...os.path`
DOC = "import os\n\n\ndef base(p):\n    return os.path.\n"


class _Settings:  # the LSP's monitor settings, all on
    enabled = members = names = kwargs = modules = scopes = True


def test_after_os_path_dot_every_draft_is_a_member(default_model, tmp_path):
    from draftline.analysis.monitors import MonitorSet
    from draftline.completion.engine import Engine, EngineConfig
    from draftline.completion.guides import monitor_guides, warm_up

    warm_up(wait=60)
    path = str(tmp_path / "m.py")
    eng = Engine(default_model, EngineConfig(k=3, max_tokens=6))
    cursor = DOC.index("os.path.") + len("os.path.")
    pr = eng.prompt_for(path, DOC, cursor)
    assert pr.heal == "."  # the case the bug was about
    guides = monitor_guides(eng, "python", path, pr, {}, _Settings())
    res = eng.complete(path, DOC, cursor, guides=guides)

    members = MonitorSet("python", path=path).at(DOC[:cursor], DOC[cursor:]).candidates
    assert members and {"join", "dirname"} <= members
    assert res.drafts, res.to_json()
    for d in res.drafts:
        ident = re.match(r"\w*", d.text).group()
        assert ident[:1].isidentifier(), d.text  # `*p`, `(p)`, ` x` are not member accesses
        # an identifier running to the end of the draft may have been cut by max_tokens: a prefix
        assert ident in members or (ident == d.text and any(m.startswith(ident) for m in members)), (d.text, ident)
    print(f"\ndrafts {[d.text for d in res.drafts]} (decode {res.timings['decode']:.0f} ms)")

