"""Sampler: logits -> token id. The stage between model.py and generate.py.

    logits (vocab,) float32 --Sampler.sample--> token id (int)

The filter chain and its order are llama.cpp's default sampler chain (common/sampling), without the
samplers Mote does not offer (DRY, top-n-sigma, typical-p, XTC):

    1. repetition penalty  over the last `repeat_last_n` accepted tokens (prompt included), each
                           distinct token once: a positive logit is divided by the penalty, a
                           negative (or zero) one multiplied, so the penalty always lowers it
    2. top-k               keep the k largest logits (k <= 0: off)
    3. top-p               keep the shortest prefix, by descending probability, whose mass reaches
                           p (p >= 1: off); probabilities are the softmax over what step 2 kept
    4. min-p               keep tokens with p >= min_p * p_max, i.e. logit >= max + log(min_p)
                           (min_p <= 0: off)
    5. temperature         divide the surviving logits by T
    6. dist                draw one uniform u in [0, 1) and pick the first candidate whose
                           cumulative probability exceeds u; candidates are in (logit descending,
                           id ascending) order, or in plain id order when none of 2-4 is active
                           (this saves a full sort of the vocabulary and samples the same law)

temperature <= 0 is greedy: the argmax of the penalised logits, ties to the lowest token id (as
llama.cpp's greedy sampler scanning the vocabulary in id order). Filters 2-4 always keep the
argmax, so they cannot change a greedy pick.

Reproducibility. A seed makes `numpy.random.Generator(PCG64(seed))`'s stream of doubles (computed by
engine/pcg64.py: importing numpy.random costs each worker ~2.4 MiB of WASM heap), the same on every
platform and numpy version, Pyodide included; exactly one uniform is drawn per
non-greedy step, even when one candidate is left, so a run's k-th draw never depends on earlier
filtering. Candidates are ordered by (logit descending, token id ascending) with a stable sort;
ties at the top-k boundary go to the lower id. All probability maths is float64. The one thing that
can differ across platforms is the last bit of `exp` (libm or SIMD), which changes a pick only if
u lands within ~1e-16 of a bucket edge.

Speed. For a 262 144-token vocabulary the sampler does a few O(vocab) passes into preallocated
buffers (float64 copy, penalty on <= repeat_last_n entries, in-place `ndarray.partition` for the
k-th largest value, one comparison) and then works on the k survivors only; see
tests/test_sampler.py::test_sampling_speed_large_vocab for the measured cost per token.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .pcg64 import PCG64, fresh_seed

TOP_P_PROBE = 1024   # first candidate-set size tried for top-p without top-k


@dataclass(frozen=True)
class SamplingParams:
    """Decoding knobs; the defaults are llama.cpp's (except max_tokens). Out-of-range values
    (NaN, infinities, a negative temperature, top_p outside (0, 1], ...) are refused by name."""
    temperature: float = 0.8     # 0: greedy
    top_k: int = 40              # 0: off
    top_p: float = 0.95          # 1: off
    min_p: float = 0.05          # 0: off
    repeat_penalty: float = 1.0  # 1.0: off
    repeat_last_n: int = 64      # window of the repetition penalty (prompt tokens included)
    seed: int | None = None      # None: a fresh seed (Sampler.seed records it)
    max_tokens: int = 128        # sampled tokens, the stop token included
    stop: tuple[str, ...] = ()   # stop strings
    speculative: bool = True     # prompt-lookup drafting (engine/lookup.py): same tokens, fewer passes

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # a lone string would be split into characters
            raise TypeError(f"stop must be a tuple of strings, got the string {self.stop!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        if not isinstance(self.speculative, bool):
            raise ValueError(f"speculative={self.speculative!r} must be True or False")
        for name, low, high, low_open in _RANGES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}={value!r} must be a finite number")
            if value < low or (low_open and value == low) or value > high:
                left = "(" if low_open else "["
                raise ValueError(f"{name}={value!r} must be in {left}{low}, {high}]")
        for name in ("top_k", "repeat_last_n", "max_tokens") + (("seed",) if self.seed is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} must be a whole number >= 0")


# (field, low, high, low excluded) for the float knobs
_RANGES = (("temperature", 0.0, math.inf, False), ("top_p", 0.0, 1.0, True), ("min_p", 0.0, 1.0, False),
           ("repeat_penalty", 0.0, math.inf, True))


class Sampler:
    """Turns one logits vector into one token id, following `SamplingParams`.

        >>> s = Sampler(SamplingParams(temperature=0))
    >>> s.sample(np.array([0.5, 2.0, 2.0, -1.0], dtype=np.float32))  # greedy, tie -> lower id
    1

    The caller feeds every token the model has seen through `accept` (prompt tokens first) so the
    repetition penalty sees them; `engine.generate` does this.
    """

    def __init__(self, params: SamplingParams) -> None:
        self.params = params  # validated by SamplingParams
        # seed None: draw a fresh one from the OS and keep it, so the run can be repeated
        self.seed: int = int(params.seed) if params.seed is not None else fresh_seed()
        self.rng = PCG64(self.seed)  # numpy's Generator(PCG64(seed)) stream, without numpy.random
        self.history: collections.deque[int] = collections.deque(maxlen=params.repeat_last_n)
        self._vocab = 0            # size the buffers below were made for
        self._x = np.empty(0)      # (vocab,) float64 working logits
        self._tmp = np.empty(0)    # (vocab,) float64 scratch (partition, exp, cumsum)
        self._mask = np.empty(0, dtype=bool)  # (vocab,) comparison result

    # -- history for the repetition penalty -----------------------------------------------------

    def accept(self, token_id: int) -> None:
        """Record a token the model has seen (prompt or generated)."""
        self.history.append(int(token_id))

    def accept_many(self, token_ids: Sequence[int]) -> None:
        """Record several tokens; only the last `repeat_last_n` matter."""
        n = self.params.repeat_last_n
        if n:
            for t in list(token_ids)[-n:]:
                self.history.append(int(t))

    def reset(self) -> None:
        """Forget the history (the random stream continues)."""
        self.history.clear()

    # -- sampling ---------------------------------------------------------------------------------

    def sample(self, logits: np.ndarray) -> int:
        """Pick the next token id from `logits` (vocab,) after the filter chain above."""
        p = self.params
        x = self._load(logits)                        # (vocab,) float64, penalised below
        self._apply_repeat_penalty(x)

        if p.temperature <= 0:
            tok = int(np.argmax(x))                   # first maximum = lowest id on ties
            if math.isnan(x[tok]):
                raise ValueError(f"logits contain NaN (at token {tok}); cannot sample")
            return tok

        ids, vals, z = self._candidates(x)            # (n,), (n,) sorted; z = softmax normaliser
        if ids is None:                               # no filter active: whole vocab in id order
            return self._draw_full(x)
        n = ids.size
        if 0 < p.top_p < 1.0:
            probs = np.exp(vals - vals[0]) / z         # (n,) probabilities over the top-k set
            n = min(int(np.searchsorted(np.cumsum(probs), p.top_p, side="left")) + 1, n)
        if p.min_p > 0:
            # vals is sorted, so min-p keeps a prefix: count the survivors
            n = max(1, min(n, int(np.count_nonzero(vals[:n] >= vals[0] + math.log(p.min_p)))))
        vals = vals[:n]                                # (n,)
        w = np.exp((vals - vals[0]) / p.temperature)   # (n,) unnormalised probabilities
        cum = np.cumsum(w)                             # (n,)
        u = self.rng.random() * cum[-1]
        i = min(int(np.searchsorted(cum, u, side="right")), n - 1)
        return int(ids[i])

    def _load(self, logits: np.ndarray) -> np.ndarray:
        """Copy `logits` into the reused float64 buffer (allocated once per vocabulary size)."""
        logits = np.asarray(logits)
        if logits.ndim != 1 or logits.size == 0:
            raise ValueError(f"logits must be a non-empty 1-D (vocab,) array, got shape {logits.shape}")
        if logits.size != self._vocab:
            self._vocab = logits.size
            self._x = np.empty(self._vocab, dtype=np.float64)
            self._tmp = np.empty(self._vocab, dtype=np.float64)
            self._mask = np.empty(self._vocab, dtype=bool)
        np.copyto(self._x, logits)                    # (vocab,) float32 -> float64
        return self._x

    def _apply_repeat_penalty(self, x: np.ndarray) -> None:
        """llama.cpp penalty: each distinct recent token once; logit > 0 divided, else multiplied."""
        pen = self.params.repeat_penalty
        if pen == 1.0 or not self.history:
            return
        ids = np.unique(np.fromiter(self.history, dtype=np.int64))   # (<= repeat_last_n,)
        ids = ids[(ids >= 0) & (ids < x.size)]
        v = x[ids]
        x[ids] = np.where(v > 0, v / pen, v * pen)

    def _candidates(self, x: np.ndarray):
        """Apply top-k; return (ids, logits) sorted by logit desc / id asc, and the softmax
        normaliser over the top-k set (relative to its max), or (None, None, None) when no filter
        is active and the whole vocabulary is the candidate set."""
        p, v = self.params, x.size
        k = p.top_k if 0 < p.top_k < v else v
        if k < v:
            # k-th largest value: in-place partition of a scratch copy (no allocation)
            np.copyto(self._tmp, x)
            self._tmp.partition(v - k)
            kth = self._tmp[v - k]
            ids = self._select(x, kth)                # ascending ids with x >= kth (>= k of them)
            ids, vals = self._sort_desc(x, ids)
            ids, vals = ids[:k], vals[:k]             # (k,) ties at the boundary -> lower ids
            z = float(np.exp(vals - vals[0]).sum())
            return ids, vals, z
        top_p_on, min_p_on = 0 < p.top_p < 1.0, p.min_p > 0
        if not top_p_on and not min_p_on:
            return None, None, None
        m = float(x.max())
        if math.isnan(m):
            raise ValueError("logits contain NaN; cannot sample")
        # no top-k: the softmax normaliser is over the whole vocabulary
        np.subtract(x, m, out=self._tmp)
        np.exp(self._tmp, out=self._tmp)              # (vocab,) exp(x - max)
        z = float(self._tmp.sum())
        if min_p_on:
            # top-p and min-p each keep a prefix of the sorted list, so the result is the
            # shorter prefix: sort only the min-p survivors (exact, and far fewer than vocab)
            ids = self._select(x, m + math.log(p.min_p))
        else:
            ids = self._top_p_superset(x, m, z)
        ids, vals = self._sort_desc(x, ids)
        return ids, vals, z

    def _top_p_superset(self, x: np.ndarray, m: float, z: float) -> np.ndarray:
        """Ascending ids of a set that surely contains the top-p prefix, without sorting the
        vocabulary: the k largest logits for k = 1024, 8192, ... until they hold >= top_p of
        the mass (far cheaper than a full sort of a large vocabulary)."""
        v, k = x.size, TOP_P_PROBE
        while k < v:
            np.copyto(self._tmp, x)
            self._tmp.partition(v - k)
            ids = self._select(x, self._tmp[v - k])   # (>= k,) ties included
            mass = float(np.exp(x[ids] - m).sum()) / z
            if mass >= self.params.top_p + 1e-9:      # margin for summation-order rounding
                return ids
            k *= 8
        return np.arange(v)                           # (vocab,) flat distribution: sort it all

    def _select(self, x: np.ndarray, threshold: float) -> np.ndarray:
        """Ascending ids of x >= threshold, via the reused mask buffer."""
        np.greater_equal(x, threshold, out=self._mask)
        ids = np.flatnonzero(self._mask)              # (n,) int64
        if ids.size == 0:
            raise ValueError("logits contain NaN; cannot sample")
        return ids

    @staticmethod
    def _sort_desc(x: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Order ascending `ids` by logit descending; the stable sort keeps ties in id order."""
        vals = x[ids]                                 # (n,)
        order = np.argsort(-vals, kind="stable")      # (n,)
        return ids[order], vals[order]

    def _draw_full(self, x: np.ndarray) -> int:
        """Temperature + dist over the whole vocabulary, in id order, in the scratch buffer."""
        t = self.params.temperature
        m = float(x.max())
        if math.isnan(m):
            raise ValueError("logits contain NaN; cannot sample")
        np.subtract(x, m, out=self._tmp)
        np.divide(self._tmp, t, out=self._tmp)
        np.exp(self._tmp, out=self._tmp)              # (vocab,) unnormalised probabilities
        np.cumsum(self._tmp, out=self._tmp)           # (vocab,) cumulative
        u = self.rng.random() * self._tmp[-1]
        return min(int(np.searchsorted(self._tmp, u, side="right")), x.size - 1)


