"""Sessions: a loaded model with its tokenizer and chat template, answering requests (after generate.py).

    GGUF buffer -> Session.load -> Session(gguf, model, tokenizer, template)
        request {"messages" | "prompt", "params"} -> Session.start -> Generation
        Generation.step() -> {"type": "prefill" | "token" | "done", ...}  one message dict per event

The one place where (gguf, model, tokenizer, template) are assembled and where a request becomes
token ids and event messages; the CLI, the browser worker (engine/bridge.py) and the leader of a
sharded model (engine/shard.py) all use it. The message fields are declared for the page in
static/protocol.js (tests/test_protocol.py checks both sides agree).

A sharded model's leader cannot call forward() synchronously (the shards exchange messages), so
its Session holds a `LookaheadModel`: generate() announces each forward pass (a 'forward' event),
the worker asks `Generation.need()` which tokens to run, runs them on every shard, `provide`s the
logits, then calls `step()` again. For a local model need() is always None and step() runs the
forward pass itself.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from .chat import ChatTemplate, chat_tokens, opening_tokens
from .generate import generate
from .gguf import GGUFFile
from .lookup import DraftPolicy, PromptLookup
from .model import LoadPolicy, load_model
from .sampler import SamplingParams
from .tokenizer import Tokenizer

# Decoding settings a request may carry, with their types; anything else is refused by name.
PARAM_TYPES = {"temperature": float, "top_k": int, "top_p": float, "min_p": float,
               "repeat_penalty": float, "repeat_last_n": int, "seed": int, "max_tokens": int,
               "speculative": bool}


class LookaheadModel:
    """Stands in for Model inside engine.generate: forward() hands out logits computed elsewhere
    (by the shards) and `provide`d before generate() asks for them."""

    computed_outside = True  # generate() announces each forward pass with a 'forward' event
    can_verify = True        # the shards run exact verify passes (ShardRunner.begin(..., verify))

    def __init__(self, n_ctx: int, max_cut: int | None = None):
        self.n_ctx = n_ctx
        self.max_cut = max_cut  # the shards' Model.max_cut: how far their caches can be cut back
        self.pos = 0
        self._high = 0          # as Model._high: one past the highest position the shards wrote
        self.last_seconds: float | None = None  # how long the shards took for the last forward
        self._ready: tuple[list[int], np.ndarray] | None = None

    def reset(self) -> None:
        self.pos = 0

    def cut_floor(self) -> int:
        """The shards' Model.cut_floor, followed from the forwards they were asked for."""
        return 0 if self.max_cut is None else max(0, self._high - self.max_cut)

    def provide(self, tokens: list[int], logits: np.ndarray, seconds: float | None = None) -> None:
        self._ready = (list(tokens), logits)
        self.last_seconds = seconds

    def forward(self, tokens: Sequence[int], all_logits: bool = False, exact: bool = False) -> np.ndarray:
        if self._ready is None or self._ready[0] != [int(t) for t in tokens]:
            have = None if self._ready is None else self._ready[0]
            raise RuntimeError(f"forward({list(tokens)}) but the shards computed {have}")
        logits = self._ready[1]
        self._ready = None
        self._high = max(self._high if self.pos else 0, self.pos + len(tokens))
        self.pos += len(tokens)
        return logits


