-- draftline for Neovim: inline drafts (ghost text) and the completion menu from the
-- `draftline serve` language server, on any Neovim from 0.7.
--
--   require("draftline").setup({ cmd = { "draftline", "serve" }, filetypes = { "python" } })
--
-- Ghost text is our own implementation (extmarks: virt_text for the first line of a draft,
-- virt_lines for the rest) on `textDocument/inlineCompletion`, so that it works the same on
-- 0.7 .. 0.12 and reports what was shown / accepted to the server (the Copilot-compatible
-- `textDocument/didShowCompletion`, `textDocument/didPartiallyAcceptCompletion` and the
-- `draftline.accept` command). With `builtin = true` and a Neovim that has
-- `vim.lsp.inline_completion` (0.12+), that is used instead.
-- The completion menu is the built-in client's `textDocument/completion` through
-- `vim.lsp.omnifunc` (<C-x><C-o>).

local api = vim.api
local uv = vim.loop or vim.uv

local M = {}

local defaults = {
  cmd = { "draftline", "serve" },
  filetypes = { "python", "javascript", "javascriptreact", "typescript", "typescriptreact",
                "go", "rust", "java", "c", "cpp", "lua", "sh" },
  root_dir = nil, -- nil: the current directory when the server starts
  -- initializationOptions (nil = the server's default); `init_options` is merged over them
  model = nil,
  drafts = 3,
  max_tokens = nil,
  server_debounce_ms = nil, -- the server's `debounceMs` (cache sync after an edit)
  monitors = nil, -- true / false / { enabled = ..., members = ..., ... }
  init_options = {},
  -- client side
  auto_trigger = true, -- request drafts while typing (after `debounce_ms` of quiet)
  debounce_ms = 150,
  omnifunc = true, -- set 'omnifunc' to vim.lsp.omnifunc in attached buffers
  builtin = false, -- use vim.lsp.inline_completion when this Neovim has it (0.12+)
  hl_group = "DraftlineGhost", -- linked to Comment unless defined
  keymaps = {
    accept = "<Tab>",
    accept_word = "<M-Right>",
    accept_line = "<M-Down>",
    next = "<M-]>",
    prev = "<M-[>",
    dismiss = "<C-]>",
    request = "<M-\\>",
  },
  on_attach = nil, -- function(client, bufnr) called after ours
}

M.config = vim.deepcopy(defaults)

local ns = api.nvim_create_namespace("draftline")
local augroup = nil
local client_id = nil -- one server for the whole Neovim session: the model is loaded once
local attached = {} -- bufnr -> true
local timer = nil
local pending = nil -- { client, id, bufnr }
local S = nil -- the drafts on screen: see `new_state`
M.progress = nil -- last work-done progress message from the server (model loading)

local function has(feature)
  return vim.fn.has(feature) == 1
end

local METHOD_CALLS = has("nvim-0.11") -- client:request() instead of client.request()

local function c_request(c, method, params, handler, bufnr)
  if METHOD_CALLS then
    return c:request(method, params, handler, bufnr)
  end
  return c.request(method, params, handler, bufnr)
end

local function c_notify(c, method, params)
  if METHOD_CALLS then
    return c:notify(method, params)
  end
  return c.notify(method, params)
end

local function c_cancel(c, id)
  if METHOD_CALLS then
    return c:cancel_request(id)
  end
  return c.cancel_request(id)
end

local function c_stopped(c)
  if METHOD_CALLS then
    return c:is_stopped()
  end
  return c.is_stopped()
end

--- The running draftline client, or nil.
function M.client()
  if not client_id then
    return nil
  end
  local c = vim.lsp.get_client_by_id(client_id)
  if c == nil or c_stopped(c) then
    return nil
  end
  return c
end

local function client_for(bufnr)
  local c = M.client()
  if c and vim.lsp.buf_is_attached(bufnr, c.id) then
    return c
  end
  return nil
end

-- positions ----------------------------------------------------------------------------------

-- number of `encoding` units (utf-8 bytes, utf-16 code units, utf-32 code points) in the
-- first `byte_col` bytes of `line`
local function units_of(line, byte_col, encoding)
  if encoding == "utf-8" then
    return math.min(byte_col, #line)
  end
  local units, i = 0, 1
  local stop = math.min(byte_col, #line)
  while i <= stop do
    local b = line:byte(i)
    local n = b >= 0xF0 and 4 or b >= 0xE0 and 3 or b >= 0xC0 and 2 or 1
    units = units + ((n == 4 and encoding == "utf-16") and 2 or 1)
    i = i + n
  end
  return units
end

-- byte column of `units` encoding units into `line` (clamped to the line)
local function byte_of(line, units, encoding)
  if encoding == "utf-8" then
    return math.min(units, #line)
  end
  local u, i = 0, 1
  while i <= #line and u < units do
    local b = line:byte(i)
    local n = b >= 0xF0 and 4 or b >= 0xE0 and 3 or b >= 0xC0 and 2 or 1
    u = u + ((n == 4 and encoding == "utf-16") and 2 or 1)
    i = i + n
  end
  return i - 1
end

local function get_line(bufnr, row)
  return api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
end

local function encoding_of(c)
  return c.offset_encoding or "utf-16"
end

local function lsp_position(bufnr, row, col, encoding)
  return { line = row, character = units_of(get_line(bufnr, row), col, encoding) }
end

local function buf_position(bufnr, pos, encoding)
  return pos.line, byte_of(get_line(bufnr, pos.line), pos.character, encoding)
end

local function cursor_of(bufnr)
  local win = api.nvim_get_current_win()
  if api.nvim_win_get_buf(win) ~= bufnr then
    local wins = vim.fn.win_findbuf(bufnr)
    if #wins == 0 then
      return nil
    end
    win = wins[1]
  end
  local pos = api.nvim_win_get_cursor(win)
  return win, pos[1] - 1, pos[2]
end

-- ghost text ---------------------------------------------------------------------------------

local function notify_server(method, params)
  local c = S and M.client()
  if c then
    pcall(c_notify, c, method, params)
  end
end

local function clear_marks(bufnr)
  if api.nvim_buf_is_valid(bufnr) then
    api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
  end
end

local function cancel_pending()
  if pending then
    pcall(c_cancel, pending.client, pending.id)
    pending = nil
  end
end

--- Drop the drafts on screen (and any request in flight).
function M.dismiss()
  cancel_pending()
  if S then
    clear_marks(S.bufnr)
    S = nil
    return true
  end
  return false
end

-- the drafts on screen still belong where the cursor and the buffer are
local function state_valid()
  if not S or not api.nvim_buf_is_valid(S.bufnr) then
    return false
  end
  if api.nvim_buf_get_changedtick(S.bufnr) ~= S.tick then
    return false
  end
  local _, row, col = cursor_of(S.bufnr)
  return row == S.row and col == S.col
end

local function display_text(bufnr, s)
  local ts = vim.bo[bufnr].tabstop
  return (s:gsub("\t", string.rep(" ", ts > 0 and ts or 8)))
end

local function render()
  if not S then
    return
  end
  local bufnr = S.bufnr
  clear_marks(bufnr)
  local item = S.items[S.index]
  if not item then
    return
  end
  local hl = M.config.hl_group
  local line = get_line(bufnr, S.row)
  local lines = vim.split(item.text, "\n", { plain = true })
  -- the line's text after what the draft replaces moves to after the draft's last line
  local suffix = item.end_row == S.row and line:sub(item.end_col + 1) or ""
  local covered = line:sub(S.col + 1) -- overlay text hides what follows the cursor
  local first = lines[1]
  if #lines == 1 then
    first = first .. suffix
  end
  first = display_text(bufnr, first)
  local pad = vim.fn.strdisplaywidth(covered) - vim.fn.strdisplaywidth(first)
  if pad > 0 then
    first = first .. string.rep(" ", pad)
  end
  local opts = {
    virt_text = { { first, hl } },
    virt_text_pos = "overlay",
    hl_mode = "combine",
  }
  if #lines > 1 then
    local vl = {}
    for i = 2, #lines do
      local s = lines[i]
      if i == #lines then
        s = s .. suffix
      end
      vl[#vl + 1] = { { display_text(bufnr, s), hl } }
    end
    opts.virt_lines = vl
  end
  S.mark = api.nvim_buf_set_extmark(bufnr, ns, S.row, S.col, opts)
  if not item.shown then
    item.shown = true
    notify_server("textDocument/didShowCompletion", { item = item.lsp })
  end
end

-- turn the server's items into drafts at the cursor (byte columns), dropping what does not fit
local function to_drafts(bufnr, row, col, result, encoding)
  local raw = result and (result.items or result) or {}
  local out, seen = {}, {}
  for _, it in ipairs(raw) do
    local text = it.insertText
    if type(text) == "table" then
      text = text.value -- a snippet string: shown and inserted as plain text
    end
    if type(text) == "string" then
      local sr, sc, er, ec = row, col, row, col
      if it.range then
        sr, sc = buf_position(bufnr, it.range.start, encoding)
        er, ec = buf_position(bufnr, it.range["end"], encoding)
      end
      local ok = sr == row and er >= row and (er > row or ec >= col)
      if ok and sc < col then
        -- the draft starts before the cursor: the typed part must match it
        local typed = get_line(bufnr, row):sub(sc + 1, col)
        if text:sub(1, #typed) == typed then
          text = text:sub(#typed + 1)
        else
          ok = false
        end
      elseif sc > col then
        ok = false
      end
      if er == row and ec < col then
        ec = col
      end
      if ok and text ~= "" and not seen[text] then
        seen[text] = true
        out[#out + 1] = { text = text, end_row = er, end_col = ec, lsp = it }
      end
    end
  end
  return out
end

--- Ask the server for drafts at the cursor of `bufnr` (default: current buffer); shows them
--- as ghost text when they arrive. `opts.callback(drafts)` is called with the list of draft
--- texts (empty when none / stale). Returns true if a request was sent.
function M.request(bufnr, opts)
  opts = opts or {}
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  local c = client_for(bufnr)
  local win, row, col = cursor_of(bufnr)
  if not c or not win then
    if opts.callback then
      opts.callback({})
    end
    return false
  end
  if not c.initialized then
    -- the document reaches the server after `initialize`: ask again shortly
    local tries = (opts._tries or 0) + 1
    if tries <= 100 then
      vim.defer_fn(function()
        M.request(bufnr, vim.tbl_extend("force", opts, { _tries = tries }))
      end, 100)
    elseif opts.callback then
      opts.callback({})
    end
    return true
  end
  cancel_pending()
  local enc = encoding_of(c)
  local tick = api.nvim_buf_get_changedtick(bufnr)
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    position = lsp_position(bufnr, row, col, enc),
    context = { triggerKind = opts.automatic and 2 or 1 },
  }
  local mine
  local function handler(err, result)
    if pending == mine then
      pending = nil
    end
    local drafts = {}
    local _, r, cc = cursor_of(bufnr)
    local fresh = api.nvim_buf_is_valid(bufnr) and api.nvim_buf_get_changedtick(bufnr) == tick
      and r == row and cc == col
    if err == nil and fresh then
      local items = to_drafts(bufnr, row, col, result, enc)
      if #items > 0 then
        if S then
          clear_marks(S.bufnr)
        end
        S = { bufnr = bufnr, row = row, col = col, tick = tick, items = items, index = 1,
              accepted = 0, uri = params.textDocument.uri }
        render()
        for _, it in ipairs(items) do
          drafts[#drafts + 1] = it.text
        end
      end
    end
    if opts.callback then
      opts.callback(drafts, err)
    end
  end
  local ok, id = c_request(c, "textDocument/inlineCompletion", params, handler, bufnr)
  if ok and id then
    mine = { client = c, id = id, bufnr = bufnr }
    pending = mine
  end
  return ok and true or false
end

--- Whether drafts are on screen for the cursor.
function M.visible()
  return state_valid()
end

--- The drafts on screen: { texts = {...}, index = n } or nil.
function M.drafts()
  if not state_valid() then
    return nil
  end
  local texts = {}
  for _, it in ipairs(S.items) do
    texts[#texts + 1] = it.text
  end
  return { texts = texts, index = S.index }
end

local function cycle(step)
  if not state_valid() then
    return M.request()
  end
  S.index = (S.index - 1 + step) % #S.items + 1
  render()
  return true
end

function M.next()
  return cycle(1)
end

function M.prev()
  return cycle(-1)
end

local function set_cursor(bufnr, row, col)
  local win = cursor_of(bufnr)
  if win then
    pcall(api.nvim_win_set_cursor, win, { row + 1, col })
  end
end

local function send_accept(uri, text)
  local c = M.client()
  if c then
    pcall(c_request, c, "workspace/executeCommand",
      { command = "draftline.accept", arguments = { uri, text } }, function() end)
  end
end

--- Insert the draft on screen (or `n` bytes of it) at the cursor; returns true if it did.
local function insert(n)
  if not state_valid() then
    return false
  end
  local item = S.items[S.index]
  local whole = n == nil or n >= #item.text
  local text = whole and item.text or item.text:sub(1, n)
  local lines = vim.split(text, "\n", { plain = true })
  local bufnr, row, col = S.bufnr, S.row, S.col
  local new_row = row + #lines - 1
  local new_col = (#lines == 1 and col or 0) + #lines[#lines]
  if whole then
    -- replace the item's range (the cursor .. its end) by the draft
    api.nvim_buf_set_text(bufnr, row, col, item.end_row, item.end_col, lines)
    set_cursor(bufnr, new_row, new_col)
    local uri = S.uri
    clear_marks(bufnr)
    S = nil
    local lsp_text = item.lsp.insertText
    send_accept(uri, type(lsp_text) == "table" and lsp_text.value or lsp_text)
    return true
  end
  -- a partial accept inserts before the range; the rest of the draft stays on screen
  api.nvim_buf_set_text(bufnr, row, col, row, col, lines)
  set_cursor(bufnr, new_row, new_col)
  if item.end_row == row then
    item.end_col = item.end_col - col + new_col
  end
  item.end_row = item.end_row + #lines - 1
  item.text = item.text:sub(#text + 1)
  S.items = { item }
  S.index = 1
  S.row, S.col = new_row, new_col
  S.tick = api.nvim_buf_get_changedtick(bufnr)
  S.accepted = S.accepted + vim.fn.strchars(text)
  notify_server("textDocument/didPartiallyAcceptCompletion", { item = item.lsp, acceptedLength = S.accepted })
  render()
  return true
end

--- Accept the draft on screen. Returns false (and does nothing) when none is shown.
function M.accept()
  return insert(nil)
end

-- length in bytes of the next word of `text` (with the whitespace before it)
local function next_word(text)
  local nl = text:match("^\r?\n[ \t]*")
  if nl then
    return #nl
  end
  local m = text:match("^[ \t]*[%w_]+") or text:match("^[ \t]*[^%w_%s]+") or text:match("^[ \t]+")
  return m and #m or #text
end

--- Accept the next word of the draft on screen.
function M.accept_word()
  if not state_valid() then
    return false
  end
  return insert(next_word(S.items[S.index].text))
end

--- Accept the draft on screen up to the end of its first line.
function M.accept_line()
  if not state_valid() then
    return false
  end
  local text = S.items[S.index].text
  local nl = text:find("\n", 1, true)
  if nl == 1 then
    return insert(next_word(text))
  end
  return insert(nl and nl - 1 or nil)
end

--- Ask the server for its `draftline/status` (synchronously; nil when not running).
function M.status(timeout_ms)
  local c = M.client()
  if not c then
    return nil
  end
  local bufnr = next(attached) or 0
  local res = vim.lsp.buf_request_sync(bufnr, "draftline/status", {}, timeout_ms or 2000)
  for _, r in pairs(res or {}) do
    if r.result then
      return r.result
    end
  end
  return nil
end

--- A short string for the statusline: "draftline", "draftline: loading model 40%", "".
function M.statusline()
  local c = M.client()
  if not c then
    return ""
  end
  if not c.initialized then
    return "draftline: starting"
  end
  if M.progress then
    return "draftline: " .. M.progress
  end
  return "draftline"
end

-- typing -------------------------------------------------------------------------------------

-- the user typed (part of) the draft on screen: keep showing the rest
local function consume_typed()
  if not S or not api.nvim_buf_is_valid(S.bufnr) then
    return false
  end
  local _, row, col = cursor_of(S.bufnr)
  if row ~= S.row or col <= S.col then
    return false
  end
  local typed = get_line(S.bufnr, row):sub(S.col + 1, col)
  local keep = {}
  for i, it in ipairs(S.items) do
    if #it.text > #typed and it.text:sub(1, #typed) == typed and not typed:find("\n", 1, true) then
      it.text = it.text:sub(#typed + 1)
      if it.end_row == row then
        it.end_col = math.max(it.end_col + #typed, col)
      end
      keep[#keep + 1] = it
      if i == S.index then
        S.index = #keep
      end
    end
  end
  if #keep == 0 then
    return false
  end
  if S.index > #keep then
    S.index = 1
  end
  S.items, S.col, S.tick = keep, col, api.nvim_buf_get_changedtick(S.bufnr)
  render()
  return true
end

local function on_cursor_moved_i(bufnr)
  if S and not state_valid() and not consume_typed() then
    M.dismiss()
  end
  if not M.config.auto_trigger then
    return
  end
  if timer then
    timer:stop()
  else
    timer = uv.new_timer()
  end
  timer:start(M.config.debounce_ms, 0, vim.schedule_wrap(function()
    if api.nvim_get_mode().mode:sub(1, 1) == "i" and api.nvim_get_current_buf() == bufnr
      and not state_valid() then
      M.request(bufnr, { automatic = true })
    end
  end))
end

local function feed(key)
  api.nvim_feedkeys(api.nvim_replace_termcodes(key, true, false, true), "n", false)
end

local function map(bufnr, name, fn, fallback)
  local km = M.config.keymaps
  local lhs = km and km[name]
  if not lhs or lhs == "" then
    return
  end
  vim.keymap.set("i", lhs, function()
    if not fn() and fallback then
      feed(lhs)
    end
  end, { buffer = bufnr, silent = true, desc = "draftline: " .. name })
end

local function builtin_ic()
  local ic = vim.lsp.inline_completion
  if M.config.builtin and type(ic) == "table" and type(ic.enable) == "function" then
    return ic
  end
  return nil
end

local function attach_buffer(c, bufnr)
  if attached[bufnr] then
    return
  end
  attached[bufnr] = true
  if M.config.omnifunc then
    vim.bo[bufnr].omnifunc = "v:lua.vim.lsp.omnifunc"
  end
  local ic = builtin_ic()
  if ic then
    pcall(ic.enable, true, { bufnr = bufnr })
    local km = M.config.keymaps or {}
    local sel = ic.select or ic.jump
    local function bmap(lhs, fn, desc)
      if lhs and lhs ~= "" then
        vim.keymap.set("i", lhs, fn, { buffer = bufnr, silent = true, desc = desc })
      end
    end
    bmap(km.accept, function()
      if not ic.get({ bufnr = bufnr }) then
        feed(km.accept)
      end
    end, "draftline: accept (vim.lsp.inline_completion)")
    if sel then
      bmap(km.next, function() sel({ bufnr = bufnr, count = 1 }) end, "draftline: next")
      bmap(km.prev, function() sel({ bufnr = bufnr, count = -1 }) end, "draftline: prev")
    end
  else
    api.nvim_create_autocmd({ "InsertEnter", "InsertCharPre", "CursorMovedI" }, {
      group = augroup, buffer = bufnr,
      callback = function()
        on_cursor_moved_i(bufnr)
      end,
    })
    api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
      group = augroup, buffer = bufnr,
      callback = function()
        if timer then
          timer:stop()
        end
        M.dismiss()
      end,
    })
    map(bufnr, "accept", M.accept, true)
    map(bufnr, "accept_word", M.accept_word, true)
    map(bufnr, "accept_line", M.accept_line, true)
    map(bufnr, "next", M.next, false)
    map(bufnr, "prev", M.prev, false)
    map(bufnr, "dismiss", M.dismiss, true)
    map(bufnr, "request", function() return M.request(bufnr) end, false)
  end
  api.nvim_create_autocmd("BufUnload", {
    group = augroup, buffer = bufnr,
    callback = function()
      attached[bufnr] = nil
      if S and S.bufnr == bufnr then
        M.dismiss()
      end
    end,
  })
  if M.config.on_attach then
    M.config.on_attach(c, bufnr)
  end
end

-- starting the server ------------------------------------------------------------------------

local function init_options()
  local cfg = M.config
  local o = {}
  if cfg.model then o.model = cfg.model end
  if cfg.drafts then o.drafts = cfg.drafts end
  if cfg.max_tokens then o.maxTokens = cfg.max_tokens end
  if cfg.server_debounce_ms then o.debounceMs = cfg.server_debounce_ms end
  if cfg.monitors ~= nil then
    o.monitors = type(cfg.monitors) == "table" and cfg.monitors or { enabled = cfg.monitors }
  end
  return vim.tbl_deep_extend("force", o, cfg.init_options or {})
end

local function progress_handler(err, result, ctx, config)
  local default = vim.lsp.handlers["$/progress"]
  if default then
    pcall(default, err, result, ctx, config)
  end
  local v = result and result.value
  if type(v) == "table" then
    if v.kind == "end" then
      M.progress = nil
    elseif v.kind == "begin" or v.kind == "report" then
      local msg = v.message or v.title or "loading"
      if v.percentage then
        msg = msg .. " " .. v.percentage .. "%"
      end
      M.progress = msg
    end
    pcall(vim.cmd, "redrawstatus")
  end
end

local function lsp_config()
  local caps = vim.lsp.protocol.make_client_capabilities()
  caps.textDocument = caps.textDocument or {}
  caps.textDocument.inlineCompletion = { dynamicRegistration = false }
  caps.window = caps.window or {}
  caps.window.workDoneProgress = true
  return {
    name = "draftline",
    cmd = M.config.cmd,
    root_dir = M.config.root_dir or vim.fn.getcwd(),
    init_options = init_options(),
    capabilities = caps,
    handlers = { ["$/progress"] = progress_handler },
    flags = { debounce_text_changes = 20, allow_incremental_sync = true },
    on_attach = attach_buffer,
    on_exit = function()
      client_id = nil
      attached = {}
      M.dismiss()
    end,
  }
end

--- Start the server if needed and attach it to `bufnr` (default: current buffer).
function M.attach(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  if vim.bo[bufnr].buftype ~= "" then
    return nil
  end
  if vim.lsp.start and has("nvim-0.8") then
    client_id = vim.lsp.start(lsp_config(), {
      bufnr = bufnr,
      reuse_client = function(c, conf)
        return c.name == conf.name
      end,
    }) or client_id
  else
    if not M.client() then
      client_id = vim.lsp.start_client(lsp_config())
    end
    if client_id then
      vim.lsp.buf_attach_client(bufnr, client_id)
    end
  end
  return client_id
end

--- Configure draftline and start it for the configured filetypes.
function M.setup(opts)
  opts = opts or {}
  local cfg = vim.tbl_deep_extend("force", vim.deepcopy(defaults), opts)
  if opts.keymaps == false then
    cfg.keymaps = false
  end
  if opts.filetypes then
    cfg.filetypes = opts.filetypes -- a list replaces the default list, never merged into it
  end
  if opts.cmd then
    cfg.cmd = opts.cmd
  end
  M.config = cfg
  api.nvim_set_hl(0, "DraftlineGhost", { link = "Comment", default = true })
  augroup = api.nvim_create_augroup("draftline", { clear = true })
  attached = {}
  api.nvim_create_autocmd("FileType", {
    group = augroup,
    pattern = cfg.filetypes,
    callback = function(args)
      M.attach(args.buf)
    end,
  })
  -- buffers already open with a matching filetype
  local fts = {}
  for _, ft in ipairs(cfg.filetypes) do
    fts[ft] = true
  end
  for _, b in ipairs(api.nvim_list_bufs()) do
    if api.nvim_buf_is_loaded(b) and fts[vim.bo[b].filetype] then
      M.attach(b)
    end
  end
end

M.ns = ns

-- for tests
M._next_word = next_word
M._units_of = units_of
M._byte_of = byte_of

return M
