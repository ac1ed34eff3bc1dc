"""Neovim end to end: the plugin in editors/nvim drives the real `draftline serve` from a
headless Neovim (any version from 0.7: Debian 12 ships 0.7.2).

The Lua side (written to a temp init.lua) opens a Python file, asks the plugin for drafts
at `    return |`, checks the ghost-text extmark, cycles, accepts, writes the buffer, then
asks for the completion menu once through the built-in client, and dumps what it saw as
JSON for the assertions here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "editors" / "nvim"
NVIM = os.environ.get("DRAFTLINE_NVIM") or shutil.which("nvim")  # DRAFTLINE_NVIM: another Neovim to test

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(NVIM is None, reason="nvim not on PATH (apt-get install -y neovim, or run editors/ci.sh)"),
]

SOURCE = '''\
"""Small arithmetic helpers."""


def sub(a, b):
    """Return a minus b."""
    return a - b


def add(a, b):
    """Return the sum of a and b."""
    return 


def mul(a, b):
    """Return a times b."""
    return a
'''

LUA = r'''
local out_path = %(out)s
local result = { ok = false, steps = {} }
local function step(s) table.insert(result.steps, s) end

local function finish()
  local f = assert(io.open(out_path, "w"))
  f:write(vim.fn.json_encode(result))
  f:close()
  vim.cmd("qa!")
end

local ok, err = xpcall(function()
  vim.opt.runtimepath:prepend(%(plugin)s)
  vim.opt.swapfile = false
  -- the script runs in Normal mode: let the cursor sit after the line's end, as in Insert mode
  vim.opt.virtualedit = "onemore"
  vim.cmd("filetype plugin indent on") -- -u init.lua runs before Neovim turns detection on
  local v = vim.version()
  result.nvim_version = string.format("%%d.%%d.%%d", v.major, v.minor, v.patch)
  local dl = require("draftline")
  dl.setup({
    cmd = %(cmd)s,
    filetypes = { "python" },
    drafts = 3,
    max_tokens = 24,
    auto_trigger = false,
  })
  vim.cmd("edit " .. vim.fn.fnameescape(%(file)s))
  step("opened, filetype=" .. vim.bo.filetype)
  assert(vim.bo.filetype == "python", "filetype not detected")
  local up = vim.wait(60000, function()
    local c = dl.client()
    return c ~= nil and c.initialized == true and vim.lsp.buf_is_attached(0, c.id)
  end, 20)
  assert(up, "the draftline client did not start/attach")
  step("client up")

  -- ghost text: cursor after `    return ` (line 11, 1-based)
  local row = 11
  local line = vim.api.nvim_buf_get_lines(0, row - 1, row, false)[1]
  assert(line == "    return ", "unexpected line: " .. vim.inspect(line))
  vim.api.nvim_win_set_cursor(0, { row, #line })
  local drafts, rerr
  local t0 = vim.loop.hrtime()
  assert(dl.request(0, { callback = function(d, e) drafts, rerr = d, e end }), "request not sent")
  assert(vim.wait(120000, function() return drafts ~= nil end, 20), "no answer in 120 s")
  result.request_ms = (vim.loop.hrtime() - t0) / 1e6
  result.request_error = rerr and vim.inspect(rerr) or nil
  result.drafts = drafts
  step("drafts: " .. #drafts)
  assert(#drafts > 0, "empty drafts")
  result.visible = dl.visible()
  local marks = vim.api.nvim_buf_get_extmarks(0, dl.ns, 0, -1, { details = true })
  result.extmarks = {}
  for _, m in ipairs(marks) do
    local d = m[4] or {}
    local vt = {}
    for _, chunk in ipairs(d.virt_text or {}) do table.insert(vt, chunk[1]) end
    local vl = {}
    for _, l in ipairs(d.virt_lines or {}) do
      local s = ""
      for _, chunk in ipairs(l) do s = s .. chunk[1] end
      table.insert(vl, s)
    end
    table.insert(result.extmarks, { row = m[2], col = m[3], virt_text = table.concat(vt), virt_lines = vl })
  end
  local shown = dl.drafts()
  result.index_before = shown.index
  dl.next()
  result.index_after_next = dl.drafts().index
  dl.prev()
  result.index_after_prev = dl.drafts().index
  result.accepted_text = dl.drafts().texts[dl.drafts().index]
  -- the first word alone, then the rest: together the whole draft
  result.word_accepted = dl.accept_word()
  result.line_after_word = vim.api.nvim_get_current_line()
  result.rest_after_word = dl.visible() and dl.drafts().texts[1] or ""
  if dl.visible() then
    result.accepted = dl.accept()
  else -- a one-word draft: taken whole by accept_word
    result.accepted = result.word_accepted
  end
  result.visible_after_accept = dl.visible()
  result.cursor_after_accept = vim.api.nvim_win_get_cursor(0)
  result.lines = vim.api.nvim_buf_get_lines(0, 0, -1, false)
  vim.cmd("write")
  step("accepted and written")

  -- the completion menu path: textDocument/completion through the built-in client
  result.omnifunc = vim.bo.omnifunc
  local crow
  for i, l in ipairs(vim.api.nvim_buf_get_lines(0, 0, -1, false)) do
    if l == "    return a" then crow = i - 1 end
  end
  assert(crow, "mul's return line not found")
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(0) },
    position = { line = crow, character = 12 },
  }
  local t1 = vim.loop.hrtime()
  local res = vim.lsp.buf_request_sync(0, "textDocument/completion", params, 120000)
  result.completion_ms = (vim.loop.hrtime() - t1) / 1e6
  result.completion = {}
  for _, r in pairs(res or {}) do
    if r.err then result.completion_error = vim.inspect(r.err) end
    local items = r.result and (r.result.items or r.result) or {}
    for _, it in ipairs(items) do
      table.insert(result.completion, { label = it.label, newText = it.textEdit and it.textEdit.newText,
                                        range = it.textEdit and it.textEdit.range })
    end
  end
  step("completion items: " .. #result.completion)
  -- vim.lsp.omnifunc turns them into complete-items (what the menu shows)
  local to_items = vim.lsp.util.text_document_completion_list_to_complete_items -- 0.7 .. 0.10
  if not to_items and vim.lsp.completion then
    to_items = vim.lsp.completion._lsp_to_complete_items -- 0.11+
  end
  if to_items then
    local citems = to_items(
      { items = (function()
          local t = {}
          for _, r in pairs(res or {}) do
            for _, it in ipairs(r.result and (r.result.items or r.result) or {}) do table.insert(t, it) end
          end
          return t
        end)() }, "a")
    result.menu_words = {}
    for _, ci in ipairs(citems) do table.insert(result.menu_words, ci.word) end
  end
  result.status = dl.status(10000)
  result.messages = vim.fn.execute("messages")
  result.ok = true
end, debug.traceback)
if not ok then result.error = tostring(err) end
finish()
'''


def lua_str(s: str) -> str:
    return json.dumps(str(s))  # a JSON string is a valid Lua string literal for these paths


def test_nvim_ghost_text_accept_and_completion(tmp_path: Path, default_model_dir):
    src = tmp_path / "arith.py"
    src.write_text(SOURCE)
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "draftline.lsp.cli", "serve"]
    init = tmp_path / "init.lua"
    init.write_text(LUA % {
        "out": lua_str(out),
        "plugin": lua_str(PLUGIN),
        "file": lua_str(src),
        "cmd": "{ " + ", ".join(lua_str(c) for c in cmd) + " }",
    })
    env = dict(os.environ)
    env.setdefault("DRAFTLINE_LOG", "WARNING")
    env["XDG_STATE_HOME"] = str(tmp_path / "state")  # lsp.log stays in the temp dir
    t0 = time.monotonic()
    proc = subprocess.Popen([NVIM, "--headless", "--clean", "-u", str(init)], cwd=tmp_path, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        log = b""
    finally:
        # nvim and the server it started share our new session: end them all
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
    elapsed = time.monotonic() - t0
    text = log.decode(errors="replace")[-4000:]
    assert out.exists(), f"nvim wrote no result (rc={proc.returncode}, {elapsed:.0f} s):\n{text}"
    r = json.loads(out.read_text())
    assert r.get("ok"), f"{r.get('error')}\nsteps: {r.get('steps')}\nnvim output:\n{text}"

    # drafts arrived and the first was on screen as ghost text at the cursor
    assert r["drafts"] and all(d for d in r["drafts"]), r
    assert r["visible"] is True
    assert len(r["extmarks"]) == 1, r["extmarks"]
    mark = r["extmarks"][0]
    assert (mark["row"], mark["col"]) == (10, len("    return "))
    first_draft = r["drafts"][0]
    assert mark["virt_text"].rstrip() == first_draft.split("\n")[0].rstrip()
    assert len(mark["virt_lines"]) == first_draft.count("\n")
    # cycling moves between the drafts and back
    n = len(r["drafts"])
    assert r["index_before"] == 1 and r["index_after_next"] == (2 if n > 1 else 1) and r["index_after_prev"] == 1

    # accepting inserted the draft at the cursor, and the file on disk has it
    draft = r["accepted_text"]
    assert draft == first_draft
    assert r["word_accepted"] is True
    typed = r["line_after_word"][len("    return "):]
    assert typed and draft.startswith(typed) and typed + r["rest_after_word"] == draft, r
    assert r["accepted"] is True and r["visible_after_accept"] is False
    expected = SOURCE.replace("    return \n", "    return " + draft + "\n", 1)
    assert "\n".join(r["lines"]) + "\n" == expected
    assert src.read_text() == expected
    last = ("    return " + draft).split("\n")
    assert r["cursor_after_accept"] == [11 + len(last) - 1, len(last[-1].encode())]

    # the completion menu: items from the start of the typed word to the end of the line
    assert r.get("completion_error") is None, r["completion_error"]
    assert r["completion"], r
    for it in r["completion"]:
        assert it["newText"].startswith("a"), it
        assert it["range"]["start"]["character"] == 11 and it["range"]["end"]["character"] == 12
    assert r["omnifunc"] == "v:lua.vim.lsp.omnifunc"
    assert r.get("menu_words"), r
    assert "deprecat" not in r["messages"].lower(), r["messages"]
    # the server answered both requests
    st = r["status"]
    assert st and st["counters"]["requests"] >= 2
    if st["counters"].get("accepted", 0) > 0:  # a server that counts what clients report
        assert st["counters"]["shown"] >= 1 and st["counters"]["partially_accepted"] >= 1, st["counters"]
    print(f"nvim {r['nvim_version']}: drafts in {r['request_ms']:.0f} ms, completion in {r['completion_ms']:.0f} ms, "
          f"total {elapsed:.1f} s; drafts={r['drafts']!r}; counters={st['counters']}")
