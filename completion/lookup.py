"""Guesses for the greedy draft's next tokens, checked in the forward that computes its next
step (speculative decoding without a draft model).

A decode step at 2k tokens is one forward of one row (~21 ms here); a forward of 1 + g rows
costs about 3 ms more per row (2026-12-05, SmolLM2-135M int4, 2 cores), and it gives the
distributions after each of the g guessed tokens too: every guess the model's own choice
confirms is a step saved.  The greedy draft stays what greedy decoding writes: a guess is
only used as far as the model's argmax (after the guide masks) agrees with it.  (Up to
rounding: a forward of several rows rounds differently from one of one row, which flips the
choice only where two tokens tie - 22.77 vs 22.73 in the one case of 8 on textwrap.py.)

Where guesses come from, best first:
- hints: the drafts kept for this very place (`ahead.Entry.raw`) from before an edit
  elsewhere or before the window grew; `reverify` takes them whole or not at all, a guess
  takes the part that still holds (their first tokens mostly do);
- prompt lookup (Saxena's "prompt lookup decoding"): the tokens that followed the most
  recent earlier occurrence, in the prompt, of the draft's last 3 (else 2) tokens; code
  repeats its names, argument lists and call shapes.
"""

from __future__ import annotations

from typing import Sequence

#: tokens guessed per forward at most (a wrong guess costs its rows: ~3 ms each)
WIDTH = 6
#: n-gram sizes matched against the prompt, longest first
ORDERS = (3, 2)


class Guesser:
    """Guesses after a prompt for a draft being decoded (worker thread, one decode)."""

    def __init__(self, prompt: Sequence[int], hints: Sequence[Sequence[int]] = (), width: int = WIDTH):
        self.prompt = list(prompt)
        self.hints = [list(h) for h in hints if h]
        self.width = width
        self._index: dict[int, dict[tuple[int, ...], int]] | None = None

    def _build(self) -> dict[int, dict[tuple[int, ...], int]]:
        """n-gram -> where what followed its most recent occurrence starts (built on first use:
        ~1 ms for 2k tokens)."""
        p = self.prompt
        index: dict[int, dict[tuple[int, ...], int]] = {}
        for n in ORDERS:
            table: dict[tuple[int, ...], int] = {}
            for i in range(len(p) - n):  # (an occurrence at the very end has nothing after it)
                table[tuple(p[i:i + n])] = i + n
            index[n] = table
        return index

    def guess(self, drafted: Sequence[int]) -> list[int]:
        """Up to `width` tokens likely to follow `drafted` (the draft's tokens so far)."""
        s = len(drafted)
        for h in self.hints:
            if len(h) > s and h[:s] == list(drafted):
                return h[s:s + self.width]
        if self._index is None:
            self._index = self._build()
        seq = self.prompt[-max(ORDERS):] + list(drafted)
        for n in ORDERS:
            if len(seq) < n:
                continue
            at = self._index[n].get(tuple(seq[-n:]))
            if at is not None:
                return self.prompt[at:at + self.width]
        return []
