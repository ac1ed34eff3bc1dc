"""Tokenizer wrapper and per-document token state with windowed re-tokenization.

Why windowed: a keystroke changes a few characters, but BPE merges can cross the edit
boundary (a newline merges with the indentation after it), so the tokens around the edit
must be re-derived. Re-tokenizing a window and checking that its edges agree with the old
tokens is exact and costs O(window), not O(file).

File text is always encoded with special tokens treated as text: a literal
`<|endoftext|>` in a file stays characters, never a control token.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

#: FIM token sets by family: (prefix, suffix, middle)
FIM_SETS = [
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder / StarCoder2
]
STOP_TOKEN_NAMES = ["<|endoftext|>", "<|im_end|>", "<|file_sep|>", "<file_sep>", "<|fim_pad|>",
                    "<｜end▁of▁sentence｜>", "<|EOT|>", "</s>", "<EOT>", "<|repo_name|>", "<repo_name>"]


@dataclass(frozen=True)
class Fim:
    prefix: int
    suffix: int
    middle: int


class Tokenizer:
    """HF fast tokenizer with the few things decoding needs precomputed."""

    def __init__(self, tok: HFTokenizer, eos_ids: tuple[int, ...] = ()):
        self.tok = tok
        self.tok.encode_special_tokens = True  # file text never yields control tokens
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self._pieces: list[str] | None = None
        added = {t.content: i for i, t in tok.get_added_tokens_decoder().items()}
        self.special_ids = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        stops = set(eos_ids) | {added[n] for n in STOP_TOKEN_NAMES if n in added}
        self.stop_ids = frozenset(stops)
        self.fim: Fim | None = None
        for p, s, m in FIM_SETS:
            if p in added and s in added and m in added:
                self.fim = Fim(added[p], added[s], added[m])
                break

    @classmethod
    def from_dir(cls, d: Path, cfg=None) -> "Tokenizer":
        tok = HFTokenizer.from_file(str(d / "tokenizer.json"))
        eos: tuple[int, ...] = tuple(cfg.eos_token_ids) if cfg is not None else ()
        gen = d / "generation_config.json"
        if gen.is_file():
            g = json.loads(gen.read_text()).get("eos_token_id")
            if g is not None:
                eos += tuple(g) if isinstance(g, list) else (g,)
        return cls(tok, eos)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids and the start character offset of each token."""
        enc = self.tok.encode(text, add_special_tokens=False)
        return enc.ids, _char_starts(text, enc.offsets)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    @property
    def pieces(self) -> list[str]:
        """Decoded text of every token id (what a token adds to a draft)."""
        if self._pieces is None:
            self._pieces = [self.tok.decode([i], skip_special_tokens=False) for i in range(self.vocab_size)]
        return self._pieces


def _char_starts(text: str, offsets: list[tuple[int, int]]) -> list[int]:
    """tokenizers reports character offsets for str input; byte-fallback pieces of one
    character share an offset, which is fine: the start of the next full token is exact."""
    return [a for a, _ in offsets]


@dataclass
class TokenizedText:
    """A document's text as tokens, with the start offset of every token.

    `starts[i]` is the character offset where token i begins; token boundaries are the
    only places the prompt may be cut without re-tokenizing.
    """

    text: str
    ids: list[int]
    starts: list[int]

    @classmethod
    def full(cls, tok: Tokenizer, text: str) -> "TokenizedText":
        ids, starts = tok.encode_offsets(text)
        return cls(text, ids, starts)

    def token_at_or_after(self, offset: int) -> int:
        """Index of the first token starting at or after `offset`."""
        return bisect.bisect_left(self.starts, offset)

    def edit(self, tok: Tokenizer, start: int, old_end: int, new_text: str, margin: int = 2) -> int:
        """Apply one text edit (characters [start, old_end) replaced by new_text).

        Re-tokenizes a window grown until both of its edges agree with the old tokens.
        Returns the number of characters re-tokenized (for tests and statistics).
        """
        text = self.text[:start] + new_text + self.text[old_end:]
        delta = len(new_text) - (old_end - start)
        n = len(self.ids)
        pre = max(0, bisect.bisect_right(self.starts, start) - 1)  # token holding `start`
        lo = max(0, pre - margin)
        hi = min(n, bisect.bisect_left(self.starts, old_end) + margin)
        while True:
            a = self.starts[lo] if lo < n else 0
            chk_end = min(n, hi + 2)  # old tokens [hi, chk_end) must come out unchanged
            c_new = (self.starts[chk_end] if chk_end < n else len(self.text)) + delta
            ids, starts = tok.encode_offsets(text[a:c_new])
            starts = [s + a for s in starts]
            m = pre - lo  # old tokens wholly before the edit, which must come out unchanged
            left_ok = lo == 0 or (ids[:m] == self.ids[lo:pre] and starts[:m] == self.starts[lo:pre])
            k = chk_end - hi
            right_ok = hi >= n or (
                len(ids) >= k
                and ids[len(ids) - k:] == self.ids[hi:chk_end]
                and starts[len(ids) - k:] == [s + delta for s in self.starts[hi:chk_end]]
            )
            if left_ok and right_ok:
                keep = len(ids) - k if hi < n else len(ids)
                self.ids = self.ids[:lo] + ids[:keep] + self.ids[hi:]
                self.starts = self.starts[:lo] + starts[:keep] + [s + delta for s in self.starts[hi:]]
                self.text = text
                return c_new - a
            if lo == 0 and hi >= n:  # pragma: no cover - a whole-text encode always agrees
                break
            margin *= 2
            if not left_ok:
                lo = max(0, pre - margin)
            if not right_ok:
                hi = min(n, hi + margin)
        full = TokenizedText.full(tok, text)
        self.text, self.ids, self.starts = full.text, full.ids, full.starts
        return len(text)
