"""Prompt-lookup decoding (engine/lookup.py) is exact: the same tokens as plain decoding.

The chain of reasons, each checked here:
1. `rows` products are bit-identical, row by row, to one-token products (every kernel, every
   block type, row bands in threads);
2. so a verify pass (`forward(..., exact=True)`) gives each row the logits plain decoding computes
   at that position (every architecture, dense and int8 weights, one shard or two);
3. so generation with lookup gives plain decoding's tokens: greedy, and with a seed when sampling
   (the same draws are made); and, tested as a distribution without relying on seeds, sampled
   continuations with and without lookup come from the same law (a two-sample chi-square test).
"""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np
import pytest

from engine import matmul, quants, shard
from engine.generate import generate
from engine.gguf import GGUFFile
from engine.lookup import PROBE_AFTER, DraftPolicy, PromptLookup
from engine.model import LoadPolicy, load_model, plan_for
from engine.sampler import Sampler, SamplingParams
from engine.tokenizer import Tokenizer
from mote import encoders
from tests.tiny_models import write_tiny

TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "TQ1_0", "TQ2_0"]
BLOCKS = LoadPolicy(dense_layers_mb=0.0, dense_head_mb=0.0)


@pytest.mark.parametrize("kernel", matmul.KERNELS)
@pytest.mark.parametrize("name", TYPES)
def test_rows_equal_one_token_products(name, kernel):
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((96, 512)) * 0.05).astype(np.float32)  # (n_out, n_in)
    tid = quants.BY_NAME[name].type_id
    lin = matmul.prepare_linear(encoders.quantize(w, tid).reshape(-1), tid, (96, 512), dense=False, kernel=kernel)
    xs = rng.standard_normal((5, 512)).astype(np.float32)  # (n, n_in)
    got = lin.rows(xs)  # (5, 96)
    for j in range(5):
        np.testing.assert_array_equal(got[j], lin(xs[j : j + 1])[0])


def test_rows_equal_one_token_products_dense_and_bands(monkeypatch):
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((300, 256)) * 0.05).astype(np.float32)
    xs = rng.standard_normal((4, 256)).astype(np.float32)
    dense = matmul.DenseLinear(w)
    monkeypatch.setattr(matmul, "THREAD_MIN_ROWS", 64)  # split the rows into bands run by threads
    tid = quants.BY_NAME["Q4_K"].type_id
    banded = matmul.prepare_linear(encoders.quantize(w, tid).reshape(-1), tid, (300, 256), dense=False)
    for lin in (dense, banded):
        got = lin.rows(xs)
        for j in range(4):
            np.testing.assert_array_equal(got[j], lin(xs[j]))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    made = {}

    def get(arch, qtype="Q8_0"):
        if (arch, qtype) not in made:
            made[arch, qtype] = write_tiny(tmp_path_factory.mktemp("lookup") / f"{arch}-{qtype}.gguf", arch, qtype=qtype)
        return made[arch, qtype]
    return get


def _open(path) -> GGUFFile:
    return GGUFFile(path.read_bytes())


@pytest.mark.parametrize("policy", [LoadPolicy(), BLOCKS], ids=["dense", "blocks"])
@pytest.mark.parametrize("arch,qtype", [("llama", "Q8_0"), ("qwen2", "Q4_0"), ("gemma3", "Q8_0"), ("gpt2", "F32")])
def test_verify_pass_equals_one_token_at_a_time(tiny, arch, qtype, policy):
    model = load_model(_open(tiny(arch, qtype)), n_ctx=64, policy=policy)
    toks = [int(t) for t in np.random.default_rng(5).integers(3, 259, 20)]
    model.forward(toks[:12])  # past the gemma tiny model's sliding window of 8
    one_by_one = [model.forward([t]) for t in toks[12:17]]  # (vocab,) each
    model.pos = 12
    verified = model.forward(toks[12:17], all_logits=True, exact=True)  # (5, vocab)
    assert model.pos == 17
    for j in range(5):
        np.testing.assert_array_equal(verified[j], one_by_one[j])


