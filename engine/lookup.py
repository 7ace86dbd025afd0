"""Prompt-lookup decoding: guess the next tokens from the text so far, check them in one pass.

A beside-stage of generate.py. An answer that edits code copies long spans of the prompt; each
copied token still costs a whole forward pass when decoded one at a time. Here, after each sampled
token, the longest recent n-gram ending the text (prompt + answer) is looked up in the text before
it, and the tokens that followed its latest occurrence are the draft:

    ... def area(r):\\n    return 3.14 * r * r\\n ... (answer so far) ... def area(r):\\n    return
                                                      n-gram "    return" -> draft " 3.14 * r * r"

generate.py then runs [last token] + draft in ONE forward with `exact=True` (Model.forward_steps):
row j's logits are bit-identical to feeding the tokens one by one, so sampling from them in order
is plain decoding, token for token. Each sampled token is compared with the draft: while they agree
the next row's logits are already computed; at the first difference the KV cache is cut back past
the drafted positions (`model.pos`) and decoding goes on from the sampled token.

Why this is exact for sampling too: the sampler draws every token from the logits it would have
had anyway, with its one uniform per token, and a drafted token is kept only when it IS the token
drawn. That is the speculative-sampling acceptance rule for a draft that proposes one token with
certainty (keep it with probability p(t), else draw from p without t, renormalised), carried out
with the very draw plain decoding makes; so the output has the same distribution and, with a seed,
the same text (tests/test_lookup.py checks both).

A verify pass of 1 + k rows costs about t1 + k * c (t1: one decode step; c: each extra row, which
shares the weights' int8 -> float32 cast but not their multiply-adds). With a per-token acceptance
probability p, it yields 1 + p + ... + p^k tokens in expectation. `DraftPolicy` measures t1, c and
p (per n-gram length, forgetting slowly) and drafts the k that maximises tokens per second, or
nothing when no k beats plain decoding: on free writing it stops drafting after a few misses.

A policy that stops drafting stops measuring, so two things keep one bad measurement from ending
drafting for good. c is the median of the last few verify passes' per-row cost (the prior filling
the window at first): time only ever adds noise upward (a collection, a first pass that allocates
its buffers, another tab), and one slow pass must not outvote the rest. And after PROBE_AFTER
declined matches in a row, one token is drafted anyway, which re-measures both c and p; on free
writing a probe costs about c * t1 once per PROBE_AFTER tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_NGRAM = 8        # longest n-gram looked up: a longer match is kept more often, and its tally is its own
                     # (scripts/lookup_replay.py, the benchmark's answers: 3 -> 8 models 5-10 % more speed-up)
MIN_NGRAM = 2        # shortest: a one-token match (a common word) is kept about a third of the time
MAX_DRAFT = 8        # most tokens drafted at once
GAIN_MARGIN = 1.05   # draft only when the expected rate beats plain decoding by this factor
FORGET = 0.9         # weight of the past in the acceptance and cost estimates, per observation
RELAX = 0.98         # per declined draft: the acceptance estimate drifts back toward the prior
PRIOR_HITS, PRIOR_TRIES = 1.3, 2.0   # acceptance prior: p = 0.65 (hopeful enough that drafting gets tried)
PRIOR_ROW_COST = 0.5                 # c / t1 before any verify pass was timed
COST_WINDOW = 3                      # verify passes whose c / t1 is kept; the estimate is their median
PROBE_AFTER = 16                     # declined matches in a row before one token is drafted anyway
REMEASURE_EVERY = 32                 # forwards between plain decode steps that re-time t1


class PromptLookup:
    """The n-gram index of a token sequence, and drafts from it.

    >>> look = PromptLookup([5, 6, 7, 8, 9, 5, 6])
    >>> look.find()            # "5 6" ended the text before: it was followed by 7 8 9 5 6
    (2, [7, 8, 9, 5, 6])
    >>> look.append(7); look.find(max_draft=2)
    (3, [8, 9])
    """

    def __init__(self, tokens=(), max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM):
        self.tokens: list[int] = [int(t) for t in tokens]
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self._latest: dict[tuple[int, ...], int] = {}  # n-gram -> end (exclusive) of its latest occurrence
        self._indexed = 0  # n-grams ending at or before this position are in _latest

    def append(self, token: int) -> None:
        self.tokens.append(int(token))

    def find(self, max_draft: int = MAX_DRAFT) -> tuple[int, list[int]]:
        """(n, draft): the longest n-gram ending the text that occurred before, and up to max_draft
        tokens that followed its latest earlier occurrence; (0, []) when none did."""
        toks, end = self.tokens, len(self.tokens)
        for e in range(self._indexed + 1, end):  # index every n-gram except those ending the text
            for n in range(self.min_ngram, min(self.max_ngram, e) + 1):
                self._latest[tuple(toks[e - n : e])] = e
        self._indexed = max(self._indexed, end - 1)
        for n in range(min(self.max_ngram, end), self.min_ngram - 1, -1):
            at = self._latest.get(tuple(toks[end - n :]))
            if at is not None:
                return n, toks[at : at + max_draft]
        return 0, []


@dataclass
class DraftPolicy:
    """How many tokens to draft, from measured costs and acceptance (see the module docstring)."""

    t1: float | None = None         # seconds of a one-token forward (moving average)
    row_costs: list[float] = field(default_factory=lambda: [PRIOR_ROW_COST] * (COST_WINDOW - 1))
                                    # c / t1 of the latest verify passes (the prior fills in at first)
    since_plain: int = 0            # forwards since the last plain one
    declined: int = 0               # matches declined since the last draft
    tally: dict[int, list[float]] = field(default_factory=dict)  # n -> [accepted, tried] (decayed)

    @property
    def row_cost(self) -> float:
        """c / t1: what each extra row adds to a verify pass, as a fraction of a decode step."""
        costs = sorted(self.row_costs)
        mid = len(costs) // 2
        return costs[mid] if len(costs) % 2 else (costs[mid - 1] + costs[mid]) / 2

    def acceptance(self, n: int) -> float:
        hits, tries = self.tally.get(n, (0.0, 0.0))
        return (hits + PRIOR_HITS) / (tries + PRIOR_TRIES)

    def length(self, n: int, available: int) -> int:
        """Tokens to draft, given an n-gram match with `available` tokens after it (0: decode plainly)."""
        if available <= 0 or self.t1 is None or self.since_plain >= REMEASURE_EVERY:
            return 0
        p, c = self.acceptance(n), self.row_cost
        best_k, best_gain, expected = 0, GAIN_MARGIN, 1.0
        for k in range(1, available + 1):
            expected += p ** k  # 1 + p + ... + p^k tokens from a pass of 1 + k rows
            gain = expected / (1.0 + k * c)
            if gain > best_gain:
                best_k, best_gain = k, gain
        if best_k:
            self.declined = 0
            return best_k
        self.declined += 1
        if n in self.tally:  # declined: let the estimate drift back to try again later
            self.tally[n] = [v * RELAX for v in self.tally[n]]
        if self.declined >= PROBE_AFTER:  # measure again what a draft costs and how often it is kept
            self.declined = 0
            return 1
        return 0

    def timed(self, rows: int, seconds: float) -> None:
        """A forward of `rows` tokens (1: plain decoding, more: a verify pass) took `seconds`."""
        if rows <= 1:
            self.t1 = seconds if self.t1 is None else FORGET * self.t1 + (1 - FORGET) * seconds
            self.since_plain = 0
            return
        self.since_plain += 1
        if self.t1:
            per_row = max(0.0, seconds - self.t1) / (rows - 1)
            self.row_costs = [*self.row_costs, per_row / self.t1][-COST_WINDOW:]

    def outcome(self, n: int, drafted: int, accepted: int) -> None:
        """A draft from an n-gram match: `accepted` of its `drafted` tokens were kept, in order."""
        hits, tries = self.tally.get(n, (0.0, 0.0))
        # accepted successes, plus one failure unless the whole draft was kept
        self.tally[n] = [FORGET * hits + accepted, FORGET * tries + accepted + (accepted < drafted)]

