"""Sampler: the fast numpy chain against the plain-Python reference, law of the draws, speed."""

import itertools
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from engine.generate import SamplingParams
from engine.sampler import Sampler, reference_sample
from tests.paths import ROOT


def random_logits(rng, vocab, ties=True):
    x = rng.standard_normal(vocab) * 2.5
    if ties:
        x = np.round(x, 1)            # many exact ties, also at the top-k boundary
    return x.astype(np.float32)


def test_greedy_is_argmax_with_ties_to_lowest_id():
    s = Sampler(SamplingParams(temperature=0))
    assert s.sample(np.array([0.0, 3.0, 1.0, 3.0], np.float32)) == 1
    assert s.sample(np.array([5.0, 5.0], np.float32)) == 0
    rng = np.random.default_rng(1)
    for _ in range(20):
        x = random_logits(rng, 500)
        assert s.sample(x) == int(np.flatnonzero(x == x.max())[0])


def test_greedy_ignores_filters_and_consumes_no_randomness():
    x = np.array([1.0, 4.0, 2.0], np.float32)
    s = Sampler(SamplingParams(temperature=0, top_k=1, top_p=0.1, min_p=0.9, seed=3))
    state = s.rng.state
    assert [s.sample(x) for _ in range(5)] == [1] * 5
    assert s.rng.state == state


@pytest.mark.parametrize("seed", [0, 1, 5, 1234, 2**32 + 7, 2**64 + 3, 2**127 + 99, 12345678901234567890123])
def test_stream_is_numpys_pcg64(seed):
    """engine/pcg64.py against numpy.random (the reference): SeedSequence's words, then the doubles."""
    from engine.pcg64 import PCG64, seed_words

    assert seed_words(seed, 8) == [int(w) for w in np.random.SeedSequence(seed).generate_state(8)]
    ours, numpys = PCG64(seed), np.random.Generator(np.random.PCG64(seed))
    assert [ours.random() for _ in range(2000)] == [numpys.random() for _ in range(2000)]