@pytest.mark.parametrize("kv", ["float32", "float16"])
@pytest.mark.parametrize("before", [12, 14, 30], ids=["reaching-the-wrap", "across-the-wrap", "wrapped"])
def test_verify_pass_equals_one_token_at_a_time_in_a_sliding_window_ring(tmp_path, monkeypatch, before, kv):
    """gemma3's window of 8 in a ring of 16 rows (KV_REWIND 9): each verified row attends over the
    cache as decoding at its position would (the same rows, the same masked ones), bit for bit,
    also with the workers' float16 cache."""
    import engine.model

    monkeypatch.setattr(engine.model, "KV_REWIND", 9)
    path = write_tiny(tmp_path / "gemma6.gguf", "gemma3", qtype="Q8_0", n_layers=6)
    model = load_model(_open(path), n_ctx=64, policy=dataclasses.replace(BLOCKS, kv_dtype=kv))
    assert [len(c) for c in model.k_cache] == [16] * 5 + [64]
    toks = [int(t) for t in np.random.default_rng(8).integers(3, 259, before + 5)]
    model.forward(toks[:before])
    one_by_one = [model.forward([t]) for t in toks[before:]]  # (vocab,) each
    model.pos = before
    verified = model.forward(toks[before:], all_logits=True, exact=True)  # (5, vocab)
    for j in range(5):
        np.testing.assert_array_equal(verified[j], one_by_one[j])


def test_sharded_verify_pass_equals_one_token_at_a_time(tiny):
    gf = _open(tiny("qwen2", "Q8_0"))
    shards = [load_model(gf, n_ctx=64, policy=BLOCKS, plan=p) for p in plan_for(gf, 2)]
    toks = [int(t) for t in np.random.default_rng(6).integers(3, 259, 14)]
    shard.run_lockstep(shards, toks[:9])
    one_by_one = [shard.run_lockstep(shards, [t]) for t in toks[9:]]
    for s in shards:
        s.pos = 9
    verified = shard.run_lockstep(shards, toks[9:], all_logits=True, exact=True)
    for j in range(5):
        np.testing.assert_array_equal(verified[j], one_by_one[j])


def test_runner_gathers_every_row_of_a_verify_pass(tiny):
    """ShardRunner as parallel-worker.js drives it: the peer's (rows, slice) block goes to
    rows * vocab_starts[peer] in the leader's logits buffer."""
    gf = _open(tiny("llama", "Q8_0"))
    toks = [int(t) for t in np.random.default_rng(7).integers(3, 259, 8)]
    ref_shards = [load_model(gf, n_ctx=64, policy=BLOCKS, plan=p) for p in plan_for(gf, 2)]
    shard.run_lockstep(ref_shards, toks[:5])
    ref = shard.run_lockstep(ref_shards, toks[5:], True, True)  # (3, vocab)
    runners = [shard.ShardRunner(load_model(gf, n_ctx=64, policy=BLOCKS, plan=p)) for p in plan_for(gf, 2)]
    for tokens, start, verify in ((toks[:5], 0, False), (toks[5:], 5, True)):
        codes = [r.begin(tokens, start, verify) for r in runners]
        while codes[0] > 0:
            n = codes[0]
            rows = [r.mailbox[r.index, :n].copy() for r in runners]
            for r in runners:
                for j, row in enumerate(rows):
                    r.mailbox[j, :n] = row
            codes = [r.resume() for r in runners]
        rows, v0 = runners[0].gather_rows, runners[0].vocab_starts()[1]
        peer = runners[1].outbox(-codes[1]).reshape(rows, -1)  # (rows, the peer's slice), row by row:
        for r, row in enumerate(peer):
            at = r * runners[0].vocab_size + v0
            runners[0].logits[at : at + len(row)] = row
        assert [r.resume() for r in runners] == [0, 0]
    np.testing.assert_array_equal(runners[0].last_logits, ref)


