"""The real server over stdio (pytest-lsp) on the real default model."""

from __future__ import annotations

import asyncio

import pytest
import pytest_lsp
from lsprotocol import types as T
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from conftest import stdlib_source

pytestmark = [pytest.mark.real_model]

from support.clients import SERVE as SERVER  # noqa: E402 (the real engine: no DRAFTLINE_FAKE_ENGINE here)


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER))
async def client(lsp_client: LanguageClient, default_model_dir):
    result = await lsp_client.initialize_session(T.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"),
        initialization_options={"drafts": 3, "maxTokens": 32},
    ))
    caps = result.capabilities
    # clients (vscode-languageclient, Neovim 0.12, lsp-mode) check this before asking
    assert caps.inline_completion_provider is not None
    assert caps.completion_provider is not None
    assert caps.text_document_sync.change == T.TextDocumentSyncKind.Incremental
    yield
    await lsp_client.shutdown_session()


def plain(x):
    """pygls hands custom-request results back as namedtuples; make them dicts again."""
    if hasattr(x, "_asdict"):
        return {k: plain(v) for k, v in x._asdict().items()}
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


async def status(client) -> dict:
    return plain(await client.protocol.send_request_async("draftline/status", {}))


def open_doc(client, uri: str, text: str, lang: str = "python") -> None:
    client.text_document_did_open(T.DidOpenTextDocumentParams(
        text_document=T.TextDocumentItem(uri=uri, language_id=lang, version=1, text=text)))


async def test_inline_completion_continues_code(client: LanguageClient):
    src = stdlib_source("textwrap.py")
    lines = src.split("\n")
    # cursor after the indentation of a line in the middle of a function body
    ln = next(i for i, l in enumerate(lines) if l.startswith("        chunks = self._split_chunks(text)"))
    uri = "file:///work/textwrap_copy.py"
    open_doc(client, uri, src)
    res = await asyncio.wait_for(client.text_document_inline_completion_async(T.InlineCompletionParams(
        text_document=T.TextDocumentIdentifier(uri=uri),
        position=T.Position(line=ln, character=8),
        context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Invoked),
    )), 120)
    items = res.items if hasattr(res, "items") else res
    assert items, "no drafts"
    first = items[0].insert_text
    assert first.strip(), first
    assert not first.startswith(" ")  # token healing: the indentation is already typed
    # work-done progress was reported while the model loaded
    ends = [v for vals in client.progress_reports.values() for v in vals if isinstance(v, T.WorkDoneProgressEnd)]
    assert ends
    st = await status(client)
    assert st["model"]["architecture"] == "llama"
    cache = next(c for c in st["caches"] if c["uri"] == uri)
    assert cache["tokens"] > 100 and cache["bytes"] > 0


async def test_completion_items_replace_to_line_end(client: LanguageClient):
    text = "import os\n\n\ndef base(p):\n    return os.path.\n"
    uri = "file:///work/m.py"
    open_doc(client, uri, text)
    res = await asyncio.wait_for(client.text_document_completion_async(T.CompletionParams(
        text_document=T.TextDocumentIdentifier(uri=uri), position=T.Position(line=4, character=19))), 120)
    assert res.items
    for it in res.items:
        assert it.text_edit.range.end == T.Position(line=4, character=19)
        assert it.label == it.text_edit.new_text.split("\n")[0].strip()


async def test_edit_then_complete_uses_pie(client: LanguageClient):
    src = stdlib_source("json/decoder.py")
    uri = "file:///work/decoder.py"
    open_doc(client, uri, src)
    lines = src.split("\n")
    ln = next(i for i, l in enumerate(lines) if "obj, end = self.scan_once(s, idx)" in l) - 2
    client.text_document_did_change(T.DidChangeTextDocumentParams(
        text_document=T.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[T.TextDocumentContentChangePartial(
            range=T.Range(start=T.Position(line=20, character=0), end=T.Position(line=20, character=0)),
            text="# inserted line\n")]))
    res = await asyncio.wait_for(client.text_document_inline_completion_async(T.InlineCompletionParams(
        text_document=T.TextDocumentIdentifier(uri=uri), position=T.Position(line=ln + 2 + 1, character=12),
        context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Invoked))), 120)
    assert res.items
    text = plain(await client.protocol.send_request_async("draftline/documentText", {"uri": uri}))
    assert text["version"] == 2 and "# inserted line\n" in text["text"]


async def test_unknown_uri_and_bad_position_are_errors(client: LanguageClient):
    with pytest.raises(Exception) as e:
        await client.text_document_inline_completion_async(T.InlineCompletionParams(
            text_document=T.TextDocumentIdentifier(uri="file:///nope.py"), position=T.Position(line=0, character=0),
            context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Invoked)))
    assert "not open" in str(e.value)
    open_doc(client, "file:///work/s.py", "x = 1\n")
    with pytest.raises(Exception) as e:
        await client.text_document_completion_async(T.CompletionParams(
            text_document=T.TextDocumentIdentifier(uri="file:///work/s.py"), position=T.Position(line=99, character=0)))
    assert "line 99" in str(e.value)
    # a change for a never-opened document is ignored, the server keeps answering
    client.text_document_did_change(T.DidChangeTextDocumentParams(
        text_document=T.VersionedTextDocumentIdentifier(uri="file:///never.py", version=2),
        content_changes=[T.TextDocumentContentChangeWholeDocument(text="boom")]))
    st = await status(client)
    assert st["documents"] == 1


