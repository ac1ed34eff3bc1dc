-- Neovim config for the ghost-text screenshot (editors/screenshot/shot.sh)
local here = vim.fn.fnamemodify(debug.getinfo(1, "S").source:sub(2), ":p:h")
vim.opt.rtp:prepend(here .. "/../nvim")
vim.cmd("filetype plugin indent on")
vim.cmd("syntax on")
vim.opt.number = true
vim.opt.swapfile = false
vim.opt.shortmess:append("I")
vim.opt.laststatus = 2
vim.opt.expandtab = true
vim.opt.shiftwidth = 4
vim.opt.statusline = " %f %m%=%{v:lua.require'draftline'.statusline()} "
local server = vim.env.DRAFTLINE_CMD and vim.split(vim.env.DRAFTLINE_CMD, " ", { plain = true })
  or { "draftline", "serve" }
require("draftline").setup({ cmd = server, filetypes = { "python" }, drafts = 3, max_tokens = 40 })
vim.api.nvim_set_hl(0, "DraftlineGhost", { ctermfg = 245, fg = "#8a8a8a", italic = true })