def test_runner_buffers_never_grow_and_the_budget_counts_them(tiny):
    """A prompt longer than PREFILL_CHUNK (summed chunk by chunk) and a verify pass of MAX_DRAFT + 1
    rows fit the exchange buffers made with the runner: they stay the same arrays (in WASM a grown
    buffer is a new block in a heap that never shrinks), and engine/budget.py counts their bytes."""
    from engine.budget import LOGITS_BYTES, _attention_bytes, _fixed_runtime, estimate
    from engine.lookup import MAX_DRAFT
    from engine.model import PREFILL_CHUNK

    gf = _open(tiny("llama", "Q8_0"))
    n_ctx = PREFILL_CHUNK + 2 * (MAX_DRAFT + 1) + 8
    runners = [shard.ShardRunner(load_model(gf, n_ctx=n_ctx, policy=BLOCKS, plan=p)) for p in plan_for(gf, 2)]
    made = [(r._box, r.logits) for r in runners]
    toks = [int(t) for t in np.random.default_rng(5).integers(3, 259, PREFILL_CHUNK + 5 + MAX_DRAFT + 1)]
    for tokens, start, verify in ((toks[: PREFILL_CHUNK + 5], 0, False), (toks[PREFILL_CHUNK + 5 :], PREFILL_CHUNK + 5, True)):
        codes = [r.begin(tokens, start, verify) for r in runners]
        while codes[0] != 0:
            if codes[0] > 0:
                rows = [r.mailbox[r.index, : codes[0]].copy() for r in runners]
                for r in runners:
                    for j, row in enumerate(rows):
                        r.mailbox[j, : codes[0]] = row
            codes = [r.resume() for r in runners]
    assert runners[0].last_logits.shape == (MAX_DRAFT + 1, runners[0].vocab_size)
    assert all(r._box is box and r.logits is logits for r, (box, logits) in zip(runners, made))
    budget = estimate(gf, n_ctx=n_ctx, n_workers=2)
    for r, w in zip(runners, budget.workers):
        held = r._box.nbytes + r.logits.nbytes
        assert held == 4 * sum(shard.buffer_floats(r.model.config, r.model.plan, n_ctx)) > 0
        plan, cfg = r.model.plan, r.model.config
        attention = _attention_bytes(cfg, n_ctx, plan.heads[1] - plan.heads[0], plan.kv_heads[1] - plan.kv_heads[0])
        fixed = _fixed_runtime(gf, cfg, plan, "packed")
        assert w.runtime - fixed - (r.vocab_size * LOGITS_BYTES if r.index == 0 else 0) - attention == held


def test_prompt_lookup_finds_the_latest_longest_match():
    look = PromptLookup([1, 2, 3, 9, 1, 2, 4, 7, 1, 2])
    assert look.find() == (2, [4, 7, 1, 2])        # "1 2" most recently before the end: followed by 4 7 ...
    look.append(3)
    assert look.find(max_draft=3) == (3, [9, 1, 2])  # "1 2 3" beats the shorter matches
    assert PromptLookup([5, 6, 7]).find() == (0, [])
    assert PromptLookup([]).find() == (0, [])


def test_policy_stops_drafting_when_drafts_miss_and_drafts_long_when_they_hit():
    policy = DraftPolicy()
    assert policy.length(3, 8) == 0  # no decode step timed yet
    policy.timed(1, 0.100)
    policy.timed(5, 0.180)  # each extra row: 20 ms
    assert policy.length(3, 8) > 0
    for _ in range(20):
        policy.outcome(3, 8, 8)
    assert policy.length(3, 8) == 8
    for _ in range(20):
        policy.outcome(1, 2, 0)
    assert policy.length(1, 8) == 0
    policy.row_costs = [1.0]  # a row costs a whole decode step: even perfect drafts barely pay
    assert policy.length(2, 1) == 0