class Session:
    """A loaded model with its tokenizer and chat template, and the tokens its KV cache holds."""

    def __init__(self, gguf: GGUFFile, model, load_seconds: float = 0.0, path=None):
        self.gguf = gguf
        self.model = model  # engine.model.Model (or AtomeModel), or a LookaheadModel on a leader shard
        self.tokenizer = Tokenizer.from_metadata(gguf.metadata)
        self.template = ChatTemplate.from_metadata(gguf.metadata)
        self.load_seconds = load_seconds
        self.path = path                 # the file it came from, when there is one
        self._cached: list[int] = []     # token ids whose keys/values sit in the model's KV cache
        self._conversation = 0           # bumped by forget(): a generation started before it records nothing
        self.draft_policy = DraftPolicy()  # prompt lookup's measured costs and acceptance, across requests
        self._opening: list[int] | None = None  # opening(), once computed

    @classmethod
    def load(cls, buffer, n_ctx: int | None = None, policy: LoadPolicy = LoadPolicy(),
             progress: Callable[[int, int], None] | None = None, path=None) -> "Session":
        """Parse GGUF bytes (bytes, bytearray, memoryview, mmap, or a GGUFFile) and load the model."""
        t0 = time.perf_counter()
        gguf = buffer if isinstance(buffer, GGUFFile) else GGUFFile(buffer)
        model = load_model(gguf, n_ctx=n_ctx, policy=policy, progress=progress)
        session = cls(gguf, model, path=path)
        session.load_seconds = time.perf_counter() - t0
        return session

    def info(self) -> dict:
        md = self.gguf.metadata
        return {
            "name": md.get("general.name"),
            "architecture": md.get("general.architecture"),
            "n_ctx": getattr(self.model, "n_ctx", None),
            "vocab_size": self.tokenizer.vocab_size,
            "chat_template": self.template.note,
            "load_seconds": self.load_seconds,
            "n_bytes": self.gguf.nbytes,
        }

    def prompt_tokens(self, request: dict) -> list[int]:
        """Token ids of a request: a chat (`messages`, through the chat template) or a raw `prompt`."""
        if request.get("messages") is not None:
            return chat_tokens(self.tokenizer, self.template, request["messages"])
        prompt = request.get("prompt")
        if not isinstance(prompt, str):
            raise ValueError(f"generate request needs 'messages' or a 'prompt' string, got {sorted(request)}")
        return list(self.tokenizer.encode(prompt, add_bos=None))

    def start(self, request: dict, params: SamplingParams | None = None) -> "Generation":
        """Begin answering `request` = {"messages": [...]} or {"prompt": str}, plus "params" (the
        page's settings, with the template's stop strings); or pass `params` whole (the CLI)."""
        if params is None:
            params = sampling_params(request.get("params") or {}, self.template.stop)
        tokens = self.prompt_tokens(request)
        n_ctx = getattr(self.model, "n_ctx", None)
        if n_ctx is not None and len(tokens) >= n_ctx:
            raise ValueError(f"the prompt is {len(tokens)} tokens but the context holds {n_ctx}, answer "
                             "included: shorten the conversation or load the model with a larger n_ctx")
        rewind = getattr(self.model, "can_rewind", True)
        floor = self.model.cut_floor() if hasattr(self.model, "cut_floor") else 0
        return Generation(self, tokens, reusable_prefix(self._cached, tokens, self.model.pos, rewind, floor), params)

    def opening(self) -> list[int]:
        """The tokens every new conversation through the chat template starts with
        (`engine.chat.opening_tokens`); [] for a model that cannot be cut back to them (a recurrent
        one), or whose context would hold no answer after them."""
        if self._opening is None:
            rewinds = getattr(self.model, "can_rewind", True) and hasattr(self.model, "forward")
            opening = opening_tokens(self.tokenizer, self.template) if rewinds else []
            n_ctx = getattr(self.model, "n_ctx", None)
            self._opening = opening if n_ctx is None or len(opening) < n_ctx // 2 else []
        return self._opening

    def opening_generation(self, max_tokens: int) -> "Generation | None":
        """The prefill of up to `max_tokens` more of `opening()`, as a Generation that samples
        nothing (a sharded leader's: its forward run by the shards, need/provide); its end records
        what the KV cache then holds, as a request's does. None when there is nothing to do: all of
        it is held, or the cache holds something else (a conversation is never touched)."""
        opening = self.opening()
        held = len(self._cached)
        if not opening or self._cached != opening[:held] or held >= len(opening) or self.model.pos < held:
            return None
        return Generation(self, opening[: held + max_tokens], held, SamplingParams(max_tokens=0, speculative=False))

    def prefill_opening(self, max_tokens: int) -> bool:
        """Put up to `max_tokens` more of `opening()` into the KV cache (`opening_generation`, run
        here); True while some of it is still to come. The next request whose tokens start with it
        reuses it (`start`), so a new chat's first answer prefills only what the user wrote."""
        gen = self.opening_generation(max_tokens)
        if gen is None:
            return False
        while gen.step() is not None:
            pass
        return 0 < len(self._cached) < len(self.opening())

    def forget(self) -> None:
        """A new conversation ("New chat"): the next request reuses nothing of the KV cache, also
        when this is called while a generation is still running (it will not record its tokens)."""
        self._cached = []
        self._conversation += 1

    def remember(self, tokens: list[int], conversation: int | None = None) -> None:
        """Record what the KV cache holds after a generation (model.pos tokens of `tokens`), unless
        forget() was called since that generation started (`conversation` it was started in)."""
        if conversation is not None and conversation != self._conversation:
            return
        self._cached = list(tokens[: self.model.pos]) if tokens else []