def test_sampling_never_imports_numpy_random():
    """In Pyodide numpy.random costs each worker ~2.4 MiB of heap: a seeded and an unseeded
    sampled generation run without it (a fresh interpreter, so nothing imported it before)."""
    code = ("import sys\n"
            "from engine.sampler import Sampler, SamplingParams\n"
            "import numpy as np\n"
            "x = np.linspace(0, 3, 50, dtype=np.float32)\n"
            "for seed in (7, None):\n"
            "    s = Sampler(SamplingParams(temperature=0.8, top_k=20, seed=seed))\n"
            "    [s.sample(x) for _ in range(5)]\n"
            "print('numpy.random' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


PARAM_GRID = [
    SamplingParams(temperature=t, top_k=k, top_p=p, min_p=mp, repeat_penalty=rp, repeat_last_n=8)
    for t, k, p, mp, rp in itertools.product(
        (0.0, 0.4, 1.0, 1.7), (0, 1, 7, 40, 10_000), (1.0, 0.9, 0.4), (0.0, 0.05, 0.3), (1.0, 1.4))
]


@pytest.mark.parametrize("params", PARAM_GRID, ids=lambda p: (
    f"T{p.temperature}-k{p.top_k}-p{p.top_p}-min{p.min_p}-rp{p.repeat_penalty}"))
def test_matches_reference_with_same_uniforms(params):
    # The sampler draws exactly one PCG64 uniform per non-greedy step, so a twin generator with
    # the same seed hands the plain-Python reference the same u: picks must agree token for token.
    vocab, seed = 300, 1234
    rng = np.random.default_rng(7)
    s = Sampler(SamplingParams(**{**params.__dict__, "seed": seed}))
    twin = np.random.Generator(np.random.PCG64(seed))
    history = []
    for step in range(12):
        x = random_logits(rng, vocab)
        got = s.sample(x)
        u = twin.random() if params.temperature > 0 else 0.0
        want = reference_sample(x, params, history, u)
        assert got == want, f"step {step}"
        s.accept(got)
        history.append(got)


def test_large_vocab_paths_match_reference():
    # the no-top-k shortcuts (min-p prefilter, top-p probe) on a vocabulary bigger than the probe
    vocab = 5000
    rng = np.random.default_rng(11)
    for params in (SamplingParams(top_k=0, top_p=0.9, min_p=0.0, temperature=1.0),
                   SamplingParams(top_k=0, top_p=0.99, min_p=0.0, temperature=2.0),
                   SamplingParams(top_k=0, top_p=0.7, min_p=0.01, temperature=0.9),
                   SamplingParams(top_k=0, top_p=1.0, min_p=0.0, temperature=1.0)):
        s = Sampler(SamplingParams(**{**params.__dict__, "seed": 5}))
        twin = np.random.Generator(np.random.PCG64(5))
        for scale in (0.2, 1.0, 4.0):        # flat to peaked distributions
            x = (rng.standard_normal(vocab) * scale).astype(np.float32)
            assert s.sample(x) == reference_sample(x, params, [], twin.random())


def expected_law(x, params, history=()):
    """Probabilities the chain should sample from, computed independently of both samplers."""
    x = np.asarray(x, np.float64).copy()
    for t in set(history):
        x[t] = x[t] / params.repeat_penalty if x[t] > 0 else x[t] * params.repeat_penalty
    order = sorted(range(len(x)), key=lambda i: (-x[i], i))
    keep = order[: params.top_k] if params.top_k > 0 else order
    p = np.exp(x[keep] - x[keep[0]])
    p /= p.sum()
    n = int(np.argmax(np.cumsum(p) >= params.top_p)) + 1 if params.top_p < 1 else len(keep)
    keep = keep[:n]
    keep = [i for i in keep if x[i] >= x[keep[0]] + math.log(params.min_p)] if params.min_p > 0 else keep
    w = np.exp((x[keep] - x[keep[0]]) / params.temperature)
    law = np.zeros(len(x))
    law[keep] = w / w.sum()
    return law


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
    SamplingParams(temperature=0.7, top_k=4, top_p=1.0, min_p=0.0),
    SamplingParams(temperature=1.3, top_k=0, top_p=0.8, min_p=0.0),
    SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.2),
    SamplingParams(temperature=1.0, top_k=5, top_p=0.95, min_p=0.05, repeat_penalty=1.5),
])
def test_empirical_frequencies_follow_the_law(params):
    x = np.array([2.0, 1.5, 1.4, 0.3, -0.2, -1.0, 0.9, 1.5], np.float32)
    history = [1, 5, 1]
    s = Sampler(SamplingParams(**{**params.__dict__, "seed": 99}))
    s.accept_many(history)
    n = 20_000
    counts = np.bincount([s.sample(x) for _ in range(n)], minlength=x.size)
    law = expected_law(x, params, history)
    assert np.all(counts[law == 0] == 0)                     # filtered tokens never appear
    sd = np.sqrt(n * law * (1 - law)) + 1e-9
    assert np.all(np.abs(counts - n * law) < 5 * sd + 1), (counts, n * law)


def test_repeat_penalty_semantics():
    x = np.array([2.0, -2.0, 1.0, 0.5], np.float32)
    s = Sampler(SamplingParams(temperature=0, repeat_penalty=2.0, repeat_last_n=3))
    s.accept_many([0, 0, 1])                                  # 0 twice still counts once
    s.sample(x)
    np.testing.assert_allclose(s._x, [1.0, -4.0, 1.0, 0.5])   # positive divided, negative multiplied
    assert s.sample(np.array([2.0, -2.0, 1.5, 0.5], np.float32)) == 2   # 2/2 = 1 < 1.5
    s.accept_many([3, 3, 3])                                  # window 3 forgets tokens 0 and 1
    s.sample(x)
    np.testing.assert_allclose(s._x, [2.0, -2.0, 1.0, 0.25])
    assert s.params.repeat_penalty == 2.0 and Sampler(SamplingParams(repeat_last_n=0)).history.maxlen == 0


def test_top_k_boundary_ties_go_to_lower_ids():
    x = np.array([0.0, 1.0, 1.0, 3.0, 1.0, 1.0], np.float32)
    s = Sampler(SamplingParams(temperature=1.0, top_k=3, top_p=1.0, min_p=0.0, seed=0))
    ids, vals, _ = s._candidates(s._load(x))
    assert ids.tolist() == [3, 1, 2]
    picks = {s.sample(x) for _ in range(300)}
    assert picks == {1, 2, 3}


def test_same_seed_same_tokens_and_unseeded_records_its_seed():
    rng = np.random.default_rng(0)
    xs = [random_logits(rng, 1000, ties=False) for _ in range(30)]

    def run(seed):
        s = Sampler(SamplingParams(seed=seed, temperature=1.2))
        return [s.sample(x) for x in xs]
    assert run(42) == run(42)
    fresh = Sampler(SamplingParams(seed=None, temperature=1.2))
    assert [fresh.sample(x) for x in xs] == run(fresh.seed)