def test_policy_outlasts_one_slow_verify_pass_and_probes_after_declining():
    """One verify pass slowed 6x (its first buffers allocated, a collection) is outvoted by the prior;
    a policy put off by misses still drafts one token now and then, and so can change its mind."""
    policy = DraftPolicy()
    policy.timed(1, 0.100)
    policy.timed(2, 0.100 + 6 * 0.030)  # a row measured at 1.8 decode steps (really 0.3)
    assert policy.length(3, 8) > 0
    policy.timed(3, 0.100 + 2 * 0.030)
    policy.timed(2, 0.100 + 0.030)
    assert abs(policy.row_cost - 0.3) < 1e-9  # the slow pass has left the window
    policy.timed(2, 0.100 + 6 * 0.030)
    policy.timed(2, 0.100 + 6 * 0.030)  # two slow passes in three: they are the median now
    lengths = [policy.length(3, 8) for _ in range(PROBE_AFTER)]
    assert lengths == [0] * (PROBE_AFTER - 1) + [1]  # the probe
    for _ in range(2):
        policy.timed(2, 0.100 + 0.030)  # probes measured at the real cost again
        policy.outcome(3, 1, 1)
    assert policy.length(3, 8) > 1
    assert DraftPolicy(t1=1.0, row_costs=[2.0]).length(3, 8) == 0