class Generation:
    """One answer being generated: step() until it returns None.

    Events (plain dicts, the fields static/protocol.js declares):
        {"type": "prefill", "n_prompt", "n_reused", "prefill_tok_s"}
        {"type": "token", "text", "token_id", "n"}          one sampled token (text may be "")
        {"type": "done", "reason", "text", "full_text", "n_prompt", "n_reused", "n_generated",
         "prefill_tok_s", "decode_tok_s", "token_ids", "n_drafted", "n_accepted"}
                                                             reason: eos | stop | length | abort
    `text` is the newly printable text; done's `full_text` is the whole answer (stop strings cut).
    n_prompt counts the whole prompt; n_reused of those came from the KV cache (not computed again),
    and prefill_tok_s is the rate over the n_prompt - n_reused tokens that were. n_drafted tokens
    were proposed by prompt lookup (params.speculative) and checked; n_accepted of them were kept.
    """

    def __init__(self, session: Session, prompt: list[int], reuse: int, params: SamplingParams):
        self.session, self.prompt_tokens, self.params = session, prompt, params
        self.conversation = session._conversation
        self.model = session.model
        self.generated: list[int] = []
        self.reused = reuse              # prompt tokens taken from the KV cache, not recomputed
        self._aborted = False
        if reuse:
            self.model.pos = reuse  # the cache holds prompt[:reuse] (and maybe more: cut back to it)
        # reuse > 0: the KV cache already holds prompt[:reuse]; feed only the rest.
        lookup = PromptLookup(prompt) if params.speculative else None
        self._events = generate(self.model, session.tokenizer, prompt[reuse:], params,
                                should_stop=lambda: self._aborted, reset=reuse == 0,
                                lookup=lookup, policy=session.draft_policy)
        self._need: tuple[list[int], int, bool] | None = None  # the forward a 'forward' event asked for
        self._provided = [0.0, 0.0]      # seconds of forwards run outside: [prefill, decode]
        self.seconds: dict[str, float] = {}  # prefill_seconds, decode_seconds once done
        self.finished = False

    def need(self) -> list | None:
        """[token ids, start position, verify] of the forward generate() asks for next (leader
        shard), or None. verify: an exact pass with logits for every token (prompt lookup)."""
        return None if self._need is None or self._aborted else list(self._need)

    def provide(self, logits: np.ndarray, seconds: float) -> None:
        """The logits of need()'s forward, computed by the shards in `seconds`."""
        tokens = self._need[0]
        self.model.provide(tokens, logits, seconds)
        self._provided[1 if self.generated else 0] += seconds
        self._need = None

    def step(self) -> dict | None:
        """The next event as a message dict, or None when finished."""
        if self.finished:
            return None
        ev = next(self._events, None)
        if ev is None:
            self.finished = True
            return None
        if ev.kind == "forward":  # a sharded leader: the worker runs it on the shards (need/provide)
            self._need = (list(ev.tokens), self.model.pos, ev.verify)
            return {"type": "forward"}
        if ev.kind == "prefill":
            return {"type": "prefill", "n_prompt": len(self.prompt_tokens), "n_reused": self.reused,
                    "prefill_tok_s": _rate(ev.n_prompt, ev.prefill_seconds + self._provided[0])}
        if ev.kind == "token":
            self.generated.append(int(ev.token_id))
            return {"type": "token", "text": ev.text, "token_id": int(ev.token_id), "n": len(self.generated)}
        self.finished = True
        self._need = None
        self.session.remember(self.prompt_tokens + self.generated, self.conversation)
        self.seconds = {"prefill_seconds": ev.prefill_seconds + self._provided[0],
                        "decode_seconds": ev.decode_seconds + self._provided[1]}
        return {"type": "done", "reason": ev.reason, "text": ev.text, "full_text": ev.full_text,
                "n_prompt": len(self.prompt_tokens),  # the whole prompt, reused cache included
                "n_reused": self.reused, "n_generated": ev.n_generated,
                "prefill_tok_s": _rate(ev.n_prompt, ev.prefill_seconds + self._provided[0]),
                "decode_tok_s": _rate(ev.n_generated, ev.decode_seconds + self._provided[1]),
                "token_ids": list(self.generated), "n_drafted": ev.n_drafted, "n_accepted": ev.n_accepted}

    def abort(self) -> None:
        """Stop at the next step: it returns the done event (reason "abort"); the KV cache stays usable."""
        self._aborted = True

    def close(self) -> None:
        """Drop an unfinished generation: the model stays loaded; its KV cache is not reused next turn."""
        if not self.finished:
            self.finished = True
            self._events.close()
            self.session.remember([], self.conversation)


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