async def test_accept_counts_and_prefetches(client: LanguageClient):
    text = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    "
    uri = "file:///work/acc.py"
    open_doc(client, uri, text)
    res = await asyncio.wait_for(client.text_document_inline_completion_async(T.InlineCompletionParams(
        text_document=T.TextDocumentIdentifier(uri=uri), position=T.Position(line=5, character=4),
        context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Invoked))), 120)
    draft = res.items[0].insert_text
    client.protocol.notify("textDocument/didShowCompletion", {"item": {"insertText": draft}})
    # the editor inserts the draft, then reports the accept
    client.text_document_did_change(T.DidChangeTextDocumentParams(
        text_document=T.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[T.TextDocumentContentChangePartial(
            range=T.Range(start=T.Position(line=5, character=4), end=T.Position(line=5, character=4)), text=draft)]))
    await client.workspace_execute_command_async(T.ExecuteCommandParams(command="draftline.accept", arguments=[uri, draft]))
    lines = (text[:-4] + "    " + draft).split("\n")
    res2 = await asyncio.wait_for(client.text_document_inline_completion_async(T.InlineCompletionParams(
        text_document=T.TextDocumentIdentifier(uri=uri), position=T.Position(line=len(lines) - 1, character=len(lines[-1])),
        context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Automatic))), 120)
    assert res2 is not None
    st = await status(client)
    assert st["counters"]["shown"] == 1 and st["counters"]["accepted"] == 1
    # answered without a fresh decode: from the prefetch after the accept, or from the
    # first answer's idle-time continuation when it already reached past the draft
    assert st["counters"].get("prefetch_hits", 0) + st["counters"].get("ahead_hits", 0) == 1


async def test_typing_what_a_draft_said_is_answered_from_it(client: LanguageClient):
    text = "import os\n\n\ndef paths(root):\n    out = []\n    for name in os.listdir(root):\n        "
    uri = "file:///work/ahead.py"
    open_doc(client, uri, text)

    async def ask(line, ch):
        return await asyncio.wait_for(client.text_document_inline_completion_async(T.InlineCompletionParams(
            text_document=T.TextDocumentIdentifier(uri=uri), position=T.Position(line=line, character=ch),
            context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Automatic))), 120)

    res = await ask(6, 8)
    draft = res.items[0].insert_text
    assert len(draft) > 2
    for i, ch in enumerate(draft[:2], start=2):  # two keystrokes along the draft
        client.text_document_did_change(T.DidChangeTextDocumentParams(
            text_document=T.VersionedTextDocumentIdentifier(uri=uri, version=i),
            content_changes=[T.TextDocumentContentChangePartial(
                range=T.Range(start=T.Position(line=6, character=8 + i - 2), end=T.Position(line=6, character=8 + i - 2)),
                text=ch)]))
        again = await ask(6, 8 + i - 1)
        assert again.items[0].insert_text == draft[i - 1:].split("\n")[0]
    st = plain(await client.protocol.send_request_async("draftline/status", {"recent": 3}))
    assert [r["source"] for r in st["recent"]] == ["engine", "ahead", "ahead"]
    assert st["counters"]["ahead_hits"] == 2


def test_an_open_answered_from_a_short_window_is_answered_again_in_idle_time():
    """Over stdio: a cold open is answered from a short window; the server grows the window
    back and answers that place again in idle time (`reanswered`), so an edit far above the
    cursor is then answered by re-verifying that answer (`reused`: one tree forward)."""
    from support.clients import RawServer

    src = stdlib_source("textwrap.py")
    text = src[:src.index("        chunks = self._split_chunks(text)")]
    line = text.count("\n")
    uri = "file:///work/reanswer.py"
    with RawServer(None) as s:
        # a budget that never runs out here: what is decoded does not depend on this machine's speed
        s.initialize({"latencyBudgetMs": 600_000, "drafts": 3, "maxTokens": 48})
        s.open(uri, text)
        first = s.wait(s.inline(uri, line, 0), timeout=300)
        assert first["result"]["items"]
        rec = s.result("draftline/status", {"recent": 1})["recent"][-1]
        assert rec["tokens"]["window"] == "short"
        # idle time, all of it: the whole window, re-answered, refreshed exactly (and re-answered
        # again if the first re-answer read the stale grown cache: with the short window's
        # header (`farTokens`) that one ran to `maxTokens` here, so it was not checkable)
        seen: list[tuple] = []

        def idle() -> bool:  # re-answered, exact, and nothing new for 6 s (a re-answer takes ~0.5-1 s)
            st = s.status()
            stale = tuple(c["stale"] for c in st.get("caches", []) if c["uri"] == uri)
            seen.append((st["counters"].get("reanswered", 0), stale))
            return seen[-1][0] > 0 and seen[-1][1] == (0,) and len(seen) > 12 and len(set(seen[-12:])) == 1
        s.until(idle, timeout=300, every=0.5)
        at = text[:text.index("class TextWrapper:")].count("\n")
        s.change(uri, 2, [{"range": {"start": {"line": at, "character": 0}, "end": {"line": at, "character": 0}},
                           "text": "\n"}])  # a blank line far above
        again = s.wait(s.inline(uri, line + 1, 0), timeout=300)
        assert again["result"]["items"]
        rec = s.result("draftline/status", {"recent": 1})["recent"][-1]
        assert rec["version"] == 2 and rec["tokens"]["window"] == "full"
        assert rec["tokens"]["reused"] and rec["tokens"]["steps"] == 1, rec
