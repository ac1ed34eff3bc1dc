"""A second try when every draft of an answer was junk: the same place decoded again with
the first word each junk draft chose ruled out.

Why: an empty answer is a request wasted, and it happens where the model's first choice
leads nowhere: `return (` followed by lines of `(`, `with pytest.raises(None)` without its
colon, a bare `#`.  The junk rules (`completion.junk`, the parse check of `analysis.trim`)
drop those drafts, and superposed decoding's other drafts mostly share the first choice, so
nothing was left.  Replay, dev split: 4 of 48 first answers after opening came back empty
(07:06), 3 of 16 after the indentation and 32 of 529 keystrokes (07:25).  With the second
try (07:50, 16 files): 24 answers decoded again, 6 of them then gave a line (after the
indentation 0 -> 0.12 edit similarity, mid-line 0 -> 0.15, four keystrokes), the others
were at a line's end or junk again; empty answers 20 in all vs 37.  It runs only with 150
ms left before the request's hard deadline (`engine.RESCUE_S`), so it never makes an
answer later than the budget allows (without a budget, `latencyBudgetMs` 0, an all-junk
answer takes about two decodes); and only when the junk drafts wrote a word at all (an
empty one at a line's end would be decoded again as it was).  Its answer is kept for
typed-ahead keystrokes but never re-verified (`Entry.checkable`): the check asks for what
decoding without the ban would write.
"""

from __future__ import annotations

import torch

from .drafts import Draft
from .tokens import Tokenizer

__all__ = ["BanGuide", "first_choices"]


def first_choices(drafts: list[Draft], tok: Tokenizer, heal: str) -> dict[str, set[int]]:
    """For each draft, the text before its first token that writes more than the healed
    text and whitespace, mapped to that token (tokens that share the text before them are
    grouped).  Texts are concatenated token pieces, as the decoder hands them to guides
    (`Draft.text`)."""
    out: dict[str, set[int]] = {}
    for d in drafts:
        before = ""
        for t in d.tokens:
            if d.cut is not None and len(before) >= d.cut:
                break  # past where the stop rule cut it: the user never saw that token
            text = before + tok.pieces[t]
            if len(text) > len(heal) and text[len(heal):].strip():
                out.setdefault(before, set()).add(t)
                break
            before = text
    return out


class BanGuide:
    """After exactly the text `before`, the tokens in `bans[before]` are not allowed.  Applied
    like token healing (`DecodeSpec.ban`, `drafts.mask_for`): always, not among the monitors'
    masks, which are dropped when they leave nothing (a monitor that allows only the junk
    draft's word would otherwise bring it back)."""

    def __init__(self, bans: dict[str, set[int]], vocab: int):
        self.masks: dict[str, torch.Tensor] = {}
        for before, ids in bans.items():
            m = torch.ones(vocab, dtype=torch.bool)
            m[torch.tensor(sorted(i for i in ids if 0 <= i < vocab), dtype=torch.long)] = False
            self.masks[before] = m

    def allowed(self, draft: str, budget_s: float | None = None) -> torch.Tensor | None:
        return self.masks.get(draft)