def reusable_prefix(cached: list[int], tokens: list[int], pos: int, rewind: bool = True, floor: int = 0) -> int:
    """How many leading prompt tokens the KV cache already holds, so only the rest is computed.

    The common prefix of what the cache holds and the new prompt: a chat's next turn extends it, an
    edited or regenerated turn shares everything before that turn. At most len(tokens) - 1: the last
    prompt token must run to give the next token's logits. Models whose state cannot be cut back
    (rewind=False: atome's conv window and SSM state) reuse an exact extension only, and a cache
    cut back below `floor` (Model.cut_floor: a sliding-window ring has moved on) reuses nothing.

    >>> reusable_prefix([5, 6, 7], [5, 6, 7, 8], 3), reusable_prefix([5, 6, 7], [5, 6, 9], 3)
    (3, 2)
    """
    if pos != len(cached) or not cached:
        return 0  # the cache holds something other than `cached`
    n = 0
    for a, b in zip(cached, tokens):
        if a != b:
            break
        n += 1
    n = min(n, len(tokens) - 1)
    if not rewind and n < len(cached) or n < floor:
        return 0
    return max(n, 0)


def sampling_params(raw: dict, stop: tuple[str, ...] = ()) -> SamplingParams:
    """SamplingParams from a request's settings dict; unknown or mistyped keys are errors."""
    out: dict[str, Any] = {"stop": tuple(stop)}
    for key, value in raw.items():
        if key not in PARAM_TYPES:
            raise ValueError(f"unknown sampling setting {key!r} (expected one of {sorted(PARAM_TYPES)})")
        if value is None:
            continue
        if PARAM_TYPES[key] is bool:
            if not isinstance(value, bool):
                raise ValueError(f"setting {key}={value!r} must be true or false")
            out[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"sampling setting {key}={value!r} must be a number")
        if PARAM_TYPES[key] is int and value != int(value):
            raise ValueError(f"sampling setting {key}={value!r} must be an integer")
        out[key] = PARAM_TYPES[key](value)
    return SamplingParams(**out)
