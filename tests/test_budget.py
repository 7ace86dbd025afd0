"""engine/budget.py: the memory a worker will need, from the GGUF header alone, before the download.

Natively the parts that are the engine's own arrays are checked exactly against what a load holds
(the file's bytes, the side arrays and the KV cache: resident_bytes; a shard's byte ranges and
column cuts); the runtime and vocabulary constants are checked against the WASM memory Chromium
reports in tests/test_browser.py (Gemma) and test_browser_qwen.py. The refusal says which limit,
how much, and what to change.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine import bridge, budget
from engine.gguf import GGUFFile, open_gguf
from engine.model import PackedLinear, load_model, resident_bytes
from engine.shard import ShardFile, ShardLoader
from tests.tiny_models import write_tiny


@pytest.fixture(scope="module")
def q4k(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("b") / "q4k.gguf", "llama", qtype="Q4_K", d=256, d_ff=512, n_layers=2,
                      ctx=512)


@pytest.fixture(scope="module")
def q5(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("b") / "q5.gguf", "llama", qtype="Q5_0", ctx=256)


@pytest.fixture(scope="module")
def q8(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("b") / "q8.gguf", "gemma3", qtype="Q8_0", tied=True, ctx=256)


def _engine_bytes(w: budget.WorkerBudget) -> int:
    return w.weights + w.side + w.kv


@pytest.mark.parametrize("layout", ["packed", "compact", "int8"])
@pytest.mark.parametrize("which", ["q4k", "q8", "q5"])
def test_one_worker_estimate_equals_what_a_load_holds(request, which, layout):
    path = request.getfixturevalue(which)
    data = path.read_bytes()
    est = budget.estimate(ShardFile(data[:1 << 16], len(data)), n_ctx=100, layout=layout)
    assert len(est.workers) == 1
    model = load_model(GGUFFile(bytearray(data)), n_ctx=100, policy=bridge.policy_for(layout))
    held = len(data) + resident_bytes(model)  # the buffer, plus everything the model allocated itself
    vectors = sum(v.nbytes for b in model.w["blk"] for k, v in b.items() if isinstance(v, np.ndarray))
    vectors += sum(v.nbytes for k, v in model.w.items() if isinstance(v, np.ndarray))
    assert _engine_bytes(est.workers[0]) == held - vectors  # norms (a few KB) are not estimated
    assert est.workers[0].kv == sum(c.nbytes for c in model.k_cache + model.v_cache)


def test_packed_estimate_is_about_the_file_and_int8_much_more(q4k):
    data = q4k.read_bytes()
    head = ShardFile(data[:1 << 16], len(data))
    packed = budget.estimate(head, n_ctx=16).workers[0]
    int8 = budget.estimate(head, n_ctx=16, layout="int8").workers[0]
    assert packed.weights == len(data)
    assert int8.side - packed.side > 0.8 * len(data)  # int8 values + scales: more than the 4.5-bit file again


@pytest.mark.parametrize("n", [2, 3])
def test_shard_estimates_equal_their_byte_ranges_and_cuts(q4k, n):
    data = q4k.read_bytes()
    est = budget.estimate(ShardFile(data[:1 << 16], len(data)), n_ctx=64, n_workers=n)
    assert len(est.workers) == n
    for i, w in enumerate(est.workers):
        loader = ShardLoader(data[:1 << 16], len(data), n, i, n_ctx=64)
        loader.stream_from(data[:1 << 16], hash_all=False)
        for a, b in loader.ranges():
            if b > 1 << 16:
                loader.write(max(a, 1 << 16), data[max(a, 1 << 16) : b], b - max(a, 1 << 16))
        model = loader.runner().model
        dense_cuts = sum(m.nbytes for b in model.w["blk"] for k, m in b.items()
                         if k in ("attn_output", "ffn_down") and not isinstance(m, PackedLinear))
        assert w.weights == loader.held_bytes() + dense_cuts
        for b in model.w["blk"]:  # a whole-block cut is computed in the piece that received it: no copy
            m = b.get("ffn_down")
            if isinstance(m, PackedLinear) and m.n_in < 512:
                assert any(np.shares_memory(m.rows_u8, c[-1]) for c in loader._cuts)
        assert w.kv == sum(c.nbytes for c in model.k_cache + model.v_cache)
        assert (w.vocabulary > est.workers[-1].vocabulary) == (i == 0)  # the leader tokenizes
    last = loader.budget()["budget"]["workers"][n - 1]
    assert last["total_bytes"] == est.per_worker[n - 1]
    assert last["heap_bytes"] == last["total_bytes"] + budget.RESERVE_MARGIN  # what the worker grows its heap to


def test_refusals_name_the_limit_the_size_and_what_to_change(q4k):
    data = q4k.read_bytes()
    head = ShardFile(data[:1 << 16], len(data))
    fits = budget.estimate(head, n_ctx=64)
    assert fits.refusal() is None and fits.refusal(device_bytes=8 << 30) is None
    small = fits.refusal(device_bytes=fits.total)  # half the device is the page's share
    assert small and "more than this device can give a page" in small and "n_ctx, now 64" in small
    assert "or more workers" in small
    big = dataclasses.replace(fits)
    big.workers = [dataclasses.replace(fits.workers[0], kv=5 << 30)]
    why = big.refusal()
    assert why.startswith("this model needs about 5.") and "WebAssembly worker can address" in why


def test_header_budget_waits_for_the_whole_header_then_answers(q4k):
    data = q4k.read_bytes()
    head_len = open_gguf(q4k).data_offset
    assert bridge.header_budget(data[: head_len // 2], len(data)) is None
    got = bridge.header_budget(data[: head_len + 10], len(data), 32, "packed", 1.0)
    assert got["refusal"] is None and got["budget"]["n_ctx"] == 32
    tight = bridge.header_budget(data[: head_len + 10], len(data), 32, "int8", got["budget"]["total_bytes"] / 2**30)
    assert "more than this device" in tight["refusal"]
    with pytest.raises(ValueError, match="unknown layout 'fp4'"):
        bridge.header_budget(data, len(data), None, "fp4")


def test_header_budget_of_an_atome_model_has_no_estimate(tmp_path):
    from mote.cli import main
    from tests.paths import shared_file

    out = tmp_path / "atome.gguf"
    assert main(["convert", str(shared_file("atome/atome_944k.bin")), str(out)]) == 0
    data = out.read_bytes()
    assert bridge.header_budget(data, len(data)) == {"budget": None, "refusal": None, "layout": None}


def test_the_default_layout_keeps_q5_0_as_int8_unless_only_compact_fits(q5):
    """Q5_0's packed product is ~1.5x slower in Chromium, so the default layout keeps it as int8;
    when that would not fit the device, every type is packed ("compact") and the load goes on."""
    data = q5.read_bytes()
    head = ShardFile(data[:1 << 16], len(data))
    packed, compact = budget.estimate(head, n_ctx=64), budget.estimate(head, n_ctx=64, layout="compact")
    assert packed.total > compact.total
    roomy = bridge.choose_layout(head, 64, 1, None, None)
    assert roomy["layout"] == "packed" and roomy["refusal"] is None
    device = int((compact.total + packed.total) / 2 / budget.DEVICE_SHARE)  # fits compact only
    tight = bridge.choose_layout(head, 64, 1, None, device)
    assert tight["layout"] == "compact" and tight["refusal"] is None
    assert bridge.choose_layout(head, 64, 1, "packed", device // 4)["refusal"]  # neither fits: refused
    model = load_model(GGUFFile(bytearray(data)), policy=bridge.policy_for("compact"))
    assert all(isinstance(m, PackedLinear) for m in model.w["blk"][0].values() if hasattr(m, "n_out"))


def test_a_damaged_header_gives_no_estimate_and_no_error(q4k):
    """The load itself names the fault (GGUFError), as before; the budget step only steps aside."""
    data = bytearray(q4k.read_bytes())
    data[:4] = b"XXXX"  # not GGUF
    assert bridge.header_budget(bytes(data), len(data)) == {"budget": None, "refusal": None, "layout": None}
