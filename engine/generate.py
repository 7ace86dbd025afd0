"""Generation loop: prompt token ids -> a stream of TokenEvents. The stage after sampler.py.

    prompt ids --model.forward (prefill, one call)--> logits --Sampler--> id --model.forward--> ...
                                                                           |
                                  token_bytes + incremental UTF-8 decoder + stop-string hold-back
                                                                           v
                                              TokenEvent('prefill'), TokenEvent('token')*, TokenEvent('done')

`generate` is a Python generator, so the CLI, the browser worker and the benchmarks all consume the
same loop and can stop it between tokens (`should_stop`, or simply closing the generator).

With `lookup` (a PromptLookup over the whole text so far, engine/lookup.py) decoding drafts tokens
from the prompt and checks them in one exact forward pass; the tokens, their text and the random
draws are exactly those of plain decoding, only fewer forward passes run.

Events, in order:
- one 'prefill' event after the prompt's forward pass (n_prompt, prefill timing; text is "");
- one 'token' event per sampled token except the stop token, whose `text` is the text that became
  printable with it. It can be "" (half a UTF-8 character, or text held back because it could be
  the start of a stop string) and can hold text of earlier tokens released by this one;
- for a model whose forward passes run elsewhere (`model.computed_outside`: a sharded model's
  leader), one 'forward' event before each forward pass, with the tokens (and `verify`) it needs;
- one 'done' event with the reason ('eos' | 'stop' | 'length' | 'abort'), the counts, the timings
  and `full_text`. Its `text` is the tail released at the end (held-back text that turned out not
  to be a stop string, or a U+FFFD for a dangling partial character), so a consumer that prints
  `event.text` for every event prints exactly `full_text`.

Stop rules: a token id in `tokenizer.stop_ids` ends with 'eos' (its text is never shown); a stop
string ends with 'stop', and neither it nor anything after it is shown; `max_tokens` sampled tokens
end with 'length' (as does a full KV cache, when the model exposes `n_ctx`); `should_stop()`
returning True, checked before each decode step, ends with 'abort'.

Timing (time.perf_counter): prefill_seconds is the prompt's forward pass; decode_seconds is the
rest (sampling, detokenising and one forward pass per accepted token). Time the consumer spends
between our yields is not counted, so the rates are the engine's own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from engine.lookup import MAX_DRAFT, DraftPolicy, PromptLookup
from engine.sampler import Sampler, SamplingParams  # noqa: F401  (SamplingParams: generate's parameter type)
from engine.tokenizer import StreamDecoder


@dataclass
class TokenEvent:
    """One step of generation; see the module docstring for the three kinds."""
    kind: str                          # 'prefill' | 'token' | 'done' | 'forward'
    token_id: int | None = None        # 'token' only
    tokens: list[int] | None = None    # 'forward' only: the tokens the next forward pass runs
    verify: bool = False               # 'forward' only: an exact pass with logits for every token
    text: str = ""                     # newly printable text
    # 'done' only (n_prompt and prefill timing are also set on 'prefill'):
    reason: str | None = None          # 'eos' | 'stop' | 'length' | 'abort'
    n_prompt: int = 0
    n_generated: int = 0               # sampled tokens, the stop token included
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0
    full_text: str = ""
    n_drafted: int = 0                 # tokens drafted by prompt lookup (verified, not all kept)
    n_accepted: int = 0                # drafted tokens that were the sampled token


class _Model(Protocol):
    pos: int
    def reset(self) -> None: ...
    def forward(self, tokens: Sequence[int], all_logits: bool = False, exact: bool = False) -> np.ndarray: ...


class _Tokenizer(Protocol):
    stop_ids: frozenset[int]
    def token_bytes(self, token_id: int) -> bytes: ...


class StopStringFilter:
    """Holds back text that might begin a stop string; cuts the text at the first stop string.

    >>> f = StopStringFilter(("\\n\\nUser:",))
    >>> f.feed("Hi.\\n"), f.feed("\\nUs"), f.feed("er: x")
    (('Hi.', False), ('', False), ('', True))
    >>> f = StopStringFilter(("\\n\\nUser:",)); f.feed("a\\n"), f.feed("b"), f.flush()
    (('a', False), ('\\nb', False), ('', False))
    >>> f = StopStringFilter(("abc", "b")); f.feed("ab"), f.flush()   # "abc" may still come, then it cannot
    (('', False), ('a', True))
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.pending = ""            # text not yet released: a possible start of a stop string

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return (releasable text, whether a stop string was found).

        The result equals cutting the whole text at its first stop string, however the text is
        split into pieces: a complete match only wins once no earlier, still incomplete match
        (a suffix of the held text that begins some stop string) could start before it.
        """
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        first = min(hits) if hits else len(self.pending)  # earliest complete stop string
        # earliest start of a suffix that is a proper prefix of some stop string (may still complete)
        partial = len(self.pending)
        for start in range(max(0, len(self.pending) - max(map(len, self.stops)) + 1), first):
            tail = self.pending[start:]
            if any(len(tail) < len(s) and s.startswith(tail) for s in self.stops):
                partial = start
                break
        if hits and first <= partial:
            out, self.pending = self.pending[:first], ""
            return out, True
        cut = min(partial, first)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> tuple[str, bool]:
        """Release what is held (generation ended): up to its first stop string, if one is there;
        returns (text, whether a stop string was found). A complete stop string held back only
        because an earlier partial match might still have grown is found here."""
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        out, self.pending = self.pending[: min(hits)] if hits else self.pending, ""
        return out, bool(hits)


def generate(model: _Model, tokenizer: _Tokenizer, prompt_tokens: Sequence[int],
             params: SamplingParams = SamplingParams(),
             should_stop: Callable[[], bool] | None = None, *,
             reset: bool = True, sampler: Sampler | None = None,
             lookup: PromptLookup | None = None, policy: DraftPolicy | None = None) -> Iterator[TokenEvent]:
    """Generate from `prompt_tokens`, yielding TokenEvents (see the module docstring).

    reset=True clears the model's KV cache first; reset=False continues the cached sequence, with
    `prompt_tokens` the new tokens to append (a chat's next turn). `sampler` may be passed to keep
    one random stream and penalty history across calls (its own params then drive sampling;
    `params` still sets max_tokens and stop); by default a fresh one is made from `params`.
    lookup: prompt-lookup drafting over this PromptLookup (holding the whole context, cached
    tokens included), for models with `can_verify`; `policy` keeps its measured costs across calls.
    """
    prompt = [int(t) for t in prompt_tokens]
    if not prompt:
        raise ValueError("prompt_tokens is empty; generation needs at least one token (e.g. BOS)")
    sampler = sampler if sampler is not None else Sampler(params)
    sampler.accept_many(prompt)
    stop_ids = frozenset(tokenizer.stop_ids)
    n_ctx = getattr(model, "n_ctx", None)         # optional: stop cleanly when the cache is full
    decoder = StreamDecoder(tokenizer)            # bytes -> text, never half a character
    stops = StopStringFilter(params.stop)
    pieces: list[str] = []                        # all released text, for full_text
    if should_stop is not None and should_stop():  # stopped before any work
        yield TokenEvent("done", reason="abort", n_prompt=len(prompt))
        return

    outside = getattr(model, "computed_outside", False)
    if lookup is not None and not getattr(model, "can_verify", False):
        lookup = None                             # e.g. atome: its state cannot be cut back
    policy = policy if policy is not None else DraftPolicy()

    # -- prefill: the whole prompt in one forward pass ---------------------------------------------
    if reset:
        model.reset()
    if outside:
        yield TokenEvent("forward", tokens=prompt)
        if should_stop is not None and should_stop():
            yield TokenEvent("done", reason="abort", n_prompt=len(prompt))
            return
    t0 = time.perf_counter()
    logits = model.forward(prompt)                # (vocab,) logits after the last prompt token
    prefill_s = time.perf_counter() - t0
    n_prompt = len(prompt)
    prefill_rate = n_prompt / prefill_s if prefill_s > 0 else 0.0
    yield TokenEvent("prefill", n_prompt=n_prompt, prefill_seconds=prefill_s,
                     prefill_tok_s=prefill_rate)

    # -- decode: sample, detokenise, feed back (drafted tokens: checked in one pass) ----------------
    decode_s = 0.0
    n_gen = 0
    last: int | None = None                       # sampled token not yet fed to the model
    ahead: list[tuple[int, np.ndarray]] = []      # (drafted token, logits after it) of the last verify, unused
    drafted = (0, 0)                              # (n-gram length, tokens) of that verify's draft
    n_drafted = n_accepted = 0                    # drafted tokens verified; those that were sampled
    while True:
        t0 = time.perf_counter()                  # consumer time between yields is excluded
        if n_gen >= params.max_tokens:
            reason = "length"
            break
        if should_stop is not None and should_stop():
            reason = "abort"
            break
        if last is not None and ahead and ahead[0][0] == last:
            logits = ahead.pop(0)[1]              # the draft was right: its logits are computed
            if not ahead:
                policy.outcome(drafted[0], drafted[1], drafted[1])
        elif last is not None:
            if ahead:                             # a drafted token was not sampled: cut the cache back
                policy.outcome(drafted[0], drafted[1], drafted[1] - len(ahead))
                model.pos -= len(ahead)
                ahead = []
            if n_ctx is not None and model.pos >= n_ctx:
                reason = "length"                 # KV cache full
                break
            draft: list[int] = []
            if lookup is not None:
                room = min(params.max_tokens - n_gen, (n_ctx or model.pos + MAX_DRAFT + 1) - model.pos) - 1
                ngram, found = lookup.find(min(MAX_DRAFT, room))
                draft = found[: policy.length(ngram, len(found))]
                drafted = (ngram, len(draft))
            if outside:
                decode_s += time.perf_counter() - t0
                yield TokenEvent("forward", tokens=[last] + draft, verify=bool(draft))
                t0 = time.perf_counter()
                if should_stop is not None and should_stop():
                    reason = "abort"
                    break
            tf = time.perf_counter()
            if draft:
                rows = model.forward([last] + draft, all_logits=True, exact=True)  # (1 + k, vocab)
                logits, ahead = rows[0], list(zip(draft, rows[1:]))
                n_drafted += len(draft)
            else:
                logits = model.forward([last])    # (vocab,)
            policy.timed(1 + len(draft), getattr(model, "last_seconds", None) or time.perf_counter() - tf)
        tok = sampler.sample(logits)
        n_gen += 1
        if lookup is not None:
            lookup.append(tok)
            n_accepted += bool(ahead) and ahead[0][0] == tok
        if tok in stop_ids:
            reason = "eos"                        # never shown as text
            break
        sampler.accept(tok)
        text, hit_stop = stops.feed(decoder.feed(tok))
        pieces.append(text)
        decode_s += time.perf_counter() - t0
        yield TokenEvent("token", token_id=tok, text=text)
        if hit_stop:
            reason = "stop"
            t0 = time.perf_counter()
            break
        last = tok

    # -- done: release the held-back tail (not after a stop string) ------------------------------
    tail = decoder.flush()                        # U+FFFD for a dangling partial character
    if reason == "stop":
        tail = ""
    else:
        text, hit_stop = stops.feed(tail)
        if not hit_stop:
            rest, hit_stop = stops.flush()
            text += rest
        tail = text
        reason = "stop" if hit_stop else reason
    pieces.append(tail)
    model.pos -= len(ahead)                       # drafted positions past the last token fed are not kept
    decode_s += time.perf_counter() - t0
    yield TokenEvent("done", text=tail, reason=reason, n_prompt=n_prompt, n_generated=n_gen,
                     prefill_seconds=prefill_s, decode_seconds=decode_s,
                     prefill_tok_s=prefill_rate,
                     decode_tok_s=n_gen / decode_s if decode_s > 0 else 0.0,
                     full_text="".join(pieces), n_drafted=n_drafted, n_accepted=n_accepted)