def test_replay_charges_verify_rows_and_bounds_the_policy_by_its_ceiling():
    """scripts/lookup_replay.py: an answer that copies its prompt is cheaper with lookup, never cheaper
    than the ceiling (drafting exactly what is kept) allows; an answer that copies nothing costs
    plain decoding's steps; the ceiling of a full copy is the arithmetic of its passes."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "lookup_replay.py"
    spec = importlib.util.spec_from_file_location("lookup_replay", path)
    replay_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replay_mod)
    prompt = list(range(100, 200))
    copy = prompt[20:61]                     # 41 tokens: the first from the prefill, 40 to decode
    policy = DraftPolicy()
    got = replay_mod.replay(prompt, copy, 0.4, 8, 8, policy)
    best = replay_mod.replay(prompt, copy, 0.4, 8, 8, None)
    assert 1.3 < got <= best
    # the ceiling: one plain step (no match yet: the answer's first token alone), then passes of 1 + 8
    # rows (9 tokens each), then one of 1 + 2 rows for the last 3: 40 tokens in 1 + 4 x 4.2 + 1.8 steps
    assert best == pytest.approx(40 / (1 + 4 * (1 + 8 * 0.4) + (1 + 2 * 0.4)))
    fresh = list(range(500, 540))            # nothing in it occurred before
    assert replay_mod.replay(prompt, fresh, 0.4, 8, 8, DraftPolicy()) == 1.0


def _code_prompt(tok: Tokenizer) -> list[int]:
    return tok.encode("x = r * r\n" * 3 + "x =", add_bos=True)


def _run(model, tok, prompt, params, history=None):
    """Generate; with `history`, prompt lookup drafts from it (any drafts must give the same tokens)."""
    eager = DraftPolicy(t1=1.0, row_costs=[0.01])  # drafts whenever there is a match: every path runs
    lookup = None if history is None else PromptLookup(history)
    evs = list(generate(model, tok, prompt, params, lookup=lookup, policy=eager))
    return [e.token_id for e in evs if e.kind == "token"], evs[-1]


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gemma3-ring"])
def test_generation_with_lookup_gives_plain_tokens(tiny, arch, tmp_path, monkeypatch):
    """A random tiny model rarely repeats its prompt, so the drafts come from a history holding
    its own plain continuation with every 5th token changed: kept drafts, refused drafts, cache
    cut-backs, all must leave the tokens exactly as plain decoding gives them. gemma3-ring: six
    layers, the five sliding ones in rings of 16 rows that wrap several times (KV_REWIND 9)."""
    if arch == "gemma3-ring":
        import engine.model

        monkeypatch.setattr(engine.model, "KV_REWIND", 9)
        gf = _open(write_tiny(tmp_path / "gemma6.gguf", "gemma3", qtype="Q8_0", n_layers=6))
    else:
        gf = _open(tiny(arch, "Q8_0"))
    model, tok = load_model(gf, n_ctx=128, policy=BLOCKS), Tokenizer.from_metadata(gf.metadata)
    prompt = _code_prompt(tok)
    drafted = accepted = 0
    for params in (SamplingParams(temperature=0, max_tokens=50),
                   SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=11, max_tokens=50),
                   SamplingParams(temperature=0.7, repeat_penalty=1.3, seed=12, max_tokens=50)):
        plain, plain_done = _run(model, tok, prompt, params)
        plain_pos = model.pos
        wrong = [t if i % 5 != 4 else 3 + (t + 1) % 256 for i, t in enumerate(plain)]
        own, done = _run(model, tok, prompt, params, history=prompt + wrong + prompt)
        assert own == plain and done.full_text == plain_done.full_text and done.reason == plain_done.reason
        assert model.pos == plain_pos  # the cache cut back to the tokens fed, as plain decoding leaves it
        drafted, accepted = drafted + done.n_drafted, accepted + done.n_accepted
        prompt_only, _ = _run(model, tok, prompt, params, history=prompt)  # plain prompt lookup
        assert prompt_only == plain
    assert drafted > accepted > 0  # drafts were kept and drafts were refused


def test_sampled_continuations_follow_the_same_law(tiny):
    """Sampled 3-token continuations with and without lookup, each run with its own seeds (nothing
    shared but the model), fall into the same cells at the same rates (two-sample chi-square).
    The draft is the greedy continuation g, so the cells are where a wrong acceptance rule shows:
    whether each sampled token is the drafted one."""
    gf = _open(tiny("llama", "Q8_0"))
    model, tok = load_model(gf, n_ctx=128, policy=BLOCKS), Tokenizer.from_metadata(gf.metadata)
    prompt = _code_prompt(tok)
    g, _ = _run(model, tok, prompt, SamplingParams(temperature=0, max_tokens=3))
    history = prompt + g + prompt[1:]  # drafts the likeliest continuation: often kept, not always

    def cell(ids):  # how long a prefix of g the sample follows, and the token after it (if any)
        n = 0
        while n < min(len(ids), 3) and ids[n] == g[n]:
            n += 1
        return n

    counts, drafted, accepted = {}, 0, 0
    for lookup, seeds in ((False, range(0, 1000)), (True, range(10_000, 11_000))):
        c = collections.Counter()
        for seed in seeds:
            params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed, max_tokens=3)
            ids, done = _run(model, tok, prompt, params, history=history if lookup else None)
            c[cell(ids)] += 1
            drafted, accepted = drafted + done.n_drafted, accepted + done.n_accepted
        counts[lookup] = c
    assert drafted > accepted > 0.1 * drafted
    table = [(counts[False][k], counts[True][k]) for k in range(4)]
    assert all(a + b >= 20 for a, b in table), table
    n_a, n_b = sum(a for a, _ in table), sum(b for _, b in table)
    chi2 = sum((a * math.sqrt(n_b / n_a) - b * math.sqrt(n_a / n_b)) ** 2 / (a + b) for a, b in table)
    # 99.9th percentile of chi-square with 3 degrees of freedom: chance fails this 1 time in 1000
    assert chi2 < 16.27, (chi2, table)


def test_speculative_setting_is_checked():
    with pytest.raises(ValueError, match="speculative"):
        SamplingParams(speculative="yes")
    assert SamplingParams().speculative is True
    Sampler(SamplingParams(speculative=False))