def reference_sample(logits: np.ndarray, params: "SamplingParams", history: Sequence[int],
                     u: float) -> int:
    """Naive reference of `Sampler.sample` for tests: plain Python over every token, the same
    chain written step by step, with the uniform `u` supplied by the caller (greedy ignores it)."""
    x = [float(v) for v in logits]
    if params.repeat_penalty != 1.0:
        for t in set(list(history)[-params.repeat_last_n:] if params.repeat_last_n else []):
            x[t] = x[t] / params.repeat_penalty if x[t] > 0 else x[t] * params.repeat_penalty
    cand = sorted(range(len(x)), key=lambda i: (-x[i], i))      # full candidate list, sorted
    if params.temperature <= 0:
        return cand[0]
    if not (0 < params.top_k < len(x) or 0 < params.top_p < 1.0 or params.min_p > 0):
        cand = list(range(len(x)))                               # no filter: id order
    if 0 < params.top_k < len(x):
        cand = cand[: params.top_k]
    if 0 < params.top_p < 1.0:
        mx = x[cand[0]]
        z = sum(math.exp(x[i] - mx) for i in cand)
        acc, keep = 0.0, len(cand)
        for j, i in enumerate(cand):
            acc += math.exp(x[i] - mx) / z
            if acc >= params.top_p:
                keep = j + 1
                break
        cand = cand[:keep]
    if params.min_p > 0:
        floor = x[cand[0]] + math.log(params.min_p)
        cand = [i for i in cand if x[i] >= floor]           # the max always survives
    mx = x[cand[0]]
    w = [math.exp((x[i] - mx) / params.temperature) for i in cand]
    target, acc = u * sum(w), 0.0
    for i, wi in zip(cand, w):
        acc += wi
        if acc > target:
            return i
    return cand[-1]
