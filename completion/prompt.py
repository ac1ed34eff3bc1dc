"""Document + cursor -> prompt tokens, with token healing and a context budget.

Token healing (docs/cache.md, "Token healing"): the cursor is rarely on a token boundary the model saw in
training (a newline merges with the indentation after it, a word with the space before it).
So the prompt stops *before* the token(s) at the cursor and the first generated tokens are
constrained to re-type the removed text (`heal`). Without it SmolLM2 answers a cursor after
indentation with empty drafts.
"""

from __future__ import annotations

from dataclasses import dataclass

from .tokens import TokenizedText, Tokenizer

WINDOW_STEP = 128  # the context window start moves in steps, so typing rarely shifts it


@dataclass(frozen=True)
class Prompt:
    tokens: list[int]  # everything the model reads; the last one is fed with the request
    heal: str  # text between the prompt's end and the cursor; drafts must start with it
    prefix: str  # document text before the cursor
    suffix: str  # document text after the cursor
    window_start: int  # index of the first document token in the prompt
    fim: bool
    body_end: int = 0  # index of the document token the prompt stops before (the heal's)
    header: str = ""  # the project-context header its tokens start with (completion.context)


def _is_space(s: str) -> bool:
    return s != "" and s.isspace()


def heal_start(tt: TokenizedText, cursor: int, max_back: int = 3) -> int:
    """Index of the first token to back off: the token at the cursor, plus the whitespace
    tokens right before it (up to `max_back` in all)."""
    idx = tt.token_at_or_after(cursor)  # first token starting at/after the cursor
    if idx == 0:
        return 0
    j = idx - 1  # the last token starting before the cursor (may straddle it)
    while j > 0 and idx - j < max_back and _is_space(tt.text[tt.starts[j - 1] : tt.starts[j]]):
        j -= 1
    return j


def heal_index(tt: TokenizedText, cursor: int, heal: bool = True) -> int:
    """Index of the token the prompt stops before (see `build_prompt`)."""
    return heal_start(tt, cursor) if heal else tt.token_at_or_after(cursor)


def window_start(j: int, room: int) -> int:
    """The first document token of a full window ending before token j (steps of WINDOW_STEP)."""
    if j <= room:
        return 0
    return min(((j - room) // WINDOW_STEP + 1) * WINDOW_STEP, j)


def build_prompt(tt: TokenizedText, cursor: int, tok: Tokenizer, budget: int,
                 suffix_budget: int = 0, use_fim: bool = True, heal: bool = True,
                 start: int | None = None, header: list[int] | tuple = ()) -> Prompt:
    """The prompt for a cursor at character offset `cursor` of `tt.text`.  `start`: the
    first document token, later than the full window's (a short window: what a request
    can afford to encode now; `completion.window`).  `header`: tokens of context from the
    rest of the project that go first (`completion.context`), out of the same budget."""
    text = tt.text
    j = heal_index(tt, cursor, heal)
    heal_text = text[tt.starts[j] : cursor] if j < len(tt.starts) and heal else ""
    fim = tok.fim if use_fim else None
    w = window_start(j, budget - 3 - len(header) - (suffix_budget if fim else 0))
    if start is not None:
        w = min(max(w, start), j)
    body = tt.ids[w:j]
    if not heal:
        # the naive prompt (ablation): the text before the cursor tokenized as it stands,
        # ending in whatever partial token the cursor leaves
        start = tt.starts[w] if w < len(tt.starts) else 0
        body = tok.encode(text[start:cursor])
    suffix = text[cursor:]
    if fim is not None:
        suf_ids = tok.encode(suffix[: suffix_budget * 8])[:suffix_budget] if suffix_budget else []
        tokens = list(header) + [fim.prefix] + body + [fim.suffix] + suf_ids + [fim.middle]
    else:
        tokens = list(header) + body
        if not tokens:
            # an empty prompt has no token to feed: start like a new document
            tokens = [_doc_start(tok)]
    return Prompt(tokens, heal_text, text[:cursor], suffix, w, fim is not None, j)


def _doc_start(tok: Tokenizer) -> int:
    for name in ("<|endoftext|>", "<s>", "<|begin_of_text|>", "<｜begin▁of▁sentence｜>"):
        i = tok.tok.token_to_id(name)
        if i is not None:
            return i
    return min(tok.stop_ids) if tok.stop_ids else 0