def test_different_seeds_differ():
    x = np.zeros(1000, np.float32)                            # uniform law: picks are the draws
    a = Sampler(SamplingParams(seed=1, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0))
    b = Sampler(SamplingParams(seed=2, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0))
    assert [a.sample(x) for _ in range(20)] != [b.sample(x) for _ in range(20)]


def test_bad_input_is_a_clear_error():
    s = Sampler(SamplingParams(temperature=0))
    with pytest.raises(ValueError, match="NaN"):
        s.sample(np.array([np.nan, 1.0], np.float32))
    with pytest.raises(ValueError, match="NaN"):
        Sampler(SamplingParams(seed=0)).sample(np.full(10, np.nan, np.float32))
    with pytest.raises(ValueError, match=r"1-D \(vocab,\)"):
        s.sample(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="repeat_penalty"):
        Sampler(SamplingParams(repeat_penalty=0.0))


def test_buffers_are_reused_between_tokens():
    s = Sampler(SamplingParams(seed=0))
    x = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    s.sample(x)
    bufs = (s._x, s._tmp, s._mask)
    for _ in range(5):
        s.sample(x)
    assert all(a is b for a, b in zip(bufs, (s._x, s._tmp, s._mask)))


def test_sampling_speed_large_vocab(capsys):
    # Gemma 3's 262 144-token vocabulary; the bound is loose (a model step is ~100x longer)
    vocab = 262_144
    x = (np.random.default_rng(0).standard_normal(vocab) * 3).astype(np.float32)
    results = {}
    for name, params in {
        "greedy": SamplingParams(temperature=0),
        "default (k40 p.95 min.05)": SamplingParams(seed=0),
        "default + repeat penalty": SamplingParams(seed=0, repeat_penalty=1.1),
        "top_k=0, min_p=0.05": SamplingParams(seed=0, top_k=0),
        "temperature only": SamplingParams(seed=0, top_k=0, top_p=1.0, min_p=0.0),
    }.items():
        s = Sampler(params)
        s.accept_many(range(0, 64 * 97, 97))
        s.sample(x)
        t0 = time.perf_counter()
        for _ in range(20):
            s.sample(x)
        results[name] = (time.perf_counter() - t0) / 20 * 1e3
    with capsys.disabled():
        print("\nsampling ms/token, vocab 262144: "
              + ", ".join(f"{k}: {v:.2f}" for k, v in results.items()))
    assert max(results.values()) < 50.0


@pytest.mark.parametrize("field,value,message", [
    ("temperature", float("nan"), "temperature=nan must be a finite number"),
    ("temperature", float("inf"), "temperature=inf must be a finite number"),
    ("temperature", -0.5, r"temperature=-0.5 must be in \[0.0, inf\]"),
    ("top_p", 0.0, r"top_p=0.0 must be in \(0.0, 1.0\]"),
    ("top_p", 2.0, r"top_p=2.0 must be in \(0.0, 1.0\]"),
    ("top_p", float("nan"), "top_p=nan must be a finite number"),
    ("min_p", -0.1, r"min_p=-0.1 must be in \[0.0, 1.0\]"),
    ("repeat_penalty", float("nan"), "repeat_penalty=nan must be a finite number"),
    ("repeat_penalty", 0.0, r"repeat_penalty=0.0 must be in \(0.0, inf\]"),
    ("top_k", -5, "top_k=-5 must be a whole number >= 0"),
    ("top_k", 2.5, "top_k=2.5 must be a whole number >= 0"),
    ("repeat_last_n", -1, "repeat_last_n=-1 must be a whole number >= 0"),
    ("max_tokens", -1, "max_tokens=-1 must be a whole number >= 0"),
    ("max_tokens", "12", "max_tokens='12' must be a whole number >= 0"),
    ("seed", -3, "seed=-3 must be a whole number >= 0"),
    ("temperature", True, "temperature=True must be a finite number"),
])
def test_out_of_range_settings_are_refused_by_name(field, value, message):
    """NaN, infinities and out-of-range knobs never reach the sampler: the error names the field."""
    with pytest.raises(ValueError, match=message):
        SamplingParams(**{field: value})


def test_edge_settings_that_are_valid():
    for kw in ({"temperature": 0}, {"top_p": 1.0}, {"min_p": 0.0}, {"min_p": 1.0}, {"top_k": 0},
               {"max_tokens": 0}, {"repeat_last_n": 0}, {"seed": 0}):
        SamplingParams(**kw)
